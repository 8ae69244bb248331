"""Integer (serving) modules: Linear, Conv1d, Conv2d and Embedding.

Storage: ``qweight`` (n_out, K) int8, or (n_out, ceil(K/2)) uint8 with two int4
values a byte for <= 4-bit weights; ``w_scale`` (n_out, 1) or (1, 1) float8 e4m3
codes and ``w_scale_base`` (1,) float32, a power of two (the scale is their
product); ``bias`` (n_out,) int8 and ``bias_scale`` (1,) float32 (optional); QAT
trains with the same scales and bias (:mod:`q4asr.quant.quantizer`); ``act_amax``
for a static activation scale; ``weight`` float32 only when the weights stay float.
No float copy of a quantized weight exists at any time. :class:`IntLayerNorm` holds
a quantized model's LayerNorm parameters in bfloat16.

An integer module is made from shapes and a precision (``IntLinear(...)``, the
skeleton :func:`q4asr.quant.load_quantized` fills from a file) or from a QAT module
(``from_qat``: quantizes its weights). Its forward is the op's one forward
(:mod:`q4asr.quant.ops`) with the stored weight, which the QAT module runs with
its weight quantized on the fly: the outputs are equal exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from q4asr.quant import ops
from q4asr.quant.base import QuantModule
from q4asr.quant.config import Precision
from q4asr.quant.kernels import pack_int4, unpack_int4
from q4asr.quant.qat import (
    QATConv1d,
    QATConv2d,
    QATEmbedding,
    QATLayerNorm,
    QATLinear,
)
from q4asr.quant.quantizer import (
    NORM_DTYPE,
    SCALE_CODE_DTYPE,
    decode_scale,
    quantize_bias,
    quantize_weight_stored,
)


class IntModule(QuantModule, nn.Module):
    """Storage and weight operand of every integer module."""

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        precision: Precision,
        qname: str,
        bias: bool,
        act: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_quant(precision, qname, act)
        k = 1
        for d in weight_shape[1:]:
            k *= d
        # plain values past nn.Module.__setattr__ (as in _init_quant); eval mode
        self.__dict__.update(weight_shape=tuple(weight_shape), k=k, training=False)
        n_out = self.weight_shape[0]
        kw = {"device": device}
        # buffers straight into _buffers (names known valid): loading builds
        # hundreds of these modules
        buf = self._buffers
        if self.weight_bits is None:
            buf["weight"] = torch.empty(n_out, self.k, **kw)
            self.__dict__.update(qweight=None, w_scale=None)
        else:
            cols = (self.k + 1) // 2 if self.packed else self.k
            dtype = torch.uint8 if self.packed else torch.int8
            buf["qweight"] = torch.empty(n_out, cols, dtype=dtype, **kw)
            rows = n_out if precision.weight_granularity == "channel" else 1
            buf["w_scale"] = torch.empty(rows, 1, dtype=SCALE_CODE_DTYPE, **kw)
            buf["w_scale_base"] = torch.empty(1, **kw)
            self.__dict__["weight"] = None
        if bias:
            buf["bias"] = torch.empty(n_out, dtype=torch.int8, **kw)
            buf["bias_scale"] = torch.empty(1, **kw)
        else:
            self.__dict__.update(bias=None, bias_scale=None)
        if self.act_amax is not None:
            self.act_amax = self.act_amax.to(device)

    @classmethod
    def like(
        cls, mod: nn.Module, precision: Precision, qname: str, device=None
    ) -> IntModule:
        """An empty integer module of the shape of ``mod`` (its float or QAT module,
        possibly on the meta device) at ``precision``; no weight is read."""
        shape = tuple(mod.weight.shape)
        return cls(shape, precision, qname, *cls._args_of(mod), device=device)

    @staticmethod
    def _args_of(mod: nn.Module) -> tuple:
        """The constructor's arguments after the precision and name."""
        return (mod.bias is not None,)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> IntModule:
        """The integer module of a QAT module: its weights quantized and stored."""
        new = cls.like(qat, qat.precision, qat.qname, device=qat.weight.device)
        new._fill_from(qat)
        return new

    @torch.no_grad()
    def _fill_from(self, qat: nn.Module) -> None:
        """Quantize and store the QAT module's weights (and copy bias, act_amax)."""
        w2d = qat.weight.detach().reshape(self.weight_shape[0], -1)
        if self.weight_bits is None:
            self.weight.copy_(w2d)
        else:
            q, code, base = quantize_weight_stored(w2d, self.weight_bits, self.w_keep)
            self.qweight.copy_(pack_int4(q) if self.packed else q)
            self.w_scale.copy_(code)
            self.w_scale_base.copy_(base)
        if self.bias is not None:
            qb, sb = quantize_bias(qat.bias)
            self.bias.copy_(qb)
            self.bias_scale.copy_(sb)
        if self.act_amax is not None:
            self.act_amax.copy_(qat.act_amax.detach())

    @property
    def packed(self) -> bool:
        return self.weight_bits is not None and self.weight_bits <= 4

    def int_weight(self) -> torch.Tensor | None:
        """(n_out, K) int8 weight values, unpacked when stored two per byte."""
        if self.qweight is None:
            return None
        return unpack_int4(self.qweight, self.k) if self.packed else self.qweight

    def weight_operand(self) -> ops.Weight:
        """The stored weight as the ops take it: a QWeight, or the float weight."""
        if self.qweight is None:
            return self.weight
        return ops.QWeight(
            self.int_weight(), self.scale_values(), self.weight_bits, self.k
        )

    def scale_values(self) -> torch.Tensor:
        """The weight scales, float32 (rows, 1)."""
        return decode_scale(self.w_scale, self.w_scale_base)

    def bias_operand(self) -> torch.Tensor | None:
        """The stored bias as the ops take it (float32), or None."""
        if self.bias is None:
            return None
        return self.bias.float() * self.bias_scale

    def num_params(self) -> int:
        """Logical parameter count (weight elements + bias)."""
        n = self.weight_shape[0] * self.k
        return n + (self.bias.numel() if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, precision={self._describe()}"


class IntLinear(IntModule):
    """Serving Linear. x: (..., in) -> (..., out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, K = self.weight_shape
        assert x.shape[-1] == K, (self.qname, x.shape)
        ops.check_input(self.qname, x)
        y = ops.linear(
            x.reshape(-1, K),
            self.weight_operand(),
            self.bias_operand(),
            self.act_quant(),
        )
        return y.reshape(*x.shape[:-1], n_out)


class _IntConv(IntModule):
    """A serving convolution: storage plus the conv's arguments; ``_op`` is its
    forward in :mod:`q4asr.quant.ops`."""

    _op = staticmethod(ops.conv1d)
    _args = ops.Conv1dArgs

    def __init__(self, weight_shape, precision, qname, bias, args, device=None) -> None:
        super().__init__(weight_shape, precision, qname, bias, device=device)
        self.__dict__["conv_args"] = args

    @classmethod
    def _args_of(cls, mod: nn.Module) -> tuple:
        return (mod.bias is not None, cls._args.of(mod))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops.check_input(self.qname, x)
        return self._op(
            x,
            self.weight_operand(),
            self.bias_operand(),
            self.act_quant(),
            self.weight_shape,
            self.conv_args,
        )


class IntConv1d(_IntConv):
    """Serving Conv1d (conv_args: ops.Conv1dArgs). x: (N, C_in, T) -> (N, C_out, T')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Cg = self.weight_shape[1]
        assert x.ndim == 3 and x.shape[1] == Cg * self.conv_args.groups, (
            self.qname,
            x.shape,
        )
        return super().forward(x)


class IntConv2d(_IntConv):
    """Serving Conv2d, groups=1 (conv_args: ops.Conv2dArgs).
    x: (N, C_in, H, W) -> (N, C_out, H', W')."""

    _op = staticmethod(ops.conv2d)
    _args = ops.Conv2dArgs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.weight_shape[1], (self.qname, x.shape)
        return super().forward(x)


class IntEmbedding(IntModule):
    """Serving Embedding: looks up integer rows (packed rows too), then dequantizes
    only those. ids: (...) int64 -> (..., dim) float32."""

    def __init__(self, weight_shape, precision, qname, padding_idx, device=None):
        super().__init__(
            weight_shape, precision, qname, False, act=False, device=device
        )
        self.__dict__["padding_idx"] = padding_idx

    @staticmethod
    def _args_of(mod: nn.Module) -> tuple:
        return (mod.padding_idx,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.qweight is None:
            return ops.embedding(ids, self.weight, self.padding_idx)
        w = ops.QWeight(self.qweight, self.scale_values(), self.weight_bits, self.k)
        return ops.embedding(ids, w, self.padding_idx)


class IntLayerNorm(nn.Module):
    """A quantized model's LayerNorm: weight and bias stored in bfloat16, computed
    in float32 (the values :class:`~q4asr.quant.qat.QATLayerNorm` trains with)."""

    def __init__(
        self, shape: tuple[int, ...], eps: float, weight: bool, bias: bool, device=None
    ) -> None:
        nn.Module.__init__(self)
        self.__dict__.update(normalized_shape=tuple(shape), eps=eps, training=False)
        for name, present in (("weight", weight), ("bias", bias)):
            if present:  # straight into _buffers, as in IntModule
                self._buffers[name] = torch.empty(
                    shape, dtype=NORM_DTYPE, device=device
                )
            else:
                self.__dict__[name] = None

    @classmethod
    def like(cls, mod: nn.LayerNorm) -> IntLayerNorm:
        """An empty IntLayerNorm of ``mod``'s shape on its device (float or QAT
        module, possibly on the meta device)."""
        w, b = mod.weight is not None, mod.bias is not None
        p = next(mod.parameters(), None)
        return cls(mod.normalized_shape, mod.eps, w, b, None if p is None else p.device)

    @classmethod
    @torch.no_grad()
    def from_qat(cls, qat: QATLayerNorm) -> IntLayerNorm:
        new = cls.like(qat)
        for name in ("weight", "bias"):
            if getattr(new, name) is not None:  # rounds as quantizer.round_norm
                getattr(new, name).copy_(getattr(qat, name).detach())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, stored in {NORM_DTYPE}"


# QAT class -> integer class (convert).
QAT_TO_INT: dict[type, type] = {
    QATLinear: IntLinear,
    QATConv1d: IntConv1d,
    QATConv2d: IntConv2d,
    QATEmbedding: IntEmbedding,
    QATLayerNorm: IntLayerNorm,
}
