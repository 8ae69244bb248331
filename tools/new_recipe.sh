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
#   any option of egs/TEMPLATE/ASR/asr.sh (--nbpe, --max-steps, --systems...) is passed on
set -euo pipefail

stage=0
stop_stage=100
train_dir=
dev_dir=
test_dirs=
decode_methods="greedy_search modified_beam_search"

cd "\$(dirname "\${BASH_SOURCE[0]}")"
Q4ASR_ROOT=\${Q4ASR_ROOT:-\$(cd ../../.. && pwd)}
forward_to=\$Q4ASR_ROOT/egs/TEMPLATE/ASR/asr.sh
. "\$Q4ASR_ROOT/tools/parse_options.sh"
. "\$Q4ASR_ROOT/tools/path.sh"
. "\$Q4ASR_ROOT/egs/TEMPLATE/ASR/lib.sh"

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

run_template decode_methods -- --prefix $name --train-part train --dev-part dev \\
  --test-parts "\$(echo \$test_parts)" --results-title $name
EOS
chmod +x "$dir/run.sh"
echo "created $dir: edit conf/ and stage 0 of run.sh, then ./run.sh --help"
