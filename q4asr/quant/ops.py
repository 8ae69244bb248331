"""The one forward of each quantized op, shared by training and serving.

A QAT module calls these functions with its float weight quantized on the fly
(:func:`~q4asr.quant.quantizer.quantize_weight`, inside a straight-through autograd
function, :mod:`q4asr.quant.ste`); an integer module calls them with the weight it
stores. The same code then runs in both, so the served model computes exactly what
was trained: parity follows from the structure, and the tests check it.

Operands:

* the weight ``w`` is a :class:`QWeight` (int8 values, or int4 values held in int8
  or packed two a byte, plus float32 scales) or a float tensor (a float weight, or in
  QAT a fake-quantized one, whose values equal ``QWeight.dequantize()``);
* the input is quantized as its :class:`ActQuant` says (bits, per row / per group /
  per tensor, dynamic or a calibrated static scale), or stays float.

When both are quantized the op runs on integers (:mod:`q4asr.quant.kernels`);
otherwise it is the float op on the dequantized (fake-quantized) operands. Dtypes:
the input may be float32, bfloat16 or float16; quantization and the rescale run in
float32; the output is in the autocast dtype when autocast is on, else in the
input's dtype (see docs/quantization.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from q4asr.quant.kernels import (
    int_conv2d,
    int_grouped_conv1d,
    int_linear,
    unpack_int4,
)
from q4asr.quant.quantizer import dequantize, fake_quant, qmax_for, quantize

INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class QWeight(NamedTuple):
    """A quantized weight.

    q: (n_out, K) int8 values, or (n_out, ceil(K/2)) uint8 with two int4 values a
    byte (``k`` then gives K); scale: (n_out, 1) or (1, 1) float32; bits: 2..8.
    """

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    k: int

    @property
    def packed(self) -> bool:
        return self.q.dtype == torch.uint8

    def values(self) -> torch.Tensor:
        """(n_out, K) int8."""
        return unpack_int4(self.q, self.k) if self.packed else self.q

    def dequantize(self) -> torch.Tensor:
        """(n_out, K) float32."""
        return dequantize(self.values(), self.scale)


Weight = QWeight | torch.Tensor


class QAct(NamedTuple):
    """A quantized input: q int8, scale float32, mask (bool, where not clipped) or
    None."""

    q: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class ActQuant:
    """How an op's input is quantized.

    bits: 2..8, or None (the input stays float). granularity: ``token`` (one scale
    per row of the matmul operand, or per sample and group for a grouped conv) or
    ``tensor``. static_scale: a calibrated per-tensor scale (0-d float32), or None
    for scales computed from each input.
    """

    bits: int | None
    granularity: str = "token"
    static_scale: torch.Tensor | None = None

    def keep(self, per_group: bool = False) -> tuple[int, ...] | None:
        """Kept dims: rows of (M, K) and samples of (N, C, H, W), or (N, G) of a
        grouped operand (N, G, C/G, T); None for one scale per tensor."""
        if self.granularity == "tensor":
            return None
        return (0, 1) if per_group else (0,)

    def _scale(self, ndim: int) -> torch.Tensor | None:
        s = self.static_scale
        return None if s is None else s.reshape([1] * ndim)

    def quantize(self, x: torch.Tensor, per_group: bool, mask: bool) -> QAct:
        # a dynamic scale clips nothing: the mask is only needed for a static one
        mask = mask and self.static_scale is not None
        q, s, *m = quantize(
            x, self.bits, self.keep(per_group), self._scale(x.ndim), return_mask=mask
        )
        return QAct(q, s, m[0] if mask else None)

    def fake(self, x: torch.Tensor, per_group: bool = False) -> torch.Tensor:
        """dequantize(quantize(x)) with a straight-through gradient; x when float."""
        if self.bits is None:
            return x
        return fake_quant(x, self.bits, self.keep(per_group), self._scale(x.ndim))


def check_input(name: str, x: torch.Tensor) -> None:
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(
            f"{name}: quantized modules take float32, bfloat16 or float16 input, "
            f"got {x.dtype}"
        )


def amp_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force on ``x``'s device, or None."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def out_dtype(x: torch.Tensor) -> torch.dtype:
    """Output dtype of a quantized op: the autocast dtype, else the input's."""
    amp = amp_dtype(x)
    return amp if amp is not None else x.dtype


def float_input(x: torch.Tensor) -> torch.Tensor:
    """Input of a float op on (fake-)quantized float32 operands: autocast casts the
    operands itself; without autocast a bfloat16/float16 input is computed in
    float32."""
    return x if amp_dtype(x) is not None else x.float()


def _float_weight(w: Weight) -> torch.Tensor:
    return w.dequantize() if isinstance(w, QWeight) else w


def unfold1d(
    x: torch.Tensor, k: int, stride: int, padding: int, dilation: int
) -> tuple[torch.Tensor, int]:
    """x: (N, C, T) -> patches (N * L, C * k), L output positions."""
    N, C, T = x.shape
    if k == 1 and stride == 1 and padding == 0:
        return x.transpose(1, 2).reshape(N * T, C), T
    cols = F.unfold(
        x.unsqueeze(2),
        (1, k),
        dilation=(1, dilation),
        padding=(0, padding),
        stride=(1, stride),
    )  # (N, C*k, L)
    L = cols.shape[-1]
    return cols.transpose(1, 2).reshape(N * L, C * k), L


