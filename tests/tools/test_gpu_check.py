"""tools/gpu_check.py: the GPU check's whole code path, run on the CPU with a tiny
model (``--device cpu --small``), and its BENCHMARKS.md section."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("q4asr_tools_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, str(SCRIPT), "run", "--device", "cpu", "--small"]
    cmd += ["--carry", str(tmp_path / "carry"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((out / "gpu.json").read_text())

    # converted == QAT for every plan kind, in float32 and under bf16 autocast
    assert set(res["parity"]) == {
        "w8a8",
        "w8afloat",
        "w4afloat",
        "w4a8",
        "w4a4",
        "mixed48",
        "ptq_static_w8a8",
    }
    for row in res["parity"].values():
        assert row["float32"] == 0.0 and row["bf16"] == 0.0, row
        assert row["bf16_dtype"] == "bfloat16"
    assert res["parity_ok"] is True

    systems = [r["system"] for r in res["train"]]
    assert len(systems) == 8 and "QAT W4A8, bf16 autocast" in systems
    assert "QAT W4A8, bf16 autocast, unfused" in systems
    for row in res["train"]:
        assert "error" not in row, row
        assert row["step_s"] > 0 and row["audio_s_per_s"] > 0 and row["loss_finite"]
    assert len(res["inference"]) == 8
    assert all(row["encoder_s"] > 0 for row in res["inference"])
    assert [(r["M"], r["K"], r["N"]) for r in res["layers"]] == [
        (600, 32, 64),
        (600, 64, 32),
    ]
    for row in res["layers"]:
        assert all(row[k] > 0 for k in row if k.endswith("_ms")), row
    assert res["fused"]["error"] is None

    rec = res["recipe"]
    assert rec["rc"] == 0, rec.get("stderr_tail")
    assert set(rec["systems"]) == {"float32", "ptq_w4a8", "qat_w4a8"}
    for s in rec["systems"].values():
        assert s["size_bytes"] > 0 and set(s["wer"]) == {"test-clean", "test-other"}
    sizes = {k: v["size_bytes"] for k, v in rec["systems"].items()}
    assert sizes["qat_w4a8"] < sizes["float32"] / 3
    assert rec["float32_train"]["steps"] == 4

    md = (out / "gpu.md").read_text()
    assert md.startswith("<!-- gpu_check: begin -->") and "| mixed48 | 0 |" in md
    assert "QAT W4A8, bf16 autocast" in md and "LibriSpeech `run.sh`" in md
    assert "One linear layer" in md and "| 600 x 32 x 64 |" in md


def test_markdown_section_is_replaced_in_place(tmp_path):
    gc = _load()
    res = {
        "small": True,
        "reps": 2,
        "model_params": 1234,
        "env": {
            "gpu": "NVIDIA H200",
            "gpu_memory_gib": 139.8,
            "capability": "9.0",
            "torch": "2.11.0+cu130",
            "cuda": "13.0",
            "python": "3.12.3",
            "git_sha": "abc1234",
            "date": "2026-11-27",
        },
        "parity": {"w4a8": {"float32": 0.0, "bf16": 0.0, "bf16_dtype": "bfloat16"}},
        "train": [
            {
                "system": "float, bf16 autocast",
                "step_s": 0.1,
                "audio_s_per_s": 4800.0,
                "peak_gib": 12.0,
            },
            {"system": "QAT W4A8", "error": "TypeError: nope"},
        ],
        "inference": [
            {"system": "float32", "encoder_s": 0.07, "rtf": 0.0001, "peak_gib": 3.0}
        ],
    }
    js = tmp_path / "gpu.json"
    js.write_text(json.dumps(res))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nCPU tables.\n")
    assert gc.main(["markdown", str(js), "--update", str(md)]) == 0
    first = md.read_text()
    assert first.startswith("# Benchmarks\n\nCPU tables.\n\n<!-- gpu_check: begin -->")
    assert "one NVIDIA H200 (139.8 GiB, sm 9.0)" in first
    assert "| QAT W4A8 | fails: TypeError: nope |" in first
    res["env"]["gpu"] = "NVIDIA H100 80GB HBM3"
    js.write_text(json.dumps(res))
    md.write_text(first + "\nAfter.\n")
    assert gc.main(["markdown", str(js), "--update", str(md)]) == 0
    second = md.read_text()
    assert second.count("<!-- gpu_check: begin -->") == 1
    assert "H100 80GB" in second and "NVIDIA H200" not in second
    assert second.endswith("\nAfter.\n")


def test_carried_wheels_are_pinned_as_in_setup_cfg():
    """The wheels carried to the GPU machine are the versions q4asr installs here."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = {}
    for text in [
        cfg["options"]["install_requires"],
        *cfg["options.extras_require"].values(),
    ]:
        for line in text.split("\n"):
            if "==" in line:
                name, version = line.strip().split("==")
                pins[name.lower().replace("_", "-")] = version
    carried = dict(spec.split("==") for spec in _load().WHEELS)
    assert "sherpa-onnx" in carried and "lhotse" in carried
    for name, version in carried.items():
        if name in pins:
            assert version == pins[name], (
                f"{name}: carried {version}, setup.cfg {pins[name]}"
            )
