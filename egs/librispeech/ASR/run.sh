#!/usr/bin/env bash
# LibriSpeech 960 h: the paper's precision sweep. Float32, native QAT at W8A8, W8A-float,
# W4A-float, W4A8 and W4A4 (precision plans in conf/plans), and post-training int8/int4
# of the float model, every one decoded on test-clean and test-other with greedy and
# modified beam search, then reported by WER and model size.
#
# Usage: ./run.sh [--stage N] [--stop-stage N] [--dl-dir DIR] [--corpus-dir DIR] ...
#   --dl-dir download         where stage 0 downloads LibriSpeech (skipped when
#                             the corpus dir already exists)
#   --corpus-dir DIR          an existing LibriSpeech dir (default: DL_DIR/LibriSpeech)
#   --openslr-url URL         OpenSLR or one of its mirrors, for the download
#   --train-parts "..."       training parts, muxed into one training set
#   --train-launcher "torchrun --standalone --nproc-per-node 8"   one node, 8 GPUs; several
#                             nodes: see README.md ("" = one process, no torchrun)
#   any other option of egs/TEMPLATE/ASR/asr.sh (--max-steps, --systems...) is passed on
# Stages: 0 download (lhotse's download_librispeech; offline: a one-line error)
#         1 manifests (lhotse prepare librispeech) -> DATA/manifests/librispeech_*
#         10-16 the template's (egs/TEMPLATE/ASR/asr.sh): fbank with speed perturbation
#         0.9/1.1 on train, BPE 500, train, average, export, decode, report.
set -euo pipefail

stage=0
stop_stage=100
dl_dir=download
corpus_dir=
openslr_url=http://www.openslr.org/resources
nj=8
train_parts="train-clean-100 train-clean-360 train-other-500"
dev_part=dev-clean
test_parts="test-clean test-other"
speed_perturb="0.9 1.1"
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

corpus_dir=${corpus_dir:-$dl_dir/LibriSpeech}
all_parts="$train_parts $dev_part $test_parts"

if run_stage 0 "download LibriSpeech to $dl_dir"; then
  if [ -d "$corpus_dir" ]; then
    log "skip: $corpus_dir exists"
  else
    python -m q4asr.corpora.download librispeech "$dl_dir" --copy-option=--corpus-dir \
      --base-url "$openslr_url"
  fi
  end_stage
fi

if run_stage 1 "prepare lhotse manifests for $all_parts"; then
  [ -d "$corpus_dir" ] || { echo "$0: --corpus-dir $corpus_dir: no such directory" >&2; exit 1; }
  part_opts=()
  for p in $all_parts; do part_opts+=(-p "$p"); done
  done_or_run "$data_dir/manifests/.librispeech.done" \
    lhotse prepare librispeech -j "$nj" "${part_opts[@]}" "$corpus_dir" "$data_dir/manifests"
  end_stage
fi

run_template nj train_parts speed_perturb dev_part test_parts nbpe avg decode_methods \
  train_launcher calibration_batches data_dir exp_dir -- \
  --prefix librispeech --train-part train --results-title LibriSpeech
