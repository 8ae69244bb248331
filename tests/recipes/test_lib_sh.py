"""egs/TEMPLATE/ASR/lib.sh: the stage markers of one command that makes several
results (done_or_run_all)."""

import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "egs/TEMPLATE/ASR/lib.sh"


def run(tmp_path, script):
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; exp_dir={tmp_path}/exp; . {LIB}; {script}"],
        cwd=tmp_path, capture_output=True, text=True,
    )


def test_done_or_run_all_runs_until_every_marker_exists(tmp_path):
    markers = "exp/a/.x.done exp/b/.y.done"
    count = f"done_or_run_all {markers} -- bash -c 'echo run >> runs'"
    assert run(tmp_path, count).returncode == 0
    assert (tmp_path / "exp/a/.x.done").exists() and (tmp_path / "exp/b/.y.done").exists()
    r = run(tmp_path, count)
    assert r.returncode == 0 and "skip (done:" in r.stderr
    assert (tmp_path / "runs").read_text() == "run\n"
    (tmp_path / "exp/b/.y.done").unlink()  # one result missing: the command runs again
    assert run(tmp_path, count).returncode == 0
    assert (tmp_path / "runs").read_text() == "run\nrun\n"
    assert "bash -c echo run >> runs" in (tmp_path / "exp/commands.log").read_text()


def test_a_failed_command_leaves_no_marker(tmp_path):
    r = run(tmp_path, "done_or_run_all exp/.x.done exp/.y.done -- false")
    assert r.returncode != 0
    assert not list((tmp_path / "exp").glob(".*.done"))
    r = run(tmp_path, "done_or_run exp/.z.done false")
    assert r.returncode != 0 and not (tmp_path / "exp/.z.done").exists()
    r = run(tmp_path, "done_or_run_all exp/.w.done false")  # no "--" before the command
    assert r.returncode != 0 and "expected MARKER... -- CMD..." in r.stderr
    assert not (tmp_path / "exp/.w.done").exists()
