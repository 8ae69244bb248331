"""Symmetric, zero-point-free quantizer: the one numeric definition used everywhere.

``q = clamp(round(x / s), -qmax, qmax)`` with ``qmax = 2**(bits-1) - 1`` and
``s = max|x| / qmax`` reduced over every axis except the kept ones (per output
channel for weights, per row/token for activations), or ``s = amax / qmax`` for a
given (calibrated) ``amax``. Rounding is round-half-to-even (``torch.round``).
``q`` is held in an int8 tensor for every bit width (int4 values too).

The straight-through estimator (:class:`FakeQuantSTE`) passes the gradient through
unchanged where the value was not clamped (``|round(x / s)| <= qmax``) and zeroes it
where it was; the scale gets no gradient (it is treated as a constant, as in AQT).
QAT modules and the converted integer modules call the same functions, so they
produce bit-identical operands.
"""

from __future__ import annotations

import torch

from q4asr.quant import fused

# Stored parameters of a quantized model (docs/quantization.md, "Numerics"):
# - a weight's scales are float8 e4m3 codes, one byte per output channel, times one
#   power of two per tensor (the "base"): every scale is exact in float32 and in
#   bfloat16; each is the nearest such value to max|w| / qmax, or the next larger
#   one where the nearest would clip (:func:`weight_scale_code`);
# - a bias is int8 with one float32 scale per tensor (8-bit, like the activations
#   it is added to);
# - LayerNorm weights and biases are bfloat16.
# QAT computes with exactly these values, so the stored model is what was trained.
SCALE_CODE_DTYPE = torch.float8_e4m3fn
_SCALE_CODE_MAX = 448.0  # largest finite e4m3 value
BIAS_BITS = 8
NORM_DTYPE = torch.bfloat16

# Smallest amax used to form a scale: an all-zero row gets scale EPS / qmax and
# quantizes to zeros instead of dividing by zero.
EPS = 1e-12


def qmax_for(bits: int) -> int:
    """Largest quantized magnitude for a signed symmetric ``bits``-bit integer."""
    assert 2 <= bits <= 8, bits
    return (1 << (bits - 1)) - 1


def _amax(x: torch.Tensor, keep_dims: tuple[int, ...] | None) -> torch.Tensor:
    """``max|x|`` (at least EPS) reduced over all dims except ``keep_dims``, with
    ``x.ndim`` dims."""
    xd = x.detach()
    if keep_dims is None:
        amax = torch.maximum(xd.amax(), xd.amin().neg_()).reshape([1] * x.ndim)
    else:
        keep = {d % x.ndim for d in keep_dims}
        red = tuple(d for d in range(x.ndim) if d not in keep)
        if red:  # max|x| without materialising |x|: two reductions, no new tensor
            amax = torch.maximum(
                xd.amax(dim=red, keepdim=True), xd.amin(dim=red, keepdim=True).neg_()
            )
        else:
            amax = xd.abs()
    return amax.clamp_min(EPS)


