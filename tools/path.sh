# Sourced by recipes: activates the project's environment and puts q4asr on the path.
#   . "$Q4ASR_ROOT/tools/path.sh"   (recipes set Q4ASR_ROOT from their own location)
Q4ASR_ROOT=${Q4ASR_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export Q4ASR_ROOT
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$Q4ASR_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$Q4ASR_ROOT/.venv/bin/activate"
fi
export PATH="$Q4ASR_ROOT/tools:$PATH"
export PYTHONUNBUFFERED=1
