#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipe scripts after their defaults block:
#
#   stage=0
#   nj=4
#   . tools/parse_options.sh
#
# Each `--foo-bar VALUE` (or `--foo-bar=VALUE`) sets the shell variable foo_bar, which
# must already be defined (a typo is an error, never a new variable). `--help` prints
# the calling script's usage: its header comment, or $help_message if it is set.
# Parsing stops at the first argument that does not start with `--`; what remains is
# left in "$@" for the script.

__q4asr_usage() {
  if [ -n "${help_message:-}" ]; then
    printf '%s\n' "$help_message" >&2
  else
    # the script's header comment, without the shebang
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" >&2
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      __q4asr_usage
      exit 0
      ;;
    --*=*)
      __name="${1%%=*}"; __value="${1#*=}"; shift
      ;;
    --*)
      __name="$1"
      if [ $# -lt 2 ]; then
        echo "$0: option $__name needs a value" >&2
        __q4asr_usage
        exit 1
      fi
      __value="$2"; shift 2
      ;;
    *)
      break
      ;;
  esac
  __var=$(echo "${__name#--}" | tr '-' '_')
  if ! [[ "$__var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!__var+set}" ]; then
    echo "$0: unknown option $__name" >&2
    __q4asr_usage
    exit 1
  fi
  # booleans stay booleans: a variable that was true/false only takes true/false
  case "${!__var}" in
    true|false)
      if [ "$__value" != true ] && [ "$__value" != false ]; then
        echo "$0: option $__name takes true or false, not '$__value'" >&2
        exit 1
      fi
      ;;
  esac
  printf -v "$__var" '%s' "$__value"
done
unset __name __value __var
true
