"""Integer kernels shared by QAT modules and converted integer modules.

Which op runs on which path:

* **Conv2d with groups=1**: the image is quantized first, then unfolded in int8
  (channels-last) and multiplied by ``torch._int_mm`` (:func:`int_conv2d`).
* **Linear, pointwise Conv1d, Conv1d with groups=1 (via unfold)**: int8
  operands (int4 values also live in int8) multiplied by ``torch._int_mm`` with int32
  accumulation, then one rescale ``acc * (s_x * s_w)`` in float32 (:func:`int_linear`).
  Integer accumulation is exact for any size.
* **Grouped / depthwise Conv1d**: PyTorch has no integer convolution kernel, so
  :func:`int_grouped_conv1d` convolves the integer *values* held in float32. Every
  partial sum of such a convolution is an integer whose magnitude is at most
  ``(C_in/groups) * kernel * qmax_x * qmax_w``; when that bound is below ``2**24``
  every partial sum is exactly representable in float32, so every addition and
  multiplication is exact whatever the summation order, and the result equals the
  integer convolution. The bound is asserted from the shapes before each call.
* **Weight-only (activations float)** and **activation-only**: fake-quantized float32
  operands (``dequantize(quantize(.))``) in the float op; the converted model
  dequantizes its stored integer weight with the same function, so the values are
  identical.

Int4 weights are stored two per byte (:func:`pack_int4` / :func:`unpack_int4`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from q4asr.quant import fused

FLOAT32_EXACT_LIMIT = 1 << 24


def _pad_to(n: int, multiple: int, minimum: int = 0) -> int:
    return max(minimum, -(-n // multiple) * multiple)


# What cublasLt's int8 GEMM (behind ``torch._int_mm`` on CUDA) accepts: M > 16, K and
# N multiples of 8, ``a`` row-major and ``b`` column-major (the transpose of a
# contiguous (N, K) tensor). A row-major ``b`` is refused (CUBLAS_STATUS_NOT_SUPPORTED).
CUDA_MIN_M = 24
CUDA_MULTIPLE = 8


def cublaslt_operands(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` zero-padded and laid out as cublasLt's int8 GEMM needs them.

    Args:
      a: (M, K) int8, any layout.  b: (K, N) int8, any layout.
    Returns:
      ``(ap, bp)``: ap (Mp, Kp) contiguous (row-major); bp (Kp, Np), the transposed
      view of a contiguous (Np, Kp) tensor (column-major), with Mp >= 24 and Kp, Np
      multiples of 8. Zeros add nothing to any sum, so ``(ap @ bp)[:M, :N] == a @ b``.
      Operands that already fit are returned without a copy.
    """
    M, K = a.shape
    N = b.shape[1]
    Mp = _pad_to(M, CUDA_MULTIPLE, CUDA_MIN_M)
    Kp, Np = _pad_to(K, CUDA_MULTIPLE), _pad_to(N, CUDA_MULTIPLE)
    if (Mp, Kp) != (M, K):
        a = F.pad(a, (0, Kp - K, 0, Mp - M))
    a = a.contiguous()
    bt = b.t()  # (N, K)
    if (Np, Kp) != (N, K):
        bt = F.pad(bt, (0, Kp - K, 0, Np - N))
    return a, bt.contiguous().t()


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with int32 accumulation.

    Args:
      a: (M, K) int8.  b: (K, N) int8 (may be a transposed view).
    Returns:
      (M, N) int32.

    On CPU ``torch._int_mm`` takes any shape. On CUDA the operands go through
    :func:`cublaslt_operands` (padding and layout) and the result is cut back.
    """
    assert a.dtype == torch.int8 and b.dtype == torch.int8, (a.dtype, b.dtype)
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0], (a.shape, b.shape)
    if not a.is_cuda:
        return torch._int_mm(a, b)
    M, N = a.shape[0], b.shape[1]
    ap, bp = cublaslt_operands(a, b)
    acc = torch._int_mm(ap, bp)
    return acc if acc.shape == (M, N) else acc[:M, :N]


# On a CPU an int8 product whose every partial sum stays below 2**24 in magnitude can
# be computed as a float32 matmul of the integer values: exact (every product and every
# partial sum is an integer float32 represents, whatever the summation order). On x86
# CPUs without AMX that is far faster than torch._int_mm; on CPUs with AMX (int8
# tiles) torch._int_mm is the faster one, by 1.3-12x (docs/quantization.md, "Speed
# notes", has both measurements and their commands). ``CPU_INT8_PATH`` is the choice
# made for this CPU when q4asr is imported. On the float32 path a longer K is cut into
# chunks of at most _FLOAT32_EXACT_K: each chunk's float32 product is exact, and the
# chunks' sums are added in int32. Either path gives the same integers.
_INT8_MAX_PRODUCT = 127 * 127
_FLOAT32_EXACT_K = (FLOAT32_EXACT_LIMIT - 1) // _INT8_MAX_PRODUCT  # 1040


def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


CPU_INT8_PATH = "int_mm" if _cpu_has_amx() else "float32"


def int_mm_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The sums of ``a @ b`` (int8 operands as :func:`int_mm`). On a CPU whose
    ``CPU_INT8_PATH`` is ``float32`` they come from float32 matmuls: for K <= 1040
    (``K * 127 * 127 < 2**24``) one, returned as float32 holding the integers
    exactly; for a longer K one per chunk of K, each exact, added in int32.
    Elsewhere :func:`int_mm` (int32). :func:`rescale` takes either."""
    if a.is_cuda or CPU_INT8_PATH == "int_mm":
        return int_mm(a, b)
    K = a.shape[1]
    with torch.autocast(a.device.type, enabled=False):  # float32, never bf16
        if K <= _FLOAT32_EXACT_K:
            return a.float() @ b.float()
        chunks = -(-K // _FLOAT32_EXACT_K)
        step = -(-K // chunks)
        acc = None
        for k0 in range(0, K, step):
            part = (a[:, k0 : k0 + step].float() @ b[k0 : k0 + step].float()).to(
                torch.int32
            )
            acc = part if acc is None else acc.add_(part)
        return acc


def rescale(acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """``acc * (sx * sw)`` in float32: the single rescale of an integer product.

    acc: (M, N) int32 or integer-valued float; sx: broadcastable to (M, N)
    (e.g. (M, 1) per row or (1, 1)); sw: (1, N) or (1, 1). ``sx * sw`` is formed
    first (an outer product of the scales), then one multiply converts and scales
    ``acc`` in place. An int32 ``acc`` is converted to float32 in its own memory
    (same element size, elementwise, so every element is read before its slot is
    written): no new (M, N) buffer is allocated, which on CPU saves the page faults
    of a fresh large tensor. ``acc`` must not be used afterwards.
    """
    if acc.dtype == torch.int32:
        f = acc.view(torch.float32)
        f.copy_(acc)
        acc = f
    else:
        assert acc.dtype == torch.float32, acc.dtype
    return acc.mul_(sx * sw)


def int_linear(
    qx: torch.Tensor,
    sx: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Native integer linear ``y = (qx @ qw^T) * (sx * sw) + bias``, computed in
    float32 and returned in ``out_dtype`` (one fused kernel where
    :func:`q4asr.quant.fused.enabled`).

    Args:
      qx: (M, K) int8; sx: (M, 1) or (1, 1) float32.
      qw: (N, K) int8; sw: (N, 1) or (1, 1) float32.
      bias: (N,) float32 or None.
    Returns:
      (M, N) ``out_dtype``.
    """
    assert qx.ndim == 2 and qw.ndim == 2 and qx.shape[1] == qw.shape[1], (
        qx.shape,
        qw.shape,
    )
    y = fused.int_mm_rescale(qx, qw, sx, sw, bias, out_dtype)
    if y is not None:
        return y
    y = rescale(int_mm_acc(qx, qw.t()), sx, sw.reshape(1, -1))
    if bias is not None:
        y.add_(bias)
    return y.to(out_dtype)


def int_conv2d(
    qx: torch.Tensor,
    sx: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Native integer conv2d (groups=1): int8 patches x int8 weights, int32 sums,
    rescaled in float32 and returned in ``out_dtype``.

    The input is quantized *before* unfolding, so the patches are gathered from an
    int8 image (a quarter of the bytes of float32) and no quantization runs on the
    ``kh * kw`` times larger unfolded tensor. The image is made channels-last, so
    that every patch row ``(kh, kw, C)`` is a strided view; the weight is reordered
    to match. The result is left channels-last in memory (a permuted view).

    Args:
      qx: (N, C, H, W) int8, any memory layout.
      sx: (N, 1, 1, 1) (per sample) or (1, 1, 1, 1) float32.
      qw: (n_out, C, kh, kw) int8; sw: (n_out, 1) or (1, 1) float32.
      bias: (n_out,) float32 or None.
    Returns:
      (N, n_out, Ho, Wo) ``out_dtype``.
    """
    assert qx.dtype == torch.int8 and qw.dtype == torch.int8, (qx.dtype, qw.dtype)
    assert qx.ndim == 4 and qw.ndim == 4 and qx.shape[1] == qw.shape[1], (
        qx.shape,
        qw.shape,
    )
    N, C, H, W = qx.shape
    n_out, _, kh, kw = qw.shape
    assert sx.shape in ((N, 1, 1, 1), (1, 1, 1, 1)), sx.shape
    img = qx.permute(0, 2, 3, 1)  # (N, H, W, C)
    if padding[0] or padding[1]:
        img = F.pad(img, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    img = img.contiguous()
    Hp, Wp = img.shape[1], img.shape[2]
    Ho = (Hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (Wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    assert Ho > 0 and Wo > 0, (qx.shape, qw.shape, stride, padding, dilation)
    s0, s1, s2, s3 = img.stride()
    cols = img.as_strided(
        (N, Ho, Wo, kh, kw, C),
        (s0, stride[0] * s1, stride[1] * s2, dilation[0] * s1, dilation[1] * s2, s3),
    ).reshape(N * Ho * Wo, kh * kw * C)
    w2 = qw.permute(0, 2, 3, 1).reshape(n_out, kh * kw * C)
    # the per-sample scale of every patch row (one value if per tensor): a view
    sx_rows = sx.reshape(-1, 1)
    if sx_rows.shape[0] > 1:
        sx_rows = sx_rows.expand(-1, Ho * Wo)
    y = fused.int_mm_rescale(cols, w2, sx_rows, sw, bias, out_dtype)
    if y is not None:
        return y.view(N, Ho, Wo, n_out).permute(0, 3, 1, 2)
    acc = int_mm_acc(cols, w2.t()).reshape(N, Ho * Wo, n_out)
    y = rescale(acc, sx.reshape(-1, 1, 1), sw.reshape(1, 1, -1))
    if bias is not None:
        y.add_(bias)
    return y.view(N, Ho, Wo, n_out).permute(0, 3, 1, 2).to(out_dtype)


def grouped_conv_bound(k_per_out: int, qmax_x: int, qmax_w: int) -> int:
    """Largest possible |partial sum| of an integer conv with ``k_per_out`` terms."""
    return k_per_out * qmax_x * qmax_w


def int_grouped_conv1d(
    qx: torch.Tensor,
    sx: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    bias: torch.Tensor | None,
    qmax_x: int,
    qmax_w: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """Exact integer grouped (incl. depthwise) conv1d on integer-valued float32.

    Args:
      qx: (N, C, T) int8, activation scale sx: (N, G, 1, 1) with G = groups (one
        scale per sample and group, constant over the contracted axes) or
        (1, 1, 1, 1).
      qw: (n_out, C/groups, k) int8, sw: (n_out, 1, 1) or (1, 1, 1).
      bias: (n_out,) or None.
    Returns:
      (N, n_out, T') float32.
    """
    assert qx.ndim == 3 and qw.ndim == 3, (qx.shape, qw.shape)
    N, C, T = qx.shape
    n_out, Cg, k = qw.shape
    assert C == Cg * groups and n_out % groups == 0, (qx.shape, qw.shape, groups)
    bound = grouped_conv_bound(Cg * k, qmax_x, qmax_w)
    assert bound < FLOAT32_EXACT_LIMIT, (
        f"grouped conv partial sums may reach {bound} >= 2**24: not exact in float32"
    )
    with torch.autocast(qx.device.type, enabled=False):  # float32, never bf16/fp16
        acc = F.conv1d(
            qx.to(torch.float32),
            qw.to(torch.float32),
            None,
            stride,
            padding,
            dilation,
            groups,
        )  # (N, n_out, T'), integer-valued, exact by the bound above
    G = sx.shape[1]
    sx_out = sx.reshape(sx.shape[0], G, 1).repeat_interleave(
        n_out // G, dim=1
    )  # (N|1, n_out, 1)
    y = rescale(acc, sx_out, sw.reshape(1, -1, 1))
    if bias is not None:
        y = y + bias.reshape(1, -1, 1)
    return y


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values two per byte along the last dim.

    Args:
      q: (..., K) int8 with values in [-8, 7].
    Returns:
      (..., ceil(K/2)) uint8: with H = ceil(K/2), element j (j < H) in the low nibble
      of byte j and element H + j in its high nibble (an odd K is padded with a zero).
      Splitting in halves rather than interleaving lets :func:`unpack_int4` rebuild
      the row with two shifts and one concatenation.
    """
    assert q.dtype == torch.int8, q.dtype
    if q.numel():
        lo, hi = int(q.min()), int(q.max())
        assert -8 <= lo and hi <= 7, f"int4 values out of range [-8, 7]: [{lo}, {hi}]"
    if q.shape[-1] % 2:
        q = F.pad(q, (0, 1))
    h = q.shape[-1] // 2
    u = q.view(torch.uint8) & 0xF
    return u[..., :h] | (u[..., h:] << 4)


def unpack_int4(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`. p: (..., ceil(k/2)) uint8 -> (..., k) int8."""
    assert p.dtype == torch.uint8, p.dtype
    assert p.shape[-1] == (k + 1) // 2, (p.shape, k)
    s = p.view(torch.int8)
    # arithmetic right shifts of int8 sign-extend the 4-bit two's complement nibbles
    q = torch.cat(((s << 4) >> 4, s >> 4), dim=-1)
    return q if k % 2 == 0 else q[..., :k].contiguous()
