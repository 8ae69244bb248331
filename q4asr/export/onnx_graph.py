"""A q4asr transducer -> the three ONNX files sherpa-onnx runs, integer layers kept
integer.

    export_onnx(asr_model, "exp/qat_w4a8/onnx")
    # -> encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt

The files follow the offline transducer contract of sherpa-onnx and icefall:

- ``encoder.onnx``: ``x`` (N, T, F) float32 raw log-mel, ``x_lens`` (N,) int64 ->
  ``encoder_out`` (N, T', joiner_dim) (the joiner's encoder projection applied),
  ``encoder_out_lens`` (N,) int64. q4asr's per-utterance feature normalisation is in
  the graph, masked by ``x_lens``, so a padded batch gives each utterance what it gets
  alone. Metadata ``model_type=conformer`` and q4asr's own (method, precisions).
- ``decoder.onnx``: ``y`` (N, context_size) int64 -> ``decoder_out`` (N, joiner_dim)
  (projection applied). Negative ids (sherpa-onnx starts from ``[-1, ..., -1, 0]``)
  are read as blank, which is the context q4asr's own search starts from. Metadata
  ``vocab_size``, ``context_size``.
- ``joiner.onnx``: ``encoder_out``, ``decoder_out`` (N, joiner_dim) -> ``logit``
  (N, vocab_size), raw logits.
- ``tokens.txt``: ``piece id`` per line, every id of the BPE model.

How: the model is traced by PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), with every integer module
(``IntLinear``, ``IntConv1d``, ``IntConv2d``, ``IntEmbedding`` of :mod:`q4asr.quant`)
swapped for an export module (:func:`onnx_module`) that writes the same arithmetic
as ONNX ops: per-row (or per-sample, per-group, per-tensor) scale ``max|x| / qmax``
in the graph, one ``QuantizeLinear`` to uint8 ``q + 128`` (half to even, as
``torch.round``; ``Round`` and a clamp for a static scale), then
``MatMulInteger`` on those uint8 activations (zero point 128; Conv1d and Conv2d
with groups=1 on unfolded patches, as q4asr computes them) with int32 sums, ``Cast`` to float32, ``acc * (s_x * s_w)``, ``+ bias``: the order of
:mod:`q4asr.quant.kernels`, so each integer layer's output equals q4asr's bit for bit
on the same input (tested). Grouped/depthwise convolutions convolve integer values
held in float32, exactly as q4asr does (exact below 2**24). Weights of at most 4 bits
are stored two per byte and unpacked by two ``Gather`` lookups that onnxruntime folds
into constants when it loads the model: the file holds 4-bit weights. 8-bit weights
are stored as uint8 ``w + 128`` with zero point 128, because onnxruntime's uint8 x
int8 kernels on x86 CPUs without VNNI sum pairs of products in int16 and saturate
for 8-bit weights (measured: wrong sums on an AVX2 CPU); uint8 x uint8 sums are exact
everywhere. Weights of 5-7 bits stay int8 (their pair sums cannot saturate).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from q4asr.model.conformer import rel_shift_by_padding
from q4asr.quant import IntConv1d, IntConv2d, IntEmbedding, IntLinear

log = logging.getLogger(__name__)

OPSET = 17
# Smallest amax behind a dynamic scale (an all-zero row quantizes to zeros); the same
# constant as q4asr's quantizer: the layer tests compare the two bit for bit.
EPS = 1e-12
# Weight bit widths whose uint8 x int8 pair sums (2 * 255 * qmax_w) stay below 2**15.
MAX_S8_WEIGHT_BITS = 7
ONNX_FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt")


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


# --------------------------------------------------------------------------- integer ops


def to_uint8(xq: torch.Tensor) -> torch.Tensor:
    """Quantized activations (float32 integers in [-127, 127]) -> uint8 ``q + 128``,
    the zero-point-128 form ``MatMulInteger`` takes (exact: integers below 2**24)."""
    return (xq + 128.0).to(torch.uint8)


class _QuantizeLinear(torch.autograd.Function):
    """uint8 ``round(x / s) + 128`` for a dynamic scale ``s = max|x| / qmax``.

    x: (R, K) float32 with s: (R,) (one scale a row), or x of any shape with s: ()
    (one for the tensor). Exported as one ``QuantizeLinear`` (per axis 0 for rows,
    zero point 128): it divides by the scale and rounds half to even, as q4asr does,
    in one pass instead of the six of Div, Round, Max, Min, Add and Cast. q4asr's
    clamp to +-qmax is not needed: with ``s = fl(max|x| / qmax)``, ``|x| / s`` stays
    below ``qmax + 1/2``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        q = torch.round(x / (s.reshape(-1, 1) if s.ndim else s))
        return (q + 128.0).clamp(0.0, 255.0).to(torch.uint8)

    @staticmethod
    def symbolic(g, x, s):
        zp = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
        if s.type().dim() == 0:
            return g.op("QuantizeLinear", x, s, zp)
        zp = g.op("Expand", zp, g.op("Shape", s))  # per axis: one zero point a row
        return g.op("QuantizeLinear", x, s, zp, axis_i=0)


