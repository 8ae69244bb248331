"""The training data module: batches, filtering of bad cuts, resumable sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from lhotse import CutSet
from lhotse.utils import fastcopy

from q4asr.config import ConfigError, SpecAugmentConfig
from q4asr.data.datamodule import (
    MIN_FRAMES,
    AsrDataset,
    CutFilter,
    DataSpec,
    SpecAugmenter,
    cut_text,
    make_loader,
    restore_sampler,
    sampler_state,
    subsampled_length,
    warp_mel_axis,
)
from q4asr.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_corpus):
    return Tokenizer(tiny_corpus.bpe_model)


def _spec(**kw) -> DataSpec:
    d = dict(max_duration=8.0, num_buckets=2, seed=3, num_workers=0)
    d.update(kw)
    return DataSpec(**d)


def _with_text(cut, text):
    return fastcopy(cut, supervisions=[fastcopy(cut.supervisions[0], text=text)])


def test_batches_cover_the_epoch(tiny_corpus, tok):
    data = make_loader(tiny_corpus.cuts["train"], tok, _spec(), train=True)
    data.sampler.set_epoch(0)
    seen = []
    for b in data.loader:
        x, lens = b["features"], b["feature_lens"]
        n = len(b["cut_ids"])
        assert x.ndim == 3 and x.shape[0] == n and x.shape[2] == 80
        assert lens.dtype == torch.int64 and int(lens.max()) == x.shape[1]
        assert b["tokens"] == tok.encode(b["texts"])
        assert b["duration"] <= 8.0 + 1e-6
        for i in range(n):  # padding is zero, valid frames are not
            assert torch.all(x[i, lens[i] :] == 0)
            assert x[i, : lens[i]].abs().sum() > 0
        seen += b["cut_ids"]
    train_ids = [c.id for c in CutSet.from_file(tiny_corpus.cuts["train"])]
    assert sorted(seen) == sorted(train_ids)
    assert seen != train_ids  # shuffled (seeded)


def test_filter_rejects_unusable_cuts_with_reasons(tiny_corpus, tok, caplog):
    cuts = CutSet.from_file(tiny_corpus.cuts["train"]).to_eager()
    good = cuts[0]
    short = good.truncate(duration=0.05)
    long_text = _with_text(good, " ".join(["EVERY MAN FOR HIMSELF"] * 20))
    cases = {
        "empty": _with_text(good, "  "),
        "short": fastcopy(short, id="short"),
        "tokens": fastcopy(long_text, id="tokens"),
        "nofeat": fastcopy(good, id="nofeat", features=None),
    }
    cases["empty"] = fastcopy(cases["empty"], id="empty")
    f = CutFilter(tok, need_features=True, max_duration=30.0, name="t")
    with caplog.at_level(logging.WARNING, logger="q4asr"):
        assert f(good)
        for cut in cases.values():
            assert not f(cut)
    assert set(f.rejected) == set(cases)
    assert f.rejected["empty"] == "empty transcript"
    assert "too short" in f.rejected["short"] and subsampled_length(MIN_FRAMES) >= 1
    assert "tokens >" in f.rejected["tokens"]
    assert "no precomputed features" in f.rejected["nofeat"]
    for cid in cases:
        assert f"skipping cut {cid}:" in caplog.text
    # with on-the-fly features a cut without features but with audio is fine
    assert CutFilter(tok, need_features=False)(cases["nofeat"])
    too_long = CutFilter(tok, need_features=True, max_duration=0.5)
    assert not too_long(good) and "max_utterance_duration" in too_long.rejected[good.id]


# lhotse falls back to audioread for the broken file; its imports warn
@pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*")
def test_unreadable_features_and_audio_are_skipped(tiny_corpus, tok, tmp_path, caplog):
    cuts = CutSet.from_file(tiny_corpus.cuts["train"]).to_eager()
    a, b, c = cuts[0], cuts[1], cuts[2]
    garbage = tmp_path / "garbage.lca"
    garbage.write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    bad_feats = fastcopy(b, features=fastcopy(b.features, storage_path=str(garbage)))
    ds = AsrDataset(tok)
    with caplog.at_level(logging.WARNING, logger="q4asr"):
        batch = ds[CutSet.from_cuts([a, bad_feats, c])]
    assert batch["cut_ids"] == [a.id, c.id]
    assert (
        list(batch["skipped"]) == [b.id]
        and "cannot read features" in batch["skipped"][b.id]
    )
    assert f"skipping cut {b.id}" in caplog.text
    assert batch["features"].shape[0] == 2
    # on the fly: a corrupted audio file is skipped the same way
    src = a.recording.sources[0].source
    broken = tmp_path / "broken.flac"
    broken.write_bytes(open(src, "rb").read()[:200])
    bad_audio = fastcopy(
        a,
        id="bad-audio",
        recording=fastcopy(
            a.recording, sources=[fastcopy(a.recording.sources[0], source=str(broken))]
        ),
    )
    fly = AsrDataset(tok, on_the_fly_features=True)
    batch = fly[CutSet.from_cuts([bad_audio, c])]
    assert (
        batch["cut_ids"] == [c.id]
        and "cannot read audio" in batch["skipped"]["bad-audio"]
    )
    # ... and the on-the-fly features match the precomputed ones (lilcom is lossy)
    pre = torch.as_tensor(c.load_features())
    got = batch["features"][0, : batch["feature_lens"][0]]
    assert got.shape == pre.shape
    assert (got - pre).abs().max() < 0.1
    # a batch where every cut fails is empty, not an exception
    empty = ds[CutSet.from_cuts([bad_feats])]
    assert empty["features"].shape[0] == 0 and empty["tokens"] == []
    assert cut_text(a) == a.supervisions[0].text


def test_sampler_state_resumes_exactly_despite_prefetch(tiny_corpus, tok):
    spec = _spec(num_workers=1, max_duration=5.0)
    ref = make_loader(tiny_corpus.cuts["train"], tok, spec, train=True)
    ref.sampler.set_epoch(1)
    order = [b["cut_ids"] for b in ref.loader]
    assert len(order) >= 6

    run = make_loader(tiny_corpus.cuts["train"], tok, spec, train=True)
    run.sampler.set_epoch(1)
    it = iter(run.loader)
    consumed = [next(it)["cut_ids"] for _ in range(3)]
    state = sampler_state(run.sampler, epoch=1, batches_done=3)
    del it
    assert consumed == order[:3]

    resumed = make_loader(tiny_corpus.cuts["train"], tok, spec, train=True)
    restore_sampler(resumed.sampler, state)
    resumed.sampler.set_epoch(1)  # what the training loop does: keeps the position
    rest = [b["cut_ids"] for b in resumed.loader]
    assert rest == order[3:]


def test_spec_augment_keeps_shape_and_input(tiny_corpus, tok):
    ds = AsrDataset(tok)
    batch = ds[CutSet.from_file(tiny_corpus.cuts["dev"]).subset(first=3)]
    x, lens = batch["features"], batch["feature_lens"]
    aug = SpecAugmenter(
        SpecAugmentConfig(p=1.0, time_warp_factor=5, frames_mask_size=10)
    )
    torch.manual_seed(0)
    y = aug(x, lens)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(x, batch["features"])  # the input is not modified in place
    off = SpecAugmenter(SpecAugmentConfig(p=0.0))
    assert torch.equal(off(x, lens), x)


def test_warp_mel_axis_moves_spectral_peaks_and_keeps_the_band():
    f = 80
    peak = torch.zeros(3, 2, f)
    peak[:, :, 40] = 1.0
    y = warp_mel_axis(peak, torch.tensor([1.0, 1.25, 0.8]))
    assert torch.equal(y[0], peak[0])  # factor 1: unchanged
    assert y[1, 0].argmax() == 32  # a longer vocal tract: the peak moves down
    assert y[2, 0].argmax() == 50  # a shorter one: up
    ramp = torch.arange(f, dtype=torch.float32).expand(2, 4, f)
    w = warp_mel_axis(ramp, torch.tensor([1.1, 0.9]))
    assert torch.equal(w[:, :, 0], ramp[:, :, 0])  # both ends stay where they are
    assert torch.allclose(w[:, :, -1], ramp[:, :, -1])
    assert (w.diff(dim=2) > 0).all()  # a monotonic map: no bin folds over another
    assert torch.allclose(w[0, 0, 10], torch.tensor(11.0))
    assert torch.allclose(w[1, 0, 10], torch.tensor(9.0))


def test_spec_augment_freq_warp_draws_a_factor_per_utterance(tiny_corpus, tok):
    batch = AsrDataset(tok)[CutSet.from_file(tiny_corpus.cuts["dev"]).subset(first=3)]
    x, lens = batch["features"], batch["feature_lens"]
    no_masks = {"p": 0.0}
    torch.manual_seed(0)
    y = SpecAugmenter(SpecAugmentConfig(freq_warp=0.1, **no_masks))(x, lens)
    assert y.shape == x.shape
    for n in range(x.shape[0]):  # every utterance warped, each by its own factor
        assert not torch.allclose(y[n], x[n])
    torch.manual_seed(0)
    factors = 1.0 + 0.1 * (2.0 * torch.rand(x.shape[0]) - 1.0)
    assert torch.allclose(y, warp_mel_axis(x, factors))
    assert torch.equal(SpecAugmenter(SpecAugmentConfig(**no_masks))(x, lens), x)
    with pytest.raises(ConfigError, match="train.spec_augment.freq_warp: must be < 0.5"):
        SpecAugmentConfig(freq_warp=0.5)
    with pytest.raises(ConfigError, match="freq_warp: expected a number"):
        SpecAugmentConfig(freq_warp="x")
