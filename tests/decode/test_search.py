"""Greedy and modified beam search decode an overfitted tiny transducer exactly."""

import pytest
import torch

from q4asr.decode.search import greedy_search, modified_beam_search
from q4asr.model import ModelConfig, build_model


def token_template_batch(num_utts, num_mel_bins, vocab_size, seed):
    """Synthetic "speech": each token is a fixed random spectrum held for 10-17
    frames (plus noise), with silence before, between and after tokens; no token
    repeats its predecessor (a context-2 stateless decoder cannot count repeats).

    -> feats (N, T, F) float, feat_lens (N,) int64, targets list[list[int]].
    """
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(vocab_size, num_mel_bins, generator=g)

    def randint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    utts, targets = [], []
    for _ in range(num_utts):
        length = randint(3, 8)
        tokens = [randint(1, vocab_size)]
        while len(tokens) < length:
            tok = randint(1, vocab_size)
            if tok != tokens[-1]:
                tokens.append(tok)
        segs = [torch.zeros(randint(4, 12), num_mel_bins)]
        for tok in tokens:
            segs.append(templates[tok].expand(randint(10, 18), num_mel_bins))
            segs.append(torch.zeros(randint(0, 6), num_mel_bins))
        segs.append(torch.zeros(randint(8, 16), num_mel_bins))
        x = torch.cat(segs)
        utts.append(x + 0.3 * torch.randn(x.shape, generator=g))
        targets.append(tokens)
    lens = torch.tensor([len(u) for u in utts], dtype=torch.int64)
    feats = torch.zeros(num_utts, int(lens.max()), num_mel_bins)
    for i, u in enumerate(utts):
        feats[i, : len(u)] = u
    return feats, lens, targets


def overfit(cfg, feats, lens, targets, steps, seed=0, lr=1e-2, warmup_steps=20):
    """Train a fresh model on one fixed batch; returns (model, per-step losses)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(targets)
    losses = []
    model.train()
    for step in range(steps):
        out = model(feats, lens, targets, warmup=step / warmup_steps)
        opt.zero_grad()
        (out["loss"] / n).backward()
        opt.step()
        losses.append(float(out["loss"].detach()) / n)
    return model.eval(), losses


@pytest.fixture(scope="module")
def overfitted():
    cfg = ModelConfig.tiny()
    feats, lens, targets = token_template_batch(4, cfg.num_mel_bins, cfg.vocab_size, 2)
    model, losses = overfit(cfg, feats, lens, targets, steps=300, seed=1)
    return model, feats, lens, targets, losses


def test_overfit_loss_falls(overfitted):
    *_, losses = overfitted
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_greedy_search_decodes_training_utterances(overfitted):
    model, feats, lens, targets, _ = overfitted
    enc, enc_lens = model.encode(feats, lens)
    # memorised (not acoustic) alignments may put several symbols on one frame
    assert greedy_search(model, enc, enc_lens, max_sym_per_frame=4) == targets


def test_modified_beam_search_decodes_training_utterances(overfitted):
    model, feats, lens, targets, _ = overfitted
    enc, enc_lens = model.encode(feats, lens)
    assert modified_beam_search(model, enc, enc_lens, beam=4) == targets


def test_search_is_batch_independent(overfitted):
    """Decoding an utterance alone or inside a padded batch gives the same result."""
    model, feats, lens, targets, _ = overfitted
    enc, enc_lens = model.encode(feats, lens)
    batched_g = greedy_search(model, enc, enc_lens, max_sym_per_frame=3)
    batched_b = modified_beam_search(model, enc, enc_lens, beam=3)
    for i in range(len(targets)):
        e, el = model.encode(feats[i : i + 1, : lens[i]], lens[i : i + 1])
        assert greedy_search(model, e, el, max_sym_per_frame=3)[0] == batched_g[i]
        assert modified_beam_search(model, e, el, beam=3)[0] == batched_b[i]


def test_beam_one_and_untrained_model_shapes():
    cfg = ModelConfig.tiny()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    enc = torch.randn(3, 9, cfg.d_model)
    enc_lens = torch.tensor([9, 4, 1])
    for hyps in (
        greedy_search(model, enc, enc_lens, max_sym_per_frame=2),
        modified_beam_search(model, enc, enc_lens, beam=1),
        modified_beam_search(model, enc, enc_lens, beam=5),
    ):
        assert len(hyps) == 3
        for hyp in hyps:
            assert all(0 < tok < cfg.vocab_size for tok in hyp)
    # modified beam search: one symbol per frame at most
    assert all(
        len(h) <= t
        for h, t in zip(modified_beam_search(model, enc, enc_lens, 4), [9, 4, 1])
    )
    assert all(
        len(h) <= 2 * t
        for h, t in zip(greedy_search(model, enc, enc_lens, 2), [9, 4, 1])
    )


def test_greedy_equals_beam_of_one():
    cfg = ModelConfig.tiny()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    enc = 3 * torch.randn(4, 20, cfg.d_model)
    enc_lens = torch.tensor([20, 13, 5, 1])
    assert greedy_search(model, enc, enc_lens) == modified_beam_search(
        model, enc, enc_lens, beam=1
    )


def test_search_rejects_bad_input():
    cfg = ModelConfig.tiny()
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="enc must be"):
        greedy_search(model, torch.randn(2, 5, cfg.d_model + 1), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="exceeds"):
        modified_beam_search(
            model, torch.randn(2, 5, cfg.d_model), torch.tensor([6, 5])
        )
    with pytest.raises(ValueError, match="beam"):
        modified_beam_search(
            model, torch.randn(1, 5, cfg.d_model), torch.tensor([5]), 0
        )
