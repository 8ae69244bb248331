"""The fused Triton kernels (q4asr.quant.fused) equal the reference path bit for bit:
checked on CPU tensors under Triton's interpreter, in a fresh process (the
interpreter is chosen when the kernels are defined)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from q4asr.quant import fused


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton (test extra)"
)
def test_fused_kernels_equal_the_reference_path():
    env = dict(os.environ, TRITON_INTERPRET="1", Q4ASR_FUSED="1")
    r = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fused_check.py"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads(r.stdout.strip().splitlines()[-1])
    assert done["quantize_rows"] == 27 and done["int_linear"] == 48
    assert done["int_conv2d"] == 4 and done["models"] == ["w4a8", "w8a8", "mixed"]
    assert done["model_calls"]["int_mm_rescale"] > 0


@pytest.mark.skipif(fused.interpreting(), reason="runs without Triton's interpreter")
def test_fused_path_is_off_on_cpu_without_the_interpreter():
    assert not fused.enabled(torch.zeros(1))
    x = torch.randn(3, 8)
    assert fused.quantize_rows(x, 8, 1e-12) is None  # the caller's reference path
    with fused.disabled():
        assert not fused.enabled(torch.zeros(1))
