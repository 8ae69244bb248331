"""tools/bench_shar.py: both training-data readers deliver the same cuts, and the
benchmark prints their throughput and disk cost side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from q4asr.data.shar import write_shar

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench_shar  # noqa: E402


@pytest.mark.slow
def test_readers_side_by_side(tiny_corpus, tmp_path, capsys):
    shar = tmp_path / "shar"
    write_shar(tiny_corpus.cuts["train"], shar, shard_size=10)
    out = tmp_path / "res.json"
    res = bench_shar.main(["--cuts", str(tiny_corpus.cuts["train"]), "--shar", str(shar),
                           "--bpe-model", str(tiny_corpus.bpe_model), "--rounds", "2",
                           "--max-duration", "20", "--json", str(out)])  # fmt: skip
    j, s = res["jsonl_lilcom"], res["shar"]
    # the same 40 cuts, twice, through each reader
    assert j["cuts"] == s["cuts"] == 2 * 40
    assert j["audio_s"] == pytest.approx(s["audio_s"])
    assert j["audio_s_per_s"] > 0 and s["audio_s_per_s"] > 0
    ratio = res["shar_vs_jsonl"]
    assert ratio["wall"] == pytest.approx(s["audio_s_per_s"] / j["audio_s_per_s"])
    assert ratio["cpu"] == pytest.approx(
        s["audio_s_per_cpu_s"] / j["audio_s_per_cpu_s"]
    )
    assert ratio["median_round_wall"] > 0
    shar_bytes = sum(p.stat().st_size for p in shar.iterdir())
    assert res["disk_bytes"]["shar"] == shar_bytes
    lca = {p for p in tiny_corpus.fbank_dir.glob("synth_feats_train*")}
    jsonl_bytes = tiny_corpus.cuts["train"].stat().st_size + sum(
        p.stat().st_size for p in lca
    )
    assert res["disk_bytes"]["jsonl_lilcom"] == jsonl_bytes
    printed = capsys.readouterr().out
    assert (
        "| jsonl + lilcom archives |" in printed
        and "| Lhotse Shar (lilcom) |" in printed
    )
    assert json.loads(out.read_text())["shar_vs_jsonl"] == res["shar_vs_jsonl"]