def compute_scale(
    x: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> torch.Tensor:
    """Scale ``max|x| / qmax`` reduced over all dims except ``keep_dims``.

    Args:
      x: any shape, float32.
      keep_dims: dims that keep their own scale (``(0,)`` = per output channel or per
        row); ``None`` = one scale for the whole tensor.
    Returns:
      float32 scale with ``x.ndim`` dims (size 1 on the reduced dims).
    """
    return _amax(x, keep_dims) / qmax_for(bits)


def scale_from_amax(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """Scale for a calibrated ``amax`` (any shape), the same formula as above."""
    return amax.clamp_min(EPS) / qmax_for(bits)


def quantize(
    x: torch.Tensor,
    bits: int,
    keep_dims: tuple[int, ...] | None = (0,),
    scale: torch.Tensor | None = None,
    return_mask: bool = False,
):
    """Quantize ``x`` to ``bits`` bits.

    Args:
      x: float32 (bfloat16 and float16 are converted to float32 first, exactly),
        any shape.
      bits: 2..8.
      keep_dims: see :func:`compute_scale`; ignored when ``scale`` is given.
      scale: a fixed scale broadcastable to ``x`` (static quantization).
      return_mask: also return the bool mask of values that were not clamped.
    Returns:
      ``(q, scale)`` or ``(q, scale, mask)``: ``q`` int8 of ``x.shape`` with values in
      ``[-qmax, qmax]``; ``scale`` float32 broadcastable to ``x``.
    """
    qmax = qmax_for(bits)
    if (
        scale is None
        and keep_dims == (0,)
        and x.ndim == 2
        and not return_mask
        and x.stride(1) == 1
    ):  # dynamic per-row scales: one kernel reads x once for the scale, once for q
        qs = fused.quantize_rows(x.detach(), bits, EPS)
        if qs is not None:
            return qs
    if x.dtype != torch.float32:  # bfloat16/float16 values are exact in float32
        x = x.float()
    if scale is None:
        scale = compute_scale(x, bits, keep_dims)
    r = x.detach() / scale  # a new tensor: round and clamp in place
    r.round_()
    mask = r.abs() <= qmax if return_mask else None
    q = r.clamp_(-qmax, qmax).to(torch.int8)
    return (q, scale, mask) if return_mask else (q, scale)


def encode_scale(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive float32 scales -> (float8 e4m3 codes of ``s``'s shape, float32 base
    of shape (1,), a power of two) with ``code * base`` the nearest such value to
    ``s``. The base puts the largest scale in [224, 448): codes are normal e4m3
    numbers (3 mantissa bits) down to 2**-14 of the largest scale."""
    _, e = torch.frexp(s.max().reshape(1) / _SCALE_CODE_MAX)
    base = torch.ldexp(torch.ones(1, device=s.device), e)
    return (s / base).to(SCALE_CODE_DTYPE), base  # s / base: exact


def decode_scale(code: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """float32 scales from :func:`encode_scale`'s codes and base (exact)."""
    return code.float() * base


def weight_scale_code(
    w: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored scale of a weight: :func:`encode_scale` of ``max|w| / qmax``,
    a code larger where the nearest one would clip the largest weight (round it
    past ``qmax``). A 4-bit scale with a normal code is never moved (the nearest
    code is within 1/16 of it; clipping needs 1/15 below); an 8-bit one about half
    the time, which leaves at least 8/9 of the grid in use."""
    qmax = qmax_for(bits)
    amax = _amax(w, keep_dims)
    code, base = encode_scale(amax / qmax)
    clips = amax / decode_scale(code, base) >= qmax + 0.5  # as quantize rounds
    bits_ = code.view(torch.uint8)  # of a positive e4m3 number: +1 is the next one
    return torch.where(clips, bits_ + 1, bits_).view(SCALE_CODE_DTYPE), base


def weight_scale(
    w: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> torch.Tensor:
    """The scale a weight is quantized with, float32: its stored scale decoded."""
    return decode_scale(*weight_scale_code(w, bits, keep_dims))


def quantize_weight_stored(
    w: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight as an integer module stores it: (q int8, scale codes, base)."""
    code, base = weight_scale_code(w, bits, keep_dims)
    q, _ = quantize(w, bits, keep_dims, decode_scale(code, base))
    return q, code, base


def quantize_weight(
    w: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize`` with :func:`weight_scale`: (q int8, scale float32)."""
    return quantize(w, bits, keep_dims, weight_scale(w, bits, keep_dims))


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32. q: int8 (any shape), scale: broadcastable float32."""
    return q.to(torch.float32) * scale


class FakeQuantSTE(torch.autograd.Function):
    """``dequantize(quantize(x))`` with a straight-through gradient masked outside
    the clip range."""

    @staticmethod
    def forward(ctx, x, bits, keep_dims, scale):  # noqa: D401
        q, s, mask = quantize(x, bits, keep_dims, scale, return_mask=True)
        ctx.save_for_backward(mask)
        ctx.x_dtype = x.dtype
        return dequantize(q, s)  # float32 whatever the input dtype

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad * mask).to(ctx.x_dtype), None, None, None


def fake_quant(
    x: torch.Tensor,
    bits: int | None,
    keep_dims: tuple[int, ...] | None = (0,),
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize-dequantize with STE; identity when ``bits`` is None (float)."""
    if bits is None:
        return x
    return FakeQuantSTE.apply(x, bits, keep_dims, scale)


def fake_quant_weight(
    w: torch.Tensor, bits: int | None, keep_dims: tuple[int, ...] | None
) -> torch.Tensor:
    """:func:`fake_quant` of a weight with its stored (:func:`weight_scale`) scale."""
    if bits is None:
        return w
    return FakeQuantSTE.apply(w, bits, keep_dims, weight_scale(w, bits, keep_dims))


def quantize_bias(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias as it is stored: (q int8, scale float32 of shape (1,)),
    ``BIAS_BITS`` bits with one scale per tensor."""
    return quantize(b.detach().float(), BIAS_BITS, None)


def round_bias(b: torch.Tensor | None) -> torch.Tensor | None:
    """A quantized module's bias as the integer model serves it
    (``dequantize(*quantize_bias(b))``), in ``b``'s dtype, with a straight-through
    gradient: QAT trains with the stored bias."""
    return None if b is None else fake_quant(b, BIAS_BITS, None).to(b.dtype)


def round_norm(p: torch.Tensor | None) -> torch.Tensor | None:
    """A LayerNorm parameter of a quantized model as stored (``NORM_DTYPE``),
    returned in its own dtype; the gradient passes through the casts."""
    return None if p is None else p.to(NORM_DTYPE).to(p.dtype)
