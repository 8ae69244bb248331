"""QAT modules (training) and integer modules (serving) for Linear, Conv1d, Conv2d and
Embedding.

A QAT module subclasses its float class, shares its ``Parameter`` objects (built by
``from_float``; ``to_float`` gives a plain module back, sharing them again) and holds
a :class:`~q4asr.quant.config.Precision`. In quantized mode its forward runs the
native integer arithmetic of :mod:`q4asr.quant.kernels` (when both weight and
activation are quantized) with a straight-through backward; in float mode
(``quant_enabled = False``) it is the float module.

An integer module (``Int*``, made by ``from_qat``) holds int8 or packed-int4 weights
and float32 scales, no float copy of a quantized weight, and calls the same
quantizer and kernels, so its output equals the QAT module's eval output exactly.

Activation scales: ``act_granularity: token`` is one scale per row of the matmul
operand: per frame for Linear and pointwise Conv1d, per output position (unfolded
patch) for Conv1d with groups=1, per sample (over C, H, W) for Conv2d, whose input is
quantized before unfolding so that overlapping patches share integer pixels. A grouped or depthwise Conv1d contracts over
(channels of a group) x (kernel taps), so its finest valid scale is per sample and
per group over time: for a depthwise conv that is per channel over the whole
utterance. We use that rather than per-tensor because the channels feeding the
conformer's depthwise conv (GLU outputs) differ widely in range, and a shared scale
would waste most of the 4/8-bit grid on the quiet channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv1d_input, conv1d_weight, conv2d_input, conv2d_weight

from q4asr.quant.config import Precision
from q4asr.quant.kernels import (
    FLOAT32_EXACT_LIMIT,
    grouped_conv_bound,
    int_conv2d,
    int_grouped_conv1d,
    int_linear,
    pack_int4,
    unpack_int4,
)
from q4asr.quant.quantizer import (
    dequantize,
    fake_quant,
    qmax_for,
    quantize,
    scale_from_amax,
)


def _w_keep(p: Precision) -> tuple[int, ...] | None:
    return (0,) if p.weight_granularity == "channel" else None


def _a_keep(p: Precision, ndim: int = 2) -> tuple[int, ...] | None:
    """Kept dims of the activation operand: rows of (M, K), or (N, G) of (N, G, Cg, T)."""
    if p.act_granularity == "tensor":
        return None
    return (0,) if ndim == 2 else (0, 1)


# --------------------------------------------------------------------------- autograd


class _IntLinearSTE(torch.autograd.Function):
    """y = int_linear(quantize(x), quantize(w)); backward as for
    y = dq(q(x)) @ dq(q(w))^T, masked where x was clipped."""

    @staticmethod
    def forward(ctx, x, w, bias, a_bits, w_bits, a_keep, w_keep, a_scale):
        # a dynamic scale clips nothing: the mask is only needed for a static one
        static = a_scale is not None
        qx, sx, *mx = quantize(x, a_bits, a_keep, a_scale, return_mask=static)
        mx = mx[0] if static else None
        qw, sw = quantize(w, w_bits, w_keep)
        y = int_linear(qx, sx, qw, sw, bias)
        ctx.save_for_backward(qx, sx, mx, qw, sw)
        ctx.has_bias = bias is not None
        ctx.dtypes = x.dtype, w.dtype
        return y.to(_out_dtype(x))

    @staticmethod
    def backward(ctx, g):
        # the float products of the backward run in the gradient's dtype (the
        # autocast dtype under mixed precision), as autocast would run them
        qx, sx, mx, qw, sw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ dequantize(qw, sw).to(g.dtype)
            if mx is not None:
                gx = gx * mx
            gx = gx.to(x_dtype)
        if ctx.needs_input_grad[1]:
            gw = (g.t() @ dequantize(qx, sx).to(g.dtype)).to(w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0).to(w_dtype)
        return gx, gw, gb, None, None, None, None, None


class _IntGroupedConv1dSTE(torch.autograd.Function):
    """Exact integer grouped conv1d forward, straight-through backward."""

    @staticmethod
    def forward(ctx, x, w, bias, a_bits, w_bits, a_keep, w_keep, a_scale, conv_args):
        stride, padding, dilation, groups = conv_args
        N, C, T = x.shape
        xg = x.reshape(N, groups, C // groups, T)
        qxg, sx, mx = quantize(xg, a_bits, a_keep, a_scale, return_mask=True)
        w2 = w.reshape(w.shape[0], -1)
        qw2, sw2 = quantize(w2, w_bits, w_keep)
        qw, sw = qw2.reshape(w.shape), sw2.reshape(-1, 1, 1)
        y = int_grouped_conv1d(
            qxg.reshape(N, C, T),
            sx,
            qw,
            sw,
            bias,
            qmax_for(a_bits),
            qmax_for(w_bits),
            stride,
            padding,
            dilation,
            groups,
        )
        ctx.save_for_backward(qxg, sx, mx, qw, sw)
        ctx.conv_args = conv_args
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        ctx.dtypes = x.dtype, w.dtype
        return y.to(_out_dtype(x))

    @staticmethod
    def backward(ctx, g):
        qxg, sx, mx, qw, sw = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        x_dtype, w_dtype = ctx.dtypes
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_dq = dequantize(qw, sw).to(g.dtype)
            gx = conv1d_input(ctx.x_shape, w_dq, g, stride, padding, dilation, groups)
            gx = (gx * mx.reshape(ctx.x_shape)).to(x_dtype)
        if ctx.needs_input_grad[1]:
            dqx = dequantize(qxg, sx).reshape(ctx.x_shape).to(g.dtype)
            gw = conv1d_weight(dqx, qw.shape, g, stride, padding, dilation, groups)
            gw = gw.to(w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2)).to(w_dtype)
        return gx, gw, gb, None, None, None, None, None, None


class _IntConv2dSTE(torch.autograd.Function):
    """Native integer conv2d forward (:func:`int_conv2d`), straight-through backward
    as for ``conv2d(dq(q(x)), dq(q(w)))``, masked where x was clipped. Saves the int8
    input (not a float copy) for the weight gradient."""

    @staticmethod
    def forward(ctx, x, w, bias, a_bits, w_bits, a_keep, w_keep, a_scale, conv_args):
        stride, padding, dilation = conv_args
        static = a_scale is not None
        qx, sx, *mx = quantize(x, a_bits, a_keep, a_scale, return_mask=static)
        mx = mx[0] if static else None
        n_out = w.shape[0]
        qw2, sw = quantize(w.reshape(n_out, -1), w_bits, w_keep)
        qw = qw2.reshape(w.shape)
        y = int_conv2d(qx, sx, qw, sw, bias, stride, padding, dilation)
        ctx.save_for_backward(qx, sx, mx, qw, sw)
        ctx.conv_args = conv_args
        ctx.has_bias = bias is not None
        ctx.dtypes = x.dtype, w.dtype
        return y.to(_out_dtype(x))

    @staticmethod
    def backward(ctx, g):
        qx, sx, mx, qw, sw = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        x_dtype, w_dtype = ctx.dtypes
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_dq = dequantize(qw, sw.reshape(-1, 1, 1, 1)).to(g.dtype)
            gx = conv2d_input(qx.shape, w_dq, g, stride, padding, dilation)
            if mx is not None:
                gx = gx * mx
            gx = gx.to(x_dtype)
        if ctx.needs_input_grad[1]:
            x_dq = dequantize(qx, sx).to(g.dtype)
            gw = conv2d_weight(x_dq, qw.shape, g, stride, padding, dilation)
            gw = gw.to(w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3)).to(w_dtype)
        return gx, gw, gb, None, None, None, None, None, None


# --------------------------------------------------------------------------- helpers


def _unfold1d(x: torch.Tensor, k: int, stride: int, padding: int, dilation: int):
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


class _QuantMixin:
    """State shared by QAT and integer modules: precision, static activation amax."""

    precision: Precision
    qname: str

    def _init_quant(self, precision: Precision, qname: str, act: bool = True) -> None:
        self.precision = precision
        self.qname = qname
        self.quant_enabled = True
        self.observing = False
        self.act_bits = precision.act_bits if act else None
        self.weight_bits = precision.weight_bits
        if self.act_bits is not None and precision.act_static:
            self.register_buffer("act_amax", torch.zeros(()))
        else:
            self.act_amax = None

    def _observe(self, x: torch.Tensor) -> None:
        if self.act_amax is not None:
            self.act_amax.copy_(torch.maximum(self.act_amax, x.detach().abs().amax()))

    def _act_scale(self, ndim: int) -> torch.Tensor | None:
        """Fixed activation scale (static) broadcastable to an ndim operand, or None."""
        if self.act_amax is None:
            return None
        if not float(self.act_amax) > 0:
            raise RuntimeError(
                f"{self.qname}: static activation scale is not calibrated "
                "(run q4asr.quant.calibrate first)"
            )
        return scale_from_amax(self.act_amax, self.act_bits).reshape([1] * ndim)

    def extra_repr(self) -> str:  # noqa: D401
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, precision={self._describe()}"

    def _describe(self) -> str:
        """W<bits>A<bits> of what this module really quantizes (f = float)."""
        w = "f" if self.weight_bits is None else self.weight_bits
        a = "f" if self.act_bits is None else self.act_bits
        return f"W{w}A{a}"


INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_input(name: str, x: torch.Tensor) -> None:
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(
            f"{name}: quantized modules take float32, bfloat16 or float16 input, "
            f"got {x.dtype}"
        )


def _amp_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force on ``x``'s device, or None."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    """Output dtype of a quantized op: the autocast dtype, else the input's."""
    amp = _amp_dtype(x)
    return amp if amp is not None else x.dtype


