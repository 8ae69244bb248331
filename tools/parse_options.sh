#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipe scripts after their defaults block:
#
#   stage=0
#   nj=4
#   . tools/parse_options.sh
#
# Each `--foo-bar VALUE` (or `--foo-bar=VALUE`) sets the shell variable foo_bar, which
# must already be defined (a typo is an error, never a new variable). Values keep the
# type of the default: a variable that was true/false takes only true/false, one that was
# a non-negative integer (stage=0) only such integers; anything else is a one-line usage
# error. `--help` prints the calling script's usage: its header comment, or
# $help_message if it is set. Parsing stops at the first argument that does not start
# with `--`; what remains is left in "$@" for the script.
#
# A script that hands the rest of its options to another one (a corpus run.sh calling
# egs/TEMPLATE/ASR/asr.sh) sets forward_to=THAT_SCRIPT before sourcing this file: an
# option the caller does not define but THAT_SCRIPT's defaults block (the assignments
# above its own `. .../parse_options.sh` line) does is checked against that default the
# same way and appended to the array "forwarded", to be passed on as "${forwarded[@]}".

__q4asr_usage() {
  if [ -n "${help_message:-}" ]; then
    printf '%s\n' "$help_message" >&2
  else
    # the script's header comment, without the shebang
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" >&2
  fi
}

# __q4asr_default_in FILE VAR: print VAR's default in FILE's defaults block, or fail.
__q4asr_default_in() {
  local line
  while IFS= read -r line; do
    case "$line" in
      ". "*parse_options.sh*|"source "*parse_options.sh*) return 1 ;;
      "$2="*) printf '%s' "${line#*=}"; return 0 ;;
    esac
  done < "$1"
  return 1
}

# __q4asr_check OPTION DEFAULT VALUE: VALUE must have DEFAULT's type (boolean, integer).
__q4asr_check() {
  case "$2" in
    true|false)
      if [ "$3" != true ] && [ "$3" != false ]; then
        echo "$0: option $1 takes true or false, not '$3'" >&2
        exit 1
      fi
      ;;
  esac
  if [[ "$2" =~ ^[0-9]+$ ]] && ! [[ "$3" =~ ^[0-9]+$ ]]; then
    echo "$0: option $1 takes a non-negative integer, not '$3'" >&2
    exit 1
  fi
}

[ -n "${forward_to:-}" ] && forwarded=()
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
  if ! [[ "$__var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "$0: unknown option $__name" >&2
    __q4asr_usage
    exit 1
  fi
  if [ -n "${!__var+set}" ]; then
    __q4asr_check "$__name" "${!__var}" "$__value"
    printf -v "$__var" '%s' "$__value"
  elif [ -n "${forward_to:-}" ] && __default=$(__q4asr_default_in "$forward_to" "$__var"); then
    __q4asr_check "$__name" "$__default" "$__value"
    forwarded+=("$__name" "$__value")
  else
    echo "$0: unknown option $__name" >&2
    __q4asr_usage
    exit 1
  fi
done
unset __name __value __var __default
true
