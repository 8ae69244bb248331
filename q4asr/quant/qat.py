"""QAT modules: Linear, Conv1d, Conv2d and Embedding with native integer QAT.

A QAT module subclasses its float class and shares its ``Parameter`` objects (made
by ``from_float``; ``to_float`` gives the plain float module back, sharing them
again: :func:`q4asr.quant.unprepare`). In quantized mode it runs the op's one
forward (:mod:`q4asr.quant.ops`): when weights and activations are both quantized,
the integer path inside a straight-through autograd function
(:mod:`q4asr.quant.ste`), otherwise the float op on fake-quantized operands; with
``quant_enabled = False`` (or while observing for calibration) it is the float
module.

Activation scales: ``act_granularity: token`` is one scale per row of the matmul
operand: per frame for Linear and pointwise Conv1d, per output position (unfolded
patch) for Conv1d with groups=1, per sample (over C, H, W) for Conv2d, whose input is
quantized before unfolding so that overlapping patches share integer pixels. A
grouped or depthwise Conv1d contracts over (channels of a group) x (kernel taps), so
its finest valid scale is per sample and group over time: for a depthwise conv, per
channel over the utterance (the channels feeding the conformer's depthwise conv
differ widely in range; a shared scale would waste most of the grid on the quiet
ones).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from q4asr.quant import ops
from q4asr.quant.base import QuantModule, no_init
from q4asr.quant.config import Precision
from q4asr.quant.kernels import FLOAT32_EXACT_LIMIT, grouped_conv_bound
from q4asr.quant.quantizer import fake_quant_weight, qmax_for, round_bias, round_norm
from q4asr.quant.ste import IntConv2dSTE, IntGroupedConv1dSTE, IntLinearSTE


def _int_path(m: QuantModule, act: ops.ActQuant) -> bool:
    return act.bits is not None and m.weight_bits is not None


def _float_weight(m: QuantModule, w: torch.Tensor) -> torch.Tensor:
    """The weight as (n_out, K), fake-quantized when weights are quantized."""
    return fake_quant_weight(w.reshape(w.shape[0], -1), m.weight_bits, m.w_keep)


class QATLinear(QuantModule, nn.Linear):
    """nn.Linear with native integer QAT. x: (..., in) -> (..., out)."""

    @classmethod
    def check(cls, mod: nn.Module, precision: Precision, qname: str) -> None:
        """Raise ValueError when ``mod`` cannot be quantized at ``precision``."""

    @classmethod
    def from_float(
        cls, mod: nn.Linear, precision: Precision, qname: str = ""
    ) -> QATLinear:
        cls.check(mod, precision, qname)
        with no_init():
            new = cls(
                mod.in_features,
                mod.out_features,
                bias=mod.bias is not None,
                device="meta",
            )
        new.weight, new.bias = mod.weight, mod.bias
        new._init_quant(precision, qname)
        return new.train(mod.training)

    def to_float(self) -> nn.Linear:
        with no_init():
            m = nn.Linear(
                self.in_features,
                self.out_features,
                self.bias is not None,
                device="meta",
            )
        m.weight, m.bias = self.weight, self.bias
        return m.train(self.training)

    def _ste_linear(self, x2d, w2d, bias, act: ops.ActQuant) -> torch.Tensor:
        return IntLinearSTE.apply(x2d, w2d, bias, self.weight_bits, self.w_keep, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_features, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return F.linear(x, self.weight, self.bias)
        ops.check_input(self.qname, x)
        x2d = x.reshape(-1, self.in_features)
        act = self.act_quant()
        if _int_path(self, act):
            y = self._ste_linear(x2d, self.weight, round_bias(self.bias), act)
        else:
            y = ops.linear(
                x2d, _float_weight(self, self.weight), round_bias(self.bias), act
            )
        return y.reshape(*x.shape[:-1], self.out_features)


def check_conv_args(mod: nn.Module, qname: str) -> None:
    """Raise ValueError when a conv's arguments cannot be quantized."""
    why = None
    if isinstance(mod.padding, str):
        why = f"padding={mod.padding!r} (only integer padding is supported)"
    elif mod.padding_mode != "zeros":
        why = f"padding_mode={mod.padding_mode!r} (only 'zeros' is supported)"
    elif isinstance(mod, nn.Conv2d) and mod.groups != 1:
        why = f"Conv2d with groups={mod.groups} (only groups=1 is supported)"
    if why:
        raise ValueError(f"{qname}: cannot quantize {why}")


def _conv_copy(cls: type, mod: nn.Module) -> nn.Module:
    """A ``cls`` conv with ``mod``'s arguments (on the meta device) sharing its
    Parameters: the one constructor behind the QAT convs' ``from_float``/``to_float``."""
    with no_init():
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


def _qat_conv(cls: type, mod: nn.Module, precision: Precision, qname: str):
    """The QAT conv ``cls`` of a float conv, sharing its Parameters."""
    cls.check(mod, precision, qname)
    new = _conv_copy(cls, mod)
    new._init_quant(precision, qname)
    return new


def check_grouped_bound(
    qname: str, cin_per_group: int, k: int, precision: Precision
) -> None:
    """A grouped conv is exact in float32 only while its partial sums stay < 2**24."""
    if precision.act_bits is None or precision.weight_bits is None:
        return
    terms = cin_per_group * k
    bound = grouped_conv_bound(
        terms, qmax_for(precision.act_bits), qmax_for(precision.weight_bits)
    )
    if bound >= FLOAT32_EXACT_LIMIT:
        raise ValueError(
            f"{qname}: grouped conv with {terms} terms per output at "
            f"{precision.describe()} can reach {bound} >= 2**24 (not exact)"
        )


