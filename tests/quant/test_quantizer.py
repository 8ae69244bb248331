"""Quantizer numerics: error bounds per bit width, STE gradients."""

import pytest
import torch

from q4asr.quant.quantizer import (
    compute_scale,
    dequantize,
    fake_quant,
    qmax_for,
    quantize,
)


@pytest.mark.parametrize("bits", range(2, 9))
def test_error_bound_per_channel(bits):
    torch.manual_seed(bits)
    x = torch.randn(16, 64) * torch.logspace(-3, 2, 16)[:, None]
    q, s = quantize(x, bits, (0,))
    qmax = qmax_for(bits)
    assert q.dtype == torch.int8 and s.shape == (16, 1)
    assert int(q.abs().max()) <= qmax
    # every row uses the full grid: its max maps to +-qmax
    assert torch.equal(q.abs().amax(1), torch.full((16,), qmax, dtype=torch.int8))
    err = (dequantize(q, s) - x).abs()
    # round-to-nearest: at most half a step (plus float rounding)
    assert bool((err <= s * 0.5 * (1 + 1e-5)).all())
    # and strictly more error with fewer bits on the same data
    if bits > 2:
        q2, s2 = quantize(x, bits - 1, (0,))
        assert (dequantize(q2, s2) - x).abs().mean() > err.mean()


def test_per_tensor_and_zero_rows():
    x = torch.zeros(3, 5)
    x[1] = torch.tensor([1.0, -2.0, 0.5, 0.0, 4.0])
    q, s = quantize(x, 8, None)
    assert s.shape == (1, 1) and float(s) == pytest.approx(4.0 / 127)
    q, s = quantize(x, 8, (0,))
    assert (
        torch.isfinite(s).all()
        and int(q[0].abs().sum()) == 0
        and int(q[2].abs().sum()) == 0
    )


def test_static_scale_clamps():
    x = torch.tensor([[-3.0, -1.0, 0.2, 1.0, 3.0]])
    q, _, mask = quantize(x, 4, scale=torch.tensor([[1.0 / 7]]), return_mask=True)
    assert q.tolist() == [[-7, -7, 1, 7, 7]]
    assert mask.tolist() == [[False, True, True, True, False]]


def test_ste_gradient_inside_and_outside_clip_range():
    x = torch.tensor([[-3.0, -1.0, 0.2, 1.0, 3.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    y = fake_quant(x, 4, scale=torch.tensor([[1.0 / 7]]))
    y.backward(g)
    assert x.grad.tolist() == [[0.0, 2.0, 3.0, 4.0, 0.0]]
    # dynamic scale: everything is inside, gradient passes unchanged
    x2 = torch.randn(4, 8, requires_grad=True)
    fake_quant(x2, 3, (0,)).backward(g.new_ones(4, 8) * 7)
    assert torch.equal(x2.grad, torch.full((4, 8), 7.0))


def test_scale_is_max_over_reduced_dims():
    w = torch.randn(6, 4, 3)
    s = compute_scale(w, 4, (0,))
    assert s.shape == (6, 1, 1)
    torch.testing.assert_close(s.flatten(), w.abs().amax((1, 2)) / 7, atol=0, rtol=0)
