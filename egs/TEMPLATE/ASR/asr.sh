#!/usr/bin/env bash
# The generic stages every q4asr corpus shares. A corpus recipe (egs/<corpus>/ASR/run.sh)
# prepares lhotse manifests in DATA/manifests/<prefix>_{recordings,supervisions}_<part>.jsonl.gz,
# then calls this script from its recipe dir through lib.sh's run_template, which passes
# the recipe's own values of the options it names, then fixed options, then every option
# the recipe's command line gave that only this script defines (forward_to, see
# tools/parse_options.sh):
#
#   forward_to=$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh   # before sourcing parse_options.sh
#   ...
#   run_template nj nbpe avg -- --prefix synth --test-parts "test test_heldout"
#
# Stages (each logged and timed; finished work is skipped through .done markers that are
# written only on success; --stage/--stop-stage start and stop anywhere; DATA is --data-dir):
#   10 features  fbank cuts for every part         -> DATA/fbank/<prefix>_cuts_<part>.jsonl.gz
#                with --train-shar true, also the training cuts as Lhotse Shar shards
#                (python -m q4asr.data.shar write) -> DATA/shar/<prefix>_<train-part>/
#                that training then streams instead of the jsonl manifest
#   11 bpe       sentencepiece model on train text -> DATA/lang_bpe_<nbpe>/bpe.model
#   12 train     one run per float/qat system      -> exp/<system>/
#   13 average   last --avg checkpoints per system -> exp/<system>/avg.pt
#   14 export    one self-contained model file     -> exp/<system>/model.safetensors
#                (float32, PTQ calibrated from its float system, or QAT converted to integers)
#   15 decode    every test part, every method     -> exp/<system>/decode/
#   16 report    WER and size of every system      -> exp/results.json, RESULTS.md, exp/wer_vs_size.png
#   17 onnx      ONNX files for sherpa-onnx, and the test parts transcribed by sherpa-onnx
#                (integer layers as integer ops)   -> exp/<system>/onnx/, exp/<system>/decode_onnx/
#
# Options (defaults below): --stage --stop-stage --prefix --train-part --dev-part --test-parts
#   --systems --nbpe --nj --avg --decode-methods --max-steps (override every system's config)
#   --calibration-batches --results-title --data-dir --exp-dir --results-md
#   --train-parts "a b"   several training parts (corpora) of the prefix: features for each,
#                         interleaved by CutSet.mux (weighted by hours) into the cuts of
#                         --train-part, and the BPE model trained on all their transcripts
#   --speed-perturb "0.9 1.1"  speed-perturbed copies of the training part(s) (stage 10);
#                         the same for the other copies (q4asr/data/features.py says how):
#   --volume-perturb "0.3 3"   volume-perturbed copies
#   --reverb true         a copy reverberated by simulated room impulse responses
#   --noise-snr "20 10"   copies with white/pink/brown noise mixed in at these SNRs (dB)
#   --babble-snr "15"     copies with other training cuts mixed in as babble at these SNRs
#   --train-launcher "torchrun --nproc-per-node 8"  runs `LAUNCHER -m q4asr.bin.train` for
#                         distributed training (default: plain q4asr-train, one process)
#   --train-shar true     train from Lhotse Shar shards (for large corpora on many nodes);
#   --shar-fields "features"  what the shards hold: features and/or recording (audio)
#   --shar-shard-size 1000    cuts per shard (write at least ranks x workers shards)
#   --shar-index FILE.shar.json  train from these shards instead (the same shards copied to
#                         an object store: python -m q4asr.data.shar index)
set -euo pipefail

stage=10
stop_stage=100
prefix=
train_part=train
dev_part=dev
test_parts=test
systems=conf/systems.yaml
nbpe=256
nj=2
avg=3
decode_methods="greedy_search"
max_steps=
calibration_batches=8
results_title=
data_dir=data
exp_dir=exp
results_md=RESULTS.md
train_parts=
speed_perturb=
volume_perturb=
reverb=false
noise_snr=
babble_snr=
train_launcher=
train_shar=false
shar_fields=features
shar_shard_size=1000
shar_index=

