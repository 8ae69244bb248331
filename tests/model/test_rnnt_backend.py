"""The pruned RNN-T loss backend against a plain-PyTorch reference RNN-T loss."""

import torch

from q4asr.model import rnnt_backend as rb

# float32 log-space recursions over T*U cells; observed differences are ~1e-5.
ATOL = 1e-4
RTOL = 1e-4


def reference_rnnt_loss(logits, symbols, blank, t_lens, s_lens):
    """Standard RNN-T negative log-likelihood, summed over the batch.

    logits: (B, T, S+1, C) unnormalised joiner outputs; symbols: (B, S) int64.
    From (t, u): blank moves to (t+1, u), symbol y_u moves to (t, u+1); the path
    ends with a blank at (T-1, U).
    """
    logp = logits.log_softmax(-1)
    total = logits.new_zeros(())
    for b in range(logits.shape[0]):
        T, U = int(t_lens[b]), int(s_lens[b])
        alpha = [[None] * (U + 1) for _ in range(T)]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[t][u] = logits.new_zeros(())
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1][u] + logp[b, t - 1, u, blank])
                if u > 0:
                    terms.append(alpha[t][u - 1] + logp[b, t, u - 1, symbols[b, u - 1]])
                alpha[t][u] = torch.logsumexp(torch.stack(terms), 0)
        total = total - (alpha[T - 1][U] + logp[b, T - 1, U, blank])
    return total


def _inputs(seed=0, B=3, T=7, S=4, C=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, S + 1, C, generator=g)
    symbols = torch.randint(1, C, (B, S), generator=g)
    t_lens = torch.tensor([T, T - 2, T - 1])[:B]
    s_lens = torch.tensor([S, S - 1, 2])[:B]
    boundary = torch.zeros(B, 4, dtype=torch.int64)
    boundary[:, 2] = s_lens
    boundary[:, 3] = t_lens
    return logits, symbols, t_lens, s_lens, boundary


def test_backend_is_known():
    assert rb.BACKEND in ("k2", "fast_rnnt")


def test_full_loss_and_gradient_match_reference():
    logits, symbols, t_lens, s_lens, boundary = _inputs()
    a = logits.clone().requires_grad_(True)
    ours = rb.rnnt_loss(a, symbols, termination_symbol=0, boundary=boundary, reduction="sum")
    ours.backward()
    b = logits.clone().requires_grad_(True)
    ref = reference_rnnt_loss(b, symbols, 0, t_lens, s_lens)
    ref.backward()
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=RTOL)


def test_pruned_loss_with_full_range_matches_reference():
    """With a prune range covering every symbol position, pruning drops nothing."""
    logits, symbols, t_lens, s_lens, boundary = _inputs(seed=1)
    B, T, S1, C = logits.shape
    # the pruned path: simple (separate am/lm) loss gives the gradients for the ranges
    am = torch.randn(B, T, C)
    lm = torch.randn(B, S1, C)
    _, (px_grad, py_grad) = rb.rnnt_loss_smoothed(
        lm=lm, am=am, symbols=symbols, termination_symbol=0,
        lm_only_scale=0.25, am_only_scale=0.0, boundary=boundary,
        reduction="sum", return_grad=True,
    )
    ranges = rb.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad,
                                      boundary=boundary, s_range=S1)
    assert ranges.shape == (B, T, S1)
    pruned_logits = torch.gather(
        logits, 2, ranges.unsqueeze(-1).expand(B, T, S1, C)
    ).requires_grad_(True)
    ours = rb.rnnt_loss_pruned(logits=pruned_logits, symbols=symbols, ranges=ranges,
                               termination_symbol=0, boundary=boundary, reduction="sum")
    ours.backward()
    full = logits.clone().requires_grad_(True)
    ref = reference_rnnt_loss(full, symbols, 0, t_lens, s_lens)
    ref.backward()
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    # scatter the pruned gradient back to full positions and compare
    back = torch.zeros_like(logits).scatter_add(
        2, ranges.unsqueeze(-1).expand(B, T, S1, C), pruned_logits.grad)
    torch.testing.assert_close(back, full.grad, atol=ATOL, rtol=RTOL)