def _float_input(x: torch.Tensor) -> torch.Tensor:
    """Input of a float op with (fake-)quantized float32 operands: autocast casts
    the operands itself; without autocast a bfloat16/float16 input is computed in
    float32."""
    return x if _amp_dtype(x) is not None else x.float()


# --------------------------------------------------------------------------- linear


def _linear_q(x2d, w2d, bias, p: Precision, act_bits, a_scale):
    """QAT linear on (M, K) x (N, K) float operands, any mix of float/int."""
    wb = p.weight_bits
    if act_bits is not None and wb is not None:
        return _IntLinearSTE.apply(
            x2d, w2d, bias, act_bits, wb, _a_keep(p), _w_keep(p), a_scale
        )
    out = _out_dtype(x2d)
    x2d = fake_quant(_float_input(x2d), act_bits, _a_keep(p), a_scale)
    return F.linear(x2d, fake_quant(w2d, wb, _w_keep(p)), bias).to(out)


def _linear_int(x2d, qw, sw, w_float, bias, p: Precision, act_bits, a_scale):
    """Serving linear: qw (N, K) int8 and sw, or w_float (N, K) when weights are float."""
    out = _out_dtype(x2d)
    if act_bits is not None and qw is not None:
        qx, sx = quantize(x2d, act_bits, _a_keep(p), a_scale)
        return int_linear(qx, sx, qw, sw, bias).to(out)
    x2d = _float_input(x2d)
    if act_bits is not None:
        qx, sx = quantize(x2d, act_bits, _a_keep(p), a_scale)
        x2d = dequantize(qx, sx)
    w = dequantize(qw, sw) if qw is not None else w_float
    return F.linear(x2d, w, bias).to(out)


