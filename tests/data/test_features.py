"""Fbank cuts: shapes, resampling of other rates, unreadable audio skipped, augmented
copies."""

import logging
from dataclasses import replace
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


AUGMENT = dict(
    speed_perturb=(0.9, 1.1),
    volume_perturb=(0.5,),
    reverb=True,
    noise_snr=(10,),
    babble_snr=(5,),
    seed=3,
)
SUFFIXES = ["_sp0.9", "_sp1.1", "_vp0.5", "_rvb", "_noise10", "_babble5"]


def _features(path):
    return {c.id: c.load_features() for c in load_manifest(path)}


def test_augmented_copies(tiny_corpus, tmp_path):
    from q4asr.data.features import Augmentation

    path, failures = compute_fbank(
        tiny_corpus.manifest_dir, tmp_path, "synth", "dev",
        augment=Augmentation(**AUGMENT),
    )  # fmt: skip
    assert not failures
    cuts = {c.id: c for c in load_manifest(path)}
    clean = [c.id for c in load_manifest(tiny_corpus.cuts["dev"])]
    # the clean cuts first, then one copy of each per augmentation, in order
    assert list(cuts) == clean + [c + s for s in SUFFIXES for c in clean]
    feats = {i: c.load_features() for i, c in cuts.items()}
    for cid in clean:
        ref, text = cuts[cid], cuts[cid].supervisions[0].text
        for s in SUFFIXES:
            cut = cuts[cid + s]
            assert [u.text for u in cut.supervisions] == [text]  # no babble text
            assert cut.supervisions[0].id == ref.supervisions[0].id + s
            f = 1.0 if not s.startswith("_sp") else float(s[3:])
            assert abs(cut.duration - ref.duration / f) <= 1 / 16000, (s, cut.duration)
            x = feats[cid + s]
            assert x.shape[1] == 80 and abs(x.shape[0] - ref.duration / f * 100) <= 1
            if f == 1.0:
                assert np.abs(x - feats[cid]).mean() > 0.1, s
        # half the amplitude: a quarter of the energy in every mel bin (up to lilcom)
        delta = feats[cid + "_vp0.5"] - feats[cid]
        assert np.median(delta) == pytest.approx(np.log(0.25), abs=0.05)
        # the noise fills the quiet bins: energy rises most where the speech is weakest
        quiet = feats[cid] < np.quantile(feats[cid], 0.1)
        assert (feats[cid + "_noise10"] - feats[cid])[quiet].mean() > 2.0
    # each cut draws its own room
    rooms = {cuts[c + "_rvb"].recording.transforms[-1].rir.id for c in clean}
    assert len(rooms) > 4, rooms
    # the RIR and noise recordings are on disk with their manifests
    aug = tmp_path / "augment" / "seed3"
    assert len(load_manifest(aug / "rir_recordings.jsonl.gz")) == 100
    noise = load_manifest(aug / "noise_recordings.jsonl.gz")
    assert sorted(r.id for r in noise) == ["noise_brown", "noise_pink", "noise_white"]
    assert all(r.load_audio().shape == (1, 480000) for r in noise)


def test_augmentation_is_deterministic_for_a_seed(tiny_corpus, tmp_path):
    from q4asr.data.features import Augmentation

    aug = Augmentation(reverb=True, noise_snr=(5,), babble_snr=(5,), seed=1)
    feats = {
        name: _features(
            compute_fbank(tiny_corpus.manifest_dir, tmp_path / name, "synth", "test",
                          augment=a)[0]
        )
        for name, a in [("a", aug), ("b", aug), ("c", replace(aug, seed=2))]
    }  # fmt: skip
    assert list(feats["a"]) == list(feats["b"]) == list(feats["c"])
    for cid in feats["a"]:
        assert np.array_equal(feats["a"][cid], feats["b"][cid]), cid
    for s in ("_rvb", "_noise5", "_babble5"):  # another seed: other rooms and noise
        ids = [c for c in feats["a"] if c.endswith(s)]
        assert len(ids) == 8
        assert not all(np.array_equal(feats["a"][c], feats["c"][c]) for c in ids), s


def test_speed_perturb_only_keeps_its_copies(tiny_corpus, tmp_path):
    from q4asr.data.features import Augmentation

    path, _ = compute_fbank(
        tiny_corpus.manifest_dir, tmp_path, "synth", "test",
        augment=Augmentation(speed_perturb=[1.1]),
    )  # fmt: skip
    ids = [c.id for c in load_manifest(path)]
    clean = [c.id for c in load_manifest(tiny_corpus.cuts["test"])]
    assert ids == clean + [c + "_sp1.1" for c in clean]
    assert not (tmp_path / "augment").exists()  # no RIR or noise written


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"speed_perturb": [1.0]}, "speed_perturb 1: use factors in"),
        ({"volume_perturb": [0]}, "volume_perturb 0: use gains in"),
        ({"noise_snr": [100]}, r"noise_snr 100: use SNRs in \[-10, 60\] dB"),
        ({"babble_snr": [10, 10]}, "babble_snr 10 10: a value given twice"),
    ],
)
def test_augmentation_validation(kwargs, match):
    from q4asr.data.features import Augmentation

    with pytest.raises(ValueError, match=match):
        Augmentation(**kwargs)


def test_augmentation_options(tiny_corpus, tmp_path, capsys):
    from q4asr.data.features import main

    args = ["--manifests", str(tiny_corpus.manifest_dir), "--out-dir", str(tmp_path)]
    args += ["--prefix", "synth", "--parts", "test"]
    with pytest.raises(SystemExit):
        main([*args, "--perturb-parts", "test", "--volume-perturb", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("error: --volume-perturb 0: use gains in [0.05, 20] and != 1")
    with pytest.raises(SystemExit):
        main([*args, "--reverb"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "given without --perturb-parts" in err
    main([*args, "--perturb-parts", "test", "--noise-snr", "-5"])
    ids = [c.id for c in load_manifest(tmp_path / "synth_cuts_test.jsonl.gz")]
    assert len(ids) == 16 and ids[-1].endswith("_noise-5")


def test_parallel_jobs_give_the_features_of_one_job(tiny_corpus, tmp_path):
    one, _ = compute_fbank(tiny_corpus.manifest_dir, tmp_path / "one", "synth", "test")
    two, _ = compute_fbank(
        tiny_corpus.manifest_dir, tmp_path / "two", "synth", "test", num_jobs=2
    )
    assert len(list((tmp_path / "two").glob("synth_feats_test_*.lca"))) == 2
    a, b = _features(one), _features(two)
    assert sorted(a) == sorted(b) and len(a) > 1
    for cid in a:
        np.testing.assert_allclose(a[cid], b[cid], atol=1e-5, err_msg=cid)
