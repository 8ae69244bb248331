#!/usr/bin/env python3
"""Benchmark q4asr against its peers on one Conformer transducer: size on disk,
encoder and greedy-decode speed, peak memory, training-step time, and WER.

Systems compared, all built from the same (randomly initialised) model:

- ``float32``: the float model (its q4asr safetensors file);
- ``dynamic_int8``: PyTorch post-training dynamic int8
  (``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``), saved with
  ``torch.save(state_dict)``;
- ``q4asr_int8`` / ``q4asr_int4`` / ``q4asr_mixed48``: q4asr integer models from the
  recipe's W8A8 / W4A8 / mixed 4/8 plans (``prepare`` + ``convert``);
- training peers: float32, q4asr native QAT (W8A8, W4A8) and torchao's fake-quant QAT
  (``Int8DynActInt4WeightQATQuantizer``).

Every time is a median over repeats, timed round-robin (one call of each system per
round) in this one process, so that load from other processes falls on all systems
alike; every figure is also given as a ratio to float32. Peak memory is measured in
a fresh subprocess per system that loads the model from its file and decodes the
batch once. WER comes from the demo recipe's ``exp/results.json`` when it exists.

  python tools/bench.py --small                      # < 60 s, for regular checks
  python tools/bench.py --json exp/bench.json --markdown BENCHMARKS.md   # full table
  python tools/bench.py --train --train-cuts ... --bpe-model ...  # training configs
                                                 # side by side (tools/bench_train.py)

Prints one JSON object (and writes it with ``--json FILE``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from bench_quant import median_times  # noqa: E402  (tools/bench_quant.py)

from q4asr.decode.search import greedy_search  # noqa: E402
from q4asr.model import ModelConfig, Transducer, build_model  # noqa: E402
from q4asr.quant import (  # noqa: E402
    convert,
    load_plan,
    load_quantized,
    prepare,
    save_quantized,
)
from q4asr.utils import atomic_write, get_env_info, update_marked  # noqa: E402

RECIPE = REPO / "egs" / "synth" / "ASR"
PLANS = {
    "q4asr_int8": "w8a8.yaml",
    "q4asr_int4": "w4a8.yaml",
    "q4asr_mixed48": "mixed48.yaml",
}
SIZE_SYSTEMS = ("float32", "dynamic_int8", "q4asr_int8", "q4asr_int4", "q4asr_mixed48")
INFER_SYSTEMS = SIZE_SYSTEMS
TRAIN_SYSTEMS = ("float32", "q4asr_qat_w8a8", "q4asr_qat_w4a8", "torchao_qat_8da4w")
TRAIN_PLANS = {"q4asr_qat_w8a8": "w8a8.yaml", "q4asr_qat_w4a8": "w4a8.yaml"}
# recipe system (egs/synth/ASR/conf/systems.yaml) -> benchmark system
RECIPE_SYSTEMS = {
    "float32": "float32",
    "qat_w8a8": "q4asr_int8",
    "qat_w4a8": "q4asr_int4",
    "qat_mixed48": "q4asr_mixed48",
}
SMALL_MODEL = dict(
    num_mel_bins=80,
    subsampling_channels=16,
    d_model=64,
    num_layers=2,
    num_heads=4,
    ffn_dim=256,
    conv_kernel=15,
    dropout=0.1,
    vocab_size=64,
    decoder_dim=64,
    joiner_dim=64,
    context_size=2,
    ctc_weight=0.5,
)
FRAMES_PER_SECOND = 100  # 10 ms fbank frames
TOKENS_PER_SECOND = 4.0  # roughly BPE-256 pieces per second of read speech
TORCHAO_MAX_GROUP = 256

log = logging.getLogger("q4asr.bench")


# ----------------------------------------------------------------- setup


def model_config(small: bool, train_yaml: Path) -> dict[str, Any]:
    """The benchmarked model's config: the demo's ``model:`` section (vocab 256), or
    the small model of ``--small``."""
    if small:
        return ModelConfig.from_dict(dict(SMALL_MODEL)).to_dict()
    if not train_yaml.is_file():
        raise SystemExit(f"error: {train_yaml}: no such training config")
    doc = yaml.safe_load(train_yaml.read_text()) or {}
    if not isinstance(doc.get("model"), dict):
        raise SystemExit(f"error: {train_yaml}: no 'model:' mapping")
    d = dict(doc["model"])
    d.setdefault("vocab_size", 256)
    try:
        return ModelConfig.from_dict(d).to_dict()
    except ValueError as e:
        raise SystemExit(f"error: {train_yaml}: model: {e}") from None


def make_batch(
    cfg: dict[str, Any], batch: int, seconds: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """A fixed batch: feats (N, T, num_mel_bins) float, feat_lens (N,) int64, and N
    random target token sequences (ids in [1, vocab_size)), all from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    frames = int(round(seconds * FRAMES_PER_SECOND))
    feats = torch.randn(batch, frames, cfg["num_mel_bins"], generator=g)
    lens = torch.full((batch,), frames, dtype=torch.int64)
    n_tok = max(1, int(seconds * TOKENS_PER_SECOND))
    targets = torch.randint(1, cfg["vocab_size"], (batch, n_tok), generator=g)
    assert feats.shape == (batch, frames, cfg["num_mel_bins"]), feats.shape
    return feats, lens, targets.tolist()


