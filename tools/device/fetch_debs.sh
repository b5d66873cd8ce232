#!/bin/bash
# Downloads (here, where Debian's registry is reachable) the -dev packages llmctl builds
# against, into .devdeps/debs, for a GPU machine that has CUDA and torch but no registry.
# Then: the device tool's run with carry [".devdeps", "tools/device"] and the command
#   bash tools/device/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .devdeps/debs .git/info
grep -qx "/.devdeps/" .git/info/exclude 2>/dev/null || echo "/.devdeps/" >> .git/info/exclude
cd .devdeps/debs
for p in libsentencepiece-dev libsentencepiece0 libprotobuf-lite32 libcpp-httplib-dev libcpp-httplib0.11 \
         nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libgtest-dev libgmock-dev \
         libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc-dev libutf8proc2 \
         libssl-dev libbrotli-dev libbrotli1 zlib1g-dev pkgconf pkgconf-bin libpkgconf3 libgloo-dev; do
  apt-get download "$p" >/dev/null
done
ls | wc -l
