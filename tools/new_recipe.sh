#!/usr/bin/env bash
# Create a new corpus recipe, egs/NAME/ASR, that works from Kaldi data dirs out of the box:
#
#   tools/new_recipe.sh NAME
#   cd egs/NAME/ASR && ./run.sh --train-dir /path/data/train --dev-dir /path/data/dev \
#       --test-dirs "/path/data/test"
#
# Stage 0 of the new run.sh imports the Kaldi data dirs (wav.scp, text, optional segments)
# as lhotse manifests; replace it with the corpus's own preparation (lhotse has recipes for
# most public corpora) as long as it writes DATA/manifests/NAME_{recordings,supervisions}_PART.jsonl.gz.
# The configs (model, training, precision plans, systems) start as copies of the demo's.
set -euo pipefail
if [ $# -ne 1 ] || [[ ! "$1" =~ ^[A-Za-z0-9_]+$ ]]; then
  echo "usage: $0 NAME   (letters, digits, _)" >&2
  exit 1
fi
name=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/egs/$name/ASR
if [ -e "$dir" ]; then
  echo "$0: $dir already exists" >&2
  exit 1
fi
mkdir -p "$dir/conf"
cp -r "$root/egs/synth/ASR/conf/plans" "$dir/conf/"
cp "$root/egs/synth/ASR/conf/train.yaml" "$root/egs/synth/ASR/conf/train_qat.yaml" \
  "$root/egs/synth/ASR/conf/systems.yaml" "$dir/conf/"
cat > "$dir/run.sh" <<EOS
#!/usr/bin/env bash
# The $name recipe: Kaldi data dirs -> lhotse manifests (stage 0), then the template's
# stages 10-16 (features, bpe, train, average, export, decode, report) for every system in
# conf/systems.yaml.
#
# Usage: ./run.sh --train-dir DIR --dev-dir DIR --test-dirs "DIR ..." [--stage N] [--stop-stage N]
set -euo pipefail

stage=0
stop_stage=100
train_dir=
dev_dir=
test_dirs=
nj=2
nbpe=256
avg=3
max_steps=
systems=conf/systems.yaml
decode_methods="greedy_search modified_beam_search"

cd "\$(dirname "\${BASH_SOURCE[0]}")"
Q4ASR_ROOT=\${Q4ASR_ROOT:-\$(cd ../../.. && pwd)}
. "\$Q4ASR_ROOT/tools/parse_options.sh"
. "\$Q4ASR_ROOT/tools/path.sh"
. "\$Q4ASR_ROOT/egs/TEMPLATE/ASR/lib.sh"

exp_dir=exp
test_parts=
for d in \$test_dirs; do test_parts="\$test_parts \$(basename "\$d")"; done

if run_stage 0 "import Kaldi data dirs as lhotse manifests"; then
  if [ -z "\$train_dir" ] || [ -z "\$dev_dir" ] || [ -z "\$test_dirs" ]; then
    echo "\$0: stage 0 needs --train-dir, --dev-dir and --test-dirs" >&2
    exit 1
  fi
  parts=(train="\$train_dir" dev="\$dev_dir")
  for d in \$test_dirs; do parts+=("\$(basename "\$d")=\$d"); done
  done_or_run data/manifests/.import.done \\
    python -m q4asr.data.kaldi --prefix $name --out-dir data/manifests "\${parts[@]}"
  end_stage
fi

"\$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh" --stage "\$(( stage > 10 ? stage : 10 ))" \\
  --stop-stage "\$stop_stage" --prefix $name --train-part train --dev-part dev \\
  --test-parts "\$(echo \$test_parts)" --systems "\$systems" --nbpe "\$nbpe" --nj "\$nj" \\
  --avg "\$avg" --max-steps "\$max_steps" --decode-methods "\$decode_methods" \\
  --results-title $name
EOS
chmod +x "$dir/run.sh"
echo "created $dir: edit conf/ and stage 0 of run.sh, then ./run.sh --help"