def float_model(cfg: dict[str, Any], seed: int = 0) -> Transducer:
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict(cfg))


def dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's post-training dynamic int8 of every nn.Linear (a copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8
        )


def q4asr_int(model: nn.Module, plan_path: Path) -> nn.Module:
    """q4asr integer model (prepare + convert of a copy) for ``plan_path``."""
    return convert(prepare(copy.deepcopy(model), load_plan(plan_path)))


def torchao_groupsize(model: nn.Module) -> int:
    """The largest weight group size <= 256 dividing every Linear's in_features:
    torchao's 8da4w quantizer silently leaves a Linear float when its in_features is
    not a multiple of the group size, which would make the comparison unfair."""
    g = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            g = math.gcd(g, m.in_features)
    if g == 0:
        raise ValueError("model has no nn.Linear for torchao to quantize")
    return max(d for d in range(1, min(g, TORCHAO_MAX_GROUP) + 1) if g % d == 0)


def torchao_qat(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """torchao's Int8DynActInt4WeightQATQuantizer fake-quant QAT model (a copy), and
    what it quantized."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao
            from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer
    finally:
        logging.disable(logging.NOTSET)
    gs = torchao_groupsize(model)
    m = Int8DynActInt4WeightQATQuantizer(groupsize=gs).prepare(copy.deepcopy(model))
    n_lin = sum(isinstance(x, nn.Linear) for x in model.modules())
    n_q = sum(type(x).__name__ == "Int8DynActInt4WeightQATLinear" for x in m.modules())
    if n_q != n_lin:
        raise RuntimeError(f"torchao quantized {n_q} of {n_lin} Linear layers")
    info = {
        "torchao": torchao.__version__,
        "groupsize": gs,
        "linear_layers_fake_quantized": n_q,
    }
    return m, info


# ----------------------------------------------------------------- files


def save_system(name: str, model: nn.Module, path: Path, cfg: dict) -> Path:
    """Write ``model`` to ``path`` the way its system ships models."""
    if name == "dynamic_int8":
        torch.save(model.state_dict(), path)
        return path
    return save_quantized(path, model, {"model_config": json.dumps(cfg)})


def load_system(name: str, path: Path, cfg: dict) -> nn.Module:
    """Load a file written by :func:`save_system`, as a server would (eval mode)."""
    if name == "dynamic_int8":
        model = dynamic_int8(float_model(cfg))
        model.load_state_dict(torch.load(path, weights_only=False))
        return model.eval()

    def build(meta: dict[str, str]) -> nn.Module:
        return build_model(ModelConfig.from_dict(json.loads(meta["model_config"])))

    model, _, _ = load_quantized(path, build)
    return model.eval()


# ----------------------------------------------------------------- measurements


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux
    ``/proc/self/clear_refs`` = 5); returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (VmHWM)."""
    return _proc_status_kib("VmHWM") * 1024


ORIGINS = ("model_file", "libraries", "anonymous")
# paths the kernel shows for shared anonymous memory (allocated, not a file's pages)
SHARED_ANONYMOUS = ("/dev/zero", "/memfd:", "/SYSV")


def rss_by_origin(model_file: str | Path) -> dict[str, int]:
    """This process's resident bytes by what backs them (Linux ``/proc/self/smaps``):
    ``model_file`` (pages of the mapped model file: its tensors are views of the
    mapping), ``libraries`` (every other file mapping: the code and data of torch's
    libraries and the Python modules, paged in as they are first used) and
    ``anonymous`` (heap, stacks and anonymous mappings: what is allocated)."""
    target = str(Path(model_file).resolve())
    out = dict.fromkeys(ORIGINS, 0)
    origin = "anonymous"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            path = head[5].strip() if len(head) == 6 else ""
            if path == target:
                origin = "model_file"
            elif path.startswith("/") and not path.startswith(SHARED_ANONYMOUS):
                origin = "libraries"
            else:
                origin = "anonymous"
        elif head and head[0] == "Rss:":
            out[origin] += int(head[1]) * 1024
    return out


@torch.no_grad()
def decode(model: Transducer, feats: torch.Tensor, lens: torch.Tensor) -> int:
    """Encoder + greedy search, as q4asr-decode times it. Returns tokens emitted."""
    enc, enc_lens = model.encode(feats, lens)
    return sum(len(h) for h in greedy_search(model, enc, enc_lens))


def child_memory(args: argparse.Namespace) -> None:
    """Subprocess entry: load one system from its file, decode the batch once, print
    the peak RSS figures as JSON."""
    spec = json.loads(Path(args.child_spec).read_text())
    torch.set_num_threads(spec["threads"])
    model_file = Path(spec["files"][args.child_system])
    origin_imports = rss_by_origin(model_file)
    rss_imports = reset_peak_rss()
    t0 = time.perf_counter()
    model = load_system(args.child_system, model_file, spec["model_config"])
    load_seconds = time.perf_counter() - t0
    rss_loaded = peak_rss_bytes()
    feats, lens, _ = make_batch(spec["model_config"], spec["batch"], spec["seconds"])
    decode(model, feats, lens)
    rss_peak = peak_rss_bytes()
    origin_decoded = rss_by_origin(model_file)
    # a second decode: its peak over the RSS before it is the working memory of
    # decoding alone (kernels and libraries are loaded by then)
    rss_before = reset_peak_rss()
    decode(model, feats, lens)
    work = peak_rss_bytes() - rss_before
    print(
        json.dumps(
            {
                "peak_rss_bytes": rss_peak,
                "load_seconds": round(load_seconds, 4),
                "rss_after_imports_bytes": rss_imports,
                "peak_after_load_bytes": rss_loaded,
                "peak_over_imports_bytes": rss_peak - rss_imports,
                "decode_working_bytes": work,
                # what the RSS after the first decode adds to that after the
                # imports, by origin (at the end of the decode, not at its peak)
                "rss_added_by_origin_bytes": {
                    k: origin_decoded[k] - origin_imports[k] for k in ORIGINS
                },
                "max_rss_whole_process_bytes": resource.getrusage(
                    resource.RUSAGE_SELF
                ).ru_maxrss
                * 1024,
            }
        )
    )


def measure_memory(spec_path: Path, systems: tuple[str, ...]) -> dict[str, dict]:
    """Run :func:`child_memory` in a fresh interpreter per system."""
    out = {}
    for name in systems:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-system",
            name,
            "--child-spec",
            str(spec_path),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = p.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"memory run for {name} failed: {tail[0]}")
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def train_step(model: nn.Module, feats, lens, targets) -> callable:
    """One optimizer step as q4asr-train takes it: forward, (loss / N).backward(),
    grad-norm clipping, AdamW step."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    n = feats.shape[0]

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(feats, lens, targets, warmup=1.0)
        (out["loss"] / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step


@torch.no_grad()
def encoder_breakdown(
    model: Transducer, feats: torch.Tensor, lens: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Milliseconds per encoder forward spent in each kind of leaf module (q4asr's
    ``Int`` prefix dropped, so that ``IntLinear`` lines up with ``Linear``), mean of
    ``repeats`` forwards after one warm-up, timed with forward hooks."""
    acc: dict[str, float] = {}
    start: dict[int, float] = {}

    def pre(mod, _inp):
        start[id(mod)] = time.perf_counter()

    def post(mod, _inp, _out):
        name = type(mod).__name__
        name = name[3:] if name.startswith("Int") else name
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - start[id(mod)]

    hooks = []
    for sub in model.encoder.modules():
        # leaves; torch's dynamic quantized Linear holds a _packed_params child
        if all(type(c).__name__.endswith("PackedParams") for c in sub.children()):
            hooks += [
                sub.register_forward_pre_hook(pre),
                sub.register_forward_hook(post),
            ]
    try:
        model.encode(feats, lens)
        acc.clear()
        for _ in range(repeats):
            model.encode(feats, lens)
    finally:
        for h in hooks:
            h.remove()
    return {
        k: round(v / repeats * 1000, 3)
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1])
    }


