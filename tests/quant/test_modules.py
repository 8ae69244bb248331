"""QAT modules: float/quant mode switch, parameter sharing, STE gradients."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from q4asr.quant import (
    IntConv2d,
    IntLinear,
    Precision,
    PrecisionPlan,
    QATConv1d,
    QATConv2d,
    QATEmbedding,
    QATLinear,
    prepare,
    set_quant_mode,
    unprepare,
)
from q4asr.quant.quantizer import fake_quant, fake_quant_weight, round_bias


def test_mode_switch_and_to_float():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    ref = lin(x)
    q = QATLinear.from_float(lin, Precision(4, 4), "lin")
    assert q.weight is lin.weight and q.bias is lin.bias
    yq = q(x)
    assert not torch.equal(yq, ref)
    torch.testing.assert_close(yq, ref, atol=0.5, rtol=0)  # quantized, yet close
    q.quant_enabled = False
    assert torch.equal(q(x), ref)
    back = q.to_float()
    assert type(back) is nn.Linear and back.weight is lin.weight
    m = prepare(
        nn.Sequential(nn.Linear(16, 8)),
        PrecisionPlan.from_dict({"default": {"weight_bits": 4, "act_bits": 4}}),
    )
    set_quant_mode(m, False)
    assert not m[0].quant_enabled
    set_quant_mode(m, True)
    assert m[0].quant_enabled
    w = m[0].weight
    m = unprepare(m)
    assert type(m[0]) is nn.Linear and m[0].weight is w
    assert not hasattr(m, "q4asr_plan")
    assert isinstance(prepare(m, PrecisionPlan.from_dict({"default": {}}))[0], nn.Linear)


def _fq_reference_grads(x, w, b, a_bits, w_bits, op):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    return x, w, b, op(x, w, b)


@pytest.mark.parametrize("wb,ab", [(4, 8), (8, 8), (4, 4), (4, None), (None, 8)])
def test_linear_ste_matches_fake_quant_reference(wb, ab):
    """Native QAT gradients equal those of y = qdq(x) @ qdq(w)^T + b."""
    torch.manual_seed(1)
    lin = nn.Linear(32, 24)
    x = torch.randn(2, 10, 32, requires_grad=True)
    g = torch.randn(2, 10, 24)
    q = QATLinear.from_float(lin, Precision(wb, ab), "lin")
    y = q(x)
    y.backward(g)
    x2, w2, b2, y2 = _fq_reference_grads(
        x,
        lin.weight,
        lin.bias,
        ab,
        wb,
        lambda x, w, b: F.linear(
            fake_quant(x, ab, (0, 1)), fake_quant_weight(w, wb, (0,)), round_bias(b)
        ),
    )
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin.weight.grad, w2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin.bias.grad, b2.grad, rtol=1e-5, atol=1e-5)


def test_depthwise_conv_ste_matches_reference():
    torch.manual_seed(2)
    conv = nn.Conv1d(8, 8, 5, padding=2, groups=8)
    x = torch.randn(3, 8, 20, requires_grad=True)
    g = torch.randn(3, 8, 20)
    q = QATConv1d.from_float(conv, Precision(4, 8), "dw")
    y = q(x)
    y.backward(g)
    x2, w2, b2, y2 = _fq_reference_grads(
        x,
        conv.weight,
        conv.bias,
        8,
        4,
        # per sample, per channel over time (depthwise: group = channel)
        lambda x, w, b: F.conv1d(
            fake_quant(x, 8, (0, 1)),
            fake_quant_weight(w, 4, (0,)),
            round_bias(b),
            1,
            2,
            1,
            8,
        ),
    )
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, w2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, b2.grad, rtol=1e-5, atol=1e-5)


def test_static_activation_gradient_is_zero_when_clipped():
    lin = nn.Linear(4, 3)
    q = QATLinear.from_float(
        lin, Precision(8, 8, act_granularity="tensor", act_static=True), "lin"
    )
    with pytest.raises(
        RuntimeError, match="lin: static activation scale is not calibrated"
    ):
        q(torch.ones(1, 4))
    q.act_amax.fill_(1.0)
    x = torch.tensor([[0.5, -2.0, 0.9, 3.0]], requires_grad=True)
    q(x).sum().backward()
    assert x.grad[0, 0] != 0 and x.grad[0, 2] != 0
    assert x.grad[0, 1] == 0 and x.grad[0, 3] == 0


def test_embedding_quantizes_weights_per_row():
    emb = nn.Embedding(10, 6)
    q = QATEmbedding.from_float(emb, Precision(4, 8), "emb")
    ids = torch.tensor([[1, 2, 3]])
    out = q(ids)
    ref = fake_quant_weight(emb.weight, 4, (0,))[ids]
    assert torch.equal(out, ref)
    assert len(torch.unique(out[0, 0])) <= 15  # at most 2*7+1 levels in a row


@pytest.mark.parametrize("wb,ab", [(4, 8), (8, 8), (None, 8), (4, None)])
@pytest.mark.parametrize("cin,pad", [(1, 0), (3, 1)])
def test_conv2d_ste_matches_reference(wb, ab, cin, pad):
    """Conv2d: activations scaled per sample (over C, H, W), weights per output
    channel; values and gradients equal those of conv2d(qdq(x), qdq(w))."""
    torch.manual_seed(3)
    conv = nn.Conv2d(cin, 6, 3, stride=2, padding=pad)
    x = torch.randn(2, cin, 15, 11, requires_grad=True)
    q = QATConv2d.from_float(conv, Precision(wb, ab), "c2")
    y = q(x)
    g = torch.randn_like(y)
    y.backward(g)
    x2, w2, b2, y2 = _fq_reference_grads(
        x,
        conv.weight,
        conv.bias,
        ab,
        wb,
        lambda x, w, b: F.conv2d(
            fake_quant(x, ab, (0,)),
            fake_quant_weight(w, wb, (0,)),
            round_bias(b),
            2,
            pad,
        ),
    )
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, w2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, b2.grad, rtol=1e-5, atol=1e-5)
    # the served module computes exactly the QAT eval output
    with torch.no_grad():
        xi = torch.randn(3, cin, 19, 9)
        assert torch.equal(IntConv2d.from_qat(q)(xi), q(xi))


def test_conv2d_static_scale_clips_and_masks_gradient():
    conv = nn.Conv2d(1, 2, 2)
    q = QATConv2d.from_float(
        conv, Precision(8, 8, act_granularity="tensor", act_static=True), "c2"
    )
    q.act_amax.fill_(1.0)
    x = torch.tensor([[[[0.5, -2.0], [0.9, 3.0]]]], requires_grad=True)
    q(x).sum().backward()
    assert x.grad[0, 0, 0, 0] != 0 and x.grad[0, 0, 1, 0] != 0
    assert x.grad[0, 0, 0, 1] == 0 and x.grad[0, 0, 1, 1] == 0


def test_int4_weight_is_read_from_qweight_at_each_call():
    """The integer module keeps no unpacked copy: a changed qweight is used."""
    torch.manual_seed(4)
    q = QATLinear.from_float(nn.Linear(9, 5), Precision(4, 8), "lin")
    m = IntLinear.from_qat(q)
    assert m.qweight.dtype == torch.uint8 and m.qweight.shape == (5, 5)
    x = torch.randn(4, 9)
    with torch.no_grad():
        y = m(x)
        m.qweight.zero_()
        assert torch.count_nonzero(m(x) - m.bias_operand()) == 0
        m.load_state_dict({**m.state_dict(), "qweight": IntLinear.from_qat(q).qweight})
        assert torch.equal(m(x), y)
    assert not any(isinstance(v, torch.Tensor) for v in vars(m).values())
