"""Training throughput and convergence of training configs, side by side in one process
(``python tools/bench.py --train ...``).

Two measurements, both on real batches of a real training manifest:

- **throughput**: every variant (a training YAML, optional ``section.field=value``
  overrides, optional ``autocast=bf16``, optional ``procs=N``) takes training steps
  exactly as q4asr-train does (its own loader and batch size, SpecAugment, forward,
  ``(loss / N).backward()``, gradient clipping, optimizer and LR-schedule step), one
  step of each variant per round, so that load from other processes falls on all
  variants alike. Reported: seconds of audio trained per second of wall time (batch
  loading included), and its ratio to the first variant.
- A ``procs=N`` variant (by default N is the config's ``train.cpu_processes``, as for
  q4asr-train on a CPU) trains as ``torchrun --nproc-per-node N -m q4asr.bin.train``
  does: N processes (gloo), each with ``--threads / N`` threads, its own share of the
  batches (``max_duration`` per process, so N x that per step) and the gradients
  averaged by DistributedDataParallel. Such a variant cannot share the rounds of the
  one-process variants: it is timed on its own, after them.
- **convergence**: two variants train from scratch, interleaved so that both have
  seen about the same seconds of audio at any time, each with its own LR schedule
  as configured (so a truncated run is the start of that config's real run). At
  every ``--eval-every`` seconds of audio seen, each is evaluated on the validation
  cuts: transducer (pruned RNN-T) and CTC loss per target token (comparable across
  frame rates and batch sizes) and, at the end, greedy-search WER. When either is a
  ``procs=N`` variant, the two train one after the other instead (the losses are
  taken at the same seconds of audio all the same; the wall times are each alone).

  cd egs/synth/ASR   # feature paths in the cuts are relative to the recipe dir
  python ../../../tools/bench.py --train --train-cuts data/fbank/synth_cuts_train.jsonl.gz \\
      --valid-cuts data/fbank/synth_cuts_dev.jsonl.gz --bpe-model data/lang_bpe_128/bpe.model \\
      --variant "before tools/bench_train_before.yaml" \\
      --variant "after egs/synth/ASR/conf/train.yaml" --audio-seconds 20000

(config paths are taken from the current directory, else from the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from q4asr.bin.train import (
    LRSchedule,
    build_model,
    init_distributed,
    make_optimizer,
    run_local,
    wrap_ddp,
)
from q4asr.config import Config, load_config
from q4asr.data.datamodule import DataSpec, SpecAugmenter, make_loader
from q4asr.data.tokenizer import Tokenizer
from q4asr.decode.scoring import score
from q4asr.decode.search import greedy_search

log = logging.getLogger("q4asr.bench.train")

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
DEFAULT_VARIANTS = [
    f"before {TOOLS.relative_to(REPO) / 'bench_train_before.yaml'}",
    "after egs/synth/ASR/conf/train.yaml",
]


@dataclasses.dataclass
class Variant:
    """One training setup: a config (with overrides) and an autocast dtype. It trains
    in ``train.cpu_processes`` processes, as q4asr-train does on a CPU; ``procs=N``
    sets that."""

    name: str
    config: Config
    source: str
    autocast: str | None = None

    @property
    def procs(self) -> int:
        return self.config.train.cpu_processes

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``"NAME CONFIG.yaml [section.field=value ...] [autocast=bf16] [procs=N]"``."""
        words = shlex.split(spec)
        if len(words) < 2:
            raise SystemExit(
                f"error: --variant {spec!r}: expected NAME CONFIG [k=v ...]"
            )
        name, path, *rest = words
        amp = None
        overrides = []
        for w in rest:
            if w.startswith("autocast="):
                amp = w.split("=", 1)[1]
                if amp not in ("bf16",):
                    raise SystemExit(f"error: --variant {name}: autocast must be bf16")
            elif w.startswith("procs="):
                value = w.split("=", 1)[1]
                if not value.isdigit() or int(value) < 1:
                    raise SystemExit(
                        f"error: --variant {name}: procs must be a positive integer, "
                        f"got {value!r}"
                    )
                overrides.append(f"train.cpu_processes={value}")
            else:
                overrides.append(w)
        if not Path(path).is_file() and (REPO / path).is_file():
            path = str(REPO / path)  # configs may be named from the repository root
        if not Path(path).is_file():
            raise SystemExit(f"error: --variant {name}: {path}: no such config")
        return cls(name, load_config(path, overrides), spec, amp)

    def autocast_ctx(self):
        if self.autocast == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Trainer:
    """A variant's model, optimizer, schedule and batch stream, stepped one batch at
    a time the way q4asr-train steps (float training; no plan). In a process group
    of ``v.procs`` processes (``rank``), the model is wrapped in
    DistributedDataParallel and each process loads its share of the batches."""

    def __init__(
        self, v: Variant, tokenizer: Tokenizer, train_cuts: str, rank: int = 0
    ):
        self.v = v
        self.rank = rank
        tc = v.config.train
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        self.model, self.model_cfg = build_model(v.config, tokenizer)
        self.model.train()
        if tc.compile:
            self.model.encoder.compile_layers()
        self.forward_model: torch.nn.Module = self.model
        if v.procs > 1:
            # the same initial model on every rank; SpecAugment draws per rank
            torch.manual_seed(tc.seed + rank)
            self.forward_model = wrap_ddp(self.model, torch.device("cpu"))
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = make_optimizer(self.model, tc)
        self.sched = LRSchedule(self.opt, tc)
        self.spec = DataSpec(
            max_duration=tc.max_duration,
            num_buckets=tc.num_buckets,
            seed=tc.seed,
            num_workers=0,
            num_mel_bins=int(self.model_cfg["num_mel_bins"]),
            max_utterance_duration=tc.max_utterance_duration,
        )
        self.loader = make_loader(
            train_cuts,
            tokenizer,
            self.spec,
            train=True,
            world_size=v.procs,
            rank=rank,
        )
        self.augment = (
            SpecAugmenter(tc.spec_augment) if tc.spec_augment.enabled else None
        )
        self.epoch = 0
        self.it = iter(self._batches())
        self.step_count = 0
        self.audio_seconds = 0.0

    def _batches(self):
        while True:
            self.loader.sampler.set_epoch(self.epoch)
            for b in self.loader.loader:
                if b["features"].shape[0]:
                    yield b
            self.epoch += 1

    def step(self) -> float:
        """One training step on the next batch; returns its seconds of audio (of
        every process's batch)."""
        tc = self.v.config.train
        b = next(self.it)
        feats, lens = b["features"], b["feature_lens"]
        if self.augment is not None:
            feats = self.augment(feats, lens)
        with self.v.autocast_ctx():
            out = self.forward_model(
                feats,
                lens,
                b["tokens"],
                warmup=self.step_count / tc.model_warmup_steps,
            )
        self.opt.zero_grad(set_to_none=True)
        (out["loss"] / feats.shape[0]).backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step_count += 1
        duration = b["duration"]
        if self.v.procs > 1:
            total = torch.tensor([duration], dtype=torch.float64)
            dist.all_reduce(total)
            duration = float(total)
        self.audio_seconds += duration
        return duration

    @torch.no_grad()
    def evaluate(self, valid_cuts: str, tokenizer: Tokenizer, wer: bool) -> dict:
        """Validation losses per target token (warm-up 1: the full objective) and,
        with ``wer``, greedy-search WER (%)."""
        self.model.eval()
        spec = dataclasses.replace(self.spec, max_duration=200.0)
        loader = make_loader(valid_cuts, tokenizer, spec, train=False).loader
        tot = {"loss": 0.0, "pruned": 0.0, "simple": 0.0, "ctc": 0.0, "tokens": 0}
        refs: list[str] = []
        hyps: list[str] = []
        for b in loader:
            if not b["features"].shape[0]:
                continue
            out = self.model(b["features"], b["feature_lens"], b["tokens"], warmup=1.0)
            tot["loss"] += float(out["loss"])
            tot["pruned"] += float(out["pruned_loss"])
            tot["simple"] += float(out["simple_loss"])
            tot["ctc"] += float(out["ctc_loss"])
            tot["tokens"] += sum(len(t) for t in b["tokens"])
            if wer:
                enc, enc_lens = self.model.encode(b["features"], b["feature_lens"])
                hyps += tokenizer.decode(greedy_search(self.model, enc, enc_lens))
                refs += b["texts"]
        self.model.train()
        n = max(tot["tokens"], 1)
        res = {
            "audio_seconds_seen": round(self.audio_seconds, 1),
            "steps": self.step_count,
            "loss_per_token": round(tot["loss"] / n, 4),
            "pruned_loss_per_token": round(tot["pruned"] / n, 4),
            "simple_loss_per_token": round(tot["simple"] / n, 4),
            "ctc_loss_per_token": round(tot["ctc"] / n, 4),
        }
        if wer:
            res["greedy_wer"] = score(refs, hyps)[0].wer
        return res