def ratios(times: dict[str, float], ref: str, invert: bool = True) -> dict:
    """ref_time / time (a speed-up) for every system but ``ref``."""
    return {
        k: round(times[ref] / v if invert else v / times[ref], 3)
        for k, v in times.items()
        if k != ref
    }


def read_accuracy(path: Path) -> dict[str, Any]:
    """WER per system from the recipe's results.json (written by q4asr-report)."""
    if not path.is_file():
        return {
            "source": str(path),
            "systems": None,
            "note": "no results.json: the demo recipe has not been run to the "
            "report stage; WERs are not available",
        }
    try:
        res = json.loads(path.read_text())
        rows = res["systems"]
        systems = [
            {
                "name": r["name"],
                "benchmark_system": RECIPE_SYSTEMS.get(r["name"]),
                "method": r["method"],
                "plan": r.get("plan"),
                "size_bytes": r.get("size_bytes"),
                "wer": dict(r.get("wer") or {}),
            }
            for r in rows
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(
            f"error: {path}: not a q4asr-report results file ({e})"
        ) from None
    return {
        "source": str(path),
        "test_sets": res.get("test_sets"),
        "decode_method": res.get("decode_method"),
        "systems": systems,
        "note": "trained models of the demo recipe (dynamic int8 and torchao "
        "were not trained or decoded there)",
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = get_env_info()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": env["python"],
        "q4asr_git_sha": env["q4asr_git_sha"],
        "hostname": env["hostname"],
    }


GOALS = REPO / "benchmarks" / "goals.yaml"


def _at(r: dict, path: str) -> Any:
    for key in path.split("."):
        r = r[key]
    return r


def goals(r: dict, path: Path = GOALS) -> list[dict[str, Any]]:
    """Each goal of ``path`` (benchmarks/goals.yaml) with its measured value in ``r``
    and whether it is met."""
    rows = []
    for g in yaml.safe_load(path.read_text())["goals"]:
        try:
            value = _at(r, g["value"])
            if "over" in g:
                value = value / _at(r, g["over"])
        except KeyError:
            if g.get("optional"):
                continue
            raise
        met = value >= g["at_least"] if "at_least" in g else value > g["above"]
        rows.append({"goal": g["goal"], "value": round(value, 3), "met": bool(met)})
    return rows


# ----------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_start = time.time()
    cfg = model_config(args.small, args.train_config)
    batch, seconds = args.batch, args.seconds
    feats, lens, targets = make_batch(cfg, batch, seconds)
    base = float_model(cfg).eval()
    num_params = sum(p.numel() for p in base.parameters())
    plans = {}
    for name, f in {**PLANS, **TRAIN_PLANS}.items():
        p = args.plans_dir / f
        if not p.is_file():
            raise SystemExit(f"error: {p}: no such precision plan (needed for {name})")
        plans[name] = p
    models: dict[str, nn.Module] = {"float32": base, "dynamic_int8": dynamic_int8(base)}
    for name in PLANS:
        models[name] = q4asr_int(base, plans[name])
    result: dict[str, Any] = {
        "mode": "small" if args.small else "full",
        "command": "python tools/bench.py " + " ".join(args.argv),
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in load_start],
        "model_config": cfg,
        "num_params": num_params,
        "batch": {
            "utterances": batch,
            "seconds_each": seconds,
            "feature_frames": int(feats.shape[1]),
            "target_tokens_each": len(targets[0]),
            "audio_seconds": batch * seconds,
        },
        "repeats": {"inference": args.repeats, "training": args.train_repeats},
        "plans": {
            k: str(v.relative_to(REPO) if v.is_relative_to(REPO) else v)
            for k, v in plans.items()
        },
    }

    with tempfile.TemporaryDirectory(prefix="q4asr-bench-") as tmp:
        # ---- size
        files = {}
        for name in SIZE_SYSTEMS:
            suffix = ".pt" if name == "dynamic_int8" else ".safetensors"
            files[name] = save_system(
                name, models[name], Path(tmp) / f"{name}{suffix}", cfg
            )
        size = {k: p.stat().st_size for k, p in files.items()}
        result["size"] = {
            "bytes": size,
            "ratio_to_float32": {
                k: round(size["float32"] / v, 3)
                for k, v in size.items()
                if k != "float32"
            },
            "what": "file bytes: q4asr safetensors (float32 and integer models); "
            "dynamic_int8 = torch.save(state_dict) of quantize_dynamic "
            "(Linear layers only: convolutions and embedding stay float32)",
        }
        log.info("size: %s", size)

        # ---- inference speed (round-robin medians, one process)
        def enc_fn(m):
            def f():
                with torch.no_grad():
                    m.encode(feats, lens)

            return f

        with torch.no_grad():
            enc_t = median_times(
                {k: enc_fn(models[k]) for k in INFER_SYSTEMS}, args.repeats, warmup=1
            )
            dec_t = median_times(
                {
                    k: (lambda m=models[k]: decode(m, feats, lens))
                    for k in INFER_SYSTEMS
                },
                args.repeats,
                warmup=1,
            )
            emitted = {k: decode(models[k], feats, lens) for k in INFER_SYSTEMS}
            breakdown = {
                k: encoder_breakdown(models[k], feats, lens, args.repeats)
                for k in INFER_SYSTEMS
            }
        audio = batch * seconds
        result["inference"] = {
            "encoder_seconds": {k: round(v, 5) for k, v in enc_t.items()},
            "encoder_speedup": ratios(enc_t, "float32"),
            "decode_seconds": {k: round(v, 5) for k, v in dec_t.items()},
            "decode_rtf": {k: round(v / audio, 5) for k, v in dec_t.items()},
            "decode_speedup": ratios(dec_t, "float32"),
            "tokens_emitted": emitted,
            "encoder_breakdown_ms": breakdown,
            "what": "encoder forward, and encoder + greedy search (max 1 symbol per "
            "frame) from features, as q4asr-decode times its RTF; untrained "
            "weights; medians over round-robin repeats; speedup = float32 "
            "time / system time",
        }
        log.info("inference: encoder %s decode %s", enc_t, dec_t)

        # ---- peak memory (fresh subprocess per system, model loaded from its file)
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "model_config": cfg,
                    "batch": batch,
                    "seconds": seconds,
                    "files": {k: str(v) for k, v in files.items()},
                }
            )
        )
        mem = measure_memory(spec, INFER_SYSTEMS)
        result["memory"] = {
            "peak_rss_bytes": {k: v["peak_rss_bytes"] for k, v in mem.items()},
            "peak_over_imports_bytes": {
                k: v["peak_over_imports_bytes"] for k, v in mem.items()
            },
            "decode_working_bytes": {
                k: v["decode_working_bytes"] for k, v in mem.items()
            },
            "ratio_to_float32": {
                k: round(
                    v["peak_over_imports_bytes"]
                    / mem["float32"]["peak_over_imports_bytes"],
                    3,
                )
                for k, v in mem.items()
                if k != "float32"
            },
            "detail": mem,
            "what": "peak RSS (Linux VmHWM, reset after importing torch and "
            "q4asr) of a fresh process that loads the model from its file "
            "and decodes the batch once; peak_over_imports = that peak "
            "minus the RSS after the imports (what the model, the kernels "
            "it loads and decoding add; the ratio uses it); decode_working "
            "= peak of a second decode over the RSS just before it",
        }
    del models

    # ---- training step
    fns = {"float32": train_step(float_model(cfg), feats, lens, targets)}
    for name in TRAIN_PLANS:
        fns[name] = train_step(
            prepare(float_model(cfg), load_plan(plans[name])), feats, lens, targets
        )
    ao_model, ao_info = torchao_qat(float_model(cfg))
    fns["torchao_qat_8da4w"] = train_step(ao_model, feats, lens, targets)
    tr_t = median_times(fns, args.train_repeats, warmup=1)
    result["training"] = {
        "step_seconds": {k: round(v, 5) for k, v in tr_t.items()},
        "speedup_vs_float32": ratios(tr_t, "float32"),
        "speedup_vs_torchao": {
            k: round(tr_t["torchao_qat_8da4w"] / v, 3)
            for k, v in tr_t.items()
            if k.startswith("q4asr")
        },
        "torchao": ao_info,
        "what": "forward + backward + grad clip + AdamW step on the same batch; "
        "q4asr native QAT quantizes every Linear, Conv1d, Conv2d and "
        "Embedding per its plan; torchao 8da4w fake-quantizes the Linear "
        "layers only (int8 per-token activations, int4 grouped weights)",
    }
    log.info("training: %s", tr_t)

    result["accuracy"] = read_accuracy(args.results)
    result["goals"] = goals(result)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.time() - t_start, 1)
    return result


