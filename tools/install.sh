#!/usr/bin/env bash
# Make a working q4asr environment from a fresh clone. Idempotent: a second run with
# everything present only checks and returns in seconds.
#
#   tools/install.sh [--cuda] [--no-apt]
#
# - a virtual env in .venv (unless one is already active)
# - the pinned Python packages from setup.cfg, q4asr installed editable with
#   [test,bench] (and [interpret], Triton for the fused kernels' tests, without --cuda)
# - fast_rnnt 1.3 (k2's pruned RNN-T loss) built from its PyPI sdist offline, the wheel
#   cached in $Q4ASR_CACHE (default ~/.cache/q4asr) so it is built once per machine
# - the Debian packages the recipes need (sox, TTS engines, wordnet), when running as root
#
# --cuda builds fast_rnnt with CUDA for the GPUs present, or for TORCH_CUDA_ARCH_LIST
# (needs nvcc and a CUDA build of torch; see tools/build_fast_rnnt.sh); CPU otherwise.
set -euo pipefail

cuda=false
apt=true
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda=true ;;
    --no-apt) apt=false ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown option '$1' (use --cuda, --no-apt)" >&2; exit 1 ;;
  esac
  shift
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[install $(date +%H:%M:%S)] $*" >&2; }
start=$(date +%s)

# 1. Debian packages used by the recipes (synthesized speech, audio conversion, text).
apt_pkgs="sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts wordnet-base"
missing=""
for p in $apt_pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if ! $apt; then
    log "skipping Debian packages (--no-apt); missing:$missing"
  elif [ "$(id -u)" -eq 0 ]; then
    log "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    log "the recipes need these Debian packages:$missing"
    log "run as root, or: sudo apt-get install$missing"
  fi
fi

# 2. Python environment.
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
py=python
stamp="$VIRTUAL_ENV/.q4asr-install"
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! $py -c "import q4asr, torch, lhotse, sentencepiece, jiwer, yaml" 2>/dev/null; then
  log "installing pinned packages and q4asr (editable)"
  # torch first and alone: the pin resolves to the local CPU build where there is one.
  $py -m pip install -q --upgrade pip setuptools wheel
  $py -m pip install -q "$(grep -E '^\s*torch==' setup.cfg | tr -d ' ')"
  extras=test,bench
  $cuda || extras=$extras,interpret  # CUDA torch ships its own Triton
  $py -m pip install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi

# 3. fast_rnnt (k2 has no PyPI build for current torch; see README).
if ! $py -c "import fast_rnnt" 2>/dev/null; then
  if $cuda; then tools/build_fast_rnnt.sh --cuda; else tools/build_fast_rnnt.sh; fi
fi

$py -c "import q4asr, lhotse, sentencepiece, jiwer, yaml, fast_rnnt" \
  || { log "the environment does not import; see the messages above"; exit 1; }
log "ready in $(( $(date +%s) - start )) s: $VIRTUAL_ENV ($(du -sh "$VIRTUAL_ENV" | cut -f1))"
