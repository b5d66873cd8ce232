#!/bin/bash
# Builds llmctl on the lent GPU machine against its own torch, from the Debian -dev
# packages carried in .devdeps/ (tools/device/fetch_debs.sh). Source it: it leaves the
# build in bd/ and the sysroot's libraries on LD_LIBRARY_PATH. Logs land in $OUT.
R=$PWD; S=$R/.devdeps/root; mkdir -p $S
for f in .devdeps/debs/*.deb; do dpkg -x $f $S; done
export PKG_CONFIG_SYSROOT_DIR=$S PKG_CONFIG_LIBDIR=$S/usr/lib/x86_64-linux-gnu/pkgconfig:$S/usr/share/pkgconfig
export LD_LIBRARY_PATH=$S/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
PKGC=$(command -v pkg-config || echo $S/usr/bin/pkgconf)
{ nvidia-smi -L; which cmake ninja g++ nvcc python3; g++ --version | head -1; nproc; } > $OUT/env.log 2>&1
T0=$(date +%s)
cmake -S . -B bd -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMCTL_PYTHON=$(which python3) -DCMAKE_PREFIX_PATH=$S/usr \
  -DPKG_CONFIG_EXECUTABLE=$PKGC > $OUT/cmake.log 2>&1 || { tail -40 $OUT/cmake.log; exit 1; }
cmake --build bd -j16 --target llmctl llmctl_tests > $OUT/build.log 2>&1 || { grep -A12 -m3 "error" $OUT/build.log; exit 1; }
echo "build $(( $(date +%s) - T0 )) s"