# ----------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f}"


TITLE = "# Benchmarks: q4asr against its peers"
MAIN_MARK = (
    "<!-- bench.py: begin (generated by tools/bench.py --markdown; do not edit) -->",
    "<!-- bench.py: end -->",
)


def render_markdown(r: dict[str, Any]) -> str:
    """The main section of BENCHMARKS.md, with its marks, from a result of :func:`run`
    (every number comes from ``r``)."""
    m, b = r["machine"], r["batch"]
    size, inf, mem, tr = r["size"], r["inference"], r["memory"], r["training"]
    L = [
        MAIN_MARK[0],
        "",
        f"Generated by `{r['command']}` ({r['mode']} mode, {r['wall_seconds']} s).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} thread(s)), Python {m['python']}, "
        f"q4asr {m['q4asr_git_sha'] or 'unknown'}. "
        f"Load average (1/5/15 min) at start {r['load_average_start']}, at end "
        f"{r['load_average_end']}: "
        + (
            "the machine was shared with other jobs, so timings are noisy "
            "(medians of round-robin repeats, all systems alike)."
            if max(r["load_average_start"][0], r["load_average_end"][0]) > 0.5
            else "the machine was otherwise idle."
        ),
        "",
        f"Model: Conformer transducer, {r['num_params']:,} parameters "
        f"(d_model {r['model_config']['d_model']}, {r['model_config']['num_layers']} "
        f"layers, ffn {r['model_config']['ffn_dim']}, vocab "
        f"{r['model_config']['vocab_size']}), untrained weights. Batch: "
        f"{b['utterances']} x {b['seconds_each']} s ({b['feature_frames']} fbank "
        f"frames each). Medians of {r['repeats']['inference']} (inference) and "
        f"{r['repeats']['training']} (training) round-robin repeats.",
        "",
        "## Size and inference",
        "",
    ]
    rows = []
    for k in size["bytes"]:
        ref = k == "float32"
        rows.append(
            [
                k,
                f"{size['bytes'][k]:,}",
                "1" if ref else f"{size['ratio_to_float32'][k]:.2f}",
                f"{inf['encoder_seconds'][k]:.4f}",
                "1" if ref else f"{inf['encoder_speedup'][k]:.2f}",
                f"{inf['decode_rtf'][k]:.4f}",
                "1" if ref else f"{inf['decode_speedup'][k]:.2f}",
                _mib(mem["peak_rss_bytes"][k]),
                _mib(mem["peak_over_imports_bytes"][k]),
                _mib(mem["decode_working_bytes"][k]),
            ]
        )
    L += _table(
        [
            "system",
            "file bytes",
            "x smaller",
            "encoder s",
            "x faster",
            "decode RTF",
            "x faster",
            "peak RSS MiB",
            "over imports MiB",
            "decode working MiB",
        ],
        rows,
    )
    L += [
        "",
        f"- Size: {size['what']}.",
        f"- Speed: {inf['what']}.",
        f"- Memory: {mem['what']}.",
        "",
        "Encoder time by kind of layer (ms per forward, forward hooks, mean of "
        f"{r['repeats']['inference']}; q4asr's integer modules under the float "
        "module's name):",
        "",
    ]
    bd = inf["encoder_breakdown_ms"]
    kinds = sorted(
        {k for v in bd.values() for k in v}, key=lambda k: -bd["float32"].get(k, 0.0)
    )
    L += _table(
        ["layer"] + list(bd),
        [[k] + [f"{bd[s].get(k, 0.0):.2f}" for s in bd] for k in kinds],
    )
    L += [
        "",
        "## Training step",
        "",
    ]
    rows = [
        [
            k,
            f"{v:.4f}",
            "1" if k == "float32" else f"{tr['speedup_vs_float32'][k]:.2f}",
            f"{tr['speedup_vs_torchao'][k]:.2f}"
            if k in tr["speedup_vs_torchao"]
            else ("1" if k == "torchao_qat_8da4w" else "-"),
        ]
        for k, v in tr["step_seconds"].items()
    ]
    L += _table(
        ["system", "step s", "x faster than float32", "x faster than torchao"], rows
    )
    ao = tr["torchao"]
    L += [
        "",
        f"- {tr['what']}.",
        f"- torchao {ao['torchao']} `Int8DynActInt4WeightQATQuantizer(groupsize="
        f"{ao['groupsize']})`: the largest group size <= {TORCHAO_MAX_GROUP} dividing "
        f"every Linear's input width (torchao leaves a Linear float when it does "
        f"not); {ao['linear_layers_fake_quantized']} Linear layers fake-quantized.",
        "",
        "## Accuracy (demo recipe)",
        "",
    ]
    acc = r["accuracy"]
    if not acc["systems"]:
        L += [f"Not available: {acc['note']} (`{acc['source']}`).", ""]
    else:
        parts = acc.get("test_sets") or sorted(
            {p for s in acc["systems"] for p in s["wer"]}
        )
        rows = [
            [
                s["name"],
                s["method"],
                "-" if s["size_bytes"] is None else f"{s['size_bytes']:,}",
            ]
            + ["-" if s["wer"].get(p) is None else f"{s['wer'][p]:.2f}" for p in parts]
            for s in acc["systems"]
        ]
        L += _table(
            ["system", "method", "file bytes"] + [f"WER % {p}" for p in parts], rows
        )
        L += [
            "",
            f"From `{acc['source']}` ({acc.get('decode_method')}); {acc['note']}.",
            "",
        ]
    L += ["## Goals", "", "The goals are those of `benchmarks/goals.yaml`.", ""]
    L += _table(
        ["goal", "measured", "met"],
        [
            [g["goal"], f"{g['value']:.2f}", "yes" if g["met"] else "**no**"]
            for g in r["goals"]
        ],
    )
    missed = [g["goal"] for g in r["goals"] if not g["met"]]
    L += [
        "",
        (
            "Every goal is met on this run."
            if not missed
            else f"Not met on this run: {len(missed)} of {len(r['goals'])} goals "
            "(marked **no** above)."
        ),
        "",
        MAIN_MARK[1],
        "",
    ]
    return "\n".join(L)


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    """Write this run's sections into ``path``: the main one and, with ``--onnx``, the
    ONNX one, each between its marks. Every other section of the file (the loading,
    training and other ONNX runs) is kept; a new file starts with the title."""
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_text(TITLE + "\n\n"))
    update_marked(path, render_markdown(r), MAIN_MARK)
    if "onnx" in r:
        import bench_onnx

        update_marked(path, bench_onnx.render(r["onnx"]), bench_onnx.markers(None))