class _MatMulInteger(torch.autograd.Function):
    """Integer product of quantized activations and a quantized weight.

    xu: (..., K) uint8 activations ``q + 128``; w: (K, N) int8, or uint8 holding
    ``w + 128`` when ``biased``. Returns (..., N) float32 of the int32 sums
    ``sum_k q[k] w[k, n]``. Exported as ``MatMulInteger`` (zero points 128) ->
    ``Cast(float)``.
    """

    @staticmethod
    def forward(ctx, xu: torch.Tensor, w: torch.Tensor, biased: bool) -> torch.Tensor:
        xs = (xu.to(torch.int32) - 128).to(torch.int8)
        ws = (w.to(torch.int32) - 128).to(torch.int8) if biased else w
        acc = torch._int_mm(xs.reshape(-1, xs.shape[-1]), ws)
        return acc.to(torch.float32).reshape(*xu.shape[:-1], w.shape[1])

    @staticmethod
    def symbolic(g, xu, w, biased: bool):
        zp = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
        args = [xu, w, zp, zp] if biased else [xu, w, zp]
        return g.op("Cast", g.op("MatMulInteger", *args), to_i=1)  # FLOAT


def _bf16_scales(m: nn.Module) -> torch.Tensor:
    """An integer module's weight scales as (1, rows) bfloat16: exact, since each is
    a float8 e4m3 code times a power of two."""
    s = m.scale_values().reshape(1, -1)
    b = s.to(torch.bfloat16)
    assert torch.equal(b.float(), s), m.qname
    return b


