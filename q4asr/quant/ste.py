"""Straight-through autograd functions of the QAT modules' integer paths.

Each forward quantizes the float weight (:func:`~q4asr.quant.quantizer.
quantize_weight`) and runs the op's one forward from :mod:`q4asr.quant.ops` with it,
the integer path the served model runs. The backward is that of the fake-quantized
float op, ``op(dq(q(x)), dq(q(w)))``: the gradient passes straight through the
rounding, and is zero where a static activation scale clipped the input. Its float
products run in the gradient's dtype (the autocast dtype under mixed precision);
weight and bias gradients are returned in the parameters' dtype.
"""

from __future__ import annotations

import torch
from torch.nn.grad import conv1d_input, conv1d_weight, conv2d_input, conv2d_weight

from q4asr.quant import ops
from q4asr.quant.quantizer import dequantize, quantize_weight


def weight_operand(
    w: torch.Tensor, bits: int, keep: tuple[int, ...] | None
) -> ops.QWeight:
    """The QWeight of a float weight w (n_out, ...), flattened to (n_out, K)."""
    w2 = w.detach().reshape(w.shape[0], -1)
    q, s = quantize_weight(w2, bits, keep)
    return ops.QWeight(q, s, bits, w2.shape[1])


class _STE(torch.autograd.Function):
    """Shared bookkeeping: saves the quantized operands and the dtypes."""

    @staticmethod
    def _save(ctx, x, w, bias, qw: ops.QWeight, qa: ops.QAct) -> None:
        ctx.save_for_backward(qa.q, qa.scale, qa.mask, qw.q, qw.scale)
        ctx.dtypes = x.dtype, w.dtype
        ctx.has_bias = bias is not None

    @staticmethod
    def _grads_out(ctx, gx, gw, gb):
        x_dtype, w_dtype = ctx.dtypes
        return (
            None if gx is None else gx.to(x_dtype),
            None if gw is None else gw.to(w_dtype),
            None if gb is None else gb.to(w_dtype),
        )


class IntLinearSTE(_STE):
    """y = ops.linear(x, quantize_weight(w)) on (M, K) x (N, K)."""

    @staticmethod
    def forward(ctx, x, w, bias, w_bits, w_keep, act: ops.ActQuant):
        qw = weight_operand(w, w_bits, w_keep)
        saved: list[ops.QAct] = []
        y = ops.linear(x, qw, bias, act, saved)
        _STE._save(ctx, x, w, bias, qw, saved[0])
        return y

    @staticmethod
    def backward(ctx, g):
        qx, sx, mx, qw, sw = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ dequantize(qw, sw).to(g.dtype)
            if mx is not None:
                gx = gx * mx
        if ctx.needs_input_grad[1]:
            gw = g.t() @ dequantize(qx, sx).to(g.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return (*_STE._grads_out(ctx, gx, gw, gb), None, None, None)


class IntGroupedConv1dSTE(_STE):
    """Grouped/depthwise conv1d: ops.conv1d with quantize_weight(w)."""

    @staticmethod
    def forward(ctx, x, w, bias, w_bits, w_keep, act, args: ops.Conv1dArgs):
        qw = weight_operand(w, w_bits, w_keep)
        saved: list[ops.QAct] = []
        y = ops.conv1d(x, qw, bias, act, tuple(w.shape), args, saved)
        _STE._save(ctx, x, w, bias, qw, saved[0])
        ctx.args, ctx.x_shape, ctx.w_shape = args, x.shape, w.shape
        return y

    @staticmethod
    def backward(ctx, g):
        qxg, sx, mx, qw, sw = ctx.saved_tensors
        a = ctx.args
        conv = (a.stride, a.padding, a.dilation, a.groups)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_dq = dequantize(qw, sw).reshape(ctx.w_shape).to(g.dtype)
            gx = conv1d_input(ctx.x_shape, w_dq, g, *conv)
            if mx is not None:
                gx = gx * mx.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            x_dq = dequantize(qxg, sx).reshape(ctx.x_shape).to(g.dtype)
            gw = conv1d_weight(x_dq, ctx.w_shape, g, *conv)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2))
        return (*_STE._grads_out(ctx, gx, gw, gb), None, None, None, None)


class IntConv2dSTE(_STE):
    """Conv2d (groups=1): ops.conv2d with quantize_weight(w)."""

    @staticmethod
    def forward(ctx, x, w, bias, w_bits, w_keep, act, args: ops.Conv2dArgs):
        qw = weight_operand(w, w_bits, w_keep)
        saved: list[ops.QAct] = []
        y = ops.conv2d(x, qw, bias, act, tuple(w.shape), args, saved)
        _STE._save(ctx, x, w, bias, qw, saved[0])
        ctx.args, ctx.w_shape = args, w.shape
        return y

    @staticmethod
    def backward(ctx, g):
        qx, sx, mx, qw, sw = ctx.saved_tensors
        a = ctx.args
        conv = (a.stride, a.padding, a.dilation)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_dq = dequantize(qw, sw).reshape(ctx.w_shape).to(g.dtype)
            gx = conv2d_input(qx.shape, w_dq, g, *conv)
            if mx is not None:
                gx = gx * mx
        if ctx.needs_input_grad[1]:
            gw = conv2d_weight(dequantize(qx, sx).to(g.dtype), ctx.w_shape, g, *conv)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return (*_STE._grads_out(ctx, gx, gw, gb), None, None, None, None)
