"""Fused integer kernels (Triton) for CUDA: per-row activation quantization in one
pass, and an int8 GEMM whose epilogue rescales, adds the bias and stores the result
in the output dtype (no int32 or float32 (M, N) tensor in memory).

They compute exactly what the reference path in :mod:`q4asr.quant.quantizer` and
:mod:`q4asr.quant.kernels` computes, with the same float32 operations in the same
order:

* quantize a row: ``s = max(max|x|, EPS) / qmax`` (IEEE division), ``q = clamp(
  round_half_even(x / s), -qmax, qmax)``. Rounding adds and subtracts ``1.5 * 2**23``
  to a value first clamped to ``[-qmax - 1, qmax + 1]``: round-half-to-even in
  float32 arithmetic, exact there.
* GEMM epilogue: ``float32(acc) * (s_x * s_w)``, then ``+ bias`` (no fused
  multiply-add: kernels launch with ``enable_fp_fusion=False``), then the cast to
  the output dtype (round to nearest even).

The same kernels serve QAT and the converted model, so train/serve parity holds on
the GPU by construction. Used for CUDA tensors when Triton is importable (CUDA
builds of torch ship it) unless ``Q4ASR_FUSED=0``; with ``TRITON_INTERPRET=1``
Triton's interpreter runs them on CPU tensors too (how the tests check them on a
machine without a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

_state: dict = {"enabled": os.environ.get("Q4ASR_FUSED", "1") != "0", "error": None}


@functools.cache
def _triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    return _build_kernels()


# Triton reads it when the kernels are defined: fixed for the process
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    return _INTERPRET


def enabled(t: torch.Tensor) -> bool:
    """Whether the fused kernels run on ``t``'s device: CUDA (or any device under
    Triton's interpreter), Triton importable, and not switched off."""
    if not _state["enabled"] or not (t.is_cuda or interpreting()):
        return False
    return _triton() is not None


def status() -> dict:
    """Whether the fused path is on, and why it was switched off if a kernel failed."""
    return {
        "enabled": _state["enabled"],
        "triton": _triton() is not None,
        "interpreter": interpreting(),
        "error": _state["error"],
    }


def _guarded(fn):
    """A kernel launcher that returns None where the fused path does not run on its
    first argument's device (:func:`enabled`), and, when a kernel cannot run here
    (e.g. Triton cannot compile it for this GPU), switches the fused path off, logs
    why once and returns None: the caller then takes the reference path."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not enabled(args[0]):
            return None
        try:
            return fn(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001  (Triton raises many kinds)
            _state["enabled"] = False
            _state["error"] = f"{type(e).__name__}: {e}"[:1000]
            log.warning("fused kernels switched off: %s", _state["error"])
            return None

    return run


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The reference (unfused) path inside, e.g. to measure both side by side."""
    was = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = was