class QATConv1d(QuantModule, nn.Conv1d):
    """nn.Conv1d with native integer QAT. x: (N, C_in, T) -> (N, C_out, T').

    groups=1: unfold + integer matmul. groups>1 (incl. depthwise): exact integer conv
    on integer-valued float32 (see :mod:`q4asr.quant.kernels`).
    """

    @classmethod
    def check(cls, mod: nn.Module, precision: Precision, qname: str) -> None:
        check_conv_args(mod, qname)
        if mod.groups > 1:
            check_grouped_bound(
                qname, mod.in_channels // mod.groups, mod.kernel_size[0], precision
            )

    @classmethod
    def from_float(
        cls, mod: nn.Conv1d, precision: Precision, qname: str = ""
    ) -> QATConv1d:
        return _qat_conv(cls, mod, precision, qname)

    def to_float(self) -> nn.Conv1d:
        return _conv_copy(nn.Conv1d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 3 and x.shape[1] == self.in_channels, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return super().forward(x)
        ops.check_input(self.qname, x)
        act, args, shape = (
            self.act_quant(),
            ops.Conv1dArgs.of(self),
            tuple(self.weight.shape),
        )
        if _int_path(self, act) and self.groups > 1:
            return IntGroupedConv1dSTE.apply(
                x,
                self.weight,
                round_bias(self.bias),
                self.weight_bits,
                self.w_keep,
                act,
                args,
            )
        if _int_path(self, act):  # groups=1: the integer linear on the unfolded input
            w2d = self.weight.reshape(self.out_channels, -1)
            return ops.conv1d(
                x,
                w2d,
                round_bias(self.bias),
                act,
                shape,
                args,
                linear_op=self._ste_linear,
            )
        return ops.conv1d(
            x, _float_weight(self, self.weight), round_bias(self.bias), act, shape, args
        )

    _ste_linear = QATLinear._ste_linear


class QATConv2d(QuantModule, nn.Conv2d):
    """nn.Conv2d (groups=1) with native integer QAT: the input is quantized with one
    scale per sample (``act_granularity: token``) or per tensor, then unfolded in
    int8 and multiplied by ``torch._int_mm`` (:func:`~q4asr.quant.kernels.int_conv2d`).
    x: (N, C_in, H, W) -> (N, C_out, H', W') (channels-last memory)."""

    @classmethod
    def check(cls, mod: nn.Module, precision: Precision, qname: str) -> None:
        check_conv_args(mod, qname)

    @classmethod
    def from_float(
        cls, mod: nn.Conv2d, precision: Precision, qname: str = ""
    ) -> QATConv2d:
        return _qat_conv(cls, mod, precision, qname)

    def to_float(self) -> nn.Conv2d:
        return _conv_copy(nn.Conv2d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (self.qname, x.shape)
        if self.observing:
            self._observe(x)
        if not self.quant_enabled or self.observing:
            return super().forward(x)
        ops.check_input(self.qname, x)
        act, args, shape = (
            self.act_quant(),
            ops.Conv2dArgs.of(self),
            tuple(self.weight.shape),
        )
        if _int_path(self, act):
            return IntConv2dSTE.apply(
                x,
                self.weight,
                round_bias(self.bias),
                self.weight_bits,
                self.w_keep,
                act,
                args,
            )
        return ops.conv2d(
            x, _float_weight(self, self.weight), round_bias(self.bias), act, shape, args
        )


class QATEmbedding(QuantModule, nn.Embedding):
    """nn.Embedding with weight quantization (one scale per row, i.e. per token
    vector). ids: (...) int64 -> (..., dim) float32. Activation bits do not apply."""

    @classmethod
    def check(cls, mod: nn.Module, precision: Precision, qname: str) -> None:
        if mod.max_norm is not None:
            raise ValueError(f"{qname}: cannot quantize an Embedding with max_norm")
        if mod.sparse:
            raise ValueError(f"{qname}: cannot quantize a sparse Embedding")

    @classmethod
    def from_float(
        cls, mod: nn.Embedding, precision: Precision, qname: str = ""
    ) -> QATEmbedding:
        cls.check(mod, precision, qname)
        with no_init():
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
        with no_init():
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
        w = _float_weight(self, self.weight)
        return ops.embedding(ids, w, self.padding_idx, self.scale_grad_by_freq)


class QATLayerNorm(nn.LayerNorm):
    """The LayerNorm of a quantized model (every LayerNorm, whatever the plan): it
    trains with its weight and bias rounded as they are stored (bfloat16,
    :func:`~q4asr.quant.quantizer.round_norm`); ``quant_enabled = False`` runs the
    float module. Shares the float module's Parameters."""

    # what calibrate and set_quant_mode read on every QAT module
    act_amax = None
    observing = False

    @classmethod
    def from_float(cls, mod: nn.LayerNorm) -> QATLayerNorm:
        new = _norm_copy(cls, mod)
        new.quant_enabled = True
        return new

    def to_float(self) -> nn.LayerNorm:
        return _norm_copy(nn.LayerNorm, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quant_enabled:
            return super().forward(x)
        w, b = round_norm(self.weight), round_norm(self.bias)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


def _norm_copy(cls: type, mod: nn.LayerNorm) -> nn.LayerNorm:
    """A ``cls`` LayerNorm of ``mod``'s shape sharing its Parameters."""
    with no_init():
        new = cls(
            mod.normalized_shape,
            mod.eps,
            mod.elementwise_affine,
            bias=mod.bias is not None,
            device="meta",
        )
    new.weight, new.bias = mod.weight, mod.bias
    return new.train(mod.training)


# Float class -> QAT class (prepare).
FLOAT_TO_QAT: dict[type, type] = {
    nn.Linear: QATLinear,
    nn.Conv1d: QATConv1d,
    nn.Conv2d: QATConv2d,
    nn.Embedding: QATEmbedding,
}
