"""tools/bench.py --train: training configs side by side on real batches of a real
(tiny) corpus: throughput rows for every variant and a convergence run for the first
two, evaluated at the same seconds of audio seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from q4asr.model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench.py"

MODEL = {
    "num_mel_bins": 80,
    "subsampling_channels": 8,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "ffn_dim": 64,
    "conv_kernel": 7,
    "dropout": 0.1,
    "decoder_dim": 32,
    "joiner_dim": 32,
    "ctc_weight": 0.5,
}
TRAIN = {
    "seed": 1,
    "max_steps": 20,
    "max_duration": 10.0,
    "num_buckets": 2,
    "lr": 3.0e-3,
    "warmup_steps": 2,
    "model_warmup_steps": 2,
    "num_workers": 0,
    "spec_augment": {
        "enabled": True,
        "time_warp_factor": 0,
        "frames_mask_size": 5,
        "num_frame_masks": 1,
    },
}

# two timed steps after one, and a convergence run evaluated at 20 and 40 s of audio
SHORT = (
    "--steps",
    "2",
    "--warmup-steps",
    "1",
    "--audio-seconds",
    "40",
    "--eval-every",
    "20",
)


def bench_train(corpus, *args: str, env: dict | None = None):
    """``tools/bench.py --train`` on the tiny corpus with ``args``."""
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--train",
            "--train-cuts",
            str(corpus.cuts["train"]),
            "--valid-cuts",
            str(corpus.cuts["dev"]),
            "--bpe-model",
            str(corpus.bpe_model),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=env,
    )


def test_train_section_throughput_and_convergence(tiny_corpus, tmp_path):
    before = tmp_path / "before.yaml"
    before.write_text(yaml.safe_dump({"model": MODEL, "train": TRAIN}))
    after = tmp_path / "after.yaml"
    after.write_text(
        yaml.safe_dump(
            {
                "model": {**MODEL, "subsampling_first_channels": 4, "dropout": 0.0},
                "train": {**TRAIN, "max_duration": 20.0, "adam_fused": True},
            }
        )
    )
    out, md = tmp_path / "train.json", tmp_path / "train.md"
    md.write_text("# Benchmarks\n\nother tables\n")
    p = bench_train(
        tiny_corpus,
        "--threads",
        "1",
        "--variant",
        f"before {before}",
        "--variant",
        f"after {after}",
        "--variant",
        f"before_bf16 {before} autocast=bf16 train.lr=1e-3",
        *SHORT,
        "--json",
        str(out),
        "--markdown",
        str(md),
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert json.loads(p.stdout) == r
    rows = r["throughput"]
    assert list(rows) == ["before", "after", "before_bf16"]
    for name, row in rows.items():
        assert row["audio_seconds"] > 0 and row["wall_seconds"] > 0, name
        expect = row["audio_seconds"] / row["wall_seconds"]  # both rounded
        assert abs(row["audio_sec_per_sec"] - expect) <= 0.05 + 0.01 * expect, name
    assert rows["before"]["ratio_to_before"] == 1.0
    assert rows["before"]["cpu_ratio_to_before"] == 1.0
    assert all(row["cpu_seconds"] > 0 for row in rows.values())
    assert rows["after"]["max_duration"] == 20.0
    assert rows["after"]["params"] < rows["before"]["params"]
    conv = r["convergence"]
    assert conv["variants"] == ["before", "after"]
    for name, evs in conv["evaluations"].items():
        assert len(evs) == 2, name
        assert [e["audio_seconds_seen"] >= m for e, m in zip(evs, (20, 40))] == [
            True
        ] * 2
        assert all(
            e["pruned_loss_per_token"] > 0 and e["ctc_loss_per_token"] > 0 for e in evs
        )
        for e in evs:  # the objective: simple_loss_scale x simple + pruned + ctc x CTC
            parts = (
                ModelConfig.simple_loss_scale * e["simple_loss_per_token"]
                + e["pruned_loss_per_token"]
                + MODEL["ctc_weight"] * e["ctc_loss_per_token"]
            )
            assert e["loss_per_token"] == pytest.approx(parts, abs=2e-4)
        assert "greedy_wer" in evs[-1] and "greedy_wer" not in evs[0]
    text = md.read_text()
    assert "| after |" in text and "greedy WER" in text and "| loss |" in text
    assert text.startswith("# Benchmarks\n\nother tables\n")  # the rest is kept


def test_ddp_variant_trains_in_two_processes(tiny_corpus, tmp_path):
    """A procs=2 variant: two DDP processes, each with its own batches of up to
    max_duration, so a step trains on more audio than one process's batch holds;
    its convergence run is taken one after the reference's."""
    cfg = tmp_path / "before.yaml"
    cfg.write_text(yaml.safe_dump({"model": MODEL, "train": TRAIN}))
    out = tmp_path / "train.json"
    p = bench_train(
        tiny_corpus,
        "--threads",
        "2",
        "--variant",
        f"one {cfg} train.num_threads=2",
        "--variant",
        f"ddp {cfg} procs=2",
        *SHORT,
        "--json",
        str(out),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = r["throughput"]
    assert [rows["one"]["procs"], rows["ddp"]["procs"]] == [1, 2]
    assert rows["one"]["audio_seconds"] / 2 <= TRAIN["max_duration"]
    assert rows["ddp"]["audio_seconds"] / 2 > TRAIN["max_duration"]
    assert rows["ddp"]["params"] == rows["one"]["params"]
    assert rows["ddp"]["cpu_seconds"] > 0
    conv = r["convergence"]
    assert conv["interleaved"] is False
    for name, evs in conv["evaluations"].items():
        assert [e["audio_seconds_seen"] >= m for e, m in zip(evs, (20, 40))] == [
            True
        ] * 2, name
        assert "greedy_wer" in evs[-1]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("", "none.yaml: no such config"),
        ("procs=0", "procs must be a positive integer, got '0'"),
    ],
)
def test_bad_variant_is_a_clear_error(tiny_corpus, tmp_path, extra, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": MODEL, "train": TRAIN}))
    spec = f"x {tmp_path}/none.yaml" if not extra else f"x {cfg} {extra}"
    p = bench_train(tiny_corpus, "--variant", spec)
    assert p.returncode != 0 and message in p.stderr
