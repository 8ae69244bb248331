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

# Stored weight scales and biases of quantized modules are bfloat16 (float32's range:
# no scale under- or overflows), half the bytes of float32 per output channel.
SCALE_DTYPE = torch.bfloat16

# Smallest amax used to form a scale: an all-zero row gets scale EPS / qmax and
# quantizes to zeros instead of dividing by zero.
EPS = 1e-12


def qmax_for(bits: int) -> int:
    """Largest quantized magnitude for a signed symmetric ``bits``-bit integer."""
    assert 2 <= bits <= 8, bits
    return (1 << (bits - 1)) - 1


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
    if keep_dims is None:
        xd = x.detach()
        amax = torch.maximum(xd.amax(), xd.amin().neg_()).reshape([1] * x.ndim)
    else:
        keep = {d % x.ndim for d in keep_dims}
        red = tuple(d for d in range(x.ndim) if d not in keep)
        xd = x.detach()
        if red:  # max|x| without materialising |x|: two reductions, no new tensor
            amax = torch.maximum(
                xd.amax(dim=red, keepdim=True), xd.amin(dim=red, keepdim=True).neg_()
            )
        else:
            amax = xd.abs()
    return amax.clamp_min(EPS) / qmax_for(bits)


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


def weight_scale(
    w: torch.Tensor, bits: int, keep_dims: tuple[int, ...] | None
) -> torch.Tensor:
    """The scale of a weight: ``max|w| / qmax`` rounded to bfloat16, the dtype it is
    stored in (half the bytes of float32 per output channel), returned as float32.
    QAT quantizes with this rounded scale too, so the stored model is what was
    trained."""
    return compute_scale(w, bits, keep_dims).to(SCALE_DTYPE).float()


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


def round_bias(b: torch.Tensor | None) -> torch.Tensor | None:
    """A quantized module's bias as it is stored: rounded to bfloat16, returned in
    its own dtype. Differentiable (the gradient passes through the casts), so QAT
    trains with the bias the integer model serves."""
    return None if b is None else b.to(SCALE_DTYPE).to(b.dtype)
