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
  if [ -e "$marker" ]; then
    log "skip (done: $marker)"
    return 0
  fi
  log "$*"
  mkdir -p "${exp_dir:-exp}"
  printf '%s\n' "$*" >> "${exp_dir:-exp}/commands.log"
  "$@"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
}
