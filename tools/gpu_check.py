#!/usr/bin/env python3
"""q4asr on a GPU in one command: build, parity, training-step and inference tables,
and a short recipe run, written as JSON and as a BENCHMARKS.md section.

On a machine with internet (PyPI), gather what an offline GPU machine lacks::

    python tools/gpu_check.py prepare --dir .gpu

(py3.12 wheels of lhotse, jiwer, sherpa-onnx and their binary needs, the fast_rnnt
and pybind11 sdists, and a LibriSpeech-layout fixture corpus spoken by espeak-ng).
Then on the GPU machine, from the repository root, with that directory beside it::

    python3 tools/gpu_check.py run --carry .gpu --out OUT

installs the wheels, builds fast_rnnt with CUDA for the GPU present
(tools/build_fast_rnnt.sh, about 3.5 min on 16 cores; a wheel built before and kept in
``.gpu/fast_rnnt`` is installed instead), then measures, in one process, on the
LibriSpeech recipe's model (egs/librispeech/ASR/conf/train.yaml):

- parity: converted integer model vs QAT model (eval), max |difference| of encoder
  output and joiner logits, in float32 and under bf16 autocast, for every plan of the
  LibriSpeech sweep, the multien mixed 4/8 plan and a static-activation PTQ plan;
- training steps (batch 32 x 15 s, random features, full pruned RNN-T + CTC loss,
  AdamW, grad clip): float32, bf16 autocast, QAT W8A8 and W4A8 with and without
  autocast; median step time of 5, seconds of audio per second, peak GiB;
- encoder inference on the same batch: float32, bf16, int8 and int4 (converted),
  the integer models also under bf16 autocast;
- a short real training run of the LibriSpeech recipe (run.sh, every stage from the
  manifests to the report) on the fixture corpus, on the GPU.

It writes ``OUT/gpu.json``, ``OUT/gpu.md`` (the "GPU" section of BENCHMARKS.md), the
recipe's RESULTS.md and the built fast_rnnt wheel. ``python tools/gpu_check.py
markdown benchmarks/gpu.json --update BENCHMARKS.md`` (re)writes that section from a
JSON file. ``--device cpu --small`` runs the same code on a CPU with a tiny model (the
test suite does).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LS = ROOT / "egs" / "librispeech" / "ASR"
PLAN_FILES = {
    "w8a8": LS / "conf/plans/w8a8.yaml",
    "w8afloat": LS / "conf/plans/w8afloat.yaml",
    "w4afloat": LS / "conf/plans/w4afloat.yaml",
    "w4a8": LS / "conf/plans/w4a8.yaml",
    "w4a4": LS / "conf/plans/w4a4.yaml",
    "mixed48": ROOT / "egs/multien/ASR/conf/plans/mixed48.yaml",
}
# A post-training plan with calibrated (static) per-tensor activation scales.
STATIC_PLAN = {
    "default": {
        "weight_bits": 8,
        "act_bits": 8,
        "act_granularity": "tensor",
        "act_static": True,
    }
}
# What the GPU image lacks (python 3.12): pins as in setup.cfg, and their needs.
WHEELS = [
    "lhotse==1.33.0",
    "lilcom==1.8.2",
    "jiwer==4.0.0",
    "rapidfuzz==3.14.6",
    "audioread==3.1.0",
    "cytoolz==1.2.0",
    "intervaltree==3.2.1",
    "soundfile==0.14.0",
    "cffi==2.1.1",
    "pycparser==3.12",
    "sherpa-onnx==2.0.1",  # the recipe's last stage transcribes with sherpa-onnx
    "sherpa-onnx-core==2.0.1",
]
WHEEL_PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
CORPUS_PARTS = {
    "train-clean-100": 48,
    "dev-clean": 4,
    "test-clean": 8,
    "test-other": 4,
}
MARK = ("<!-- gpu_check: begin -->", "<!-- gpu_check: end -->")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


# ----------------------------------------------------------------- prepare (CPU side)


def prepare(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    (out / "src").mkdir(exist_ok=True)
    plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    for spec in WHEELS:
        sh(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
            + ["--only-binary=:all:", "--python-version", args.python_version]
            + ["--implementation", "cp", *plat, "-d", str(out / "wheels"), spec]
        )
    sh(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        + ["--no-binary", ":all:", "pybind11==3.0.4", "fast-rnnt==1.3"]
        + ["-d", str(out / "src")]
    )
    corpus = out / "corpus"
    if not (corpus / "LibriSpeech").is_dir():
        sys.path.insert(0, str(ROOT / "tests" / "recipes"))
        from fixtures import make_librispeech  # noqa: E402  (test fixture corpus)

        make_librispeech(corpus, CORPUS_PARTS)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"{out}: {size / 2**20:.1f} MiB to carry")


# ----------------------------------------------------------------- run (GPU side)


def setup(carry: Path, out: Path, build: bool) -> dict:
    """Install the carried wheels and a CUDA fast_rnnt; returns timings."""
    info: dict = {}
    wheels = sorted(glob.glob(str(carry / "wheels" / "*.whl")))
    if wheels:
        t = time.time()
        sh(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            + wheels
        )
        info["wheels_s"] = round(time.time() - t, 1)
    if build:
        env = {**os.environ, "Q4ASR_CACHE": str(carry / "cache")}
        kept = sorted(glob.glob(str(carry / "fast_rnnt" / "fast_rnnt-*.whl")))
        t = time.time()
        if kept:
            sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps", kept[-1]])
            info["fast_rnnt"] = f"installed {Path(kept[-1]).name} (built before)"
        else:
            cmd = [str(ROOT / "tools/build_fast_rnnt.sh"), "--cuda", "--force"]
            sh(cmd + ["--src", str(carry / "src")], env=env)
            info["fast_rnnt"] = "built with CUDA from the sdist"
            built = glob.glob(str(carry / "cache" / "wheels" / "*" / "*.whl"))
            for w in built:  # comes back under OUT: carry it next time
                shutil.copy(w, out)
        info["fast_rnnt_s"] = round(time.time() - t, 1)
    where = subprocess.run(
        [sys.executable, "-c", "import q4asr; print(q4asr.__file__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    ).stdout.strip()
    if not where.startswith(str(ROOT)):  # the console scripts the recipe runs
        sh(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
            + ["--no-build-isolation", "-e", str(ROOT)]
        )
    return info


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = setup(
        Path(args.carry), out, build=args.device == "cuda" and not args.no_build
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "measure", "--out", str(out)]
    cmd += ["--device", args.device, "--carry", args.carry]
    cmd += ["--small"] * args.small + ["--no-recipe"] * args.no_recipe
    (out / "setup.json").write_text(json.dumps(info))
    sh(cmd)  # a fresh process: the packages just installed import there
    res = json.loads((out / "gpu.json").read_text())
    res["setup"] = {**info, "total_s": round(time.time() - t0, 1)}
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(res))
    print(markdown(res))
    return 0 if res["parity_ok"] else 1


# ----------------------------------------------------------------- measurements


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, reps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def _model_config(small: bool) -> dict:
    from q4asr.config import load_config

    model = dict(load_config(LS / "conf" / "train.yaml").model)
    if small:
        model.update(subsampling_channels=8, d_model=32, num_layers=2, num_heads=2)
        model.update(ffn_dim=64, decoder_dim=32, joiner_dim=32, conv_kernel=7)
    model.update(vocab_size=500 if not small else 64, dropout=0.0)
    return model


def _batch(device: str, small: bool, seed: int = 0):
    """feats (N, T, 80), lens (N,), N token lists: 32 x 15 s (small: 2 x 3 s)."""
    import torch

    n, frames, ntok, vocab = (2, 300, 10, 64) if small else (32, 1500, 60, 500)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, frames, 80, generator=g).to(device)
    lens = torch.full((n,), frames, dtype=torch.int64)
    lens[1::2] = frames - frames // 10  # some padding
    toks = torch.randint(1, vocab, (n, ntok), generator=g).tolist()
    return feats, lens.to(device), toks, n * frames / 100.0


def _build(model_cfg: dict, plan, device: str, seed: int = 0):
    import torch

    from q4asr.model import ModelConfig, build_model
    from q4asr.quant import prepare as q_prepare

    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(model_cfg))
    if plan is not None:
        model = q_prepare(model, plan)
    return model.to(device)


def _plans() -> dict:
    from q4asr.quant import PrecisionPlan, load_plan

    plans = {k: load_plan(p) for k, p in PLAN_FILES.items()}
    plans["ptq_static_w8a8"] = PrecisionPlan.from_dict(STATIC_PLAN)
    return plans


def check_parity(device: str, small: bool) -> dict:
    """max |converted - QAT| (eval) of encoder output and logits, per plan and dtype."""
    import torch

    from q4asr.quant import calibrate, convert

    cfg = _model_config(small)
    feats, lens, toks, _ = _batch(device, small, seed=1)
    res = {}
    for name, plan in _plans().items():
        model = _build(cfg, plan, device)
        g = torch.Generator().manual_seed(2)
        ys = torch.randint(
            1, cfg["vocab_size"], (feats.shape[0], model.context_size), generator=g
        ).to(device)

        def outputs(m, ys=ys):
            enc, _ = m.encode(feats, lens)
            dec = m.decoder(ys, need_pad=False)
            return enc, m.joiner(enc[:, :8, None], dec[:, None])

        if any(
            p.act_static for p in [plan.default, *(r.precision for r in plan.rules)]
        ):
            with torch.no_grad():
                calibrate(model, lambda m: m(feats, lens, toks))
        model.eval()

        row = {}
        with torch.no_grad():
            qat = {
                "float32": outputs(model),
                "bf16": None,
            }
            with torch.autocast(device, dtype=torch.bfloat16):
                qat["bf16"] = outputs(model)
            model = convert(model)
            for dt, ref in qat.items():
                if dt == "bf16":
                    with torch.autocast(device, dtype=torch.bfloat16):
                        got = outputs(model)
                else:
                    got = outputs(model)
                row[dt] = max(
                    float((a.float() - b.float()).abs().max()) for a, b in zip(got, ref)
                )
                row[f"{dt}_dtype"] = str(got[0].dtype).replace("torch.", "")
        res[name] = row
        log(f"parity {name}: {row}")
        del model
    return res


def _train_once(train_step, model, batch, opt, scaler, amp, losses) -> None:
    out, _ = train_step(model, batch, opt, scaler, amp, 5.0, 1.0)
    losses.append(float(out["loss"].detach()))


def _encode_once(model, feats, lens, device, amp) -> None:
    import torch

    with torch.no_grad():
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            model.encode(feats, lens)


def train_steps(device: str, small: bool, reps: int) -> list[dict]:
    import torch

    from q4asr.bin.train import train_step

    cfg = _model_config(small)
    feats, lens, toks, audio_s = _batch(device, small)
    plans = _plans()
    rows = []
    for name, plan_name, amp, use_fused in [
        ("float32", None, None, True),
        ("float, bf16 autocast", None, torch.bfloat16, True),
        ("QAT W8A8", "w8a8", None, True),
        ("QAT W8A8, bf16 autocast", "w8a8", torch.bfloat16, True),
        ("QAT W8A8, bf16 autocast, unfused", "w8a8", torch.bfloat16, False),
        ("QAT W4A8", "w4a8", None, True),
        ("QAT W4A8, bf16 autocast", "w4a8", torch.bfloat16, True),
        ("QAT W4A8, bf16 autocast, unfused", "w4a8", torch.bfloat16, False),
    ]:
        model = _build(cfg, plans.get(plan_name), device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device, enabled=False)
        losses: list[float] = []
        step = functools.partial(
            _train_once,
            train_step,
            model,
            (feats, lens, toks),
            opt,
            scaler,
            amp,
            losses,
        )
        _peak_reset(device)
        try:
            with _fused_on(use_fused):
                s = _timed(step, device, reps)
        except Exception as e:  # noqa: BLE001  (reported in the table)
            rows.append({"system": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"train {name}: {rows[-1]['error']}")
            continue
        finally:
            del model, opt, step
        rows.append(
            {
                "system": name,
                "step_s": round(s, 4),
                "audio_s_per_s": round(audio_s / s, 1),
                "peak_gib": _peak_gib(device),
                "loss_finite": all(
                    map(lambda v: v == v and abs(v) != float("inf"), losses)
                ),
            }
        )
        log(f"train {name}: {rows[-1]}")
    return rows


def inference(device: str, small: bool, reps: int) -> list[dict]:
    import torch

    from q4asr.quant import convert

    cfg = _model_config(small)
    feats, lens, _, audio_s = _batch(device, small)
    plans = _plans()
    rows = []
    for name, plan_name in [
        ("float32", None),
        ("int8 (W8A8)", "w8a8"),
        ("int4 (W4A8)", "w4a8"),
    ]:
        model = _build(cfg, plans.get(plan_name), device).eval()
        if plan_name is not None:
            model = convert(model)
        variants = [(None, True), (torch.bfloat16, True)]
        if plan_name is not None:
            variants.append((torch.bfloat16, False))
        for amp, use_fused in variants:
            label = name + (", bf16 autocast" if amp is not None else "")
            label += "" if use_fused else ", unfused"
            enc = functools.partial(_encode_once, model, feats, lens, device, amp)
            _peak_reset(device)
            with _fused_on(use_fused):
                s = _timed(enc, device, reps)
            rows.append(
                {
                    "system": label,
                    "encoder_s": round(s, 4),
                    "rtf": round(s / audio_s, 6),
                    "peak_gib": _peak_gib(device),
                }
            )
            log(f"inference {label}: {rows[-1]}")
        del model
    return rows


def recipe(device: str, small: bool, carry: Path, work: Path) -> dict:
    """The LibriSpeech run.sh on the fixture corpus: manifests to report."""
    import yaml

    corpus = (carry / "corpus" / "LibriSpeech").resolve()  # run.sh runs in `work`
    if not corpus.is_dir():
        sys.path.insert(0, str(ROOT / "tests" / "recipes"))
        from fixtures import make_librispeech  # noqa: E402

        parts = (
            {k: min(v, 8) for k, v in CORPUS_PARTS.items()} if small else CORPUS_PARTS
        )
        corpus = make_librispeech(work / "corpus", parts)
    d = work / "egs" / "librispeech" / "ASR"
    d.mkdir(parents=True)
    shutil.copy(LS / "run.sh", d / "run.sh")
    shutil.copytree(LS / "conf" / "plans", d / "conf" / "plans")
    model = (
        _model_config(True)
        if small
        else {
            "num_mel_bins": 80,
            "subsampling_channels": 32,
            "d_model": 144,
            "num_layers": 4,
            "num_heads": 4,
            "ffn_dim": 576,
            "conv_kernel": 15,
            "dropout": 0.1,
            "decoder_dim": 144,
            "joiner_dim": 144,
            "ctc_weight": 0.3,
        }
    )
    model.pop("vocab_size", None)  # the recipe sets it from its BPE model
    steps = (4, 2) if small else (200, 60)
    for name, n, lr in (
        ("train.yaml", steps[0], 2e-3),
        ("train_qat.yaml", steps[1], 5e-4),
    ):
        tr = {
            "seed": 1,
            "max_steps": n,
            "max_duration": 60.0,
            "num_buckets": 2,
            "lr": lr,
            "warmup_steps": max(1, n // 10),
            "model_warmup_steps": n // 2 or 1,
            "num_workers": 0,
            "log_every": 10,
            "valid_every": n,
            "checkpoint_every": max(1, n // 4),
            "keep_last_checkpoints": 3,
            "spec_augment": {"enabled": False},
        }
        (d / "conf" / name).write_text(yaml.safe_dump({"model": model, "train": tr}))
    systems = {
        "systems": [
            {"name": "float32", "method": "float", "config": "conf/train.yaml"},
            {
                "name": "ptq_w4a8",
                "method": "ptq",
                "plan": "conf/plans/w4a8.yaml",
                "init_from": "float32",
            },
            {
                "name": "qat_w4a8",
                "method": "qat",
                "config": "conf/train_qat.yaml",
                "plan": "conf/plans/w4a8.yaml",
                "init_from": "float32",
            },
        ]
    }
    (d / "conf" / "systems.yaml").write_text(yaml.safe_dump(systems, sort_keys=False))
    cmd = [
        str(d / "run.sh"),
        "--corpus-dir",
        str(corpus),
        "--nj",
        "4",
        "--train-parts",
        "train-clean-100",
        "--speed-perturb",
        "",
        "--nbpe",
        "48",
        "--avg",
        "2",
        "--train-launcher",
        "",
        "--calibration-batches",
        "2",
        "--decode-methods",
        "greedy_search",
    ]
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT)}
    t = time.time()
    r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True)
    res: dict = {
        "rc": r.returncode,
        "wall_s": round(time.time() - t, 1),
        "command": " ".join(cmd[1:]),
    }
    if r.returncode != 0:
        res["stderr_tail"] = r.stderr[-3000:]
        return res
    results = json.loads((d / "exp" / "results.json").read_text())
    res["systems"] = {
        s["name"]: {
            "wer": s["wer"],
            "size_bytes": s["size_bytes"],
            "train_seconds": s["train_seconds"],
        }
        for s in results["systems"]
    }
    summary = json.loads((d / "exp" / "float32" / "train_summary.json").read_text())
    res["float32_train"] = {
        k: summary[k] for k in ("steps", "audio_sec_per_sec", "amp")
    }
    res["results_md"] = (d / "RESULTS.md").read_text()
    return res


def _fused_on(on: bool):
    """The fused kernels as they are (on where they run), or switched off."""
    from q4asr.quant import fused

    return contextlib.nullcontext() if on else fused.disabled()


# (M, K, N) of the single-layer table: the GPU issue's shapes (LibriSpeech model,
# 32 x 15 s after subsampling: 12,000 frames; a wider layer at 24,000)
LAYER_SHAPES = (
    (12000, 512, 2048),
    (12000, 2048, 512),
    (12000, 512, 512),
    (24000, 768, 3072),
)
LAYER_SHAPES_SMALL = ((600, 32, 64), (600, 64, 32))


def layers(device: str, small: bool, reps: int) -> list[dict]:
    """One linear layer, ms per call: bf16 matmul against the integer linear (bf16
    in, bf16 out, dynamic per-row int8 activations) with int8 and packed int4
    weights, fused and unfused."""
    import torch
    import torch.nn.functional as F

    from q4asr.quant import ops
    from q4asr.quant.kernels import pack_int4
    from q4asr.quant.quantizer import quantize_weight

    rows = []
    g = torch.Generator().manual_seed(0)
    for M, K, N in LAYER_SHAPES_SMALL if small else LAYER_SHAPES:
        x = torch.randn(M, K, generator=g).to(device, torch.bfloat16)
        w = (torch.randn(N, K, generator=g) / K**0.5).to(device)
        wb = w.to(torch.bfloat16)
        act = ops.ActQuant(8)
        weights = {}
        for bits in (8, 4):
            q, s = quantize_weight(w, bits, (0,))
            weights[bits] = ops.QWeight(pack_int4(q) if bits == 4 else q, s, bits, K)
        row = {"M": M, "K": K, "N": N}
        row["bf16_ms"] = 1e3 * _timed(functools.partial(F.linear, x, wb), device, 20)
        for bits, qw in weights.items():
            for use_fused in (True, False):
                key = f"w{bits}a8_{'fused' if use_fused else 'unfused'}_ms"
                with _fused_on(use_fused):
                    call = functools.partial(ops.linear, x, qw, None, act)
                    t = _timed(call, device, 20)
                row[key] = 1e3 * t
        rows.append(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        )
        log(f"layer {rows[-1]}")
    return rows


def environment(device: str) -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_sha": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        or None,
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
        )
    else:
        env.update(
            gpu=None,
            cpu=platform.processor() or platform.machine(),
            threads=torch.get_num_threads(),
        )
    return env


def measure(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = args.device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA GPU (use --device cpu)")
    import fast_rnnt  # noqa: F401  (fails early when the build did not install)

    reps = 2 if args.small else 5
    res: dict = {"device": device, "small": args.small, "reps": reps}
    res["env"] = environment(device)
    res["model_params"] = sum(
        p.numel() for p in _build(_model_config(args.small), None, "cpu").parameters()
    )
    t = time.time()
    res["parity"] = check_parity(device, args.small)
    res["parity_ok"] = all(
        v == 0.0
        for row in res["parity"].values()
        for k, v in row.items()
        if not k.endswith("_dtype")
    )
    res["layers"] = layers(device, args.small, reps)
    res["train"] = train_steps(device, args.small, reps)
    res["inference"] = inference(device, args.small, reps)
    from q4asr.quant import fused

    res["fused"] = fused.status()  # after the runs: off with an error if one failed
    res["measure_s"] = round(time.time() - t, 1)
    if not args.no_recipe:
        with tempfile.TemporaryDirectory() as tmp:
            res["recipe"] = recipe(device, args.small, Path(args.carry), Path(tmp))
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------- report


def markdown(res: dict) -> str:
    e = res["env"]
    where = (
        f"one {e['gpu']} ({e.get('gpu_memory_gib')} GiB, sm {e.get('capability')})"
        if e.get("gpu")
        else f"CPU ({e.get('cpu')}, {e.get('threads')} threads)"
    )
    lines = [
        MARK[0],
        "## GPU",
        "",
        f"Measured by `tools/gpu_check.py run` on {where}, torch {e['torch']}, CUDA "
        f"{e['cuda'] or '-'}, Python {e['python']}, q4asr {e['git_sha']}, {e['date']}. "
        f"Model: the LibriSpeech recipe's Conformer ({res['model_params']:,} parameters)"
        + (" shrunk to a tiny size (--small)" if res.get("small") else "")
        + ". JSON: `benchmarks/gpu.json`.",
        "",
    ]
    st = res.get("setup", {})
    if st:
        lines += [
            f"Setup: {st.get('fast_rnnt', 'fast_rnnt already installed')} in "
            f"{st.get('fast_rnnt_s', 0)} s; whole check {st.get('total_s')} s.",
            "",
        ]
    lines += [
        "Converted integer model vs QAT model (eval), max |difference| of encoder "
        "output and joiner logits:",
        "",
        "| plan | float32 | bf16 autocast (output dtype) |",
        "|---|---|---|",
    ]
    for k, r in res["parity"].items():
        lines.append(f"| {k} | {r['float32']:g} | {r['bf16']:g} ({r['bf16_dtype']}) |")
    fu = res.get("fused")
    if fu is not None:
        state = "on" if fu["enabled"] else "off"
        why = f" ({fu['error']})" if fu.get("error") else ""
        lines += [
            "",
            f"Fused Triton kernels (`q4asr.quant.fused`): {state}{why}; rows marked "
            "unfused run the reference path (`torch._int_mm` and separate "
            "quantize/rescale ops).",
        ]
    if res.get("layers"):
        lines += [
            "",
            "One linear layer, bf16 input and output, int8 per-row activations; ms per "
            "call, median of 20 (x: time / bf16 matmul time):",
            "",
            "| M x K x N | bf16 matmul | W8A8 fused | W8A8 unfused | W4A8 fused "
            "| W4A8 unfused |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["layers"]:
            b = r["bf16_ms"]
            cells = [
                f"{r[k]:.3f} ({r[k] / b:.1f}x)"
                for k in (
                    "w8a8_fused_ms",
                    "w8a8_unfused_ms",
                    "w4a8_fused_ms",
                    "w4a8_unfused_ms",
                )
            ]
            lines.append(
                f"| {r['M']} x {r['K']} x {r['N']} | {b:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    batch = "2 x 3 s" if res.get("small") else "32 x 15 s"
    lines += [
        "",
        f"Training step, batch {batch} of random features, full loss (pruned "
        f"RNN-T + CTC), AdamW, grad clip; median of {res['reps']}:",
        "",
        "| system | step s | s of audio / s | peak GiB | x bf16 float step |",
        "|---|---|---|---|---|",
    ]
    ref = next(
        (
            r.get("step_s")
            for r in res["train"]
            if r["system"] == "float, bf16 autocast"
        ),
        None,
    )
    for r in res["train"]:
        if "error" in r:
            lines.append(f"| {r['system']} | fails: {r['error'][:120]} | | | |")
            continue
        ratio = f"{r['step_s'] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {r['system']} | {r['step_s']:.3f} | {r['audio_s_per_s']:,.0f} "
            f"| {r['peak_gib']} | {ratio} |"
        )
    lines += [
        "",
        f"Encoder inference, same batch; median of {res['reps']}:",
        "",
        "| model | encoder s | RTF | peak GiB | x bf16 float |",
        "|---|---|---|---|---|",
    ]
    ref = next(
        (
            r["encoder_s"]
            for r in res["inference"]
            if r["system"] == "float32, bf16 autocast"
        ),
        None,
    )
    for r in res["inference"]:
        ratio = f"{r['encoder_s'] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {r['system']} | {r['encoder_s']:.4f} | {r['rtf']:.5f} "
            f"| {r['peak_gib']} | {ratio} |"
        )
    rec = res.get("recipe")
    if rec:
        lines += [
            "",
            "LibriSpeech `run.sh` on the fixture corpus (every stage from the "
            f"manifests to the report): exit {rec['rc']}, {rec['wall_s']} s.",
        ]
        if rec["rc"] == 0:
            ft = rec["float32_train"]
            lines += [
                f"float32: {ft['steps']} steps at {ft['audio_sec_per_sec']:.0f} s "
                f"of audio / s (amp {ft['amp']}).",
                "",
                "| system | size bytes | "
                + " | ".join(
                    f"WER {p}" for p in next(iter(rec["systems"].values()))["wer"]
                )
                + " |",
                "|---|---|" + "---|" * len(next(iter(rec["systems"].values()))["wer"]),
            ]
            for name, s in rec["systems"].items():
                wers = " | ".join(f"{v:.1f}" for v in s["wer"].values())
                lines.append(f"| {name} | {s['size_bytes']:,} | {wers} |")
    lines += ["", MARK[1], ""]
    return "\n".join(lines)


def markdown_cmd(args: argparse.Namespace) -> int:
    from q4asr.utils import update_marked

    text = markdown(json.loads(Path(args.json).read_text()))
    if args.update:
        update_marked(args.update, text, MARK)
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="gather wheels, sdists and the fixture corpus")
    a.add_argument("--dir", default=".gpu")
    a.add_argument("--python-version", default="3.12")
    for name in ("run", "measure"):
        a = sub.add_parser(
            name,
            help="set up and measure"
            if name == "run"
            else "measure only (run calls it)",
        )
        a.add_argument("--out", required=True)
        a.add_argument("--carry", default=".gpu")
        a.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        a.add_argument("--small", action="store_true", help="tiny model and batch")
        a.add_argument("--no-recipe", action="store_true")
        if name == "run":
            a.add_argument(
                "--no-build", action="store_true", help="fast_rnnt is installed already"
            )
    a = sub.add_parser("markdown", help="the BENCHMARKS.md section from a JSON file")
    a.add_argument("json")
    a.add_argument("--update", default=None, help="replace the section in this file")
    args = p.parse_args(argv)
    return {
        "prepare": lambda: prepare(args) or 0,
        "run": lambda: run(args),
        "measure": lambda: measure(args),
        "markdown": lambda: markdown_cmd(args),
    }[args.cmd]()


if __name__ == "__main__":
    sys.exit(main())