def _row(v: Variant, params: int, audio: float, secs: float, cpu: float, steps: int):
    return {
        "variant": v.source,
        "params": params,
        "max_duration": v.config.train.max_duration,
        "procs": v.procs,
        "steps_timed": steps,
        "audio_seconds": round(audio, 1),
        "wall_seconds": round(secs, 4),
        "seconds_per_step": round(secs / steps, 3),
        "audio_sec_per_sec": round(audio / secs, 1),
        # CPU seconds of the variant's processes (all threads): less sensitive than
        # wall time to other processes on a shared machine
        "cpu_seconds": round(cpu, 2),
        "audio_sec_per_cpu_sec": round(audio / cpu, 2),
    }


def throughput(variants: list[Variant], tokenizer: Tokenizer, args) -> dict:
    """Round-robin training steps of every one-process variant, then each ``procs=N``
    variant on its own; audio seconds per second."""
    trainers = [
        Trainer(v, tokenizer, args.train_cuts) for v in variants if v.procs == 1
    ]
    for _ in range(args.warmup_steps):
        for t in trainers:
            t.step()
    audio = {t.v.name: 0.0 for t in trainers}
    secs = {t.v.name: 0.0 for t in trainers}
    cpu = {t.v.name: 0.0 for t in trainers}
    for r in range(args.steps):
        took = {}
        for t in trainers:
            start, cpu_start = time.perf_counter(), time.process_time()
            audio[t.v.name] += t.step()
            took[t.v.name] = time.perf_counter() - start
            secs[t.v.name] += took[t.v.name]
            cpu[t.v.name] += time.process_time() - cpu_start
        log.info(
            "throughput round %d/%d: %s",
            r + 1,
            args.steps,
            " ".join(f"{k}={v:.2f}s" for k, v in took.items()),
        )
    rows = {
        t.v.name: _row(
            t.v, t.params, audio[t.v.name], secs[t.v.name], cpu[t.v.name], args.steps
        )
        for t in trainers
    }
    del trainers
    for v in variants:
        if v.procs > 1:
            g = run_group(v, "throughput", args)
            rows[v.name] = _row(
                v, g["params"], g["audio"], g["wall"], g["cpu"], args.steps
            )
    rows = {v.name: rows[v.name] for v in variants}  # in the order given
    ref = rows[variants[0].name]
    for row in rows.values():
        row["ratio_to_" + variants[0].name] = round(
            row["audio_sec_per_sec"] / ref["audio_sec_per_sec"], 3
        )
        row["cpu_ratio_to_" + variants[0].name] = round(
            row["audio_sec_per_cpu_sec"] / ref["audio_sec_per_cpu_sec"], 3
        )
    return rows