Q4ASR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
. "$Q4ASR_ROOT/tools/parse_options.sh"
. "$Q4ASR_ROOT/tools/path.sh"
. "$Q4ASR_ROOT/egs/TEMPLATE/ASR/lib.sh"

[[ "$max_steps" =~ ^[0-9]*$ ]] || {
  echo "$0: option --max-steps takes a non-negative integer, not '$max_steps'" >&2; exit 1; }
[ -n "$prefix" ] || { echo "$0: --prefix is required (the manifests' corpus name)" >&2; exit 1; }
[ -f "$systems" ] || { echo "$0: --systems $systems: no such file" >&2; exit 1; }
manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
lang_dir=$data_dir/lang_bpe_$nbpe
bpe_model=$lang_dir/bpe.model
sys_list() { python -m q4asr.recipe "$systems" list "$@"; }
sys_get() { python -m q4asr.recipe "$systems" get "$1" "$2"; }
steps_opt=()
[ -n "$max_steps" ] && steps_opt=(--max-steps "$max_steps")

feat_parts=($train_part)
feat_opts=()
if [ -n "$train_parts" ]; then
  feat_parts=($train_parts)
  feat_opts+=(--mux-parts $train_parts --mux-name "$train_part")
fi
aug_opts=()
[ -n "$speed_perturb" ] && aug_opts+=(--speed-perturb $speed_perturb)
[ -n "$volume_perturb" ] && aug_opts+=(--volume-perturb $volume_perturb)
$reverb && aug_opts+=(--reverb)
[ -n "$noise_snr" ] && aug_opts+=(--noise-snr $noise_snr)
[ -n "$babble_snr" ] && aug_opts+=(--babble-snr $babble_snr)
[ ${#aug_opts[@]} -gt 0 ] && feat_opts+=("${aug_opts[@]}" --perturb-parts "${feat_parts[@]}")
case "$train_shar" in
  true|false) ;;
  *) echo "$0: --train-shar $train_shar: expected true or false" >&2; exit 1 ;;
esac
train_cuts=$fbank_dir/${prefix}_cuts_${train_part}.jsonl.gz
shar_dir=$data_dir/shar/${prefix}_${train_part}
$train_shar && train_cuts=${shar_index:-$shar_dir}
launcher=(q4asr-train)
[ -n "$train_launcher" ] && read -ra launcher <<< "$train_launcher -m q4asr.bin.train"

if run_stage 10 "compute fbank features for ${feat_parts[*]} $dev_part $test_parts"; then
  done_or_run "$fbank_dir/.fbank.done" \
    python -m q4asr.data.features --manifests "$manifest_dir" --out-dir "$fbank_dir" \
      --prefix "$prefix" --parts "${feat_parts[@]}" $dev_part $test_parts --nj "$nj" \
      "${feat_opts[@]}"
  if $train_shar; then
    done_or_run "$data_dir/shar/.${prefix}_${train_part}.done" \
      python -m q4asr.data.shar write --cuts "$fbank_dir/${prefix}_cuts_${train_part}.jsonl.gz" \
        --out-dir "$shar_dir" --fields $shar_fields --shard-size "$shar_shard_size" --nj "$nj"
  fi
  end_stage
fi

if run_stage 11 "train a $nbpe-piece BPE model on the ${feat_parts[*]} transcripts"; then
  sups=()
  for p in "${feat_parts[@]}"; do sups+=("$manifest_dir/${prefix}_supervisions_${p}.jsonl.gz"); done
  done_or_run "$lang_dir/.bpe.done" \
    python -m q4asr.data.tokenizer --supervisions "${sups[@]}" \
      --vocab-size "$nbpe" --out "$bpe_model"
  end_stage
fi