def scale_product(sx: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """``sx * sw`` in float32, computed as a float64 product rounded once to float32
    (``sw`` float32, or the stored bfloat16 scale: one Cast less in the graph).

    The exact product of two float32 values fits in float64, so this is bit for bit
    the float32 product q4asr forms; but it is not a float32 ``Mul`` in the graph.
    With a float32 ``Mul`` there, onnxruntime's MatMulIntegerToFloat fusion replaces
    ``MatMulInteger -> Cast -> Mul(acc, Mul(sx, sw))`` by a kernel that takes one
    activation scale per tensor (wrong for per-row scales); and an outer product by
    ``MatMul`` gets ``Div(amax, qmax)`` folded into it (MatMulScaleFusion), which
    rounds differently.
    """
    return (sx.to(torch.float64) * sw.to(torch.float64)).to(torch.float32)


def _make_nibble_tables(biased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.arange(256, dtype=torch.int32)
    lo, hi = b & 15, b >> 4
    lo, hi = lo - 16 * (lo >= 8), hi - 16 * (hi >= 8)
    if biased:
        return (lo + 128).to(torch.uint8), (hi + 128).to(torch.uint8)
    return lo.to(torch.int8), hi.to(torch.int8)


# One copy of each table, shared by every packed weight (the exporter then writes each
# table once).
_NIBBLE_TABLES = {b: _make_nibble_tables(b) for b in (False, True)}


def _nibble_tables(biased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte -> its low / high nibble as a signed int4 value (int8), or as that value
    + 128 (uint8) when ``biased``: (256,) each."""
    return _NIBBLE_TABLES[biased]


class _IntWeight(nn.Module):
    """An integer weight as stored in the ONNX file and rebuilt in the graph.

    From ``q`` (n_out, K) int8 in [-qmax, qmax] it stores ``q^T`` (K, n_out): two
    values a byte when ``bits <= 4`` (rows k and k + ceil(K/2) share a byte),
    uint8 ``q + 128`` when ``biased``, else int8. ``forward()`` returns (K, n_out)
    int8 (uint8 ``q + 128`` when biased); the unpacking ops read only constants.
    """

    def __init__(self, q: torch.Tensor, bits: int, biased: bool) -> None:
        super().__init__()
        assert q.ndim == 2 and q.dtype == torch.int8, (q.shape, q.dtype)
        self.k = q.shape[1]
        self.biased = biased
        self.packed = bits <= 4
        qt = q.t().contiguous()  # (K, n_out)
        if self.packed:
            if self.k % 2:
                qt = F.pad(qt, (0, 0, 0, 1))
            h = qt.shape[0] // 2
            u = qt.view(torch.uint8) & 0xF
            self.register_buffer("data", u[:h] | (u[h:] << 4))
            lo, hi = _nibble_tables(biased)
            self.register_buffer("lo_table", lo)
            self.register_buffer("hi_table", hi)
        elif biased:
            self.register_buffer("data", (qt.to(torch.int32) + 128).to(torch.uint8))
        else:
            self.register_buffer("data", qt)

    def forward(self) -> torch.Tensor:
        if not self.packed:
            return self.data
        idx = self.data.to(torch.int64)
        w = torch.cat([self.lo_table[idx], self.hi_table[idx]], dim=0)
        return w[: self.k] if w.shape[0] != self.k else w

    def signed_float(self) -> torch.Tensor:
        """(K, n_out) float32 integer values."""
        w = self.forward().to(torch.float32)
        return w - 128.0 if self.biased else w


# --------------------------------------------------------------------------- modules


class _OnnxQuant(nn.Module):
    """What every export module shares: activation quantization and the weight."""

    def _init_from(self, m: nn.Module, n_out: int) -> None:
        self.qname = m.qname
        self.act_bits = m.act_bits
        self.weight_bits = m.weight_bits
        p = m.precision
        self.act_per_tensor = p.act_granularity == "tensor"
        static = m._act_scale(2) if m.act_bits is not None else None
        if static is not None:
            self.register_buffer("act_scale", static.reshape(()).float().clone())
        else:
            self.act_scale = None
        q = m.int_weight()
        self.int_w: _IntWeight | None = None
        if q is not None:
            q = q.reshape(n_out, -1)
            self.register_buffer("stored_w_scale", _bf16_scales(m))
            int_product = m.act_bits is not None
            biased = int_product and m.weight_bits > MAX_S8_WEIGHT_BITS
            self.int_w = _IntWeight(q, m.weight_bits, biased)
            self.float_w = None
        else:
            self.register_buffer(
                "float_w", m.weight.float().reshape(n_out, -1).t().clone()
            )
        self.register_buffer("stored_bias", None if m.bias is None else m.bias.clone())
        self.register_buffer(
            "bias_scale", None if m.bias is None else m.bias_scale.clone()
        )

    # Weight scales are kept in the file in bfloat16 (exact: a float8 code times a
    # power of two), biases in int8 with their float32 scale, as q4asr stores them,
    # and decoded in the graph: exact, and onnxruntime folds the Casts and products
    # into float32 constants when it loads the model.
    @property
    def w_scale(self) -> torch.Tensor:
        return self.stored_w_scale.float()

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.stored_bias
        return None if b is None else b.float() * self.bias_scale

    def quantize_act(self, x: torch.Tensor, reduce_dims: tuple[int, ...]):
        """x -> (integer-valued float32 q, scale broadcastable to x): q4asr's
        ``clamp(round(x / s), -qmax, qmax)`` with ``s = max|x| / qmax`` over
        ``reduce_dims`` (all dims when per tensor) or the static scale."""
        # float32 constants (Max/Min/Div in the graph, no Casts of Python scalars)
        qmax = torch.tensor(float(_qmax(self.act_bits)))
        if self.act_scale is not None:
            s = self.act_scale.reshape([1] * x.ndim)
        else:
            dims = tuple(range(x.ndim)) if self.act_per_tensor else reduce_dims
            amax = x.abs().amax(dim=dims, keepdim=True)
            s = torch.maximum(amax, torch.tensor(EPS)) / qmax
        return torch.minimum(torch.maximum(torch.round(x / s), -qmax), qmax), s

    def quantize_act_u8(self, x: torch.Tensor, keep: int):
        """x -> (uint8 ``q + 128``, scale broadcastable to x), q as
        :meth:`quantize_act` with a scale per index of the first ``keep`` dims (1: per
        sample, ``x.ndim - 1``: per row); one ``QuantizeLinear`` for a dynamic scale."""
        if self.act_scale is not None:
            xq, s = self.quantize_act(x, tuple(range(keep, x.ndim)))
            return to_uint8(xq), s
        qmax = torch.tensor(float(_qmax(self.act_bits)))
        if self.act_per_tensor:
            s = torch.maximum(x.abs().amax(), torch.tensor(EPS)) / qmax
            return _QuantizeLinear.apply(x, s), s.reshape([1] * x.ndim)
        amax = x.abs().amax(dim=tuple(range(keep, x.ndim)), keepdim=True)
        s = torch.maximum(amax, torch.tensor(EPS)) / qmax
        rows = x.flatten(0, keep - 1).flatten(1)  # (R, K)
        return _QuantizeLinear.apply(rows, s.reshape(-1)).reshape(x.shape), s

    def weight_float(self) -> torch.Tensor:
        """(K, n_out) float32: the float weight, or the dequantized integer one."""
        if self.int_w is None:
            return self.float_w
        return self.int_w.signed_float() * self.w_scale

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., K) -> (..., n_out), with q4asr's per-row activation scale."""
        if self.act_bits is not None and self.int_w is not None:
            xu, sx = self.quantize_act_u8(x, x.ndim - 1)
            acc = _MatMulInteger.apply(xu, self.int_w(), self.int_w.biased)
            y = acc * scale_product(sx, self.stored_w_scale)
            return y + self.bias if self.bias is not None else y
        if self.act_bits is not None:
            xq, sx = self.quantize_act(x, (-1,))
            x = xq * sx
        y = torch.matmul(x, self.weight_float())
        return y + self.bias if self.bias is not None else y


class OnnxLinear(_OnnxQuant):
    """Export form of ``IntLinear``. x: (..., K) -> (..., n_out)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self._init_from(m, m.weight_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class OnnxConv1d(_OnnxQuant):
    """Export form of ``IntConv1d``. x: (N, C_in, T) -> (N, C_out, T')."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.weight_shape = tuple(m.weight_shape)
        self.stride, self.padding, self.dilation, self.groups = m.conv_args
        self._init_from(m, self.weight_shape[0])

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T) -> (N, L, C * k), channel-major like ``F.unfold``."""
        k = self.weight_shape[2]
        if k == 1 and self.stride == 1 and self.padding == 0:
            return x.transpose(1, 2)
        if self.padding:
            x = F.pad(x, (self.padding, self.padding))
        span = self.dilation * (k - 1)
        t = x.shape[2] - span
        taps = [
            x[:, :, j * self.dilation : j * self.dilation + t : self.stride]
            for j in range(k)
        ]
        cols = torch.stack(taps, dim=-1)  # (N, C, L, k)
        return cols.permute(0, 2, 1, 3).reshape(x.shape[0], cols.shape[2], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, cg, k = self.weight_shape
        if self.groups == 1 and self.act_bits is not None:
            return self.linear(self._patches(x)).transpose(1, 2)
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.act_bits is not None:
            n, c, t = x.shape
            g = self.groups
            xq, sx = self.quantize_act(x.reshape(n, g, c // g, t), (2, 3))
            xq = xq.reshape(n, c, t)
            if self.int_w is not None:
                w = self.int_w.signed_float().t().reshape(self.weight_shape)
                acc = F.conv1d(xq, w, None, *args)  # integer values, exact < 2**24
                sx = sx.reshape(sx.shape[0], sx.shape[1], 1)
                if n_out != sx.shape[1]:
                    r = n_out // sx.shape[1]
                    sx = sx.unsqueeze(2).expand(-1, -1, r, -1).reshape(-1, n_out, 1)
                scale = scale_product(sx, self.stored_w_scale.reshape(1, -1, 1))
                if self.act_scale is not None:
                    # a constant scale would be folded into the Conv weights by
                    # onnxruntime (ConvMulFusion), which rounds differently: expanding
                    # it to the output's (dynamic) shape keeps it a separate Mul
                    scale = scale.expand_as(acc)
                y = acc * scale
                return y + self.bias.reshape(1, -1, 1) if self.bias is not None else y
            x = (xq.reshape(n, g, c // g, t) * sx).reshape(n, c, t)
        w = self.weight_float().t().reshape(self.weight_shape)
        return F.conv1d(x, w, self.bias, *args)


class OnnxConv2d(_OnnxQuant):
    """Export form of ``IntConv2d`` (groups=1). x: (N, C, H, W) -> (N, n_out, Ho, Wo).

    With integer weights and activations it is q4asr's ``int_conv2d``: the image is
    quantized per sample, gathered into (kh, kw, C) patches as uint8 (strided slices)
    and multiplied by ``MatMulInteger`` (onnxruntime's ``ConvInteger`` took 2.6x the
    time of its float Conv on the front-end's shapes).
    """

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.weight_shape = tuple(m.weight_shape)
        _, self.stride, self.padding, self.dilation = m.conv_args
        self._init_from(m, self.weight_shape[0])
        if self.int_w is not None and self.act_bits is not None:
            # patch order (kh, kw, C), as the unfolded image
            q = m.int_weight().reshape(self.weight_shape).permute(0, 2, 3, 1)
            q = q.reshape(self.weight_shape[0], -1).contiguous()
            self.int_w = _IntWeight(q, self.weight_bits, self.int_w.biased)

    def _patches(self, xu: torch.Tensor) -> torch.Tensor:
        """xu: (N, C, H, W) uint8 -> (N, Ho, Wo, kh * kw * C) uint8."""
        _, _, kh, kw = self.weight_shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        img = xu.permute(0, 2, 3, 1)  # (N, H, W, C)
        if ph or pw:  # zero is 128 in the uint8 form
            img = F.pad(img, (0, 0, pw, pw, ph, ph), value=128)
        taps = []
        for i in range(kh):
            for j in range(kw):
                h_end = -dh * (kh - 1 - i) or None
                w_end = -dw * (kw - 1 - j) or None
                taps.append(img[:, i * dh : h_end : sh, j * dw : w_end : sw, :])
        cols = torch.stack(taps, dim=3)  # (N, Ho, Wo, kh * kw, C)
        return cols.flatten(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = (self.stride, self.padding, self.dilation)
        if self.act_bits is not None and self.int_w is not None:
            xu, sx = self.quantize_act_u8(x, 1)
            cols = self._patches(xu)  # (N, Ho, Wo, K)
            acc = _MatMulInteger.apply(cols, self.int_w(), self.int_w.biased)
            scale = scale_product(
                sx.reshape(-1, 1, 1, 1), self.stored_w_scale.reshape(1, 1, 1, -1)
            )
            y = acc * scale
            if self.bias is not None:
                y = y + self.bias
            return y.permute(0, 3, 1, 2)
        if self.act_bits is not None:
            xq, sx = self.quantize_act(x, (1, 2, 3))
            x = xq * sx
        w = self.weight_float().t().reshape(self.weight_shape)
        return F.conv2d(x, w, self.bias, *conv)


class OnnxEmbedding(nn.Module):
    """Export form of ``IntEmbedding``: the table is dequantized in the graph (from
    4- or 8-bit constants, folded at load), then rows are gathered.
    ids: (...) int64 -> (..., dim)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        q = m.int_weight()
        if q is None:
            self.int_w = None
            self.register_buffer("table", m.weight.float().clone())
        else:
            self.int_w = _IntWeight(q, m.weight_bits, biased=False)
            self.register_buffer("stored_w_scale", _bf16_scales(m))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.int_w is None:
            return F.embedding(ids, self.table)
        w_scale = self.stored_w_scale.float()
        table = (self.int_w.signed_float() * w_scale).t()  # (vocab, dim)
        return F.embedding(ids, table)


ONNX_MODULES: dict[type, type] = {
    IntLinear: OnnxLinear,
    IntConv1d: OnnxConv1d,
    IntConv2d: OnnxConv2d,
    IntEmbedding: OnnxEmbedding,
}


def onnx_module(m: nn.Module) -> nn.Module:
    """The export module of an integer module ``m`` (same outputs, ONNX-traceable)."""
    return ONNX_MODULES[type(m)](m)


def swap_int_modules(model: nn.Module) -> list[str]:
    """Replace every integer module in ``model`` by its export module, in place.
    Returns the qualified names replaced."""
    names = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) in ONNX_MODULES:
                setattr(mod, child_name, onnx_module(child))
                names.append(f"{name}.{child_name}" if name else child_name)
    return names


# --------------------------------------------------------------------------- tracing


def _int_keeping_trace(x: Any) -> Any:
    """``int`` that leaves a tensor a (traced) tensor while tracing, so lengths
    derived from ``x_lens`` stay data-dependent in the graph."""
    if isinstance(x, torch.Tensor) and torch.jit.is_tracing():
        return x
    return builtins.int(x)


@contextlib.contextmanager
def traceable_model() -> Iterator[None]:
    """Within: the Conformer code traces into a length-generic ONNX graph.

    Two substitutions in :mod:`q4asr.model.conformer`, both value-preserving:
    ``rel_shift`` by :func:`rel_shift_by_padding`, and ``int`` by
    :func:`_int_keeping_trace` (the encoder's ``t = int(out_lens.max())`` would
    otherwise be frozen to the example's length).
    """
    from q4asr.model import conformer

    saved = conformer.rel_shift
    conformer.rel_shift = rel_shift_by_padding
    conformer.int = _int_keeping_trace
    try:
        yield
    finally:
        conformer.rel_shift = saved
        del conformer.int


class EncoderForOnnx(nn.Module):
    """(x (N, T, F), x_lens (N,)) -> (encoder_out (N, T', J), encoder_out_lens (N,))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, x_lens):
        enc, enc_lens = self.model.encode(x, x_lens)
        return self.model.joiner.encoder_proj(enc), enc_lens


class DecoderForOnnx(nn.Module):
    """y (N, context_size) int64 -> decoder_out (N, J); negative ids read as blank."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, y):
        y = torch.clamp(y, min=self.model.blank_id)
        dec = self.model.decoder(y, need_pad=False)  # (N, 1, decoder_dim)
        return self.model.joiner.decoder_proj(dec[:, 0])


class JoinerForOnnx(nn.Module):
    """(encoder_out (N, J), decoder_out (N, J)) -> logit (N, vocab_size)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_out, decoder_out):
        return self.model.joiner(encoder_out, decoder_out, project_input=False)


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    """Trace ``module`` on ``args`` into ``path``. Constant folding (which gives float
    weights as plain initializers, e.g. for onnxruntime's quantize_dynamic) is off
    where a weight is stored two a byte or a tensor in bfloat16 or int8: folding
    would store them unpacked, or in float32 (onnxruntime folds them when it loads
    the model)."""
    packed = any(isinstance(m, _IntWeight) and m.packed for m in module.modules())
    packed = packed or any(
        b.dtype in (torch.bfloat16, torch.int8) for b in module.buffers()
    )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the legacy exporter's deprecation, tracer notes
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=not packed,
        )


def _compact(graph) -> None:
    """Short names for every node and every value but the graph's inputs and
    outputs (the exporter's names spell each module path, several times per node:
    a third of a 4-bit model's file), no intermediate shape annotations."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in names:
            names[name] = f"{len(names):x}"
        return names[name]

    # one Constant node per distinct value (the exporter writes one per use)
    first: dict[bytes, str] = {}
    alias: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            key = b"".join(a.SerializeToString() for a in node.attribute)
            if key in first and node.output[0] not in keep:
                alias[node.output[0]] = first[key]
                continue
            first.setdefault(key, node.output[0])
        nodes.append(node)
    for node in nodes:
        node.input[:] = [alias.get(n, n) for n in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]


def _add_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    m = onnx.load(str(path))
    _compact(m.graph)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def precision_summary(model: nn.Module) -> dict[str, str]:
    """Qualified name -> ``W<bits>A<bits>`` (``f`` = float) of every integer module."""
    out = {}
    for name, m in model.named_modules():
        if type(m) in ONNX_MODULES:
            w = "f" if m.weight_bits is None else m.weight_bits
            a = "f" if m.act_bits is None else m.act_bits
            out[name] = f"W{w}A{a}"
    return out


def write_tokens(tokenizer, path: Path) -> None:
    """tokens.txt: ``piece id`` for every id of the sentencepiece model."""
    sp = tokenizer.sp
    lines = [f"{sp.id_to_piece(i)} {i}" for i in range(sp.get_piece_size())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@torch.no_grad()
def export_onnx(
    asr, out_dir: str | Path, example_seconds: float = 3.0
) -> dict[str, Any]:
    """Write ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt``
    of ``asr`` (a :class:`q4asr.modelfile.AsrModel`) into ``out_dir``.

    The model is not changed (the integer modules are swapped in a copy).
    Returns {file name: bytes, "precisions": {name: W?A?}, ...}.
    """
    import copy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = asr.model.eval()
    precisions = precision_summary(src)
    model = copy.deepcopy(src)
    swap_int_modules(model)
    cfg = model.cfg
    n_frames = int(example_seconds * 100)
    x = torch.randn(2, n_frames, cfg.num_mel_bins)
    x_lens = torch.tensor([n_frames, n_frames - 37], dtype=torch.int64)
    method = asr.metadata.get("method", "")
    common = {
        "model_author": "q4asr",
        "version": "1",
        "q4asr_method": method,
        "comment": f"q4asr {method} conformer transducer",
    }
    enc_path, dec_path, join_path = (out_dir / f for f in ONNX_FILES[:3])
    with traceable_model():
        _export(
            EncoderForOnnx(model),
            (x, x_lens),
            enc_path,
            ["x", "x_lens"],
            ["encoder_out", "encoder_out_lens"],
            {
                "x": {0: "N", 1: "T"},
                "x_lens": {0: "N"},
                "encoder_out": {0: "N", 1: "T_out"},
                "encoder_out_lens": {0: "N"},
            },
        )
    y = torch.zeros(2, cfg.context_size, dtype=torch.int64)
    _export(
        DecoderForOnnx(model),
        (y,),
        dec_path,
        ["y"],
        ["decoder_out"],
        {"y": {0: "N"}, "decoder_out": {0: "N"}},
    )
    e = torch.randn(2, cfg.joiner_dim)
    _export(
        JoinerForOnnx(model),
        (e, e.clone()),
        join_path,
        ["encoder_out", "decoder_out"],
        ["logit"],
        {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
    )
    feats = asr.feature_config
    _add_metadata(
        enc_path,
        {
            **common,
            "model_type": "conformer",
            "num_mel_bins": cfg.num_mel_bins,
            "subsampling_factor": 4,
            "feature_config": json.dumps(feats),
            "precisions": json.dumps(precisions),
            "normalize_features": "per-utterance mean/variance over x_lens, in the graph",
        },
    )
    _add_metadata(
        dec_path,
        {**common, "vocab_size": cfg.vocab_size, "context_size": cfg.context_size},
    )
    _add_metadata(join_path, {**common, "joiner_dim": cfg.joiner_dim})
    write_tokens(asr.tokenizer, out_dir / "tokens.txt")
    sizes = {f: (out_dir / f).stat().st_size for f in ONNX_FILES}
    summary = {
        "onnx_dir": str(out_dir),
        **sizes,
        "onnx_bytes": sum(sizes[f] for f in ONNX_FILES[:3]),
        "integer_modules": len(precisions),
        "method": method,
    }
    log.info(
        "exported ONNX to %s: %d bytes (%d integer modules)",
        out_dir,
        summary["onnx_bytes"],
        len(precisions),
    )
    return summary
