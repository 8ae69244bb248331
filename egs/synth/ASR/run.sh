#!/usr/bin/env bash
# The synthetic-speech demo: a corpus made offline by Debian's speech synthesisers
# (WordNet example sentences, vocabulary-capped, spoken by espeak-ng, flite and festival
# voices with random speed and pitch), then the template's stages for every system in
# conf/systems.yaml: float32, PTQ int8/int4, native QAT W8A8/W4A8/W4A4, mixed 4/8.
#
# Usage: ./run.sh [--stage N] [--stop-stage N] [--quick true] [--nj 2] [--seed 1] ...
#   any option of egs/TEMPLATE/ASR/asr.sh (--max-steps, --calibration-batches,
#   --train-launcher...) is passed on to it
#   --num-train N  train utterances of the example sentences (default 24000: each
#                  train sentence spoken about twice, by two voices; RESULTS.md)
#   --num-train-glosses N   N train utterances of WordNet definitions added to them
#                  (more distinct training text; default 0)
#   --decode-methods "greedy_search"   greedy search only (default: greedy and modified
#                  beam search, both reported for every system)
#   --quick true   a small corpus and small models: every stage in a few minutes
#                  (data in data/quick, results in exp/quick, RESULTS.md untouched)
#   --gpu-schedule true   the GPU schedule (conf/gpu/: a 20M-parameter model, 4,000
#                  steps of 600 s) on one CUDA GPU, the same corpus; results in exp/gpu
#                  and its RESULTS.md there (default false: the CPU schedule)
#   --heldout-engine festival   a corpus without festival (or espeak, flite) in train,
#                  dev, test and test_heldout, and its test sentences spoken by that
#                  engine's voices as test part test_engine, decoded and reported with
#                  the others; a corpus of its own: data in data/heldout_<engine>,
#                  results in exp/heldout_<engine> and its RESULTS.md there (default
#                  empty: every engine in training, the demo's corpus)
#   --espeak-variants all   every espeak-ng voice variant installed (about 100) in
#                  train, dev and test instead of the demo's 19; held-out voices and
#                  test_engine stay the same (another corpus: give it a --data-dir
#                  and --exp-dir of its own)
#   --engines "espeak flite pico"   the synthesisers of train, dev and test (default
#                  "espeak flite festival"; pico: SVOX Pico, two English voices, only
#                  when named; another corpus: give it a --data-dir and --exp-dir)
#   --speed-perturb "0.9 1.1" --volume-perturb "0.3 3" --reverb true --noise-snr "20 10"
#   --babble-snr "15"   augmented copies of the training cuts (the template's stage 10)
# Stages: 0 synthesize the corpus (lhotse manifests in DATA/manifests);
#         10-16 the template's (egs/TEMPLATE/ASR/asr.sh): features, bpe, train,
#         average, export, decode, report.
set -euo pipefail

stage=0
stop_stage=100
quick=false
gpu_schedule=false
nj=2
seed=1
num_train=24000  # 12000 (one voice per sentence): about 5 points worse on test (RESULTS.md)
num_train_glosses=0  # 12000 more of WordNet definitions: not better (RESULTS.md)
num_dev=200
num_test=300
vocab_size=5000
nbpe=128
avg=3
systems=conf/systems.yaml
decode_methods="greedy_search modified_beam_search"
data_dir=data
exp_dir=exp
results_md=RESULTS.md
heldout_engine=
espeak_variants=demo
engines=

cd "$(dirname "${BASH_SOURCE[0]}")"
Q4ASR_ROOT=${Q4ASR_ROOT:-$(cd ../../.. && pwd)}
forward_to=$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh
. "$Q4ASR_ROOT/tools/parse_options.sh"
. "$Q4ASR_ROOT/tools/path.sh"
. "$Q4ASR_ROOT/egs/TEMPLATE/ASR/lib.sh"

case "$heldout_engine" in
  ""|espeak|flite|festival) ;;
  *) echo "$0: --heldout-engine $heldout_engine: expected espeak, flite or festival" >&2; exit 1 ;;
esac
synth_tests="test test_heldout"
heldout_opts=()
if [ -n "$heldout_engine" ]; then
  # another corpus: its own data and results, never resumed from the default corpus
  data_dir=$data_dir/heldout_$heldout_engine exp_dir=$exp_dir/heldout_$heldout_engine
  results_md=$exp_dir/RESULTS.md
  synth_tests="$synth_tests test_engine"
  heldout_opts=(--heldout-engine "$heldout_engine")
fi

if $gpu_schedule; then
  $quick && { echo "$0: --gpu-schedule true and --quick true: choose one" >&2; exit 1; }
  python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
    echo "$0: --gpu-schedule true needs a CUDA GPU, and torch sees none here" >&2
    exit 1
  }
  systems=conf/gpu/systems.yaml exp_dir=$exp_dir/gpu results_md=$exp_dir/RESULTS.md
fi

if $quick; then
  num_train=400 num_dev=30 num_test=30 vocab_size=300 nbpe=128 avg=2
  systems=conf/quick/systems.yaml
  decode_methods=greedy_search
  data_dir=$data_dir/quick exp_dir=$exp_dir/quick results_md=$exp_dir/RESULTS.md
  mkdir -p "$exp_dir"
  [ -f "$results_md" ] || cat > "$results_md" <<'EOF'
# Quick demo (`run.sh --quick true`): a check of the stages, not of accuracy

The quick run only checks that every stage runs end to end (synthesis, features, BPE,
training, averaging, export, decoding, report) in a few minutes. Its models train for
a few minutes on 400 utterances and do not recognise speech: expect WERs near 100%.
For accuracy, run the full demo (`run.sh`, about an hour on 2 cores; RESULTS.md).
EOF
fi

n_train=$num_train
[ "$num_train_glosses" -gt 0 ] && n_train+="+$num_train_glosses"
if run_stage 0 "synthesize the corpus: $n_train/$num_dev/$num_test utterances"; then
  done_or_run "$data_dir/manifests/.synth.done" \
    python -m q4asr.corpora.synth --out-dir "$data_dir" --num-train "$num_train" \
      --num-dev "$num_dev" --num-test "$num_test" --vocab-size "$vocab_size" \
      --num-train-glosses "$num_train_glosses" --seed "$seed" --nj "$nj" \
      --espeak-variants "$espeak_variants" ${engines:+--engines $engines} "${heldout_opts[@]}"
  end_stage
fi

run_template nj nbpe avg systems decode_methods data_dir exp_dir results_md -- \
  --prefix synth --test-parts "$synth_tests" \
  --results-title "synth${heldout_engine:+ without $heldout_engine}$($quick && echo ' (quick)')$($gpu_schedule && echo ', GPU schedule')"