# One system: train (float or QAT) and, when a later system starts from it, average at once.
train_system() {
  local name=$1 method init plan config args=()
  method=$(sys_get "$name" method)
  [ "$method" = ptq ] && return 0
  config=$(sys_get "$name" config)
  plan=$(sys_get "$name" plan)
  init=$(sys_get "$name" init_from)
  [ -n "$plan" ] && args+=(--plan "$plan")
  if [ -n "$init" ]; then
    average_system "$init"
    args+=(--init-from "$exp_dir/$init/avg.pt")
  fi
  done_or_run "$exp_dir/$name/.train.done" \
    "${launcher[@]}" --config "$config" --exp-dir "$exp_dir/$name" \
      --train-cuts "$train_cuts" \
      --valid-cuts "$fbank_dir/${prefix}_cuts_${dev_part}.jsonl.gz" \
      --bpe-model "$bpe_model" "${args[@]}" "${steps_opt[@]}"
}

average_system() {
  local name=$1
  done_or_run "$exp_dir/$name/.avg.done" \
    python -m q4asr.bin.average --exp-dir "$exp_dir/$name" --last "$avg" \
      --out "$exp_dir/$name/avg.pt"
}

if run_stage 12 "train systems: $(sys_list --method float,qat | xargs)"; then
  for s in $(sys_list --method float,qat); do train_system "$s"; done
  end_stage
fi

if run_stage 13 "average the last $avg checkpoints of each trained system"; then
  for s in $(sys_list --method float,qat); do average_system "$s"; done
  end_stage
fi

if run_stage 14 "export one model file per system"; then
  for s in $(sys_list); do
    method=$(sys_get "$s" method)
    plan=$(sys_get "$s" plan)
    args=(--checkpoint "$exp_dir/$s/avg.pt")
    if [ "$method" = ptq ]; then
      args=(--checkpoint "$exp_dir/$(sys_get "$s" init_from)/avg.pt" --plan "$plan"
            --calibration-cuts "$fbank_dir/${prefix}_cuts_${train_part}.jsonl.gz"
            --calibration-batches "$calibration_batches")
    fi
    done_or_run "$exp_dir/$s/.export.done" \
      q4asr-export "${args[@]}" --bpe-model "$bpe_model" --method "$method" \
        --out "$exp_dir/$s/model.safetensors"
  done
  end_stage
fi

if run_stage 15 "decode $test_parts with $decode_methods"; then
  for s in $(sys_list); do
    # one process per system: every test part and method, the methods sharing each encoder pass
    markers=() cuts=()
    for part in $test_parts; do
      cuts+=("$fbank_dir/${prefix}_cuts_${part}.jsonl.gz")
      for m in $decode_methods; do markers+=("$exp_dir/$s/decode/.$part-$m.done"); done
    done
    done_or_run_all "${markers[@]}" -- \
      q4asr-decode --model "$exp_dir/$s/model.safetensors" --cuts "${cuts[@]}" \
        --test-set $test_parts --method $decode_methods --out-dir "$exp_dir/$s/decode"
  done
  end_stage
fi

if run_stage 16 "report WER and model size of every system"; then
  # always rewritten: the report reflects whatever has been decoded so far
  q4asr-report --systems "$systems" --exp-dir "$exp_dir" --test-parts $test_parts \
    --decode-methods $decode_methods \
    --results-md "$results_md" --title "${results_title:-$prefix}"
  end_stage
fi

if run_stage 17 "export ONNX for sherpa-onnx and transcribe $test_parts with it"; then
  for part in $test_parts; do
    done_or_run "$data_dir/kaldi/$part/.kaldi.done" \
      python -m q4asr.data.kaldi_export --manifests "$manifest_dir" --prefix "$prefix" \
        --part "$part" --out "$data_dir/kaldi/$part"
  done
  for s in $(sys_list); do
    done_or_run "$exp_dir/$s/onnx/.onnx.done" \
      q4asr-export --format onnx --model "$exp_dir/$s/model.safetensors" \
        --out "$exp_dir/$s/onnx"
    mkdir -p "$exp_dir/$s/decode_onnx"
    for part in $test_parts; do
      done_or_run "$exp_dir/$s/decode_onnx/.$part.done" \
        q4asr-transcribe --onnx "$exp_dir/$s/onnx" "$data_dir/kaldi/$part" --num-threads 1 \
          --json "$exp_dir/$s/decode_onnx/$part.json" \
          --out "$exp_dir/$s/decode_onnx/hyp-$part.txt"
    done
  done
  end_stage
fi
