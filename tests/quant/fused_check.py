"""Run under ``TRITON_INTERPRET=1`` (tests/quant/test_fused.py): the fused Triton
kernels against the reference path, bit for bit, on CPU tensors. Prints one JSON
line of results; any mismatch raises."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

assert os.environ.get("TRITON_INTERPRET") == "1"

from q4asr.quant import PrecisionPlan, calibrate, convert, fused, ops, prepare  # noqa: E402
from q4asr.quant.kernels import int_conv2d, int_linear  # noqa: E402
from q4asr.quant.quantizer import quantize  # noqa: E402

spec = importlib.util.spec_from_file_location(
    "quant_conftest", Path(__file__).with_name("conftest.py")
)
conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conftest)

assert fused.enabled(torch.zeros(1)), "fused kernels are not active"
g = torch.Generator().manual_seed(0)
done = {"quantize_rows": 0, "int_linear": 0, "int_conv2d": 0, "models": []}


def same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape)
    assert torch.equal(a, b), (what, (a.float() - b.float()).abs().max())


# per-row quantization: every bit width, dtype, odd widths, zero rows and ties
for bits in (4, 6, 8):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for M, K in ((1, 1), (5, 37), (9, 1030)):
            x = (torch.randn(M, K, generator=g) * 3).to(dtype)
            x[0, : min(K, 3)] = 0
            if M > 2:
                x[1] = 0
                qmax = (1 << (bits - 1)) - 1
                x[2, : min(K, 4)] = torch.tensor([qmax, 0.5, 1.5, -2.5])[: min(K, 4)]
            q, s = quantize(x, bits, (0,))
            with fused.disabled():
                q_ref, s_ref = quantize(x, bits, (0,))
            same(q, q_ref, f"q {bits} {dtype} {M}x{K}")
            same(s, s_ref, f"s {bits} {dtype} {M}x{K}")
            done["quantize_rows"] += 1

# int8 GEMM + rescale + bias epilogue
for M, N, K in ((1, 1, 1), (7, 33, 70), (40, 65, 129)):
    qx = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    qw = torch.randint(-7, 8, (N, K), dtype=torch.int8, generator=g)
    for sx in (torch.rand(M, 1, generator=g) / 50, torch.rand(1, 1, generator=g)):
        for sw in (torch.rand(N, 1, generator=g) / 10, torch.rand(1, 1, generator=g)):
            for bias in (None, torch.randn(N, generator=g)):
                for out in (torch.float32, torch.bfloat16):
                    y = int_linear(qx, sx, qw, sw, bias, out)
                    with fused.disabled():
                        y_ref = int_linear(qx, sx, qw, sw, bias, out)
                    same(y, y_ref, f"linear {M}x{N}x{K}")
                    done["int_linear"] += 1
    qwt = qw.t().contiguous().t()  # a column-major weight view
    same(int_linear(qx, sx, qwt, sw, None), int_linear(qx, sx, qw, sw, None), "strides")

# conv2d through the fused GEMM, per-sample and per-tensor input scales
qx = torch.randint(-127, 128, (3, 2, 11, 9), dtype=torch.int8, generator=g)
qw = torch.randint(-7, 8, (5, 2, 3, 3), dtype=torch.int8, generator=g)
for sx in (torch.rand(3, 1, 1, 1, generator=g), torch.rand(1, 1, 1, 1, generator=g)):
    for out in (torch.float32, torch.bfloat16):
        args = (qx, sx, qw, torch.rand(5, 1, generator=g), torch.randn(5, generator=g))
        y = int_conv2d(*args, (2, 2), (1, 1), (1, 1), out)
        with fused.disabled():
            y_ref = int_conv2d(*args, (2, 2), (1, 1), (1, 1), out)
        same(y, y_ref, "conv2d")
        done["int_conv2d"] += 1

# whole models: QAT forward and backward, and the converted model, fused == reference
PLANS = {
    "w4a8": {"default": {"weight_bits": 4, "act_bits": 8}},
    "w8a8": {"default": {"weight_bits": 8, "act_bits": 8}},
    "mixed": {
        "default": {"weight_bits": 4, "act_bits": 8},
        "rules": [
            {"pattern": "ff", "weight_bits": 8, "act_bits": 8},
            {
                "pattern": "out",
                "weight_bits": 4,
                "act_bits": 8,
                "act_granularity": "tensor",
            },
            {
                "pattern": "conv",
                "weight_bits": 4,
                "act_bits": 8,
                "act_static": True,
                "act_granularity": "tensor",
            },
        ],
    },
}
calls = {"quantize_rows": 0, "int_mm_rescale": 0}


def counting(module, name):
    f = getattr(module, name)

    def counted(*a, **k):
        calls[name] += 1
        return f(*a, **k)

    return counted


for name in ("quantize_rows", "int_mm_rescale"):
    setattr(fused, name, counting(fused, name))
calls["int_conv2d"] = 0
ops.int_conv2d = counting(ops, "int_conv2d")  # the Conv2d front-end's integer path
ids = torch.randint(0, 20, (2, 17), generator=g)
feats = torch.randn(2, 1, 15, 11, generator=g)
for name, plan in PLANS.items():
    torch.manual_seed(0)
    model = prepare(conftest.TinyNet(), PrecisionPlan.from_dict(plan))
    calibrate(model, lambda m: m(ids, feats))
    outs, grads = [], []
    for use_fused in (True, False):
        model.zero_grad()
        if use_fused:
            y = model(ids, feats)
        else:
            with fused.disabled():
                y = model(ids, feats)
        y.pow(2).mean().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    same(outs[0], outs[1], f"{name} QAT forward")
    for a, b in zip(*grads):
        same(a, b, f"{name} QAT gradient")
    model.eval()
    with torch.no_grad():
        y_qat = model(ids, feats)
        y_int = convert(model)(ids, feats)
    same(y_int, y_qat, f"{name} converted == QAT")
    done["models"].append(name)

assert all(calls.values()), calls  # the models ran through the fused kernels
done["model_calls"] = calls
print(json.dumps(done))
sys.exit(0)
