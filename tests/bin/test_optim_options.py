"""Training options of the throughput work: the eden LR schedule and fused AdamW."""

import math

import pytest
import torch

from q4asr.bin.train import LRSchedule, make_optimizer
from q4asr.config import ConfigError, TrainConfig


def test_eden_schedule_warms_up_then_decays_slowly():
    tc = TrainConfig(
        max_steps=None,
        num_epochs=1,
        lr=1e-3,
        lr_schedule="eden",
        warmup_steps=10,
        lr_decay_steps=100,
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    s = LRSchedule(opt, tc)
    assert s.lr_at(0) == pytest.approx(1e-4)
    assert s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(99) == pytest.approx(1e-3 * 2**-0.25)  # step 100 = decay steps
    assert s.lr_at(999) == pytest.approx(1e-3 * ((1000**2 + 100**2) / 100**2) ** -0.25)
    lrs = [s.lr_at(i) for i in range(10, 2000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and not math.isclose(lrs[-1], 0)


def test_fused_adamw_matches_the_loop_and_is_validated():
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 4) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [
        make_optimizer(m, TrainConfig(max_steps=1, adam_fused=f))
        for m, f in zip(models, (False, True))
    ]
    assert opts[1].defaults["fused"] and not opts[0].defaults["fused"]
    x = torch.randn(16, 8)
    for _ in range(3):
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="adam_fused"):
        TrainConfig(max_steps=1, adam_fused="yes")
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        TrainConfig(max_steps=1, lr_decay_steps=0)
