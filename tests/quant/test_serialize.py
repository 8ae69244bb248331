"""Integer model files: size on disk, size report, float export, bad files."""

import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from q4asr.quant import (
    PrecisionPlan,
    convert,
    format_size_table,
    load_quantized,
    prepare,
    save_quantized,
    size_report,
    size_report_json,
)


def _linear_conv_net(d=256):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(d, 4 * d),
        nn.ReLU(),
        nn.Linear(4 * d, d),
        nn.Unflatten(-1, (d, 1)),
        nn.Conv1d(d, d, 1),
        nn.Flatten(),
    )


def test_all_int4_file_is_at_least_7_7x_smaller(tmp_path):
    # Conformer-sized layers (d_model 512, feed-forward 2048): float32 scales and
    # biases cost 8 bytes per output channel, so narrower layers land lower.
    build = lambda meta: _linear_conv_net(512)  # noqa: E731
    fp = save_quantized(tmp_path / "f32.safetensors", build({}), {})
    model = convert(
        prepare(
            build({}),
            PrecisionPlan.from_dict({"default": {"weight_bits": 4, "act_bits": 8}}),
        )
    )
    ip = save_quantized(tmp_path / "int4.safetensors", model, {})
    ratio = fp.stat().st_size / ip.stat().st_size
    assert 7.7 <= ratio < 8.0, ratio
    # the size report counts the same tensor bytes that are on disk
    rows = size_report(model)
    total = sum(r["bytes"] for r in rows)
    assert total < ip.stat().st_size < total + 4096
    # a float model round-trips as a float32 export
    f32, meta, extra = load_quantized(fp, build)
    assert meta == {} and extra == {}
    assert all(p.dtype == torch.float32 for p in f32.parameters())


def test_size_report_rows_and_formats(tmp_path):
    plan = PrecisionPlan.from_dict(
        {
            "default": {"weight_bits": 4, "act_bits": 8},
            "rules": [{"pattern": "2", "weight_bits": 8}],
        }
    )
    model = convert(prepare(_linear_conv_net(64), plan))
    rows = size_report(model)
    by = {r["name"]: r for r in rows}
    assert by["0"]["params"] == 64 * 256 + 256 and by["0"]["weight_bits"] == 4
    assert by["0"]["act_bits"] == 8
    # int4: half a byte per weight, a float8 scale and an int8 bias per output,
    # and a float32 scale base and bias scale per layer
    assert by["0"]["bytes"] == 64 * 256 // 2 + (256 + 4) + (256 + 4)
    assert (by["0"]["weights"], by["0"]["scales"]) == (64 * 256 // 2, 256 + 4)
    assert by["0"]["biases"] == 256 + 4 and by["0"]["float_layers"] == 0
    assert by["2"]["weight_bits"] == 8 and by["2"]["act_bits"] == "float"
    assert by["2"]["bytes"] == 256 * 64 + (64 + 4) + (64 + 4)
    table = format_size_table(rows)
    assert table.splitlines()[-2].startswith("TOTAL")
    assert str(sum(r["bytes"] for r in rows)) in table.splitlines()[-2]
    assert table.splitlines()[-1].startswith("by kind: weights ")
    path = save_quantized(tmp_path / "m.safetensors", model, {"x": "y"})
    js = json.loads(size_report_json(model, path.stat().st_size))
    assert js["total"]["params"] == sum(r["params"] for r in rows)
    kinds = js["by_kind"]
    assert sum(kinds.values()) == path.stat().st_size
    assert kinds["weights"] == sum(r["weights"] for r in rows)
    assert 0 < kinds["metadata"] < 4096


def test_save_refuses_unconverted_and_bad_files(tmp_path):
    model = prepare(
        _linear_conv_net(16), PrecisionPlan.from_dict({"default": {"weight_bits": 4}})
    )
    with pytest.raises(ValueError, match="convert the QAT model before saving"):
        save_quantized(tmp_path / "x.safetensors", model, {})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        save_quantized(tmp_path / "x.safetensors", convert(model), {"d": 16})
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"{junk}: not a readable safetensors file"):
        load_quantized(junk, lambda m: _linear_conv_net(16))
    good = save_quantized(
        tmp_path / "good.safetensors",
        convert(
            prepare(
                _linear_conv_net(16),
                PrecisionPlan.from_dict({"default": {"weight_bits": 4}}),
            )
        ),
        {},
    )
    with pytest.raises(ValueError, match=f"{good}: the stored tensors do not fit"):
        load_quantized(good, lambda m: _linear_conv_net(32))
    # the layout digest matches but the values do not: one value short, or a dtype gone
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    short = dict(tensors, **{"data.float32": tensors["data.float32"][:-1]})
    save_file(short, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="short.safetensors: data.float32 holds"):
        load_quantized(tmp_path / "short.safetensors", lambda m: _linear_conv_net(16))
    gone = {k: v for k, v in tensors.items() if k != "data.uint8"}
    save_file(gone, str(tmp_path / "gone.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="gone.safetensors: the file holds"):
        load_quantized(tmp_path / "gone.safetensors", lambda m: _linear_conv_net(16))


def test_load_fills_a_meta_skeleton_without_initialising(tmp_path):
    """load_quantized builds the model on the meta device without running
    torch.nn.init, and assigns the file's tensors: the loaded tensors are the
    only ones allocated, and no float copy of a quantized weight appears."""
    plan = PrecisionPlan.from_dict({"default": {"weight_bits": 4, "act_bits": 8}})
    net = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 32))
    model = convert(prepare(net, plan))
    path = save_quantized(tmp_path / "m.safetensors", model, {})
    seen = []

    def build(meta):
        seen.append(torch.empty(1).device.type)
        return nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 32))

    loaded, _, _ = load_quantized(path, build)
    assert seen == ["meta"]
    tensors = dict(loaded.state_dict())
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert set(tensors) == set(model.state_dict())
    assert tensors["1.qweight"].dtype == torch.uint8
    assert not any(
        t.dtype == torch.float32 and t.numel() >= 64 * 32 // 2 for t in tensors.values()
    )
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v), k
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded[1](loaded[0](ids)), model[1](model[0](ids)))


def test_loading_imports_no_symbolic_math(tmp_path):
    """Loading and running an integer model in a fresh process does not import
    sympy (which torch's meta-device initialisers would pull in: ~70 MB, ~1.5 s)."""
    import subprocess
    import sys

    plan = PrecisionPlan.from_dict({"default": {"weight_bits": 4, "act_bits": 8}})
    net = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 32))
    path = save_quantized(tmp_path / "m.safetensors", convert(prepare(net, plan)), {})
    code = (
        "import sys, torch, torch.nn as nn\n"
        "from q4asr.quant import load_quantized\n"
        f"m, _, _ = load_quantized({str(path)!r}, lambda meta: nn.Sequential("
        "nn.Embedding(50, 64), nn.Linear(64, 32)))\n"
        "m(torch.tensor([[1, 2]]))\n"
        "print('sympy' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