class QATLinear(_QuantMixin, nn.Linear):
    """nn.Linear with native integer QAT. x: (..., in) -> (..., out) float32."""

    @classmethod
    def from_float(
        cls, mod: nn.Linear, precision: Precision, qname: str = ""
    ) -> QATLinear:
        new = cls(
            mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta"
        )
        new.weight, new.bias = mod.weight, mod.bias
        new._init_quant(precision, qname)
        return new.train(mod.training)

    def to_float(self) -> nn.Linear:
        m = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, device="meta"
        )
        m.weight, m.bias = self.weight, self.bias
        return m.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_features, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return F.linear(x, self.weight, self.bias)
        _check_input(self.qname, x)
        x2d = x.reshape(-1, self.in_features)
        y = _linear_q(
            x2d,
            self.weight,
            self.bias,
            self.precision,
            self.act_bits,
            self._act_scale(2),
        )
        return y.reshape(*x.shape[:-1], self.out_features)


# --------------------------------------------------------------------------- conv


def _conv_args_ok(mod: nn.Module) -> str | None:
    """Why a conv module cannot be quantized, or None."""
    if isinstance(mod.padding, str):
        return f"padding={mod.padding!r} (only integer padding is supported)"
    if mod.padding_mode != "zeros":
        return f"padding_mode={mod.padding_mode!r} (only 'zeros' is supported)"
    if isinstance(mod, nn.Conv2d) and mod.groups != 1:
        return f"Conv2d with groups={mod.groups} (only groups=1 is supported)"
    return None


