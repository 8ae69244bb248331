"""Fbank cuts: shapes, resampling of other rates, unreadable audio skipped."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import (
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
    load_manifest,
)

from q4asr.data.features import FEATURE_CONFIG, compute_fbank, fbank_extractor


def _write_manifests(tmp_path, recs, part="x"):
    mdir = tmp_path / "manifests"
    mdir.mkdir(exist_ok=True)
    RecordingSet.from_recordings(recs).to_file(mdir / f"t_recordings_{part}.jsonl.gz")
    SupervisionSet.from_segments(
        SupervisionSegment(
            id=r.id,
            recording_id=r.id,
            start=0,
            duration=r.duration,
            channel=0,
            text="A B",
        )
        for r in recs
    ).to_file(mdir / f"t_supervisions_{part}.jsonl.gz")
    return mdir


def test_fbank_extractor_matches_config():
    ext = fbank_extractor()
    feats = ext.extract(np.zeros(16000, dtype=np.float32) + 0.01, 16000)
    assert feats.shape == (100, FEATURE_CONFIG["num_mel_bins"])
    assert fbank_extractor(40).extract(np.ones(800, np.float32), 16000).shape == (5, 40)


def test_corrupt_audio_skipped_and_other_rates_resampled(tmp_path, caplog):
    t = np.arange(16000) / 16000
    tone16 = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "a16.wav", tone16, 16000)
    t8 = np.arange(8000) / 8000
    sf.write(
        tmp_path / "a8.wav",
        (0.3 * np.sin(2 * np.pi * 440 * t8)).astype(np.float32),
        8000,
    )
    sf.write(tmp_path / "bad.wav", tone16, 16000)
    recs = [
        Recording.from_file(tmp_path / n, recording_id=n[:-4])
        for n in ("a16.wav", "a8.wav", "bad.wav")
    ]
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")  # corrupted after listing
    mdir = _write_manifests(tmp_path, recs)
    with caplog.at_level(logging.WARNING):
        path, failures = compute_fbank(mdir, tmp_path / "fbank", "t", "x")
    assert len(failures) == 1 and "recording bad" in failures[0]
    assert any("recording bad" in r.getMessage() for r in caplog.records)
    cuts = load_manifest(path)
    assert [c.recording_id for c in cuts] == ["a16", "a8"]
    f16, f8 = (c.load_features() for c in cuts)
    assert f16.shape == f8.shape == (100, 80)
    # the 440 Hz tone peaks in the same mel bin whatever the source rate
    assert f16[50].argmax() == f8[50].argmax()


def test_mux_cuts_one_or_several_inputs(tiny_corpus, tmp_path):
    from lhotse import CutSet

    from q4asr.data.features import mux_cuts

    train, dev = tiny_corpus.cuts["train"], tiny_corpus.cuts["dev"]
    ids = {p: [c.id for c in CutSet.from_jsonl_lazy(p)] for p in (train, dev)}
    one = mux_cuts([train], tmp_path / "one.jsonl.gz")
    assert list(one) == [str(train)]
    got = [c.id for c in CutSet.from_jsonl_lazy(tmp_path / "one.jsonl.gz")]
    assert got == ids[train]
    mux_cuts([train, dev], tmp_path / "two.jsonl.gz")
    got = [c.id for c in CutSet.from_jsonl_lazy(tmp_path / "two.jsonl.gz")]
    assert sorted(got) == sorted(ids[train] + ids[dev])
    copy = tmp_path / "copy.jsonl.gz"
    copy.write_bytes(Path(train).read_bytes())
    with pytest.raises(ValueError, match="occurs twice"):
        mux_cuts([train, copy], tmp_path / "dup.jsonl.gz")
    assert not (tmp_path / "dup.jsonl.gz").exists()