# ----------------------------------------------------------------- loading (--load-only)

LOAD_MODELS = {
    "demo": (RECIPE / "conf/train.yaml", RECIPE / "conf/plans"),
    "librispeech": (
        REPO / "egs/librispeech/ASR/conf/train.yaml",
        REPO / "egs/librispeech/ASR/conf/plans",
    ),
}
LOAD_SYSTEMS = ("float32", "q4asr_int8", "q4asr_int4")
LOAD_MARK = ("<!-- bench load: begin -->", "<!-- bench load: end -->")


def load_section(args: argparse.Namespace) -> dict[str, Any]:
    """File size, load time and peak RSS over imports (a fresh process per system
    that loads the file and decodes the batch once) of float32, q4asr int8 and int4,
    for the demo's and the LibriSpeech recipe's model; every figure also as a ratio
    to float32. The load time is the median of ``args.load_repeats`` processes."""
    out: dict[str, Any] = {"machine": machine(), "env": get_env_info(), "models": {}}
    for name, (train_yaml, plans_dir) in LOAD_MODELS.items():
        cfg = model_config(False, train_yaml)
        params = sum(p.numel() for p in float_model(cfg).parameters())
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            base = float_model(cfg)
            for sysname in LOAD_SYSTEMS:
                m = (
                    base
                    if sysname == "float32"
                    else q4asr_int(base, plans_dir / PLANS[sysname])
                )
                files[sysname] = str(
                    save_system(sysname, m, Path(tmp) / f"{sysname}.st", cfg)
                )
            del base, m
            spec = Path(tmp) / "spec.json"
            spec.write_text(
                json.dumps(
                    {
                        "threads": args.threads,
                        "files": files,
                        "model_config": cfg,
                        "batch": args.batch,
                        "seconds": args.seconds,
                    }
                )
            )
            runs = [
                measure_memory(spec, LOAD_SYSTEMS) for _ in range(args.load_repeats)
            ]
            rows = {}
            for sysname in LOAD_SYSTEMS:
                rs = [r[sysname] for r in runs]
                least = min(rs, key=lambda r: r["peak_over_imports_bytes"])
                by_origin = least["rss_added_by_origin_bytes"]
                rows[sysname] = {
                    "file_bytes": Path(files[sysname]).stat().st_size,
                    "load_seconds": sorted(r["load_seconds"] for r in rs)[len(rs) // 2],
                    "peak_over_imports_bytes": least["peak_over_imports_bytes"],
                    "rss_added_by_origin_bytes": by_origin,
                    # the model's own memory: its file's pages and what it allocates
                    "model_memory_bytes": by_origin["model_file"]
                    + by_origin["anonymous"],
                    "processes": [
                        {
                            k: r[k]
                            for k in (
                                "load_seconds",
                                "peak_over_imports_bytes",
                                "rss_added_by_origin_bytes",
                            )
                        }
                        for r in rs
                    ],
                    "peak_after_load_bytes": min(
                        r["peak_after_load_bytes"] - r["rss_after_imports_bytes"]
                        for r in rs
                    ),
                }
        ref = rows["float32"]
        for r in rows.values():
            r["x_file"] = round(r["file_bytes"] / ref["file_bytes"], 4)
            r["x_peak"] = round(
                r["peak_over_imports_bytes"] / ref["peak_over_imports_bytes"], 4
            )
            r["x_load_time"] = round(r["load_seconds"] / ref["load_seconds"], 3)
            r["x_model_memory"] = round(
                r["model_memory_bytes"] / ref["model_memory_bytes"], 4
            )
        out["models"][name] = {
            "params": params,
            "config": str(train_yaml.relative_to(REPO)),
            "systems": rows,
        }
        log.info("load %s: %s", name, json.dumps(rows))
    out["setup"] = {
        "batch": args.batch,
        "seconds": args.seconds,
        "threads": args.threads,
        "load_repeats": args.load_repeats,
        "command": "python tools/bench.py " + " ".join(sys.argv[1:]),
    }
    return out


def render_load_markdown(r: dict[str, Any]) -> str:
    st = r["setup"]
    lines = [
        LOAD_MARK[0],
        "",
        "### Loading an integer model: memory and time",
        "",
        f"`{st['command']}` on "
        f"{r['machine']['cpu']}, {st['threads']} thread(s). "
        "A fresh process per system loads the model file and decodes one batch "
        f"({st['batch']} x {st['seconds']:g} s); peak RSS is over the RSS after "
        f"the imports (the least of {st['load_repeats']} processes), load time "
        "their median.",
        "",
        "That process's RSS growth, split by what backs the pages "
        "(`/proc/self/smaps`, at the end of the decode): the mapped model file "
        "(the model's tensors are views of it), the other file mappings (torch's "
        "libraries, paged in as their code first runs: the same few tens of MiB "
        "whatever the model's size), and anonymous memory (what loading and decoding "
        "allocate). Model memory is the model file's pages plus the anonymous "
        "memory: peak over imports without the libraries' pages.",
        "",
    ]
    mib = 2**20
    for name, m in r["models"].items():
        lines += [
            f"{name} model (`{m['config']}`, {m['params']:,} parameters):",
            "",
            "| system | file MiB | x float32 | load s | x float32 "
            "| peak over imports MiB | x float32 | model file pages MiB "
            "| library pages MiB | anonymous MiB | model memory x float32 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for sysname, s in m["systems"].items():
            o = s["rss_added_by_origin_bytes"]
            lines.append(
                f"| {sysname} | {s['file_bytes'] / mib:.2f} | {s['x_file']:.3f} | "
                f"{s['load_seconds']:.3f} | {s['x_load_time']:.2f} | "
                f"{s['peak_over_imports_bytes'] / mib:.1f} | {s['x_peak']:.3f} | "
                f"{o['model_file'] / mib:.1f} | {o['libraries'] / mib:.1f} | "
                f"{o['anonymous'] / mib:.1f} | {s['x_model_memory']:.3f} |"
            )
        spread = []
        for sysname, s in m["systems"].items():
            ps = s["processes"]
            ts = [p["load_seconds"] for p in ps]
            an = [p["rss_added_by_origin_bytes"]["anonymous"] / mib for p in ps]
            spread.append(
                f"{sysname} load {min(ts):.3f}-{max(ts):.3f} s, "
                f"anonymous {min(an):.1f}-{max(an):.1f} MiB"
            )
        n = st["load_repeats"]
        lines += ["", f"Across the {n} processes: " + "; ".join(spread) + ".", ""]
    lines += [LOAD_MARK[1], ""]
    return "\n".join(lines)


def onnx_arguments(ap: argparse.ArgumentParser) -> None:
    import bench_onnx

    ap.add_argument(
        "--onnx", action="store_true", help="add the ONNX section (tools/bench_onnx.py)"
    )
    bench_onnx.add_arguments(ap)


def onnx_section(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    import bench_onnx

    args.model_config = result["model_config"]
    ns = argparse.Namespace(
        **{**vars(args), "repeats": args.onnx_repeats, "command": result["command"]}
    )
    return bench_onnx.run(ns)


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--small",
        action="store_true",
        help="small model and batch (same code path), < 60 s",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="utterances per batch (default 8; 2 with --small)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="seconds per utterance (default 10; 2 with --small)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="inference repeats (default 7; 3 with --small)",
    )
    ap.add_argument(
        "--train-repeats",
        type=int,
        default=None,
        help="training-step repeats (default 5; 3 with --small)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--train-config",
        type=Path,
        default=RECIPE / "conf/train.yaml",
        help="YAML whose model: section is the full-mode model",
    )
    ap.add_argument("--plans-dir", type=Path, default=RECIPE / "conf/plans")
    ap.add_argument(
        "--results",
        type=Path,
        default=RECIPE / "exp/results.json",
        help="the demo recipe's q4asr-report output (WER per system)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the JSON here")
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write the generated BENCHMARKS.md here",
    )
    ap.add_argument(
        "--load-only",
        action="store_true",
        help="only the loading section: file size, load time and peak RSS of "
        "float32/int8/int4 for the demo's and the LibriSpeech model",
    )
    ap.add_argument("--load-repeats", type=int, default=3)
    ap.add_argument(
        "--load-md", type=Path, default=None, help="update that section in this file"
    )
    onnx_arguments(ap)
    import bench_train  # tools/bench_train.py: the --train section

    bench_train.add_arguments(ap)
    ap.add_argument("--child-system", help=argparse.SUPPRESS)
    ap.add_argument("--child-spec", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_parser().parse_args(argv)
    if args.child_system:
        child_memory(args)
        return None
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.train:  # the training benchmark (tools/bench_train.py) only
        import bench_train

        result = bench_train.run(args)
        text = json.dumps(result, indent=1)
        print(text)
        if args.json:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
        if args.markdown:  # its own section of the file; the rest is kept
            update_marked(
                args.markdown, bench_train.marked_markdown(result), bench_train.MARK
            )
        return result
    small = args.small
    for name, full, sm in (
        ("batch", 8, 2),
        ("seconds", 10.0, 2.0),
        ("repeats", 7, 3),
        ("train_repeats", 5, 3),
    ):
        if getattr(args, name) is None:
            setattr(args, name, sm if small else full)
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be positive")
    args.argv = argv
    if args.load_only:
        result = load_section(args)
        text = json.dumps(result, indent=1)
        print(text)
        if args.json:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
        if args.load_md:
            update_marked(args.load_md, render_load_markdown(result), LOAD_MARK)
        return result
    result = run(args)
    if args.onnx:
        result["onnx"] = onnx_section(args, result)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    if args.markdown:
        write_markdown(args.markdown, result)
    return result


if __name__ == "__main__":
    main()
