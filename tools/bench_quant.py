#!/usr/bin/env python3
"""Benchmark q4asr's native integer QAT against float32 and torchao, on
Conformer-sized shapes, and measure the all-int4 file-size ratio.

Prints one JSON object (and writes it with ``--json FILE``). Every time is the
median over ``--repeats`` runs, all measured side by side in this one process.

  python tools/bench_quant.py --json exp/bench_quant.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from q4asr.quant import PrecisionPlan, convert, prepare, save_quantized
from q4asr.utils import get_env_info


def median_times(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin (one call of each per
    round) so that load from other processes falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def plan(w: int | None, a: int | None) -> PrecisionPlan:
    return PrecisionPlan.from_dict({"default": {"weight_bits": w, "act_bits": a}})


def train_step(model: nn.Module, x: torch.Tensor, g: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).backward(g)

    return step


def torchao_qat_linear(lin: nn.Linear) -> nn.Module | None:
    """torchao's Int8DynActInt4WeightQATQuantizer fake-quant linear, or None."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer
    except Exception as e:  # torchao is an optional benchmark dependency
        print(f"torchao unavailable: {e}", file=sys.stderr)
        return None
    finally:
        logging.disable(logging.NOTSET)
    model = nn.Sequential(lin)
    return Int8DynActInt4WeightQATQuantizer(
        groupsize=min(256, lin.in_features)
    ).prepare(model)


def size_ratio(d: int, ff: int) -> dict:
    """File size of an all-int4 Linear/Conv network vs its float32 file."""
    torch.manual_seed(0)

    def build():
        return nn.Sequential(
            nn.Linear(d, ff),
            nn.Linear(ff, d),
            nn.Unflatten(-1, (d, 1)),
            nn.Conv1d(d, d, 1),
            nn.Conv1d(d, 2 * d, 1),
        )

    with tempfile.TemporaryDirectory() as tmp:
        fp = save_quantized(Path(tmp) / "f32.safetensors", build(), {})
        model = convert(prepare(build(), plan(4, 8)))
        ip = save_quantized(Path(tmp) / "int4.safetensors", model, {})
        f, i = fp.stat().st_size, ip.stat().st_size
    return {"float32_bytes": f, "int4_bytes": i, "ratio": round(f / i, 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument(
        "--frames",
        type=int,
        default=250,
        help="frames per utterance after x4 subsampling (250 = 10 s)",
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, ff, M = args.d_model, args.d_ff, args.batch * args.frames
    x = torch.randn(args.batch, args.frames, d, requires_grad=True)
    g = torch.randn(args.batch, args.frames, ff)
    R = args.repeats
    out: dict = {
        "shape": {
            "batch": args.batch,
            "frames": args.frames,
            "rows": M,
            "in": d,
            "out": ff,
        },
        "threads": args.threads,
        "repeats": R,
        "unit": "seconds (median)",
    }

    # --- training: forward + backward of one linear layer
    lin = nn.Linear(d, ff)
    fns = {"float32": train_step(lin, x, g)}
    for name, (w, a) in {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}.items():
        q = prepare(nn.Sequential(nn.Linear(d, ff)), plan(w, a))
        fns[f"q4asr_qat_{name}"] = train_step(q, x, g)
    ao = torchao_qat_linear(nn.Linear(d, ff))
    if ao is not None:
        fns["torchao_8da4w_fakequant"] = train_step(ao, x, g)
    train = median_times(fns, R)
    out["train_fwd_bwd"] = {k: round(v, 5) for k, v in train.items()}
    out["train_speedup_vs_float32"] = {
        k: round(train["float32"] / v, 2) for k, v in train.items() if k != "float32"
    }
    if ao is not None:
        out["train_speedup_vs_torchao"] = {
            k: round(train["torchao_8da4w_fakequant"] / v, 2)
            for k, v in train.items()
            if k.startswith("q4asr")
        }

    # --- inference: forward of the converted integer layer
    xi = x.detach()
    fns = {"float32": lambda: lin(xi)}
    for name, (w, a) in {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}.items():
        q = convert(prepare(nn.Sequential(nn.Linear(d, ff)), plan(w, a)))
        fns[f"q4asr_int_{name}"] = lambda q=q: q(xi)
    with torch.no_grad():
        infer = median_times(fns, R)
    out["infer_fwd"] = {k: round(v, 5) for k, v in infer.items()}
    out["infer_speedup_vs_float32"] = {
        k: round(infer["float32"] / v, 2) for k, v in infer.items() if k != "float32"
    }
    out["size_all_int4_vs_float32"] = {
        f"d{d}_ff{ff}": size_ratio(d, ff),
        "d256_ff1024": size_ratio(256, 1024),
    }
    env = get_env_info()
    out["env"] = {
        k: env[k] for k in ("torch", "num_cpus", "num_threads", "q4asr_git_sha")
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
