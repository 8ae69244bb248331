"""tools/bench.py: the peer benchmark runs in --small mode and reports every field."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("q4asr_tools_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def _positive_numbers(d: dict, what: str, systems) -> None:
    assert set(d) == set(systems), (what, sorted(d))
    for k, v in d.items():
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (what, k, v)
        assert v > 0, (what, k, v)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, md = tmp / "bench.json", tmp / "BENCHMARKS.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--small",
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--results",
            str(tmp / "no-results.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p, json.loads(out.read_text()), md.read_text()


def test_small_json_has_every_field(small_run):
    p, r, _ = small_run
    assert json.loads(p.stdout) == r  # stdout is the same one JSON object
    assert r["mode"] == "small"
    for key in ("cpu", "cores", "torch", "torch_threads", "python", "q4asr_git_sha"):
        assert key in r["machine"], key
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch_threads"] == 1
    assert len(r["load_average_start"]) == 3 and len(r["load_average_end"]) == 3
    assert r["num_params"] > 0 and r["wall_seconds"] > 0
    assert r["batch"]["audio_seconds"] == (
        r["batch"]["utterances"] * r["batch"]["seconds_each"]
    )

    sizes = bench.SIZE_SYSTEMS
    _positive_numbers(r["size"]["bytes"], "size", sizes)
    _positive_numbers(r["size"]["ratio_to_float32"], "size ratio", sizes[1:])
    b = r["size"]["bytes"]
    for k, ratio in r["size"]["ratio_to_float32"].items():
        assert ratio == pytest.approx(b["float32"] / b[k], abs=1e-3)
    # integer weights must make every quantized file smaller than float32, and
    # int4 smaller than int8
    assert all(v > 1 for v in r["size"]["ratio_to_float32"].values())
    assert b["q4asr_int4"] < b["q4asr_mixed48"] < b["q4asr_int8"]

    inf, systems = r["inference"], bench.INFER_SYSTEMS
    for key in ("encoder_seconds", "decode_seconds", "decode_rtf"):
        _positive_numbers(inf[key], key, systems)
    for key in ("encoder_speedup", "decode_speedup"):
        _positive_numbers(inf[key], key, systems[1:])
    for k in systems:
        assert inf["decode_rtf"][k] == pytest.approx(
            inf["decode_seconds"][k] / r["batch"]["audio_seconds"], rel=1e-3, abs=1e-5
        )
    assert set(inf["tokens_emitted"]) == set(systems)
    bd = inf["encoder_breakdown_ms"]
    assert set(bd) == set(systems)
    for k in systems:  # every system has linear layers and a conv front-end
        assert bd[k]["Linear"] > 0 and bd[k]["Conv2d"] > 0, (k, bd[k])

    mem = r["memory"]
    for key in ("peak_rss_bytes", "peak_over_imports_bytes"):
        _positive_numbers(mem[key], key, systems)
    assert set(mem["decode_working_bytes"]) == set(systems)
    assert all(v >= 0 for v in mem["decode_working_bytes"].values())
    _positive_numbers(mem["ratio_to_float32"], "memory ratio", systems[1:])

    tr = r["training"]
    _positive_numbers(tr["step_seconds"], "train", bench.TRAIN_SYSTEMS)
    _positive_numbers(tr["speedup_vs_float32"], "train ratio", bench.TRAIN_SYSTEMS[1:])
    _positive_numbers(
        tr["speedup_vs_torchao"], "vs torchao", ("q4asr_qat_w8a8", "q4asr_qat_w4a8")
    )
    assert tr["torchao"]["groupsize"] >= 1
    assert tr["torchao"]["linear_layers_fake_quantized"] > 0

    assert r["accuracy"]["systems"] is None and "results.json" in r["accuracy"]["note"]
    assert len(r["goals"]) == 14
    for g in r["goals"]:
        assert set(g) == {"goal", "value", "met"} and isinstance(g["met"], bool)


def test_goals_come_from_the_goals_file(tmp_path):
    """The thresholds live in benchmarks/goals.yaml, not in the tool."""
    r = {"a": {"x": 3.0, "y": 1.5}, "b": {"z": 2.0}}
    path = tmp_path / "goals.yaml"
    path.write_text(
        "goals:\n"
        "  - {goal: x >= 3, value: a.x, at_least: 3}\n"
        "  - {goal: x > 3, value: a.x, above: 3}\n"
        "  - {goal: x/y >= 2, value: a.x, over: a.y, at_least: 2}\n"
        "  - {goal: peer, value: b.none, above: 1, optional: true}\n"
    )
    assert bench.goals(r, path) == [
        {"goal": "x >= 3", "value": 3.0, "met": True},
        {"goal": "x > 3", "value": 3.0, "met": False},
        {"goal": "x/y >= 2", "value": 2.0, "met": True},
    ]
    with pytest.raises(KeyError):
        bench.goals(r, _required(tmp_path))
    # no threshold is typed into the tool itself
    source = SCRIPT.read_text()
    assert "7.7" not in source and ">= 3" not in source


def _required(tmp_path):
    path = tmp_path / "required.yaml"
    path.write_text("goals:\n  - {goal: missing, value: b.none, above: 1}\n")
    return path


def test_markdown_is_generated_from_the_json(small_run):
    _, r, md = small_run
    assert md == bench.TITLE + "\n\n" + bench.render_markdown(r)
    assert r["command"] in md
    assert f"{r['size']['bytes']['q4asr_int4']:,}" in md
    for name in bench.SIZE_SYSTEMS + bench.TRAIN_SYSTEMS:
        assert f"| {name} |" in md, name
    assert "## Goals" in md and "Accuracy" in md


def test_markdown_keeps_the_other_sections(small_run, tmp_path):
    """A rerun replaces its own section and nothing else of the file."""
    _, r, _ = small_run
    md = tmp_path / "BENCHMARKS.md"
    other = "<!-- other: begin -->\nsome other run's table\n<!-- other: end -->\n"
    md.write_text(bench.TITLE + "\n\n" + other)
    bench.write_markdown(md, r)
    first = md.read_text()
    assert first.startswith(bench.TITLE) and other in first
    assert bench.render_markdown(r) in first
    bench.write_markdown(md, r)
    assert md.read_text() == first  # replaced in place, not appended again


def test_torchao_groupsize_divides_every_linear():
    model = nn.Sequential(
        nn.Linear(1216, 144), nn.Linear(144, 576), nn.Linear(576, 256)
    )
    assert bench.torchao_groupsize(model) == 16
    assert bench.torchao_groupsize(nn.Linear(512, 8)) == 256  # capped at 256
    with pytest.raises(ValueError, match="no nn.Linear"):
        bench.torchao_groupsize(nn.Sequential(nn.ReLU()))


def test_accuracy_read_from_results_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "decode_method": "greedy_search",
                "test_sets": ["test"],
                "systems": [
                    {
                        "name": "float32",
                        "method": "float",
                        "plan": None,
                        "size_bytes": 1000,
                        "wer": {"test": 12.5},
                    },
                    {
                        "name": "qat_w4a8",
                        "method": "qat",
                        "plan": "conf/plans/w4a8.yaml",
                        "size_bytes": 150,
                        "wer": {"test": 13.0},
                    },
                ],
            }
        )
    )
    acc = bench.read_accuracy(path)
    assert [s["benchmark_system"] for s in acc["systems"]] == ["float32", "q4asr_int4"]
    assert acc["systems"][1]["wer"] == {"test": 13.0}
    bad = tmp_path / "bad.json"
    bad.write_text('{"systems": [{"method": "float"}]}')
    with pytest.raises(SystemExit, match="bad.json"):
        bench.read_accuracy(bad)


def test_missing_plan_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"w8a8\.yaml: no such precision plan"):
        bench.main(["--small", "--plans-dir", str(tmp_path)])


def test_rss_by_origin_tells_the_model_file_from_libraries_and_allocations(tmp_path):
    """Pages of a mapped file count as model_file, a fresh allocation as anonymous."""
    import mmap

    path = tmp_path / "model.bin"
    size = 8 * 2**20
    path.write_bytes(os.urandom(size))
    before = bench.rss_by_origin(path)
    assert before["model_file"] == 0 and before["libraries"] > 0
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[i] for i in range(0, size, 4096)) >= 0  # touch every page
        mapped = bench.rss_by_origin(path)
        assert mapped["model_file"] == size
        # a fresh anonymous mapping of 16 MiB, every page written (a heap
        # allocation could reuse pages already resident from earlier work)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        with mmap.mmap(-1, 16 * 2**20, flags=flags) as anon:
            for i in range(0, len(anon), 4096):
                anon[i] = 1
            grown = bench.rss_by_origin(path)
        assert grown["anonymous"] - mapped["anonymous"] >= 15 * 2**20
        assert grown["model_file"] == size
        # shared anonymous memory (shown as /dev/zero) is allocated memory too
        with mmap.mmap(-1, 16 * 2**20) as shared:
            for i in range(0, len(shared), 4096):
                shared[i] = 1
            after = bench.rss_by_origin(path)
        assert after["anonymous"] - mapped["anonymous"] >= 15 * 2**20
