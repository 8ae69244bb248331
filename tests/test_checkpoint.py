"""Checkpoint save/load, latest-finding, pruning, RNG state and averaging."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from q4asr.bin import average
from q4asr.checkpoint import (
    average_checkpoints,
    average_states,
    checkpoint_path,
    env_info,
    find_latest,
    get_rng_state,
    list_checkpoints,
    load_checkpoint,
    model_record,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
)


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(4, generator=g).to(torch.float16),
        "count": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.tensor([seed % 2 == 0, True]),
    }


def test_save_load_roundtrip_weights_only(tmp_path):
    state = {"model": _state(0), "step": 7, "env": env_info(), "names": ["a", "b"]}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["names"] == ["a", "b"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["env"]["torch"] == str(torch.__version__)
    # readable by a plain weights-only load, and no temp file left behind
    torch.load(path, weights_only=True)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: cannot load checkpoint"):
        load_checkpoint(bad)


def test_find_latest_orders_by_step_and_prunes(tmp_path):
    assert find_latest(tmp_path) is None
    for step in (9, 10, 100, 2):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / "checkpoint-x.pt").write_text("ignored")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2.pt",
        "checkpoint-9.pt",
        "checkpoint-10.pt",
        "checkpoint-100.pt",
    ]
    assert find_latest(tmp_path).name == "checkpoint-100.pt"
    removed = remove_old_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["checkpoint-2.pt", "checkpoint-9.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-10.pt",
        "checkpoint-100.pt",
    ]


def test_average_is_the_arithmetic_mean():
    states = [_state(s) for s in (1, 2, 3)]
    avg = average_states(states)
    expect_w = (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3
    torch.testing.assert_close(avg["w"], expect_w, rtol=1e-6, atol=1e-7)
    assert avg["b"].dtype == torch.float16
    expect_b = sum(s["b"].double() for s in states) / 3
    torch.testing.assert_close(avg["b"], expect_b.half())
    # integer and bool entries come from the last state, not averaged
    assert avg["count"].item() == 3 and avg["count"].dtype == torch.int64
    assert torch.equal(avg["mask"], states[-1]["mask"])


def test_average_rejects_mismatched_states():
    a, b = _state(1), _state(2)
    del b["w"]
    with pytest.raises(ValueError, match="different keys"):
        average_states([a, b])
    c = _state(3)
    c["w"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="'w' has shape"):
        average_states([_state(1), c])
    with pytest.raises(ValueError, match="no states"):
        average_states([])


def test_average_cli_last_n(tmp_path):
    states = {}
    for step in (10, 20, 30):
        states[step] = _state(step)
        save_checkpoint(
            checkpoint_path(tmp_path, step),
            {"model": states[step], "config": {"step": step}, "step": step},
        )
    out = tmp_path / "avg.pt"
    assert (
        average.main(["--exp-dir", str(tmp_path), "--last", "2", "--out", str(out)])
        == 0
    )
    avg = load_checkpoint(out)
    torch.testing.assert_close(
        avg["model"]["w"], (states[20]["w"] + states[30]["w"]) / 2
    )
    assert avg["config"] == {"step": 30}
    assert [p.split("/")[-1] for p in avg["averaged_from"]] == [
        "checkpoint-20.pt",
        "checkpoint-30.pt",
    ]
    # explicit files give the same as the library call
    files = [str(checkpoint_path(tmp_path, s)) for s in (10, 30)]
    assert average.main(["--out", str(out), *files]) == 0
    direct = average_checkpoints(files)
    assert torch.equal(load_checkpoint(out)["model"]["w"], direct["model"]["w"])
    # asking for more checkpoints than exist averages those there are
    assert (
        average.main(["--exp-dir", str(tmp_path), "--last", "5", "--out", str(out)])
        == 0
    )
    assert len(load_checkpoint(out)["averaged_from"]) == 3
    assert (
        average.main(
            ["--exp-dir", str(tmp_path / "none"), "--last", "1", "--out", str(out)]
        )
        == 2
    )


def test_averaged_checkpoint_keeps_the_whole_record(tmp_path):
    """An averaged checkpoint has the record of the last one (the BPE model too);
    a checkpoint written before the record (with plan_path, no bpe_model) still
    averages."""
    plan = {"default": {"weight_bits": 4, "act_bits": 8}, "rules": []}
    new = model_record(
        _state(1), {"quant": {"plan": "p.yaml"}}, {"d": 1}, plan, "bpe.model", 5
    )
    assert set(new) == {
        "model",
        "config",
        "model_config",
        "plan",
        "bpe_model",
        "step",
        "env",
    }
    old = {"model": _state(2), "config": {}, "plan": None, "plan_path": None, "step": 9}
    save_checkpoint(tmp_path / "a.pt", old)
    save_checkpoint(tmp_path / "b.pt", new)
    avg = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert {
        k: avg[k] for k in ("config", "model_config", "plan", "bpe_model", "step")
    } == {
        "config": {"quant": {"plan": "p.yaml"}},
        "model_config": {"d": 1},
        "plan": plan,
        "bpe_model": "bpe.model",
        "step": 5,
    }
    assert avg["env"] == new["env"]
    old_last = average_checkpoints([tmp_path / "b.pt", tmp_path / "a.pt"])
    assert old_last["bpe_model"] is None and old_last["step"] == 9
    assert "plan_path" not in old_last


def test_rng_state_roundtrip(tmp_path):
    save_checkpoint(tmp_path / "r.pt", {"rng": get_rng_state()})
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert first == again
