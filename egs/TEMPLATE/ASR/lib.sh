# Stage helpers sourced by egs/TEMPLATE/ASR/asr.sh and corpus recipes' run.sh.
# Needs $stage and $stop_stage set.

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*" >&2
}

# if run_stage N "what it does"; then ...; end_stage; fi
run_stage() {
  local n=$1
  shift
  if [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    __stage_n=$n
    __stage_desc="$*"
    __stage_start=$(date +%s)
    log "Stage $n: $*"
    return 0
  fi
  return 1
}

# Logs how long the current stage took and appends it to exp/stage_times.tsv.
end_stage() {
  local secs=$(( $(date +%s) - __stage_start ))
  log "Stage $__stage_n done in ${secs}s"
  mkdir -p "${exp_dir:-exp}"
  printf '%s\t%s\t%s\t%s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$__stage_n" "$secs" "$__stage_desc" \
    >> "${exp_dir:-exp}/stage_times.tsv"
}

# done_or_run MARKER CMD...: run CMD unless MARKER exists; create MARKER only if CMD succeeds.
done_or_run() {
  local marker=$1
  shift
  done_or_run_all "$marker" -- "$@"
}

# done_or_run_all MARKER... -- CMD...: run CMD unless every MARKER exists; create them all
# only if CMD succeeds (one command that makes several results).
done_or_run_all() {
  local markers=() missing=0 m
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    markers+=("$1")
    [ -e "$1" ] || missing=1
    shift
  done
  [ $# -gt 1 ] || { echo "done_or_run_all: expected MARKER... -- CMD..." >&2; return 1; }
  shift
  if [ $missing = 0 ]; then
    log "skip (done: ${markers[*]})"
    return 0
  fi
  log "$*"
  mkdir -p "${exp_dir:-exp}"
  printf '%s\n' "$*" >> "${exp_dir:-exp}/commands.log"
  "$@"
  for m in "${markers[@]}"; do
    mkdir -p "$(dirname "$m")"
    touch "$m"
  done
}

# run_template VAR... [-- ARG...]: a corpus recipe's call of the template's stages
# (egs/TEMPLATE/ASR/asr.sh), from max(stage, 10) to stop_stage, with each VAR passed as
# its option (--var-name "$var"), then the ARGs, then every option the recipe left to the
# template ("${forwarded[@]}", see tools/parse_options.sh: forward_to).
run_template() {
  local args=(--stage "$(( stage > 10 ? stage : 10 ))" --stop-stage "$stop_stage") v
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    v=$1
    args+=("--${v//_/-}" "${!v}")
    shift
  done
  [ $# -gt 0 ] && shift
  "$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh" "${args[@]}" "$@" ${forwarded[@]+"${forwarded[@]}"}
}
