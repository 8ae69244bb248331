"""Parity: a QAT-trained model converted to integers computes exactly the same."""

import json

import pytest
import torch

from q4asr.quant import (
    QAT_TO_INT,
    IntConv1d,
    IntEmbedding,
    IntLinear,
    PrecisionPlan,
    calibrate,
    convert,
    load_quantized,
    prepare,
    save_quantized,
    set_quant_mode,
)

PLANS = {
    "w4a8": {"default": {"weight_bits": 4, "act_bits": 8}},
    "w4a4": {"default": {"weight_bits": 4, "act_bits": 4}},
    "w8a8": {"default": {"weight_bits": 8, "act_bits": 8}},
    "w4afloat": {"default": {"weight_bits": 4}},
    "mixed": {
        "default": {"weight_bits": 4, "act_bits": 8},
        "rules": [
            {"pattern": "ff", "weight_bits": 8, "act_bits": 8},
            {"pattern": "dw", "act_bits": 8},  # activation-only
            {
                "pattern": "out",
                "weight_bits": 3,
                "act_bits": 6,
                "act_granularity": "tensor",
                "weight_granularity": "tensor",
            },
            {
                "pattern": "conv",
                "weight_bits": 4,
                "act_bits": 8,
                "act_granularity": "tensor",
                "act_static": True,
            },
        ],
    },
}


def _train(model, batch, steps=4):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(*batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("name", sorted(PLANS))
def test_qat_convert_parity(name, tiny_net, tiny_batch, tiny_net_cls, tmp_path):
    plan = PrecisionPlan.from_dict(PLANS[name])
    model = prepare(tiny_net, plan)
    if name == "mixed":
        calibrate(model, lambda m: m(*tiny_batch))
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, tiny_batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    g = torch.Generator().manual_seed(7)
    ids, feats = (
        torch.randint(0, 20, (2, 17), generator=g),
        torch.randn(2, 1, 15, 11, generator=g),
    )
    with torch.no_grad():
        y_qat = model(ids, feats)
    float_weights = [m.weight for m in model.modules() if type(m) in QAT_TO_INT]
    model = convert(model)
    for w in float_weights:  # nothing of the float weights may be used any more
        with torch.no_grad():
            w.zero_()
    with torch.no_grad():
        y_int = model(ids, feats)
    torch.testing.assert_close(y_int, y_qat, atol=0, rtol=0)

    for m in model.modules():
        if (
            isinstance(m, (IntLinear, IntConv1d, IntEmbedding))
            and m.weight_bits is not None
        ):
            assert m.weight is None
            assert m.qweight.dtype == (
                torch.uint8 if m.weight_bits <= 4 else torch.int8
            )

    path = tmp_path / "m.int.safetensors"
    save_quantized(
        path, model, {"model_config": '{"d": 32}'}, {"bpe_scores": torch.arange(3.0)}
    )
    loaded, meta, extra = load_quantized(
        path, lambda md: tiny_net_cls(**json.loads(md["model_config"]))
    )
    assert meta == {"model_config": '{"d": 32}'}
    assert torch.equal(extra["bpe_scores"], torch.arange(3.0))
    with torch.no_grad():
        y_loaded = loaded(ids, feats)
    torch.testing.assert_close(y_loaded, y_qat, atol=0, rtol=0)


def test_ptq_calibrate_no_training(tiny_net, tiny_batch):
    plan = PrecisionPlan.from_dict(
        {
            "default": {
                "weight_bits": 8,
                "act_bits": 8,
                "act_granularity": "tensor",
                "act_static": True,
            }
        }
    )
    with torch.no_grad():
        y_float = tiny_net(*tiny_batch)
    model = prepare(tiny_net, plan)
    params = [p.detach().clone() for p in model.parameters()]
    calibrate(model, lambda m: m(*tiny_batch))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    amax = float(model.ff.act_amax)
    with torch.no_grad():  # calibration observes the float model's activations
        set_quant_mode(model, False)
        assert amax == float(model.emb(tiny_batch[0]).abs().max())
        set_quant_mode(model, True)
        y_ptq = convert(model)(*tiny_batch)
    err = (y_ptq - y_float).abs().max() / y_float.abs().max()
    assert 0 < err < 0.05  # 8-bit PTQ: close to float, but not equal


def test_convert_twice_and_prepare_twice_refused(tiny_net):
    from q4asr.quant import PlanError

    plan = PrecisionPlan.from_dict(PLANS["w4a8"])
    model = prepare(tiny_net, plan)
    with pytest.raises(PlanError, match="already holds QAT"):
        prepare(model, plan)
    convert(model)
    with pytest.raises(PlanError, match="already converted"):
        convert(model)


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_qat_convert_parity_under_autocast(name, amp, device, tiny_net, tiny_batch):
    """QAT trains under autocast (float32 master weights, gradients of every
    parameter finite and float32), and the converted model's output under the same
    autocast equals the QAT model's exactly, in the autocast dtype."""
    plan = PrecisionPlan.from_dict(PLANS[name])
    model = prepare(tiny_net, plan).to(device)
    batch = [t.to(device) for t in tiny_batch]
    if name == "mixed":
        calibrate(model, lambda m: m(*batch))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        with torch.autocast(device, dtype=amp):
            y = model(*batch)
            assert y.dtype == amp
            loss = y.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
            assert torch.isfinite(p.grad).all()
        opt.step()
    model.eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 20, (2, 17), generator=g).to(device)
    feats = torch.randn(2, 1, 15, 11, generator=g).to(device)
    with torch.no_grad(), torch.autocast(device, dtype=amp):
        y_qat = model(ids, feats)
        y_int = convert(model)(ids, feats)
    assert y_qat.dtype == y_int.dtype == amp
    torch.testing.assert_close(y_int, y_qat, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["w4a8", "w4afloat"])
