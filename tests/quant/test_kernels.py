"""Integer kernels: exact integer matmul, exact depthwise/grouped conv, int4 packing."""

import pytest
import torch
import torch.nn.functional as F

from q4asr.quant import kernels
from q4asr.quant.kernels import (
    CUDA_MIN_M,
    CUDA_MULTIPLE,
    cublaslt_operands,
    int_conv2d,
    int_grouped_conv1d,
    int_linear,
    int_mm,
    int_mm_acc,
    pack_int4,
    unpack_int4,
)


@pytest.mark.parametrize("shape", [(1, 3, 5), (37, 200, 51), (300, 512, 96)])
def test_int_mm_equals_float64_reference(shape):
    M, K, N = shape
    g = torch.Generator().manual_seed(M)
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    acc = int_mm(a, w.t())
    assert acc.dtype == torch.int32 and acc.shape == (M, N)
    ref = a.double() @ w.double().t()
    assert torch.equal(acc.double(), ref)


@pytest.fixture
def float32_path(monkeypatch):
    """The CPU's float32 path of int_mm_acc, whichever this CPU would choose."""
    monkeypatch.setattr(kernels, "CPU_INT8_PATH", "float32")


@pytest.mark.parametrize("path", ["float32", "int_mm"])
def test_int_mm_acc_paths_give_the_same_sums(path, monkeypatch):
    monkeypatch.setattr(kernels, "CPU_INT8_PATH", path)
    g = torch.Generator().manual_seed(0)
    for M, K, N in [(1, 9, 8), (37, 144, 576), (5, 1216, 13)]:
        a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        acc = int_mm_acc(a, w.t())
        want = torch.float32 if path == "float32" and K <= 1040 else torch.int32
        assert acc.dtype == want
        assert torch.equal(acc.double(), a.double() @ w.double().t())


@pytest.mark.parametrize("K", [1, 144, 1040, 1041, 2048])
def test_int_mm_acc_is_exact_at_the_float32_bound(K, float32_path):
    """The float32 matmul path (K <= 1040 on a CPU) gives the int32 sums exactly,
    at the largest sums int8 operands can make; past the bound int32 is used."""
    a = torch.full((6, K), 127, dtype=torch.int8)
    a[1::2] = -127
    b = torch.full((K, 5), -127, dtype=torch.int8)
    b[:, 1] = 127
    b[0, 2] = 3
    acc = int_mm_acc(a, b)
    assert acc.dtype == (torch.float32 if K <= 1040 else torch.int32)
    ref = int_mm(a, b)
    assert torch.equal(acc.double(), ref.double())
    assert int(ref.abs().max()) == K * 127 * 127


@pytest.mark.parametrize("shape", [(50, 1216, 144), (7, 2048, 33), (3, 3121, 2)])
def test_int_mm_acc_past_the_bound_equals_int_mm(shape, float32_path):
    """Past K = 1040 the CPU path adds exact float32 products of chunks of K in int32:
    the same sums as torch._int_mm, also where they pass 2**24."""
    M, K, N = shape
    g = torch.Generator().manual_seed(K)
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    a[0], w[0] = 127, 127  # one sum at the largest value
    acc = int_mm_acc(a, w.t())
    assert acc.dtype == torch.int32
    assert torch.equal(acc, int_mm(a, w.t()))
    assert int(acc[0, 0]) == K * 127 * 127 > 2**24


# Shapes the models produce: frames x d_model, the Conv2d front-end's K of 9 and 16,
# odd vocabularies, a single row, and shapes that need no padding at all.
CUDA_SHAPES = [
    (32, 104, 40),
    (1, 16, 5),
    (7, 9, 8),
    (100, 144, 500),
    (24, 8, 8),
    (64, 256, 1024),
    (3, 1, 1),
]


@pytest.mark.parametrize("row_major_b", [False, True])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cublaslt_operands_layout_and_padding(shape, row_major_b):
    """What int_mm hands to torch._int_mm on CUDA, checked on the CPU: a row-major,
    b column-major (a transposed contiguous (N, K)), padded sizes, same product."""
    M, K, N = shape
    g = torch.Generator().manual_seed(M * K + N)
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    b = w.t().contiguous() if row_major_b else w.t()
    ap, bp = cublaslt_operands(a, b)
    Mp, Kp = ap.shape
    assert bp.shape[0] == Kp
    Np = bp.shape[1]
    assert Mp >= max(M, CUDA_MIN_M) and Kp >= K and Np >= N
    assert Kp % CUDA_MULTIPLE == 0 and Np % CUDA_MULTIPLE == 0
    assert Kp - K < CUDA_MULTIPLE and Np - N < CUDA_MULTIPLE
    assert ap.is_contiguous()
    assert bp.stride() == (1, Kp), "b must reach cublasLt column-major"
    assert bp.t().is_contiguous()
    assert torch.equal(ap[:M, :K], a) and not ap[M:].any() and not ap[:, K:].any()
    assert torch.equal(bp[:K, :N], b) and not bp[K:].any() and not bp[:, N:].any()
    acc = torch._int_mm(ap, bp)[:M, :N]
    assert torch.equal(acc.double(), a.double() @ w.double().t())