def _group_throughput(t: Trainer, args) -> dict:
    """A ``procs=N`` variant's timed steps, in one of its processes: wall time as
    rank 0 sees it (every step waits for the slowest process), CPU time of all."""
    for _ in range(args.warmup_steps):
        t.step()
    audio = wall = 0.0
    cpu = time.process_time()
    for r in range(args.steps):
        start = time.perf_counter()
        audio += t.step()
        wall += time.perf_counter() - start
        log.info("throughput %s step %d/%d: %.2fs", t.v.name, r + 1, args.steps, wall)
    total_cpu = torch.tensor([time.process_time() - cpu], dtype=torch.float64)
    dist.all_reduce(total_cpu)
    return {"params": t.params, "audio": audio, "wall": wall, "cpu": float(total_cpu)}


def train_to_marks(
    trainers: list[Trainer], tokenizer: Tokenizer, args
) -> dict[str, list[dict]]:
    """Train every trainer from scratch, interleaved (the one behind in audio seen
    takes the next step), each evaluated when its audio seen passes every
    ``--eval-every`` seconds. In a process group only rank 0 evaluates; the other
    processes wait for it."""
    evals: dict[str, list[dict]] = {t.v.name: [] for t in trainers}
    wall = {t.v.name: 0.0 for t in trainers}
    marks = np.arange(args.eval_every, args.audio_seconds + 1e-6, args.eval_every)
    for t in trainers:
        t.next_mark = 0
    while any(t.next_mark < len(marks) for t in trainers):
        t = min(
            (t for t in trainers if t.next_mark < len(marks)),
            key=lambda t: t.audio_seconds,
        )
        start = time.perf_counter()
        t.step()
        wall[t.v.name] += time.perf_counter() - start
        if t.audio_seconds >= marks[t.next_mark]:
            last = t.next_mark == len(marks) - 1
            if t.rank == 0:
                e = t.evaluate(args.valid_cuts, tokenizer, wer=last)
                e["train_wall_seconds"] = round(wall[t.v.name], 1)
                evals[t.v.name].append(e)
                log.info("%s: %s", t.v.name, json.dumps(e))
            if t.v.procs > 1:
                dist.barrier()
            t.next_mark += 1
    return evals


