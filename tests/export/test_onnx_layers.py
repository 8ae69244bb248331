"""ONNX export of single integer layers: onnxruntime (all graph optimizations on, as
sherpa-onnx runs it) gives q4asr's integer output bit for bit, weights of <= 4 bits
are stored two a byte, and the trace-time substitutions keep the model's values."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from q4asr.export.onnx_graph import (
    MAX_S8_WEIGHT_BITS,
    ONNX_MODULES,
    _export,
    onnx_module,
    rel_shift_by_padding,
)
from q4asr.model.conformer import rel_shift
from q4asr.quant import (
    Precision,
    PrecisionPlan,
    calibrate,
    convert,
    prepare,
    set_quant_mode,
)


class Layers(nn.Module):
    """One of each quantizable layer shape the models use, and a k=3 Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 40)
        self.pointwise = nn.Conv1d(40, 24, 1)
        self.depthwise = nn.Conv1d(24, 24, 5, padding=2, groups=24)
        self.grouped = nn.Conv1d(24, 12, 3, padding=1, groups=4, bias=False)
        self.k3 = nn.Conv1d(24, 16, 3, stride=2, padding=1)
        self.conv2d = nn.Conv2d(2, 8, 3, stride=2)
        self.embedding = nn.Embedding(30, 16)


INPUTS = {  # name -> (example input, dynamic axes)
    "linear": (lambda: torch.randn(3, 17, 48) * 4, {0: "a", 1: "b"}),
    "pointwise": (lambda: torch.randn(2, 40, 19), {0: "a", 2: "b"}),
    "depthwise": (lambda: torch.randn(2, 24, 19) * 3, {0: "a", 2: "b"}),
    "grouped": (lambda: torch.randn(2, 24, 19), {0: "a", 2: "b"}),
    "k3": (lambda: torch.randn(2, 24, 19), {0: "a", 2: "b"}),
    "conv2d": (lambda: torch.randn(2, 2, 31, 40), {0: "a", 2: "b"}),
    "embedding": (lambda: torch.randint(0, 30, (4, 2)), {0: "a", 1: "b"}),
}

PRECISIONS = {
    "w8a8": Precision(weight_bits=8, act_bits=8),
    "w4a8": Precision(weight_bits=4, act_bits=8),
    "w2a4": Precision(weight_bits=2, act_bits=4),
    "w6a8": Precision(weight_bits=6, act_bits=8),
    "w4a8_tensor": Precision(
        weight_bits=4, act_bits=8, weight_granularity="tensor", act_granularity="tensor"
    ),
    "w8a8_static": Precision(
        weight_bits=8, act_bits=8, act_granularity="tensor", act_static=True
    ),
    "w4af": Precision(weight_bits=4, act_bits=None),
    "wfa8": Precision(weight_bits=None, act_bits=8),
}


def integer_layers(precision: Precision) -> Layers:
    torch.manual_seed(0)
    m = Layers()
    prepare(m, PrecisionPlan(default=precision))
    if precision.act_static:

        def run(model):
            for name, (make, _) in INPUTS.items():
                getattr(model, name)(make())

        calibrate(m, run)
    set_quant_mode(m, True)
    return convert(m).eval()


def run_onnx(
    module: nn.Module, x: torch.Tensor, x_run: torch.Tensor, dyn: dict, path
) -> np.ndarray:
    """Export ``module`` traced on ``x``; run the file on ``x_run`` (another shape)."""
    _export(module, (x,), path, ["x"], ["y"], {"x": dyn})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x_run.numpy()})[0]


@pytest.mark.parametrize("plan", sorted(PRECISIONS))
def test_integer_layers_in_onnxruntime_equal_q4asr(plan, tmp_path):
    precision = PRECISIONS[plan]
    layers = integer_layers(precision)
    integer = precision.weight_bits is not None and precision.act_bits is not None
    for name, (make, dyn) in INPUTS.items():
        mod = getattr(layers, name)
        if type(mod) not in ONNX_MODULES:  # left float by the plan (e.g. embedding, A8)
            continue
        torch.manual_seed(1)
        x = make()
        # a longer input than at export: the graph is length-generic
        if name == "embedding":
            x_run = torch.cat([x, (x + 7) % 30], dim=1)
        else:
            x_run = torch.cat([x, x * 0.5], dim=1 if name == "linear" else 2)
        with torch.no_grad():
            want = mod(x_run)
        got = run_onnx(onnx_module(mod), x, x_run, dyn, tmp_path / f"{name}.onnx")
        if integer or name == "embedding":
            # integer products, q4asr's rounding and rescale order: bit for bit
            np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{plan} {name}")
        else:  # a float matmul/conv in both: equal up to summation order
            np.testing.assert_allclose(
                got, want.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{plan} {name}"
            )