def test_cublaslt_operands_no_copy_when_aligned():
    a = torch.zeros(32, 64, dtype=torch.int8)
    w = torch.zeros(16, 64, dtype=torch.int8)
    ap, bp = cublaslt_operands(a, w.t())
    assert ap.data_ptr() == a.data_ptr() and bp.data_ptr() == w.data_ptr()


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_int_mm_cuda_equals_reference(shape):
    M, K, N = shape
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    for b in (w.t(), w.t().contiguous()):
        acc = int_mm(a.cuda(), b.cuda())
        assert acc.dtype == torch.int32 and acc.shape == (M, N)
        assert torch.equal(acc.cpu().double(), a.double() @ w.double().t())


def test_int_linear_rescale_once():
    g = torch.Generator().manual_seed(0)
    qx = torch.randint(-7, 8, (9, 16), dtype=torch.int8, generator=g)
    qw = torch.randint(-7, 8, (4, 16), dtype=torch.int8, generator=g)
    sx, sw, b = torch.rand(9, 1) + 0.1, torch.rand(4, 1) + 0.1, torch.randn(4)
    y = int_linear(qx, sx, qw, sw, b)
    ref = (qx.double() @ qw.double().t()) * (sx.double() * sw.double().t()) + b.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("groups,cin,cout,k", [(256, 256, 256, 31), (4, 32, 16, 3)])
def test_grouped_conv_is_exact(groups, cin, cout, k):
    g = torch.Generator().manual_seed(groups)
    qx = torch.randint(-127, 128, (2, cin, 50), dtype=torch.int8, generator=g)
    qw = torch.randint(
        -127, 128, (cout, cin // groups, k), dtype=torch.int8, generator=g
    )
    one_x, one_w = torch.ones(1, groups, 1, 1), torch.ones(cout, 1, 1)
    y = int_grouped_conv1d(qx, one_x, qw, one_w, None, 127, 127, 1, k // 2, 1, groups)
    ref = F.conv1d(qx.double(), qw.double(), None, 1, k // 2, 1, groups)
    assert torch.equal(y.double(), ref)
    assert float(ref.abs().max()) > 2**16  # the test exercises large sums


def test_grouped_conv_bound_is_asserted():
    qx = torch.zeros(1, 2 * 1041, 4, dtype=torch.int8)  # 1041*127*127 > 2**24
    qw = torch.zeros(2, 1041, 1, dtype=torch.int8)
    with pytest.raises(AssertionError, match="2\\*\\*24"):
        int_grouped_conv1d(
            qx,
            torch.ones(1, 2, 1, 1),
            qw,
            torch.ones(2, 1, 1),
            None,
            127,
            127,
            1,
            0,
            1,
            2,
        )


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_int4_pack_roundtrip(k):
    g = torch.Generator().manual_seed(k)
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8, generator=g)
    q[0, 0], q[-1, -1] = -8, 7
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(p, k), q)


def test_int4_pack_extremes_and_range_check():
    q = torch.tensor([[-8, 7, -1, 0, 1, -7]], dtype=torch.int8)
    # halves: [-8, 7, -1] in the low nibbles, [0, 1, -7] in the high ones
    assert pack_int4(q).tolist() == [[0x08, 0x17, 0x9F]]
    assert unpack_int4(pack_int4(q), 6).tolist() == q.tolist()
    with pytest.raises(AssertionError, match="out of range"):
        pack_int4(torch.tensor([[8]], dtype=torch.int8))


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,dil,channels_last",
    [
        (1, 8, (3, 3), (2, 2), (0, 0), (1, 1), False),  # the x4 front-end's conv1
        (16, 8, (3, 3), (2, 2), (0, 0), (1, 1), True),  # conv2, channels-last input
        (5, 6, (3, 2), (1, 2), (1, 2), (2, 1), False),
    ],
)
def test_int_conv2d_is_exact(cin, cout, k, stride, pad, dil, channels_last):
    """Integer sums equal a float64 conv of the integer values; one rescale."""
    g = torch.Generator().manual_seed(cin)
    N, H, W = 3, 17, 13
    qx = torch.randint(-127, 128, (N, cin, H, W), dtype=torch.int8, generator=g)
    if channels_last:
        qx = qx.contiguous(memory_format=torch.channels_last)
    qw = torch.randint(-127, 128, (cout, cin, *k), dtype=torch.int8, generator=g)
    sx = torch.rand(N, 1, 1, 1, generator=g) + 0.1
    sw = torch.rand(cout, 1, generator=g) + 0.1
    b = torch.randn(cout, generator=g)
    y = int_conv2d(qx, sx, qw, sw, b, stride, pad, dil)
    acc = F.conv2d(qx.double(), qw.double(), None, stride, pad, dil)
    assert acc.abs().max() < 2**24  # so that float32(acc) is exact below
    ref = acc.float() * (sx * sw.reshape(1, -1, 1, 1)) + b.reshape(1, -1, 1, 1)
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-5)
    # the same integer sums whatever the layout of the input
    y2 = int_conv2d(qx.contiguous(), sx, qw, sw, b, stride, pad, dil)
    assert torch.equal(y, y2)
