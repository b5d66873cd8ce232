#!/usr/bin/env bash
# Installs what llmctl needs and is missing; safe to run again (it only installs what is
# absent). Debian 12 packages via apt-get, Python packages into the project venv .venv.
#   tools/install-deps.sh            everything
#   tools/install-deps.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache git
  python3 python3-venv
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libgtest-dev
  libcpp-httplib-dev
  libpcre2-dev libutf8proc-dev  # byte-level BPE tokenizer.json: pre-tokenizer regexes, Unicode normalizers
  chromium chromium-driver  # tests: the web chat page in headless Chromium
  bubblewrap  # llmctl agent: the sandbox model-written code runs in
  libgloo-dev  # data-parallel training: the headers of the Gloo copy inside libtorch
)
VENV=.venv
REQ=tools/requirements.txt
REQ_AWQ=tools/requirements-autoawq.txt  # AutoAWQ oracle, in its own directory (see the file)
STAMP=$VENV/.requirements.sha256

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

say() { printf '[install-deps] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "missing Debian packages: ${missing[*]}"
  ((check_only)) && exit 1
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "not root and no sudo: install them by hand"; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi

# --- Python venv with torch (LibTorch) and the test oracles -----------------------------
want=$(cat "$REQ" "$REQ_AWQ" | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ "$want" == "$have" ]] && "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  say "Python venv: up to date ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi
((check_only)) && { say "Python venv $VENV is missing or out of date"; exit 1; }
PY=${PYTHON:-python3}
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
say "installing Python packages into $VENV (torch is large: a few minutes on first run)"
if ! "$VENV/bin/pip" install --disable-pip-version-check -q -r "$REQ"; then
  say "pip install failed: LibTorch comes from PyPI's torch wheel, so llmctl cannot be built"
  say "without it. Check network access to PyPI and rerun this script."
  exit 1
fi
rm -rf "$VENV/autoawq"
if ! "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps --target "$VENV/autoawq" -r "$REQ_AWQ"; then
  say "AutoAWQ oracle install failed: its test in tests/python/test_quantize.py will be skipped"
  rm -rf "$VENV/autoawq"
fi
echo "$want" > "$STAMP"
say "Python venv ready: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