def linear(
    x: torch.Tensor,
    w: Weight,
    bias: torch.Tensor | None,
    act: ActQuant,
    saved: list[QAct] | None = None,
) -> torch.Tensor:
    """x: (M, K); w: (N, K) -> (M, N). With ``saved``, the integer path appends
    the quantized input (for a straight-through backward)."""
    out = out_dtype(x)
    if isinstance(w, QWeight) and act.bits is not None:
        qa = act.quantize(x, per_group=False, mask=saved is not None)
        if saved is not None:
            saved.append(qa)
        return int_linear(qa.q, qa.scale, w.values(), w.scale, bias, out)
    x = act.fake(float_input(x))
    return F.linear(x, _float_weight(w), bias).to(out)


class Conv1dArgs(NamedTuple):
    stride: int
    padding: int
    dilation: int
    groups: int

    @classmethod
    def of(cls, conv: torch.nn.Conv1d) -> Conv1dArgs:
        """The arguments of a Conv1d (float or QAT)."""
        return cls(conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)


def conv1d(
    x: torch.Tensor,
    w: Weight,
    bias: torch.Tensor | None,
    act: ActQuant,
    shape: tuple[int, int, int],
    args: Conv1dArgs,
    saved: list[QAct] | None = None,
    linear_op: Callable[..., torch.Tensor] = linear,
) -> torch.Tensor:
    """x: (N, C_in, T); w: (n_out, C_in/groups * k), shape (n_out, C_in/groups, k)
    -> (N, n_out, T').

    groups=1 with a quantized input: unfold, then ``linear_op`` (:func:`linear`; QAT
    passes its straight-through integer linear). Grouped/depthwise: an exact integer
    conv on integer-valued float32 (kernels.int_grouped_conv1d), the input scaled per
    sample and group."""
    n_out, _, k = shape
    N, C, T = x.shape
    if args.groups == 1 and act.bits is not None:
        cols, L = unfold1d(x, k, args.stride, args.padding, args.dilation)
        y = linear_op(cols, w, bias, act)
        return y.reshape(N, L, n_out).transpose(1, 2)
    out = out_dtype(x)
    g = args.groups
    if isinstance(w, QWeight) and act.bits is not None:
        qa = act.quantize(
            x.reshape(N, g, C // g, T), per_group=True, mask=saved is not None
        )
        if saved is not None:
            saved.append(qa)
        y = int_grouped_conv1d(
            qa.q.reshape(N, C, T),
            qa.scale,
            w.values().reshape(shape),
            w.scale.reshape(-1, 1, 1),
            bias,
            qmax_for(act.bits),
            qmax_for(w.bits),
            args.stride,
            args.padding,
            args.dilation,
            g,
        )
        return y.to(out)
    x = float_input(x)
    if act.bits is not None:
        x = act.fake(x.reshape(N, g, C // g, T), per_group=True).reshape(N, C, T)
    wf = _float_weight(w).reshape(shape)
    y = F.conv1d(x, wf, bias, args.stride, args.padding, args.dilation, g)
    return y.to(out)


class Conv2dArgs(NamedTuple):
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, conv: torch.nn.Conv2d) -> Conv2dArgs:
        """The arguments of a Conv2d (float or QAT; groups=1)."""
        return cls(conv.kernel_size, conv.stride, conv.padding, conv.dilation)


def conv2d(
    x: torch.Tensor,
    w: Weight,
    bias: torch.Tensor | None,
    act: ActQuant,
    shape: tuple[int, int, int, int],
    args: Conv2dArgs,
    saved: list[QAct] | None = None,
) -> torch.Tensor:
    """x: (N, C, H, W); w: (n_out, C * kh * kw), shape (n_out, C, kh, kw)
    -> (N, n_out, H', W'). The input is quantized per sample (or per tensor) before
    it is unfolded (kernels.int_conv2d)."""
    out = out_dtype(x)
    if isinstance(w, QWeight) and act.bits is not None:
        qa = act.quantize(x, per_group=False, mask=saved is not None)
        if saved is not None:
            saved.append(qa)
        return int_conv2d(
            qa.q,
            qa.scale,
            w.values().reshape(shape),
            w.scale,
            bias,
            args.stride,
            args.padding,
            args.dilation,
            out,
        )
    x = act.fake(float_input(x))
    wf = _float_weight(w).reshape(shape)
    return F.conv2d(x, wf, bias, args.stride, args.padding, args.dilation).to(out)


def embedding(
    ids: torch.Tensor,
    w: Weight,
    padding_idx: int | None,
    scale_grad_by_freq: bool = False,
) -> torch.Tensor:
    """ids: (...) int64; w: (vocab, dim) -> (..., dim) float32. A QWeight is looked up
    row by row (packed rows too) and only those rows are dequantized."""
    if not isinstance(w, QWeight):
        return F.embedding(ids, w, padding_idx, None, 2.0, scale_grad_by_freq)
    rows = w.q[ids]
    q = unpack_int4(rows, w.k) if w.packed else rows
    s = w.scale[ids] if w.scale.shape[0] > 1 else w.scale
    return dequantize(q, s)