def _build_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows_kernel(
        x_ptr,
        q_ptr,
        s_ptr,
        K,
        stride_xm,
        QMAX: tl.constexpr,
        EPS: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0)
        x_row = x_ptr + row * stride_xm
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.math.div_rn(tl.maximum(tl.max(amax, axis=0), EPS), QMAX * 1.0)
        tl.store(s_ptr + row, s)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)
            r = tl.math.div_rn(x, s)
            r = tl.minimum(tl.maximum(r, -QMAX - 1.0), QMAX + 1.0)
            # + and - 1.5 * 2**23 round a float32 |r| < 2**22 to an integer, ties to
            # even (a literal: a jit kernel reads only constexpr globals)
            r = (r + 12582912.0) - 12582912.0
            r = tl.minimum(tl.maximum(r, -QMAX * 1.0), QMAX * 1.0)
            tl.store(q_ptr + row * K + rk, r.to(tl.int8), mask=rk < K)

    @triton.jit
    def int_mm_rescale_kernel(
        a_ptr,
        b_ptr,
        sx_ptr,
        sw_ptr,
        bias_ptr,
        c_ptr,
        M,
        N,
        K,
        stride_am,
        stride_ak,
        stride_bn,
        stride_bk,
        stride_sx,
        stride_sw,
        HAS_BIAS: tl.constexpr,
        OUT_BF16: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        # grouped ordering: consecutive programs share B tiles in L2
        group = pid // (GROUP_M * grid_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % size_m)
        pid_n = (pid % (GROUP_M * grid_n)) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(
                a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0,
            )
            b = tl.load(
                b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                mask=(kk[:, None] < K) & (rn[None, :] < N),
                other=0,
            )
            acc += tl.dot(a, b, out_dtype=tl.int32)
        sx = tl.load(sx_ptr + rm * stride_sx, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn * stride_sw, mask=rn < N, other=0.0)
        y = acc.to(tl.float32) * (sx[:, None] * sw[None, :])
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if OUT_BF16:  # round to nearest even in the bits, then the cast is exact
            u = y.to(tl.uint32, bitcast=True)
            u = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
            y = u.to(tl.float32, bitcast=True)
        c = c_ptr + rm[:, None] * N + rn[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(c, y.to(c_ptr.dtype.element_ty), mask=mask)

    configs = [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
            num_warps=w,
            num_stages=st,
        )
        for bm, bn, bk, w, st in (  # few: each is compiled per (N, K) on first use
            (128, 128, 64, 8, 3),
            (128, 256, 64, 8, 3),
            (128, 128, 128, 8, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4),
        )
    ]
    tuned = triton.autotune(configs, key=["N", "K"])(int_mm_rescale_kernel)
    return {
        "quantize_rows": quantize_rows_kernel,
        "mm": int_mm_rescale_kernel,
        "mm_tuned": tuned,
    }


@_guarded
def quantize_rows(
    x: torch.Tensor, bits: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row symmetric quantization in one kernel (None where the fused path does
    not run).

    Args:
      x: (M, K) float32, bfloat16 or float16, last dim contiguous.
    Returns:
      ``(q, s)``: q (M, K) int8, s (M, 1) float32.
    """
    import triton

    assert x.ndim == 2 and x.stride(1) == 1, (x.shape, x.stride())
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    s = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    if M == 0:
        return q, s
    qmax = (1 << (bits - 1)) - 1
    block = min(1024, max(16, triton.next_power_of_2(K)))
    _triton()["quantize_rows"][(M,)](
        x, q, s, K, x.stride(0), QMAX=qmax, EPS=eps, BLOCK_K=block, **_launch_opts()
    )
    return q, s


@_guarded
def int_mm_rescale(
    a: torch.Tensor,
    b: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """``(float32(a @ b^T) * (sx * sw) + bias).to(out_dtype)`` in one kernel (None
    where the fused path does not run).

    Args:
      a: (M, K) int8; b: (N, K) int8 (any strides).
      sx: M or 1 float32 values (e.g. (M, 1) or (1, 1)); sw: N or 1 float32 values.
      bias: (N,) float32 or None.
    Returns:
      (M, N) ``out_dtype``, contiguous.
    """
    import triton

    assert a.dtype == torch.int8 and b.dtype == torch.int8, (a.dtype, b.dtype)
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1], (a.shape, b.shape)
    M, K = a.shape
    N = b.shape[0]
    sx = sx.reshape(-1).to(torch.float32).contiguous()
    sw = sw.reshape(-1).to(torch.float32).contiguous()
    assert sx.numel() in (1, M) and sw.numel() in (1, N), (sx.shape, sw.shape, M, N)
    c = torch.empty(M, N, dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if bias is not None:
        assert bias.shape == (N,), bias.shape
        bias = bias.to(torch.float32).contiguous()
    args = (
        a,
        b,
        sx,
        sw,
        bias if bias is not None else sw,
        c,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        0 if sx.numel() == 1 else 1,
        0 if sw.numel() == 1 else 1,
    )
    k = _triton()
    flags = {"HAS_BIAS": bias is not None, "OUT_BF16": out_dtype == torch.bfloat16}
    if interpreting():  # one fixed small tile: the interpreter runs tiles in numpy
        blocks = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
        grid = (triton.cdiv(M, 32) * triton.cdiv(N, 32),)
        k["mm"][grid](*args, **flags, **blocks, **_launch_opts())
    else:

        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        k["mm_tuned"][grid](*args, **flags, **_launch_opts())
    return c


def _launch_opts() -> dict:
    # multiply and add stay two roundings, as in the reference path
    return {} if interpreting() else {"enable_fp_fusion": False}
