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


def test_integer_options_take_integers_only(tmp_path):
    r = run(tmp_path, "--stage", "abc")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"{tmp_path / 'run.sh'}: option --stage takes a non-negative integer, not 'abc'"
    ]
    r = run(tmp_path, "--stop-stage=2.5")
    assert r.returncode == 1 and "not '2.5'" in r.stderr
    # a path is not an integer default: anything goes
    assert run(tmp_path, "--exp-dir", "7").returncode == 0


TEMPLATE = """#!/usr/bin/env bash
# A template that prints what it was given.
set -euo pipefail
nbpe=256
systems=conf/systems.yaml
use_gpu=false
. {root}/tools/parse_options.sh
derived=1
echo "template: nbpe=$nbpe systems=$systems use_gpu=$use_gpu"
"""

CALLER = """#!/usr/bin/env bash
# A corpus recipe that hands the rest of its options to the template.
set -euo pipefail
stage=0
nbpe=500
forward_to={dir}/template.sh
. {root}/tools/parse_options.sh
echo "caller: stage=$stage nbpe=$nbpe forwarded=${{forwarded[*]:-}}"
{dir}/template.sh --nbpe "$nbpe" ${{forwarded[@]+"${{forwarded[@]}}"}}
"""


def run_caller(tmp_path, *args):
    for name, text in (("template.sh", TEMPLATE), ("caller.sh", CALLER)):
        script = tmp_path / name
        script.write_text(text.format(root=ROOT, dir=tmp_path))
        script.chmod(0o755)
    return subprocess.run(
        [str(tmp_path / "caller.sh"), *args], capture_output=True, text=True
    )


def test_forward_to_passes_the_template_options_on(tmp_path):
    r = run_caller(tmp_path, "--stage", "3", "--systems", "a b.yaml", "--use-gpu=true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "caller: stage=3 nbpe=500 forwarded=--systems a b.yaml --use-gpu true",
        "template: nbpe=500 systems=a b.yaml use_gpu=true",
    ]
    # the caller's own value wins over the template's default
    assert "template: nbpe=77 " in run_caller(tmp_path, "--nbpe", "77").stdout


def test_forwarded_options_are_checked_before_anything_runs(tmp_path):
    for args, err in [
        (["--no-such"], "unknown option --no-such"),
        (
            ["--derived", "2"],
            "unknown option --derived",
        ),  # not a default of the template
        (["--use-gpu", "yes"], "option --use-gpu takes true or false, not 'yes'"),
        (["--stage", "x"], "option --stage takes a non-negative integer, not 'x'"),
    ]:
        r = run_caller(tmp_path, *args, *(["1"] if len(args) == 1 else []))
        assert r.returncode == 1 and r.stdout == "", args
        assert err in r.stderr, (args, r.stderr)