def convergence(a: Variant, b: Variant, tokenizer: Tokenizer, args) -> dict:
    """Train both from scratch and evaluate them at equal audio seen: interleaved in
    this process, or one after the other when either is a ``procs=N`` variant."""
    together = a.procs == 1 and b.procs == 1
    if together:
        trainers = [Trainer(v, tokenizer, args.train_cuts) for v in (a, b)]
        evals = train_to_marks(trainers, tokenizer, args)
    else:
        evals = {}
        for v in (a, b):
            if v.procs > 1:
                evals[v.name] = run_group(v, "convergence", args)
            else:
                t = Trainer(v, tokenizer, args.train_cuts)
                evals[v.name] = train_to_marks([t], tokenizer, args)[v.name]
    return {
        "variants": [a.name, b.name],
        "audio_seconds": args.audio_seconds,
        "eval_every": args.eval_every,
        "interleaved": together,
        "evaluations": evals,
    }


def _rank_main(v: Variant, args, mode: str, out: str) -> None:
    """One process of a ``procs=N`` variant (``mode``: throughput or convergence);
    rank 0 writes the result to ``out`` as JSON."""
    d = init_distributed("cpu")
    logging.basicConfig(
        level=logging.INFO if d.rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    torch.set_num_threads(d.threads_each(args.threads))
    try:
        tokenizer = Tokenizer(args.bpe_model)
        t = Trainer(v, tokenizer, args.train_cuts, d.rank)
        if mode == "throughput":
            result: Any = _group_throughput(t, args)
        else:
            result = train_to_marks([t], tokenizer, args)[v.name]
        if d.rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_group(v: Variant, mode: str, args) -> Any:
    """Run a ``procs=N`` variant in N fresh processes; rank 0's result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        run_local(_rank_main, v.procs, v, args, mode, str(out))
        return json.loads(out.read_text())


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("training benchmark (--train)")
    g.add_argument("--train", action="store_true", help="run the training benchmark")
    g.add_argument("--train-cuts", default=None, help="training cut manifest (fbank)")
    g.add_argument("--valid-cuts", default=None, help="validation cut manifest")
    g.add_argument("--bpe-model", default=None, help="sentencepiece .model")
    g.add_argument(
        "--variant",
        action="append",
        default=None,
        help='"NAME CONFIG [section.field=value ...] [autocast=bf16] [procs=N]" '
        "(repeatable; the first is the reference; default: before/after configs)",
    )
    g.add_argument("--steps", type=int, default=12, help="timed rounds (throughput)")
    g.add_argument("--warmup-steps", type=int, default=2, help="untimed rounds first")
    g.add_argument(
        "--audio-seconds",
        type=float,
        default=0.0,
        help="convergence: seconds of audio each of the first two variants trains on "
        "(0: no convergence run)",
    )
    g.add_argument("--eval-every", type=float, default=None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("train_cuts", "bpe_model"):
        if not getattr(args, name):
            raise SystemExit(f"error: --train needs --{name.replace('_', '-')}")
    if args.audio_seconds and not args.valid_cuts:
        raise SystemExit("error: --audio-seconds needs --valid-cuts")
    torch.set_num_threads(args.threads)
    variants = [Variant.parse(s) for s in (args.variant or DEFAULT_VARIANTS)]
    tokenizer = Tokenizer(args.bpe_model)
    from bench import machine  # tools/bench.py

    result: dict[str, Any] = {
        "mode": "train",
        "machine": machine(),
        "threads": args.threads,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "train_cuts": str(args.train_cuts),
        "throughput": throughput(variants, tokenizer, args),
    }
    if args.audio_seconds:
        args.eval_every = args.eval_every or args.audio_seconds / 4
        result["convergence"] = convergence(variants[0], variants[1], tokenizer, args)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def render_markdown(r: dict[str, Any]) -> str:
    """The training benchmark as markdown tables."""
    rows = r["throughput"]
    ref = next(iter(rows))
    lines = [
        "## Training throughput (tools/bench.py --train)",
        "",
        f"{r['machine'].get('cpu', '')}, {r['threads']} threads, load average "
        f"{r['load_average_start']} at start, {r['load_average_end']} at the end; "
        f"real batches of {r['train_cuts']}.",
        "",
        "| variant | params | max_duration (s) | s/step | audio s per s | x "
        + ref
        + " | audio s per CPU s | x "
        + ref
        + " (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in rows.items():
        cpu = (
            f"{x['audio_sec_per_cpu_sec']:.2f} | {x['cpu_ratio_to_' + ref]:.2f}"
            if "cpu_seconds" in x
            else "- | -"
        )
        lines.append(
            f"| {name} | {x['params']:,} | {x['max_duration']:g} | "
            f"{x['seconds_per_step']:.3f} | {x['audio_sec_per_sec']:.1f} | "
            f"{x['ratio_to_' + ref]:.2f} | {cpu} |"
        )
    lines += ["", "Variants:", ""]
    lines += [f"- {name}: `{x['variant']}`" for name, x in rows.items()]
    if any(x.get("procs", 1) > 1 for x in rows.values()):
        lines += [
            "",
            f"A `procs=N` variant is N DDP processes (gloo) of {r['threads']} / N "
            "threads, each with batches of max_duration (N x that per step), timed "
            "on its own after the rounds of the others; its CPU seconds are those of "
            "all N processes.",
        ]
    conv = r.get("convergence")
    if conv:
        order = (
            "interleaved in one process"
            if conv.get("interleaved", True)
            else "one after the other"
        )
        lines += [
            "",
            "Validation after the same seconds of audio (losses per target token; the "
            f"two variants trained {order}):",
            "",
            "| variant | audio s seen | steps | train wall (s) | loss | pruned RNN-T | "
            "CTC | greedy WER (%) |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def cell(e: dict, key: str, fmt: str) -> str:
            return format(e[key], fmt) if key in e else "-"

        for name, evs in conv["evaluations"].items():
            lines += [
                f"| {name} | {e['audio_seconds_seen']:.0f} | {e['steps']} | "
                f"{e['train_wall_seconds']:.0f} | {cell(e, 'loss_per_token', '.3f')} | "
                f"{e['pruned_loss_per_token']:.3f} | {e['ctc_loss_per_token']:.3f} | "
                f"{cell(e, 'greedy_wer', '.2f')} |"
                for e in evs
            ]
        lines += [
            "",
            "loss: the validation objective, as training weighs it at the end of its "
            "warm-up (simple_loss_scale x simple + pruned + ctc_weight x CTC).",
        ]
        # training speed over the whole convergence run (hundreds of steps, against
        # the throughput rows' few)
        speed = {
            name: evs[-1]["audio_seconds_seen"] / evs[-1]["train_wall_seconds"]
            for name, evs in conv["evaluations"].items()
            if evs
        }
        if len(speed) == 2:
            (a, sa), (b, sb) = speed.items()
            lines += [
                "",
                f"Audio seconds per second over these runs: {a} {sa:.1f}, {b} {sb:.1f} "
                f"({sb / sa:.2f} x {a}).",
            ]
    return "\n".join(lines) + "\n"


MARK = (
    "<!-- bench.py --train:begin (generated; do not edit) -->",
    "<!-- bench.py --train:end -->",
)


def marked_markdown(result: dict) -> str:
    """The training-benchmark section with its marks, for ``q4asr.utils.update_marked``
    (so that the training tables live beside the others in BENCHMARKS.md)."""
    return f"{MARK[0]}\n{render_markdown(result)}{MARK[1]}\n"
