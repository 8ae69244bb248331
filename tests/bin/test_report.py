"""q4asr-report: every decoding method in the table, bootstrap intervals over
utterances, paired differences with a verdict, and the WER-vs-size plot."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from q4asr.bin import report
from q4asr.decode.scoring import write_results

SYSTEMS = [
    {"name": "float32", "method": "float", "config": "conf/train.yaml"},
    {
        "name": "float32_ft",
        "method": "float",
        "config": "conf/train_qat.yaml",
        "init_from": "float32",
    },
    {
        "name": "ptq_w4a8",
        "method": "ptq",
        "plan": "conf/plans/w4a8.yaml",
        "init_from": "float32",
    },
    {
        "name": "qat_w4a8",
        "method": "qat",
        "config": "conf/train_qat.yaml",
        "plan": "conf/plans/w4a8.yaml",
        "init_from": "float32",
    },
]


def _utts(n: int, wer: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """n utterances of 10 words whose hypotheses get about ``wer`` of them wrong."""
    rng = np.random.default_rng(seed)
    ids = [f"u{i:03d}" for i in range(n)]
    refs = [" ".join(f"w{j}" for j in range(10)) for _ in ids]
    hyps = [
        " ".join(f"w{j}" if rng.random() > wer else "x" for j in range(10)) for _ in ids
    ]
    return ids, refs, hyps


@pytest.fixture
def exp(tmp_path):
    (tmp_path / "systems.yaml").write_text(yaml.safe_dump({"systems": SYSTEMS}))
    wers = {"float32": 0.20, "float32_ft": 0.19, "ptq_w4a8": 0.40, "qat_w4a8": 0.195}
    for i, (name, w) in enumerate(wers.items()):
        d = tmp_path / "exp" / name
        d.mkdir(parents=True)
        size = 4000 if name.startswith("float") else 600
        save_file(
            {"w": torch.zeros(size)},
            str(d / "model.safetensors"),
            metadata={"num_params": str(size)},
        )
        for m, extra in (("greedy_search", 0.0), ("modified_beam_search", -0.02)):
            ids, refs, hyps = _utts(200, w + extra, seed=i)
            write_results(d / "decode", "test", m, ids, refs, hyps, extra={"rtf": 0.01})
    return tmp_path


def test_report_tables_intervals_and_verdicts(exp, monkeypatch):
    monkeypatch.chdir(exp)
    rc = report.main(
        [
            "--systems",
            "systems.yaml",
            "--test-parts",
            "test",
            "--decode-methods",
            "greedy_search",
            "modified_beam_search",
            "--bootstrap-resamples",
            "300",
        ]
    )
    assert rc == 0
    res = json.loads((exp / "exp/results.json").read_text())
    rows = {r["name"]: r for r in res["systems"]}
    assert res["decode_methods"] == ["greedy_search", "modified_beam_search"]
    for r in rows.values():
        for m in res["decode_methods"]:
            lo, hi = r["wer_ci"][m]["test"]
            assert lo <= r["wer_by_method"][m]["test"] <= hi and hi - lo > 1.0
        assert r["wer"]["test"] == r["wer_by_method"]["greedy_search"]["test"]
    pairs = {(d["system"], d["baseline"], d["method"]): d for d in res["differences"]}
    # QAT is compared with the float system fine-tuned the same way, PTQ with the
    # model it quantizes and with QAT at the same plan
    assert ("qat_w4a8", "float32_ft", "greedy_search") in pairs
    assert ("ptq_w4a8", "float32", "greedy_search") in pairs
    big = pairs[("ptq_w4a8", "qat_w4a8", "greedy_search")]
    assert big["low"] > 0 and big["diff"] > 10  # 40% vs 19.5%: real
    small = pairs[("qat_w4a8", "float32_ft", "greedy_search")]
    assert small["low"] < small["diff"] < small["high"]
    md = (exp / "RESULTS.md").read_text()
    assert "WER test beam (%)" in md and "WER test greedy (%)" in md
    assert "**worse**" in md and "after normalisation" in md
    assert (exp / "exp/wer_vs_size.png").stat().st_size > 5000


def test_paired_difference_of_identical_systems_is_zero():
    per = {f"u{i}": [i % 3, 5] for i in range(50)}
    d = report.paired_difference(per, per, resamples=200)
    assert d["diff"] == d["low"] == d["high"] == 0.0


def test_labels_do_not_overlap_when_points_coincide(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(2.0, 20.0), (2.0, 20.1), (2.05, 19.9), (2.1, 20.0), (10.0, 20.0)]
    ax.plot(*zip(*pts), "o")
    ax.set_xscale("log")
    ax.set_xlim(1, 30)
    ax.set_ylim(15, 25)
    fig.canvas.draw()
    boxes = report.place_labels(ax, pts, [f"system_{i}" for i in range(5)], ["k"] * 5)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert report._overlap(a, b) == 0.0
    plt.close(fig)


def test_compare_pairs_two_system_dirs(exp, tmp_path, capsys):
    """--compare: the paired difference of two system dirs' decodes, one row per
    part and method, with the interval excluding 0 for a clear difference."""
    a, b = exp / "exp" / "ptq_w4a8", exp / "exp" / "float32"
    out = tmp_path / "cmp.json"
    rc = report.main(
        [
            "--compare", str(a), str(b),
            "--test-parts", "test", "nope",
            "--decode-methods", "greedy_search", "modified_beam_search",
            "--out", str(out),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["test_set"], r["method"]) for r in rows] == [
        ("test", "greedy_search"),
        ("test", "modified_beam_search"),
    ]
    for r in rows:
        assert r["diff"] == pytest.approx(r["wer_a"] - r["wer_b"], abs=0.01)
        assert r["low"] > 0 and r["diff"] > 10  # ptq at ~40% vs float at ~20%
        assert r["p_a_better"] == 0.0
    table = capsys.readouterr().out
    assert "| test | greedy_search |" in table and str(a) in table
    # a system against itself: zero, both ways
    rows = report.compare_decodes(b, b, ["test"], ["greedy_search"])
    assert rows[0]["diff"] == 0 and rows[0]["low"] == 0 and rows[0]["high"] == 0


def test_compare_refuses_decodes_without_per_utterance_errors(exp, capsys):
    d = exp / "exp" / "float32" / "decode" / "test-greedy_search.json"
    r = json.loads(d.read_text())
    r.pop("per_utt")
    d.write_text(json.dumps(r))
    rc = report.main(["--compare", str(d.parents[1]), str(exp / "exp" / "qat_w4a8")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(d) in err[0] and "per-utterance" in err[0]
