"""Precision plans: parsing, first-match-wins, every validation error."""

import pytest
import torch.nn as nn

from q4asr.quant import (
    PlanError,
    Precision,
    PrecisionPlan,
    QATConv1d,
    QATEmbedding,
    QATLayerNorm,
    QATLinear,
    load_plan,
    prepare,
)

W4A8 = {
    "default": {"weight_bits": 4, "act_bits": 8},
    "rules": [
        {"pattern": "ff", "weight_bits": 8, "act_bits": 8},
        {"pattern": "*", "weight_bits": 2},  # never reached for ff: first match wins
        {"pattern": "norm", "float": True},
    ],
}


def test_yaml_roundtrip(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text(
        "default: {weight_bits: 4, act_bits: 8}\n"
        "rules:\n"
        "  - {pattern: 'out', weight_bits: 8, act_bits: float}\n"
        "  - {pattern: '*norm*', float: true}\n"
    )
    plan = load_plan(p)
    assert plan.default == Precision(4, 8)
    assert plan.rules[0].precision == Precision(8, None)
    assert plan.rules[1].precision.is_float
    assert PrecisionPlan.from_json(plan.to_json()) == plan


def test_first_match_wins():
    plan = PrecisionPlan.from_dict(W4A8)
    assert plan.lookup("ff") == (Precision(8, 8), 0)
    assert plan.lookup("pw") == (Precision(2, None), 1)
    plan2 = PrecisionPlan.from_dict(
        {"default": {"weight_bits": 4}, "rules": W4A8["rules"][:1]}
    )
    assert plan2.lookup("pw") == (Precision(4, None), None)


def test_prepare_applies_plan(tiny_net):
    plan = PrecisionPlan.from_dict(
        {
            "default": {"weight_bits": 4, "act_bits": 8},
            "rules": [
                {"pattern": "ff", "weight_bits": 8, "act_bits": 8},
                {"pattern": "d*", "float": True},
            ],
        }
    )
    w = tiny_net.ff.weight
    m = prepare(tiny_net, plan)
    assert type(m.ff) is QATLinear and m.ff.precision == Precision(8, 8)
    assert m.ff.weight is w  # shares the Parameter
    assert type(m.pw) is QATConv1d and m.pw.precision == Precision(4, 8)
    assert type(m.dw) is nn.Conv1d  # kept float
    assert type(m.emb) is QATEmbedding and m.emb.act_bits is None
    # a quantized model's LayerNorm trains with its parameters as stored (bfloat16)
    assert type(m.norm) is QATLayerNorm and isinstance(m.norm, nn.LayerNorm)


def test_all_float_plan_is_valid(tiny_net):
    m = prepare(tiny_net, PrecisionPlan.from_dict({"default": {"float": True}}))
    assert not any(type(x).__name__.startswith("QAT") for x in m.modules())


@pytest.mark.parametrize(
    "d,match",
    [
        ({"default": {"weight_bits": 4}, "extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ({"rules": []}, "missing required key 'default'"),
        ({"default": {"weight_bits": 9}}, "weight_bits=9 is out of range 2..8"),
        ({"default": {"act_bits": 1}}, "act_bits=1 is out of range"),
        ({"default": {"weight_bits": "4"}}, "weight_bits must be an integer"),
        ({"default": {"wieght_bits": 4}}, r"unknown key\(s\) \['wieght_bits'\]"),
        ({"default": {"float": True, "weight_bits": 4}}, "cannot be combined"),
        ({"default": {"weight_granularity": "row"}}, "weight_granularity='row'"),
        ({"default": {"act_bits": 8, "act_static": True}}, "act_static=true needs"),
        (
            {"default": {}, "rules": [{"weight_bits": 4}]},
            r"rules\[0\]: missing or empty 'pattern'",
        ),
        (
            {"default": {}, "rules": [{"pattern": "x", "bits": 4}]},
            r"rules\[0\].*unknown key",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_validation_errors(d, match):
    with pytest.raises(PlanError, match=match):
        PrecisionPlan.from_dict(d)


def test_pattern_matching_nothing_lists_nearby_names(tiny_net):
    plan = PrecisionPlan.from_dict(
        {"default": {}, "rules": [{"pattern": "gconvv", "weight_bits": 4}]}
    )
    with pytest.raises(
        PlanError, match=r"matches no module; nearby module names: \['gconv'"
    ):
        prepare(tiny_net, plan)


def test_rule_on_unquantizable_module(tiny_net):
    plan = PrecisionPlan.from_dict(
        {"default": {}, "rules": [{"pattern": "norm", "weight_bits": 4}]}
    )
    with pytest.raises(PlanError, match=r"cannot be quantized: norm \(LayerNorm\)"):
        prepare(tiny_net, plan)


def test_unsupported_module_config():
    m = nn.Sequential(nn.Conv1d(4, 4, 3, padding="same"))
    with pytest.raises(PlanError, match="0: cannot quantize padding='same'"):
        prepare(m, PrecisionPlan.from_dict({"default": {"weight_bits": 4}}))
    m = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(PlanError, match="Conv2d with groups=2"):
        prepare(m, PrecisionPlan.from_dict({"default": {"weight_bits": 4}}))


def test_plan_file_errors(tmp_path):
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {weight_bits: 12}\n")
    with pytest.raises(PlanError, match=rf"{bad}: default: weight_bits=12"):
        load_plan(bad)