def initializers(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_weights_stored_at_their_bit_width(bits, tmp_path):
    layers = integer_layers(Precision(weight_bits=bits, act_bits=8))
    mod = layers.linear
    make, dyn = INPUTS["linear"]
    _export(onnx_module(mod), (make(),), tmp_path / "l.onnx", ["x"], ["y"], {"x": dyn})
    inits = initializers(tmp_path / "l.onnx")
    n_out, k = mod.weight_shape
    big = {n: a for n, a in inits.items() if a.size >= n_out * k // 2}
    assert len(big) == 1, {n: (a.dtype, a.shape) for n, a in inits.items()}
    (w,) = big.values()
    if bits <= 4:  # two values a byte
        assert w.dtype == np.uint8 and w.shape == ((k + 1) // 2, n_out)
    elif bits <= MAX_S8_WEIGHT_BITS:
        assert w.dtype == np.int8 and w.shape == (k, n_out)
    else:  # uint8 w + 128: exact uint8 x uint8 sums on every CPU
        assert w.dtype == np.uint8 and w.shape == (k, n_out)
    assert not [
        a for a in inits.values() if a.dtype == np.float32 and a.size >= n_out * k
    ]


def test_onnx_graph_has_integer_ops(tmp_path):
    layers = integer_layers(Precision(weight_bits=4, act_bits=8))
    ops = set()
    for name in ("linear", "conv2d"):
        make, dyn = INPUTS[name]
        _export(
            onnx_module(getattr(layers, name)),
            (make(),),
            tmp_path / "m.onnx",
            ["x"],
            ["y"],
            {"x": dyn},
        )
        ops |= {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"MatMulInteger", "QuantizeLinear"} <= ops
    assert not ops & {"DynamicQuantizeLinear", "MatMulNBits", "DequantizeLinear"}


def test_rel_shift_by_padding_equals_rel_shift():
    for t in (1, 2, 7, 30):
        x = torch.randn(2, 3, t, 2 * t - 1)
        torch.testing.assert_close(
            rel_shift_by_padding(x), rel_shift(x), rtol=0, atol=0
        )


def test_round_half_to_even_as_q4asr(tmp_path):
    """Rows whose scale is exactly 1 (max |x| = 127) and whose values sit exactly
    halfway between integers: ONNX Round must round them to even, as torch.round
    (rounding half away from zero gives other outputs)."""
    layers = integer_layers(Precision(weight_bits=8, act_bits=8))
    mod = layers.linear
    x = torch.arange(-60, 60, dtype=torch.float32).repeat(3, 1)[:, :48] + 0.5
    x[:, 0] = 127.0
    x = x.reshape(3, 1, 48)
    with torch.no_grad():
        want = mod(x)
    got = run_onnx(onnx_module(mod), x, x, {0: "a", 1: "b"}, tmp_path / "r.onnx")
    np.testing.assert_array_equal(got, want.numpy())


def test_half_rate_encoder_traces_length_generic(tmp_path):
    """Middle layers at half the frame rate: traced on one batch, the ONNX encoder
    gives q4asr's outputs on a batch of other lengths, odd and even."""
    from q4asr.export.onnx_graph import EncoderForOnnx, traceable_model
    from q4asr.model import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(num_layers=3, half_rate_first=1, half_rate_layers=1)
    enc = EncoderForOnnx(build_model(cfg).eval())
    x, lens = torch.randn(2, 120, cfg.num_mel_bins), torch.tensor([120, 97])
    dyn = {"x": {0: "n", 1: "t"}, "x_lens": {0: "n"}, "y": {0: "n", 1: "u"}}
    with traceable_model():
        _export(enc, (x, lens), tmp_path / "e.onnx", ["x", "x_lens"], ["y", "n"], dyn)
    sess = ort.InferenceSession(
        str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"]
    )
    x2, lens2 = torch.randn(3, 151, cfg.num_mel_bins), torch.tensor([151, 130, 61])
    y, y_lens = sess.run(None, {"x": x2.numpy(), "x_lens": lens2.numpy()})
    with torch.no_grad():
        ref, ref_lens = enc(x2, lens2)
    assert y_lens.tolist() == ref_lens.tolist() == [37, 31, 14]
    for i, n in enumerate(ref_lens.tolist()):
        np.testing.assert_allclose(y[i, :n], ref[i, :n].numpy(), atol=1e-4, rtol=1e-4)
