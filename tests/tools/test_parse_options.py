"""tools/parse_options.sh: Kaldi's --foo-bar convention in a recipe-like script."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """#!/usr/bin/env bash
# A recipe-like script.
# Usage: run.sh [--stage N] [--stop-stage N] [--use-gpu true|false] [--exp-dir DIR]
set -euo pipefail
stage=0
stop_stage=100
use_gpu=false
exp_dir=exp/default
. {root}/tools/parse_options.sh
for s in 1 2 3 4; do
  if [ $stage -le $s ] && [ $stop_stage -ge $s ]; then echo "stage $s"; fi
done
echo "use_gpu=$use_gpu exp_dir=$exp_dir rest=$*"
"""


def run(tmp_path, *args):
    script = tmp_path / "run.sh"
    script.write_text(SCRIPT.format(root=ROOT))
    script.chmod(0o755)
    return subprocess.run([str(script), *args], capture_output=True, text=True)


def test_stage_range(tmp_path):
    r = run(tmp_path, "--stage", "2", "--stop-stage", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["stage 2", "stage 3"]
    assert "stage 1" not in r.stdout and "stage 4" not in r.stdout


def test_equals_form_and_dashes_to_underscores(tmp_path):
    r = run(tmp_path, "--exp-dir=exp/w4a8", "--use-gpu", "true", "extra", "args")
    assert r.returncode == 0, r.stderr
    assert "use_gpu=true exp_dir=exp/w4a8 rest=extra args" in r.stdout


def test_unknown_option_fails_with_usage(tmp_path):
    r = run(tmp_path, "--stage", "2", "--no-such-thing", "1")
    assert r.returncode != 0
    assert "unknown option --no-such-thing" in r.stderr
    assert "Usage: run.sh" in r.stderr
    assert "stage" not in r.stdout


def test_missing_value_and_bad_boolean(tmp_path):
    r = run(tmp_path, "--stage")
    assert r.returncode != 0 and "needs a value" in r.stderr
    r = run(tmp_path, "--use-gpu", "yes")
    assert r.returncode != 0 and "true or false" in r.stderr


def test_help_prints_header(tmp_path):
    r = run(tmp_path, "--help")
    assert r.returncode == 0
    assert "A recipe-like script." in r.stderr and "#!" not in r.stderr
