#!/usr/bin/env bash
# Build fast_rnnt 1.3 (k2's pruned RNN-T loss; see README) from its PyPI sdist and
# install it into the active Python. Called by tools/install.sh; usable alone.
#
#   tools/build_fast_rnnt.sh [--cuda] [--src DIR] [--force]
#
# --cuda     build the CUDA kernels too (needs nvcc and a CUDA build of torch), for
#            TORCH_CUDA_ARCH_LIST when it is set ("9.0", "8.0;9.0", "9.0+PTX", "90a"),
#            else for the compute capability of every GPU torch sees
# --src DIR  take fast_rnnt-1.3.tar.gz and pybind11-3.0.4.tar.gz from DIR (offline
#            machines) instead of downloading them from PyPI
# --force    build and install even when fast_rnnt already imports
# FT_EXTRA_CMAKE_ARGS (environment) is added to fast_rnnt's CMake arguments, e.g.
# "-DCUDA_nvrtc_LIBRARY=/path/libnvrtc.so" for a toolkit that lacks it.
#
# The wheel is cached in $Q4ASR_CACHE (default ~/.cache/q4asr)/wheels/ under a name
# holding the torch version, Python version and, for CUDA, the CUDA version and the
# architectures: each is built once per machine. CPU: about 75 s on 2 cores. CUDA:
# 203 s with -j16 on one H200 machine (sm_90).
set -euo pipefail

cuda=false
src=""
force=false
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda=true ;;
    --src) src=$2; shift ;;
    --force) force=true ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown option '$1' (use --cuda, --src DIR, --force)" >&2; exit 1 ;;
  esac
  shift
done
log() { echo "[build_fast_rnnt $(date +%H:%M:%S)] $*" >&2; }
py=${PYTHON:-python3}
command -v python >/dev/null && py=${PYTHON:-python}

if ! $force && $py -c "import fast_rnnt" 2>/dev/null; then
  log "fast_rnnt already imports; nothing to do (--force rebuilds)"
  exit 0
fi

torch_v=$($py -c "import torch; print(torch.__version__.split('+')[0])")
py_v=$($py -c "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')")
flavour=cpu
archs=""
if $cuda; then
  # "8.0;9.0+PTX" -> "80 90"; without TORCH_CUDA_ARCH_LIST, the GPUs' capabilities
  archs=$($py - <<'EOF'
import os, torch
spec = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split()
archs = [a.replace("+PTX", "").replace(".", "") for a in spec]
if not archs:
    if torch.version.cuda is None or not torch.cuda.is_available():
        raise SystemExit("--cuda: this torch sees no CUDA GPU; set TORCH_CUDA_ARCH_LIST")
    archs = [f"{a}{b}" for a, b in map(torch.cuda.get_device_capability,
                                        range(torch.cuda.device_count()))]
print(" ".join(sorted(set(archs))))
EOF
)
  cuda_v=$($py -c "import torch; print(torch.version.cuda or '')")
  [ -n "$cuda_v" ] || { log "--cuda needs a CUDA build of torch (this one is $torch_v, CPU)"; exit 1; }
  command -v nvcc >/dev/null || { log "--cuda needs nvcc on the PATH"; exit 1; }
  flavour="cuda$cuda_v-sm${archs// /-sm}"
fi
cache="${Q4ASR_CACHE:-$HOME/.cache/q4asr}/wheels/fast_rnnt-1.3-$flavour-torch$torch_v-py$py_v"

if ! ls "$cache"/fast_rnnt-*.whl >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ -n "$src" ]; then
    cp "$src"/fast_rnnt-1.3.tar.gz "$src"/pybind11-3.0.4.tar.gz "$work"/
  else
    $py -m pip download -q --no-deps --no-binary :all: pybind11==3.0.4 fast-rnnt==1.3 -d "$work"
  fi
  tar xzf "$work"/pybind11-3.0.4.tar.gz -C "$work"
  tar xzf "$work"/fast_rnnt-1.3.tar.gz -C "$work"
  inc=$($py -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  with_cuda=OFF
  cuda_flags=""
  if $cuda; then
    with_cuda=ON
    # fast_rnnt's CMakeLists builds for a fixed list of architectures from compute_35
    # (which nvcc >= 12 rejects) and keeps those the build machine's GPU matches:
    # build exactly the requested ones instead.
    cm="$work/fast_rnnt-1.3/CMakeLists.txt"
    grep -q '^  set(FT_COMPUTE_ARCH_CANDIDATES 35 50 60 61 70 75)$' "$cm" \
      && grep -q 'list(APPEND FT_COMPUTE_ARCH_CANDIDATES 80 86)' "$cm" \
      && grep -q 'if("${FT_COMPUTE_ARCH_FLAGS}" MATCHES ${COMPUTE_ARCH})' "$cm" \
      || { log "$cm: not the fast_rnnt 1.3 CMakeLists this script patches"; exit 1; }
    sed -i -e "s/^  set(FT_COMPUTE_ARCH_CANDIDATES 35 50 60 61 70 75)$/  set(FT_COMPUTE_ARCH_CANDIDATES $archs)/" \
      -e '/list(APPEND FT_COMPUTE_ARCH_CANDIDATES 80 86)/d' \
      -e 's/if("${FT_COMPUTE_ARCH_FLAGS}" MATCHES ${COMPUTE_ARCH})/if(TRUE)/' "$cm"
    # the toolkit nvcc belongs to (nvcc may be a wrapper script outside it)
    cuda_home=${CUDA_HOME:-$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 \
      | sed -n 's/^#\$ TOP=//p' | head -1)}
    cuda_home=$(cd "$cuda_home" && pwd)
    # nvcc compiles the .cu files, which include Python.h too
    cuda_flags="-DCMAKE_CUDA_FLAGS=-I$inc -DCUDA_TOOLKIT_ROOT_DIR=$cuda_home \
      -DCMAKE_CUDA_COMPILER=$cuda_home/bin/nvcc"
  fi
  # torch >= 2.14's headers require C++20 (and say so); older ones build with C++17
  std=17
  grep -q "C++20 or later" "$($py -c 'import os, torch; print(os.path.dirname(torch.__file__))')/include/ATen/ATen.h" \
    && std=20
  log "building fast_rnnt 1.3 ($flavour, C++$std) from source with -j$(nproc)"
  export FT_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=$with_cuda \
    -DCMAKE_CXX_STANDARD=$std -DCMAKE_CXX_FLAGS=-I$inc $cuda_flags \
    -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$work/pybind11-3.0.4 -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
    ${FT_EXTRA_CMAKE_ARGS:-}"
  export FT_MAKE_ARGS="-j$(nproc)"
  t0=$(date +%s)
  mkdir -p "$cache"
  rm -rf "$cache.tmp"
  $py -m pip wheel -q --no-build-isolation --no-deps "$work/fast_rnnt-1.3" -w "$cache.tmp"
  mv "$cache.tmp"/fast_rnnt-*.whl "$cache"/ && rmdir "$cache.tmp"
  log "built in $(( $(date +%s) - t0 )) s: $cache"
fi
$py -m pip install -q --no-deps --force-reinstall "$cache"/fast_rnnt-*.whl
