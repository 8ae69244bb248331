"""How a quantized model's parameters are stored: float8 weight scales, int8 biases,
bfloat16 LayerNorms, one flat tensor per dtype in the file; and what that buys on
the demo recipe's model."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors import safe_open

from q4asr.model import ModelConfig, build_model
from q4asr.quant import (
    IntLayerNorm,
    IntLinear,
    Precision,
    PrecisionPlan,
    QATLayerNorm,
    QATLinear,
    convert,
    load_plan,
    load_quantized,
    prepare,
    save_quantized,
    set_quant_mode,
    unprepare,
)
from q4asr.quant.quantizer import (
    SCALE_CODE_DTYPE,
    decode_scale,
    encode_scale,
    quantize,
    weight_scale,
    weight_scale_code,
)

SYNTH = Path(__file__).resolve().parents[2] / "egs/synth/ASR"


def test_scale_codes_are_the_nearest_float8_times_a_power_of_two():
    torch.manual_seed(0)
    # scales over 20 octaves
    s = torch.exp2(torch.empty(500, 1).uniform_(-20, 0)) * 0.37
    code, base = encode_scale(s)
    assert code.dtype == SCALE_CODE_DTYPE and base.shape == (1,)
    m, _ = torch.frexp(base)
    assert float(m) == 0.5  # a power of two
    assert 224 <= float(code.float().max()) < 448
    v = decode_scale(code, base)
    assert torch.equal(v, code.float() * base) and torch.equal(v, v.bfloat16().float())
    # nearest: within half a step (1/16) where the code is a normal e4m3 number
    normal = code.float() >= 2**-6
    assert int(normal.sum()) > 300  # 15 of the 20 octaves
    assert float(((v - s).abs() / s)[normal].max()) <= 2**-4
    # below: subnormal codes, spaced 2**-9 apart
    assert float((v - s).abs()[~normal].max()) <= 2**-10 * float(base)


@pytest.mark.parametrize("bits", [4, 8])
def test_no_weight_is_clipped_by_its_stored_scale(bits):
    torch.manual_seed(1)
    w = torch.randn(256, 48) * torch.exp2(torch.empty(256, 1).uniform_(-8, 2))
    w[3] = 0  # an all-zero channel
    code, base = weight_scale_code(w, bits, (0,))
    s = weight_scale(w, bits, (0,))
    assert torch.equal(s, decode_scale(code, base))
    q, _, mask = quantize(w, bits, (0,), s, return_mask=True)
    assert bool(mask.all())  # nothing clamped
    qmax = 2 ** (bits - 1) - 1
    top = q.abs().amax(1)
    assert int(top[3]) == 0
    top = torch.cat([top[:3], top[4:]])
    if bits == 4:  # the nearest code never clips at 4 bits: the grid is all used
        assert bool((top == qmax).all())
    else:
        assert int(top.min()) >= qmax * 8 // 9 and bool((top == qmax).any())


def test_bias_and_layernorm_train_and_serve_as_stored():
    torch.manual_seed(2)
    lin = QATLinear.from_float(nn.Linear(16, 8), Precision(4, 8), "lin")
    lin.bias.data.mul_(5)
    ln = QATLayerNorm.from_float(nn.LayerNorm(8))
    ln.weight.data.uniform_(0.5, 1.5)
    ln.bias.data.uniform_(-1, 1)
    x = torch.randn(5, 16, requires_grad=True)
    y = ln(lin(x))
    y.sum().backward()
    assert lin.bias.grad is not None and ln.weight.grad is not None
    ilin, iln = IntLinear.from_qat(lin), IntLayerNorm.from_qat(ln)
    assert ilin.bias.dtype == torch.int8 and ilin.bias_scale.shape == (1,)
    assert int(ilin.bias.abs().max()) == 127
    assert iln.weight.dtype == iln.bias.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(iln(ilin(x)), ln(lin(x)))
        # the rounding is what differs from the float LayerNorm
        assert not torch.equal(
            ln(y), nn.functional.layer_norm(y, (8,), ln.weight, ln.bias)
        )


def test_layernorm_follows_prepare_quant_mode_and_unprepare():
    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    net[1].weight.data.uniform_(0.5, 1.5)
    w = net[1].weight
    x = torch.randn(3, 8)
    with torch.no_grad():
        y_float = net(x)
    plan = load_plan(SYNTH / "conf/plans/w4a8.yaml")
    m = prepare(net, plan)
    assert type(m[1]) is QATLayerNorm and m[1].weight is w
    set_quant_mode(m, False)
    with torch.no_grad():
        assert torch.equal(m(x), y_float)
    m = unprepare(m)
    assert type(m[1]) is nn.LayerNorm and m[1].weight is w
    # an all-float plan leaves LayerNorms alone
    float_plan = PrecisionPlan.from_dict({"default": {"float": True}})
    assert type(prepare(m, float_plan)[1]) is nn.LayerNorm


def test_file_holds_one_flat_tensor_per_dtype(tmp_path):
    plan = load_plan(SYNTH / "conf/plans/mixed48.yaml")
    model = convert(prepare(_demo_model(), plan))
    path = save_quantized(tmp_path / "m.safetensors", model, {"k": "v"})
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    dtypes = {str(t.dtype).removeprefix("torch.") for t in model.state_dict().values()}
    assert keys == {f"data.{d}" for d in dtypes}
    assert {"uint8", "int8", "float8_e4m3fn", "bfloat16", "float32"} <= dtypes
    assert meta["k"] == "v" and len(meta["q4asr.layout"]) == 16


def test_loading_assigns_views_of_the_file_tensors(tmp_path):
    """load_quantized makes the file's flat tensors the model's state without a
    copy (one storage per dtype), with every value as saved, and parameters that
    still require grad as the built model's do."""
    plan = load_plan(SYNTH / "conf/plans/mixed48.yaml")
    model = convert(prepare(_demo_model(), plan))
    path = save_quantized(tmp_path / "m.safetensors", model, {})
    loaded, _, _ = load_quantized(path, lambda meta: _demo_model())
    saved, state = model.state_dict(), loaded.state_dict()
    assert list(state) == list(saved)
    for k, t in state.items():
        assert t.dtype == saved[k].dtype and torch.equal(t, saved[k]), k
    storages = {t.untyped_storage().data_ptr() for t in state.values()}
    assert len(storages) == len({t.dtype for t in state.values()})
    params = dict(loaded.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert all(not t.is_meta for t in state.values())
    assert not any(m.training for m in loaded.modules())


def _demo_model() -> nn.Module:
    """The demo recipe's model: conf/train.yaml with its 128-piece BPE."""
    cfg = yaml.safe_load((SYNTH / "conf/train.yaml").read_text())["model"]
    cfg["vocab_size"] = 128
    torch.manual_seed(0)
    return build_model(ModelConfig(**cfg))


@pytest.mark.parametrize("plan,least", [("w4a8", 7.7), ("mixed48", 6.0)])
def test_demo_model_file_sizes(tmp_path, plan, least):
    """W4A8 at least 7.7x smaller than float32 on disk (8x is the limit), mixed
    4/8 at least 6x: the issue's goals, on the model the demo trains."""
    f32 = save_quantized(tmp_path / "f32.safetensors", _demo_model(), {})
    model = convert(
        prepare(_demo_model(), load_plan(SYNTH / f"conf/plans/{plan}.yaml"))
    )
    q = save_quantized(tmp_path / "q.safetensors", model, {})
    ratio = f32.stat().st_size / q.stat().st_size
    print(f"{plan}: {ratio:.3f}x smaller than float32")
    assert least <= ratio < 8.0
