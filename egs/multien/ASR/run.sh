#!/usr/bin/env bash
# Large-scale English: LibriSpeech 960 h + GigaSpeech XL (10,000 h) + Common Voice English,
# mixed lazily by lhotse (CutSet.mux, each corpus weighted by its hours), a larger
# Conformer, and the paper's mixed 4/8 model as the headline system next to float32 and
# all-int8 (native QAT) and PTQ int8. Training runs on several nodes with torchrun; the
# sampler state is in every checkpoint, so a preempted job resumes where it stopped.
#
# Usage: ./run.sh [--stage N] [--stop-stage N] --ls-dir DIR --gs-dir DIR --cv-dir DIR ...
#   --ls-dir DIR   LibriSpeech (stage 0 downloads it to DL_DIR/LibriSpeech when missing)
#   --gs-dir DIR   GigaSpeech (holds GigaSpeech.json and audio/; needs a licence password:
#                  https://github.com/SpeechColab/GigaSpeech, so it is never downloaded here)
#   --cv-dir DIR   a Common Voice release (holds en/{train,dev,test}.tsv and en/clips/)
#   --train-launcher "torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d
#                     --rdzv-endpoint HOST:29500 --rdzv-id multien"   (see README.md)
#   --openslr-url URL   OpenSLR or one of its mirrors, for the LibriSpeech download
#   --train-shar true  train from Lhotse Shar shards of the muxed training cuts (stage 10
#                      writes them, --shar-shard-size cuts each; --shar-index FILE.shar.json
#                      reads them from an object store instead; see README.md)
#   any other option of egs/TEMPLATE/ASR/asr.sh (--max-steps, --systems...) is passed on
# Stages: 0 download LibriSpeech if missing; check the other corpora
#         1 LibriSpeech manifests (lhotse prepare librispeech)
#         2 GigaSpeech manifests (python -m q4asr.corpora.multien gigaspeech)
#         3 Common Voice manifests (lhotse prepare commonvoice -l en)
#         4 one prefix, one transcript style: DATA/manifests/multien_*_<corpus>-<part>
#         10-16 the template's (egs/TEMPLATE/ASR/asr.sh), the training parts muxed.
set -euo pipefail

stage=0
stop_stage=100
dl_dir=download
ls_dir=
gs_dir=
cv_dir=
openslr_url=http://www.openslr.org/resources
nj=16
ls_train_parts="train-clean-100 train-clean-360 train-other-500"
ls_test_parts="test-clean test-other"
ls_dev_part=dev-clean
gs_train_part=XL
gs_test_parts=TEST
cv_train_part=train
cv_test_parts=test
nbpe=500
avg=5
decode_methods="greedy_search modified_beam_search"
train_launcher="torchrun --standalone --nproc-per-node 8"
calibration_batches=32
data_dir=data
exp_dir=exp

cd "$(dirname "${BASH_SOURCE[0]}")"
Q4ASR_ROOT=${Q4ASR_ROOT:-$(cd ../../.. && pwd)}
forward_to=$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh
. "$Q4ASR_ROOT/tools/parse_options.sh"
. "$Q4ASR_ROOT/tools/path.sh"
. "$Q4ASR_ROOT/egs/TEMPLATE/ASR/lib.sh"

ls_dir=${ls_dir:-$dl_dir/LibriSpeech}
manifests=$data_dir/manifests
ls_parts="$ls_train_parts $ls_dev_part $ls_test_parts"
gs_parts="$gs_train_part $gs_test_parts"
cv_parts="$cv_train_part $cv_test_parts"
# the multien parts: <corpus>-<part>, and where each comes from
specs=() train_parts=() test_parts=()
for p in $ls_parts; do specs+=(--part "ls-$p=librispeech:$p"); done
for p in $gs_parts; do specs+=(--part "gs-$p=gigaspeech:$p"); done
for p in $cv_parts; do specs+=(--part "cv-$p=cv-en:$p"); done
for p in $ls_train_parts; do train_parts+=("ls-$p"); done
train_parts+=("gs-$gs_train_part" "cv-$cv_train_part")
for p in $ls_test_parts; do test_parts+=("ls-$p"); done
for p in $gs_test_parts; do test_parts+=("gs-$p"); done
for p in $cv_test_parts; do test_parts+=("cv-$p"); done

need_dir() {  # need_dir DIR WHAT
  [ -n "$1" ] && [ -d "$1" ] || { echo "$0: $2 not found (${1:-unset}); see README.md" >&2; exit 1; }
}

if run_stage 0 "download LibriSpeech if missing; check GigaSpeech and Common Voice"; then
  if [ -d "$ls_dir" ]; then log "skip: $ls_dir exists"; else
    python -m q4asr.corpora.download librispeech "$dl_dir" --copy-option=--ls-dir \
      --base-url "$openslr_url"
  fi
  need_dir "$gs_dir" "--gs-dir (GigaSpeech)"
  need_dir "$cv_dir" "--cv-dir (Common Voice)"
  end_stage
fi

if run_stage 1 "LibriSpeech manifests: $ls_parts"; then
  need_dir "$ls_dir" "--ls-dir (LibriSpeech)"
  opts=()
  for p in $ls_parts; do opts+=(-p "$p"); done
  done_or_run "$manifests/.librispeech.done" \
    lhotse prepare librispeech -j "$nj" "${opts[@]}" "$ls_dir" "$manifests"
  end_stage
fi

if run_stage 2 "GigaSpeech manifests: $gs_parts"; then
  need_dir "$gs_dir" "--gs-dir (GigaSpeech)"
  done_or_run "$manifests/.gigaspeech.done" \
    python -m q4asr.corpora.multien gigaspeech "$gs_dir" "$manifests" --parts $gs_parts
  end_stage
fi

if run_stage 3 "Common Voice English manifests: $cv_parts"; then
  need_dir "$cv_dir" "--cv-dir (Common Voice)"
  opts=()
  for p in $cv_parts; do opts+=(-s "$p"); done
  done_or_run "$manifests/.commonvoice.done" \
    lhotse prepare commonvoice -l en -j "$nj" "${opts[@]}" "$cv_dir" "$manifests"
  end_stage
fi

if run_stage 4 "normalise transcripts into multien_* manifests"; then
  done_or_run "$manifests/.multien.done" \
    python -m q4asr.corpora.multien combine --manifests "$manifests" --out-dir "$manifests" \
      --prefix multien "${specs[@]}"
  end_stage
fi

run_template nj nbpe avg decode_methods train_launcher calibration_batches data_dir exp_dir -- \
  --prefix multien --train-part train --train-parts "${train_parts[*]}" \
  --dev-part "ls-$ls_dev_part" --test-parts "${test_parts[*]}" \
  --results-title "multien (LibriSpeech + GigaSpeech + Common Voice)"
