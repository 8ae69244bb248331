"""q4asr-train reading Lhotse Shar shards with 2 DDP processes (torchrun, gloo) and 2
dataloader workers each: killed after a checkpoint and resumed, it takes exactly the
batches an uninterrupted run takes after the checkpoint's position, in the same order,
and ends with the same weights."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from test_train import TINY_MODEL, _env  # tests/bin: the training tests' tiny model

from q4asr.checkpoint import find_latest, load_checkpoint
from q4asr.data.shar import write_shar

MAX_STEPS = 14
MODEL = {**TINY_MODEL, "num_layers": 1}  # with dropout: the RNG must resume too
TRAIN = dict(
    seed=5,
    max_steps=MAX_STEPS,
    max_duration=6.0,
    num_buckets=2,
    lr=3.0e-3,
    warmup_steps=2,
    model_warmup_steps=4,
    num_workers=2,
    log_every=2,
    valid_every=100,
    checkpoint_every=2,
    keep_last_checkpoints=20,
    num_threads=1,
    spec_augment={"enabled": False},
)
# the real CLI, with the stream's per-batch debug line (the cut ids) switched on
RUNNER = """import logging, sys
from q4asr.bin import train
logging.getLogger("q4asr.data.shar").setLevel(logging.DEBUG)
sys.exit(train.main(sys.argv[1:]))
"""
TRACE = re.compile(r"rank (\d+) epoch (\d+) batch (\d+) worker (\d+): (\S+)")


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_shar")
    shards = tmp / "shar"
    write_shar(tiny_corpus.cuts["train"], shards, ["features"], shard_size=5)
    config = tmp / "train.yaml"
    config.write_text(yaml.safe_dump({"model": MODEL, "train": TRAIN}))
    runner = tmp / "run_train.py"
    runner.write_text(RUNNER)
    return tiny_corpus, shards, config, runner


def _cmd(setup, exp: Path) -> list[str]:
    corpus, shards, config, runner = setup
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", "2", str(runner), "--config", str(config),
        "--exp-dir", str(exp), "--train-cuts", str(shards),
        "--valid-cuts", str(corpus.cuts["dev"]), "--bpe-model", str(corpus.bpe_model),
        "--no-progress",
    ]  # fmt: skip


def _trace(log: str) -> dict[int, list[tuple[int, int, int, list[str]]]]:
    """rank -> [(epoch, batch of the epoch, worker, cut ids)] in training order."""
    out = defaultdict(list)
    for m in TRACE.finditer(log):
        r, e, b, w = (int(x) for x in m.groups()[:4])
        out[r].append((e, b, w, m.group(5).split(",")))
    return out


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children of any of its threads), from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def _kill_all(pid: int) -> None:
    """SIGKILL torchrun (``pid``) and every process below it, each with its process
    group: torchrun starts each rank (with its dataloader workers) in a process group
    of its own."""
    mine = os.getpgid(0)
    for p in [*_descendants(pid), pid]:  # listed before any dies and is re-parented
        try:
            group = os.getpgid(p)
            if group != mine:
                os.killpg(group, signal.SIGKILL)
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:  # gone already
            pass


def _run(setup, exp: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A whole torchrun run; on a timeout every rank is killed too (they run in
    process groups of their own, which killing torchrun alone would leave behind)."""
    proc = subprocess.Popen(_cmd(setup, exp), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"torchrun ran past {timeout:.0f} s: {err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_killed_ddp_run_resumes_from_the_shar_position(setup, tmp_path):
    ref_exp = tmp_path / "ref"
    done = _run(setup, ref_exp)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = _trace(done.stderr)
    assert set(ref) == {0, 1}
    epochs = {e for e, *_ in ref[0]}
    assert len(epochs) >= 2, "the run should cross an epoch boundary"
    for e in epochs:  # within an epoch the ranks read different shards
        ids = [{i for x in ref[r] if x[0] == e for i in x[3]} for r in (0, 1)]
        assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert {w for _, _, w, _ in ref[0]} == {0, 1}  # both workers of a rank

    exp = tmp_path / "exp"
    log_path = tmp_path / "killed.log"  # a file: a full pipe would block the ranks
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_cmd(setup, exp), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    try:
        while not (exp / "checkpoint-6.pt").exists():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint written in time"
            time.sleep(0.01)
    finally:  # also when an assertion failed: no rank may outlive the test
        _kill_all(proc.pid)
        proc.wait()
    killed_log = log_path.read_text()
    killed_at = find_latest(exp)
    assert not (exp / "final.pt").exists(), "the run finished before it was killed"
    ckpt = load_checkpoint(killed_at)
    assert ckpt["step"] < MAX_STEPS
    pos = ckpt["sampler"]
    assert pos["format"] == "lhotse-shar" and pos["world_size"] == 2
    assert pos["num_workers"] == 2 and pos["num_shards"] == 8
    # what the checkpoint states: per rank and worker, batches and cuts consumed
    # in its epoch; that is the uninterrupted run's first batches of that epoch
    e, n = pos["epoch"], pos["batches_done"]
    for r in (0, 1):
        before = [x for x in ref[r] if x[0] == e and x[1] <= n]
        assert len(before) == n == sum(pos["batches"][r])
        for w in (0, 1):
            mine = [x for x in before if x[2] == w]
            assert pos["batches"][r][w] == len(mine)
            assert pos["cuts"][r][w] == sum(len(x[3]) for x in mine)
    killed = _trace(killed_log)
    for r in (0, 1):  # the killed run took the same batches as far as it got
        assert killed[r] == ref[r][: len(killed[r])]

    resumed = _run(setup, exp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_at}" in resumed.stderr
    assert "Shar stream resumes in epoch" in resumed.stderr
    got = _trace(resumed.stderr)
    for r in (0, 1):
        at = next(i for i, x in enumerate(ref[r]) if x[0] == e and x[1] == n)
        # nothing repeated, nothing skipped: the rest of the uninterrupted run
        assert got[r] == ref[r][at + 1 :], r

    ref_model = load_checkpoint(ref_exp / "final.pt")["model"]
    got_model = load_checkpoint(exp / "final.pt")["model"]
    different = [k for k in ref_model if not torch.equal(ref_model[k], got_model[k])]
    assert not different, different[:5]
    ref_summary = json.loads((ref_exp / "train_summary.json").read_text())
    got_summary = json.loads((exp / "train_summary.json").read_text())
    assert got_summary["steps"] == MAX_STEPS
    assert got_summary["audio_seconds"] == pytest.approx(ref_summary["audio_seconds"])