def test_low_precision_input_without_autocast(name, tiny_net, tiny_batch):
    """A bfloat16 input without autocast is computed in float32 and returned in
    bfloat16, by the QAT and the integer module alike."""
    plan = PrecisionPlan.from_dict(PLANS[name])
    model = prepare(tiny_net, plan).eval()
    x = torch.randn(5, 32).bfloat16()
    with torch.no_grad():
        y_qat = model.ff(x)
        y_f32 = model.ff(x.float())
        y_int = convert(model).ff(x)
    assert y_qat.dtype == y_int.dtype == torch.bfloat16
    assert torch.equal(y_qat, y_int) and torch.equal(y_qat, y_f32.bfloat16())
    with pytest.raises(TypeError, match="ff: quantized modules take float32"):
        model.ff(x.double())


def _structure(model):
    """What a model file must fit: module types and precisions, state-dict keys,
    dtypes and shapes."""
    mods = {
        n: (
            type(m).__name__,
            getattr(m, "weight_bits", None),
            getattr(m, "act_bits", None),
        )
        for n, m in model.named_modules()
    }
    state = {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
    return mods, state


@pytest.mark.parametrize("name", sorted(PLANS))
def test_integer_skeleton_is_the_converted_model_without_weights(
    name, tiny_net, tiny_net_cls
):
    """integer_skeleton (float -> empty integer modules on the meta device) builds
    what prepare + convert build, without any QAT module or weight."""
    from q4asr.quant import integer_skeleton
    from q4asr.quant.serialize import skeleton

    plan = PrecisionPlan.from_dict(PLANS[name])
    converted = convert(prepare(tiny_net, plan))
    with skeleton():
        meta_float = tiny_net_cls()
    skel = integer_skeleton(meta_float, plan)
    assert _structure(skel) == _structure(converted)
    assert not skel.training
    assert all(t.is_meta for t in skel.state_dict().values())
    assert skel.q4asr_plan is plan


def test_integer_skeleton_checks_like_prepare():
    """A module prepare refuses is refused by integer_skeleton with the same error."""
    from q4asr.quant import PlanError, integer_skeleton

    plan = PrecisionPlan.from_dict(PLANS["w4a8"])

    def net():
        return torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, padding="same"))

    errors = []
    for fn in (prepare, integer_skeleton):
        with pytest.raises(PlanError) as e:
            fn(net(), plan)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "padding='same'" in errors[0]
