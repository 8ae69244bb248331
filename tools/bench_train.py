"""Training throughput and convergence of training configs, side by side in one process
(``python tools/bench.py --train ...``).

Two measurements, both on real batches of a real training manifest:

- **throughput**: every variant (a training YAML, optional ``section.field=value``
  overrides, optional ``autocast=bf16``) takes training steps exactly as q4asr-train
  does (its own loader and batch size, SpecAugment, forward, ``(loss / N).backward()``,
  gradient clipping, optimizer and LR-schedule step), one step of each variant per
  round, so that load from other processes falls on all variants alike. Reported:
  seconds of audio trained per second of wall time (batch loading included), and its
  ratio to the first variant.
- **convergence**: two variants train from scratch, interleaved so that both have
  seen about the same seconds of audio at any time, each with its own LR schedule
  as configured (so a truncated run is the start of that config's real run). At
  every ``--eval-every`` seconds of audio seen, each is evaluated on the validation
  cuts: transducer (pruned RNN-T) and CTC loss per target token (comparable across
  frame rates and batch sizes) and, at the end, greedy-search WER.

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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from q4asr.bin.train import LRSchedule, build_model, make_optimizer
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
    """One training setup: a config (with overrides) and an autocast dtype."""

    name: str
    config: Config
    source: str
    autocast: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``"NAME CONFIG.yaml [section.field=value ...] [autocast=bf16]"``."""
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
    a time the way q4asr-train steps (float training; no plan)."""

    def __init__(self, v: Variant, tokenizer: Tokenizer, train_cuts: str):
        self.v = v
        tc = v.config.train
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        self.model, self.model_cfg = build_model(v.config, tokenizer)
        self.model.train()
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
        self.loader = make_loader(train_cuts, tokenizer, self.spec, train=True)
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
        """One training step on the next batch; returns its seconds of audio."""
        tc = self.v.config.train
        b = next(self.it)
        feats, lens = b["features"], b["feature_lens"]
        if self.augment is not None:
            feats = self.augment(feats, lens)
        with self.v.autocast_ctx():
            out = self.model(
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
        self.audio_seconds += b["duration"]
        return b["duration"]

    @torch.no_grad()
    def evaluate(self, valid_cuts: str, tokenizer: Tokenizer, wer: bool) -> dict:
        """Validation losses per target token (warm-up 1: the full objective) and,
        with ``wer``, greedy-search WER (%)."""
        self.model.eval()
        spec = dataclasses.replace(self.spec, max_duration=200.0)
        loader = make_loader(valid_cuts, tokenizer, spec, train=False).loader
        tot = {"pruned": 0.0, "simple": 0.0, "ctc": 0.0, "tokens": 0}
        refs: list[str] = []
        hyps: list[str] = []
        for b in loader:
            if not b["features"].shape[0]:
                continue
            out = self.model(b["features"], b["feature_lens"], b["tokens"], warmup=1.0)
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
            "pruned_loss_per_token": round(tot["pruned"] / n, 4),
            "simple_loss_per_token": round(tot["simple"] / n, 4),
            "ctc_loss_per_token": round(tot["ctc"] / n, 4),
        }
        if wer:
            res["greedy_wer"] = score(refs, hyps)[0].wer
        return res


def throughput(variants: list[Variant], tokenizer: Tokenizer, args) -> dict:
    """Round-robin training steps of every variant; audio seconds per second."""
    trainers = [Trainer(v, tokenizer, args.train_cuts) for v in variants]
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
    ref = variants[0].name
    rows = {}
    for t in trainers:
        name = t.v.name
        aps = audio[name] / secs[name]
        rows[name] = {
            "variant": t.v.source,
            "params": t.params,
            "max_duration": t.v.config.train.max_duration,
            "steps_timed": args.steps,
            "audio_seconds": round(audio[name], 1),
            "wall_seconds": round(secs[name], 4),
            "seconds_per_step": round(secs[name] / args.steps, 3),
            "audio_sec_per_sec": round(aps, 1),
            "ratio_to_" + ref: round(aps / (audio[ref] / secs[ref]), 3),
            # CPU seconds of this process (all threads): less sensitive than wall
            # time to other processes on a shared machine
            "cpu_seconds": round(cpu[name], 2),
            "audio_sec_per_cpu_sec": round(audio[name] / cpu[name], 2),
            "cpu_ratio_to_" + ref: round(
                (audio[name] / cpu[name]) / (audio[ref] / cpu[ref]), 3
            ),
        }
    return rows


def convergence(a: Variant, b: Variant, tokenizer: Tokenizer, args) -> dict:
    """Train both from scratch, interleaved by audio seen; evaluate at equal audio."""
    trainers = [Trainer(v, tokenizer, args.train_cuts) for v in (a, b)]
    evals: dict[str, list[dict]] = {t.v.name: [] for t in trainers}
    wall = {t.v.name: 0.0 for t in trainers}
    marks = np.arange(args.eval_every, args.audio_seconds + 1e-6, args.eval_every)
    for t in trainers:
        t.next_mark = 0
    while any(t.next_mark < len(marks) for t in trainers):
        # the variant behind in audio seen takes the next step
        t = min(
            (t for t in trainers if t.next_mark < len(marks)),
            key=lambda t: t.audio_seconds,
        )
        start = time.perf_counter()
        t.step()
        wall[t.v.name] += time.perf_counter() - start
        if t.audio_seconds >= marks[t.next_mark]:
            last = t.next_mark == len(marks) - 1
            e = t.evaluate(args.valid_cuts, tokenizer, wer=last)
            e["train_wall_seconds"] = round(wall[t.v.name], 1)
            evals[t.v.name].append(e)
            log.info("%s: %s", t.v.name, json.dumps(e))
            t.next_mark += 1
    return {
        "variants": [a.name, b.name],
        "audio_seconds": args.audio_seconds,
        "eval_every": args.eval_every,
        "evaluations": evals,
    }


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
        help='"NAME CONFIG [section.field=value ...] [autocast=bf16]" (repeatable; '
        "the first is the reference; default: before/after configs)",
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
    conv = r.get("convergence")
    if conv:
        lines += [
            "",
            "Validation after the same seconds of audio (losses per target token):",
            "",
            "| variant | audio s seen | steps | train wall (s) | pruned RNN-T | CTC | "
            "greedy WER (%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, evs in conv["evaluations"].items():
            for e in evs:
                lines.append(
                    f"| {name} | {e['audio_seconds_seen']:.0f} | {e['steps']} | "
                    f"{e['train_wall_seconds']:.0f} | {e['pruned_loss_per_token']:.3f} "
                    f"| {e['ctc_loss_per_token']:.3f} | "
                    f"{e['greedy_wer']:.2f} |"
                    if "greedy_wer" in e
                    else f"| {name} | {e['audio_seconds_seen']:.0f} | {e['steps']} | "
                    f"{e['train_wall_seconds']:.0f} | {e['pruned_loss_per_token']:.3f} "
                    f"| {e['ctc_loss_per_token']:.3f} | - |"
                )
    return "\n".join(lines) + "\n"


MARK = (
    "<!-- bench.py --train:begin (generated; do not edit) -->",
    "<!-- bench.py --train:end -->",
)


def marked_markdown(result: dict) -> str:
    """The training-benchmark section with its marks, for ``q4asr.utils.update_marked``
    (so that the training tables live beside the others in BENCHMARKS.md)."""
    return f"{MARK[0]}\n{render_markdown(result)}{MARK[1]}\n"