def _conv_copy(cls: type, mod: nn.Module) -> nn.Module:
    """A ``cls`` conv with ``mod``'s arguments (on the meta device) sharing its
    Parameters: the one constructor behind the QAT convs' ``from_float``/``to_float``."""
    new = cls(
        mod.in_channels,
        mod.out_channels,
        mod.kernel_size,
        mod.stride,
        mod.padding,
        mod.dilation,
        mod.groups,
        mod.bias is not None,
        mod.padding_mode,
        device="meta",
    )
    new.weight, new.bias = mod.weight, mod.bias
    return new.train(mod.training)


class QATConv1d(_QuantMixin, nn.Conv1d):
    """nn.Conv1d with native integer QAT. x: (N, C_in, T) -> (N, C_out, T') float32.

    groups=1: unfold + integer matmul. groups>1 (incl. depthwise): exact integer conv
    on integer-valued float32 (see :mod:`q4asr.quant.kernels`).
    """

    @classmethod
    def from_float(
        cls, mod: nn.Conv1d, precision: Precision, qname: str = ""
    ) -> QATConv1d:
        why = _conv_args_ok(mod)
        if why:
            raise ValueError(f"{qname}: cannot quantize {why}")
        new = _conv_copy(cls, mod)
        new._init_quant(precision, qname)
        if new.groups > 1 and new.act_bits is not None and new.weight_bits is not None:
            k = (new.in_channels // new.groups) * new.kernel_size[0]
            bound = grouped_conv_bound(
                k, qmax_for(new.act_bits), qmax_for(new.weight_bits)
            )
            if bound >= FLOAT32_EXACT_LIMIT:
                raise ValueError(
                    f"{qname}: grouped conv with {k} terms per output at "
                    f"{precision.describe()} can reach {bound} >= 2**24 (not exact)"
                )
        return new.train(mod.training)

    def to_float(self) -> nn.Conv1d:
        return _conv_copy(nn.Conv1d, self)

    def _args(self):
        return self.stride[0], self.padding[0], self.dilation[0], self.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 3 and x.shape[1] == self.in_channels, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return super().forward(x)
        _check_input(self.qname, x)
        p, ab, wb = self.precision, self.act_bits, self.weight_bits
        stride, padding, dilation, groups = self._args()
        n_out = self.out_channels
        if groups == 1 and ab is not None:
            cols, L = _unfold1d(x, self.kernel_size[0], stride, padding, dilation)
            y = _linear_q(
                cols,
                self.weight.reshape(n_out, -1),
                self.bias,
                p,
                ab,
                self._act_scale(2),
            )
            return y.reshape(x.shape[0], L, n_out).transpose(1, 2)
        if ab is not None and wb is not None:
            return _IntGroupedConv1dSTE.apply(
                x,
                self.weight,
                self.bias,
                ab,
                wb,
                _a_keep(p, 4),
                _w_keep(p),
                self._act_scale(4),
                self._args(),
            )
        out = _out_dtype(x)
        x = _float_input(x)
        if ab is not None:  # grouped, activation-only
            N, C, T = x.shape
            xg = fake_quant(
                x.reshape(N, groups, C // groups, T),
                ab,
                _a_keep(p, 4),
                self._act_scale(4),
            )
            x = xg.reshape(N, C, T)
        w = fake_quant(self.weight.reshape(n_out, -1), wb, _w_keep(p)).reshape(
            self.weight.shape
        )
        return F.conv1d(x, w, self.bias, stride, padding, dilation, groups).to(out)


class QATConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d (groups=1) with native integer QAT: the input is quantized with one
    scale per sample (``act_granularity: token``) or per tensor, then unfolded in
    int8 and multiplied by ``torch._int_mm`` (:func:`~q4asr.quant.kernels.int_conv2d`).
    x: (N, C_in, H, W) -> (N, C_out, H', W') float32 (channels-last memory)."""

    @classmethod
    def from_float(
        cls, mod: nn.Conv2d, precision: Precision, qname: str = ""
    ) -> QATConv2d:
        why = _conv_args_ok(mod)
        if why:
            raise ValueError(f"{qname}: cannot quantize {why}")
        new = _conv_copy(cls, mod)
        new._init_quant(precision, qname)
        return new.train(mod.training)

    def to_float(self) -> nn.Conv2d:
        return _conv_copy(nn.Conv2d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return super().forward(x)
        _check_input(self.qname, x)
        p, n_out = self.precision, self.out_channels
        ab, wb = self.act_bits, self.weight_bits
        conv_args = (self.stride, self.padding, self.dilation)
        if ab is not None and wb is not None:
            return _IntConv2dSTE.apply(
                x,
                self.weight,
                self.bias,
                ab,
                wb,
                _a_keep(p),
                _w_keep(p),
                self._act_scale(4),
                conv_args,
            )
        out = _out_dtype(x)
        x = fake_quant(_float_input(x), ab, _a_keep(p), self._act_scale(4))
        w = fake_quant(self.weight.reshape(n_out, -1), wb, _w_keep(p))
        y = F.conv2d(x, w.reshape(self.weight.shape), self.bias, *conv_args)
        return y.to(out)


# --------------------------------------------------------------------------- embedding


class QATEmbedding(_QuantMixin, nn.Embedding):
    """nn.Embedding with weight quantization (one scale per row, i.e. per token
    vector). ids: (...) int64 -> (..., dim) float32. Activation bits do not apply."""

    @classmethod
    def from_float(
        cls, mod: nn.Embedding, precision: Precision, qname: str = ""
    ) -> QATEmbedding:
        if mod.max_norm is not None:
            raise ValueError(f"{qname}: cannot quantize an Embedding with max_norm")
        if mod.sparse:
            raise ValueError(f"{qname}: cannot quantize a sparse Embedding")
        new = cls(
            mod.num_embeddings,
            mod.embedding_dim,
            mod.padding_idx,
            device="meta",
            scale_grad_by_freq=mod.scale_grad_by_freq,
        )
        new.weight = mod.weight
        new._init_quant(precision, qname, act=False)
        return new.train(mod.training)

    def to_float(self) -> nn.Embedding:
        m = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            scale_grad_by_freq=self.scale_grad_by_freq,
            device="meta",
        )
        m.weight = self.weight
        return m.train(self.training)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.quant_enabled or self.observing or self.weight_bits is None:
            return super().forward(ids)
        w = fake_quant(self.weight, self.weight_bits, _w_keep(self.precision))
        return F.embedding(ids, w, self.padding_idx, None, 2.0, self.scale_grad_by_freq)


# --------------------------------------------------------------------------- integer


class _IntBase(_QuantMixin, nn.Module):
    """Integer module storage: ``qweight`` (n_out, K) int8, or (n_out, ceil(K/2)) uint8 when
    weight bits <= 4 (two values a byte), ``w_scale`` (n_out, 1) or (1, 1) float32,
    optional float32 ``bias``; ``weight`` float32 only when weights stay float."""

    def _init_int(self, qat: nn.Module, act: bool = True) -> None:
        nn.Module.__init__(self)
        self._init_quant(qat.precision, qat.qname, act)
        if qat.act_amax is not None:
            self.act_amax.copy_(qat.act_amax.detach())
        self.weight_shape = tuple(qat.weight.shape)
        n_out = self.weight_shape[0]
        self.k = qat.weight[0].numel()
        w2d = qat.weight.detach().reshape(n_out, -1)
        if self.weight_bits is None:
            self.register_buffer("weight", w2d.clone())
            self.qweight = self.w_scale = None
        else:
            qw, sw = quantize(w2d, self.weight_bits, _w_keep(self.precision))
            self.register_buffer("qweight", pack_int4(qw) if self.packed else qw)
            self.register_buffer("w_scale", sw.clone())
            self.weight = None
        bias = getattr(qat, "bias", None)
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @property
    def packed(self) -> bool:
        return self.weight_bits is not None and self.weight_bits <= 4

    def int_weight(self) -> torch.Tensor | None:
        """(n_out, K) int8 weight values, unpacked when stored two per byte.

        The unpacked int4 weight is cached (an int8 tensor, not part of the state
        dict), keyed by the identity, device and version counter of ``qweight``, so a
        load, ``.to()`` or in-place change of ``qweight`` invalidates it."""
        if self.qweight is None:
            return None
        if not self.packed:
            return self.qweight
        qw = self.qweight
        key = (qw.data_ptr(), qw.device, qw._version, tuple(qw.shape))
        cache = self.__dict__.get("_int_weight_cache")
        if cache is None or cache[0] != key:
            cache = (key, unpack_int4(qw, self.k))
            self.__dict__["_int_weight_cache"] = cache
        return cache[1]

    def num_params(self) -> int:
        """Logical parameter count (weight elements + bias)."""
        n = self.weight_shape[0] * self.k
        return n + (self.bias.numel() if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, precision={self._describe()}"


class IntLinear(_IntBase):
    """Serving Linear. x: (..., in) float32 -> (..., out) float32."""

    @classmethod
    def from_qat(cls, qat: QATLinear) -> IntLinear:
        new = cls.__new__(cls)
        new._init_int(qat)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, K = self.weight_shape
        assert x.shape[-1] == K, (self.qname, x.shape)
        _check_input(self.qname, x)
        y = _linear_int(
            x.reshape(-1, K),
            self.int_weight(),
            self.w_scale,
            self.weight,
            self.bias,
            self.precision,
            self.act_bits,
            self._act_scale(2),
        )
        return y.reshape(*x.shape[:-1], n_out)


class IntConv1d(_IntBase):
    """Serving Conv1d. x: (N, C_in, T) float32 -> (N, C_out, T') float32."""

    @classmethod
    def from_qat(cls, qat: QATConv1d) -> IntConv1d:
        new = cls.__new__(cls)
        new._init_int(qat)
        new.conv_args = qat._args()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, Cg, k = self.weight_shape
        stride, padding, dilation, groups = self.conv_args
        assert x.ndim == 3 and x.shape[1] == Cg * groups, (self.qname, x.shape)
        _check_input(self.qname, x)
        p, ab = self.precision, self.act_bits
        qw = self.int_weight()
        if groups == 1 and ab is not None:
            cols, L = _unfold1d(x, k, stride, padding, dilation)
            y = _linear_int(
                cols,
                qw,
                self.w_scale,
                self.weight,
                self.bias,
                p,
                ab,
                self._act_scale(2),
            )
            return y.reshape(x.shape[0], L, n_out).transpose(1, 2)
        N, C, T = x.shape
        out = _out_dtype(x)
        x = _float_input(x)
        if ab is not None:
            qxg, sx = quantize(
                x.reshape(N, groups, C // groups, T),
                ab,
                _a_keep(p, 4),
                self._act_scale(4),
            )
            if qw is not None:
                y = int_grouped_conv1d(
                    qxg.reshape(N, C, T),
                    sx,
                    qw.reshape(self.weight_shape),
                    self.w_scale.reshape(-1, 1, 1),
                    self.bias,
                    qmax_for(ab),
                    qmax_for(self.weight_bits),
                    stride,
                    padding,
                    dilation,
                    groups,
                )
                return y.to(out)
            x = dequantize(qxg, sx).reshape(N, C, T)
        w = dequantize(qw, self.w_scale) if qw is not None else self.weight
        return F.conv1d(
            x,
            w.reshape(self.weight_shape),
            self.bias,
            stride,
            padding,
            dilation,
            groups,
        ).to(out)


class IntConv2d(_IntBase):
    """Serving Conv2d (groups=1). x: (N, C_in, H, W) -> (N, C_out, H', W') float32."""

    @classmethod
    def from_qat(cls, qat: QATConv2d) -> IntConv2d:
        new = cls.__new__(cls)
        new._init_int(qat)
        new.conv_args = (qat.kernel_size, qat.stride, qat.padding, qat.dilation)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, stride, padding, dilation = self.conv_args
        assert x.ndim == 4 and x.shape[1] == self.weight_shape[1], (self.qname, x.shape)
        _check_input(self.qname, x)
        p, ab = self.precision, self.act_bits
        qw = self.int_weight()
        out = _out_dtype(x)
        if ab is not None and qw is not None:
            qx, sx = quantize(x, ab, _a_keep(p), self._act_scale(4))
            return int_conv2d(
                qx,
                sx,
                qw.reshape(self.weight_shape),
                self.w_scale,
                self.bias,
                stride,
                padding,
                dilation,
            ).to(out)
        x = _float_input(x)
        if ab is not None:
            qx, sx = quantize(x, ab, _a_keep(p), self._act_scale(4))
            x = dequantize(qx, sx)
        w = dequantize(qw, self.w_scale) if qw is not None else self.weight
        return F.conv2d(
            x, w.reshape(self.weight_shape), self.bias, stride, padding, dilation
        ).to(out)


class IntEmbedding(_IntBase):
    """Serving Embedding: looks up int rows, then dequantizes only those.
    ids: (...) int64 -> (..., dim) float32."""

    @classmethod
    def from_qat(cls, qat: QATEmbedding) -> IntEmbedding:
        new = cls.__new__(cls)
        new._init_int(qat, act=False)
        new.padding_idx = qat.padding_idx
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.qweight is None:
            return F.embedding(ids, self.weight, self.padding_idx)
        rows = self.qweight[ids]
        q = unpack_int4(rows, self.k) if self.packed else rows
        s = self.w_scale[ids] if self.w_scale.shape[0] > 1 else self.w_scale
        return dequantize(q, s)


# Float class -> QAT class (prepare), QAT class -> integer class (convert).
QAT_MODULES: dict[type, type] = {
    nn.Linear: QATLinear,
    nn.Conv1d: QATConv1d,
    nn.Conv2d: QATConv2d,
    nn.Embedding: QATEmbedding,
}
INT_MODULES: dict[type, type] = {
    QATLinear: IntLinear,
    QATConv1d: IntConv1d,
    QATConv2d: IntConv2d,
    QATEmbedding: IntEmbedding,
}
