"""Synthetic corpus: sentence split, held-out voices, determinism, resume, failures."""

import logging
import os
from dataclasses import replace

import pytest
from lhotse import load_manifest

from q4asr.corpora.synth import (
    SPLITS,
    SynthConfig,
    make_specs,
    synth_chunk,
    synthesize_corpus,
)
from q4asr.corpora.text import TextConfig, load_sentences


@pytest.fixture(scope="module")
def sentences():
    return load_sentences(TextConfig(vocab_size=400, min_words=2, max_words=5), seed=7)


def test_specs_splits_by_sentence_and_holds_out_voices(sentences, tmp_path):
    cfg = SynthConfig(num_train=3 * len(sentences), num_dev=30, num_test=30, seed=7)
    by_split = make_specs(cfg, tmp_path, sentences)
    text = {s: {p.text for p in by_split[s]} for s in SPLITS}
    assert len(text["test"]) == 30 and len(text["dev"]) == 30
    assert not text["test"] & (text["train"] | text["dev"])
    assert not text["dev"] & text["train"]
    # train reuses its own sentences when asked for more utterances than exist
    assert len(by_split["train"]) == cfg.num_train
    assert text["train"] == set(sentences) - text["test"] - text["dev"]
    assert [p.text for p in by_split["test_heldout"]] == [
        p.text for p in by_split["test"]
    ]
    voices = {s: {(p.engine, p.voice) for p in by_split[s]} for s in SPLITS}
    seen = voices["train"] | voices["dev"] | voices["test"]
    assert not voices["test_heldout"] & seen
    variants = {v.split("+")[-1] for e, v in seen if e == "espeak"}
    held_variants = {
        v.split("+")[-1] for e, v in voices["test_heldout"] if e == "espeak"
    }
    assert not variants & held_variants
    assert len({p.engine for p in by_split["train"]}) == 3  # espeak, flite, festival
    assert len({p.utt_id for s in SPLITS for p in by_split[s]}) == sum(
        map(len, by_split.values())
    )


def test_specs_is_deterministic(sentences, tmp_path):
    cfg = SynthConfig(num_train=50, num_dev=5, num_test=5, seed=1)
    assert make_specs(cfg, tmp_path, sentences) == make_specs(cfg, tmp_path, sentences)
    other = make_specs(replace(cfg, seed=2), tmp_path, sentences)
    assert other != make_specs(cfg, tmp_path, sentences)


def _manifest_rows(root, split):
    recs = load_manifest(root / "manifests" / f"synth_recordings_{split}.jsonl.gz")
    sups = load_manifest(root / "manifests" / f"synth_supervisions_{split}.jsonl.gz")
    return [(r.id, r.num_samples, r.sampling_rate, r.num_channels) for r in recs], [
        (s.id, s.text, s.speaker, s.duration) for s in sups
    ]


def test_synthesis_deterministic_resumable(sentences, tmp_path):
    cfg = SynthConfig(num_train=8, num_dev=2, num_test=2, seed=5)
    a, b = tmp_path / "a", tmp_path / "b"
    sa = synthesize_corpus(cfg, a, sentences=sentences, progress=False)
    synthesize_corpus(cfg, b, sentences=sentences, progress=False)
    assert sa["num_failed"] == 0 and sa["num_utts"] == 14 and sa["audio_s"] > 5
    for split in SPLITS:
        assert _manifest_rows(a, split) == _manifest_rows(b, split)
        recs = load_manifest(a / "manifests" / f"synth_recordings_{split}.jsonl.gz")
        assert all(r.sampling_rate == 16000 and r.num_channels == 1 for r in recs)
    # resume: good files are kept, a corrupt one is synthesised again
    wavs = sorted((a / "wav" / "train").iterdir())
    mtimes = {w: os.stat(w).st_mtime_ns for w in wavs}
    wavs[0].write_bytes(b"not audio")
    again = synthesize_corpus(cfg, a, sentences=sentences, progress=False)
    assert again["num_failed"] == 0
    assert os.stat(wavs[0]).st_size > 1000
    assert all(os.stat(w).st_mtime_ns == mtimes[w] for w in wavs[1:])
    assert 0 < again["new_audio_s"] < 5
    assert _manifest_rows(a, "train") == _manifest_rows(b, "train")


def test_tts_failure_is_logged_and_skipped(sentences, tmp_path, caplog, monkeypatch):
    cfg = SynthConfig(num_train=2, num_dev=1, num_test=1, seed=0)
    good = make_specs(cfg, tmp_path, sentences)["train"][0]
    bad = replace(
        good,
        utt_id="train-bad",
        engine="festival",
        voice="no_such_voice",
        path=str(tmp_path / "wav" / "train" / "bad.flac"),
    )
    res = synth_chunk([bad, good])
    assert res[0][1] is None and "festival" in res[0][2]
    assert res[1][1] is not None and res[1][1].duration > 0.3
    from q4asr.corpora import synth as synth_mod

    def with_bad(config, out_dir, sents=None):
        by_split = make_specs(config, out_dir, sents)
        by_split["train"] = by_split["train"] + [bad]
        return by_split

    monkeypatch.setattr(synth_mod, "make_specs", with_bad)
    with caplog.at_level(logging.WARNING):
        stats = synthesize_corpus(cfg, tmp_path, sentences=sentences, progress=False)
    assert stats["num_failed"] == 1
    assert any(
        "train-bad" in r.getMessage() and "skipped" in r.getMessage()
        for r in caplog.records
    )
    sups = load_manifest(tmp_path / "manifests" / "synth_supervisions_train.jsonl.gz")
    assert [s.id for s in sups] == ["train-000000", "train-000001"]


def test_config_validation():
    with pytest.raises(ValueError, match="num_dev"):
        SynthConfig(num_train=1, num_dev=-1, num_test=0)
    with pytest.raises(ValueError, match="audio_format"):
        SynthConfig(num_train=1, num_dev=0, num_test=0, audio_format="mp3")
