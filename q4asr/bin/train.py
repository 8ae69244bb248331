"""Train a pruned RNN-T Conformer, in float or with native quantization-aware training.

Usage::

    q4asr-train --config conf/train.yaml --exp-dir exp/int4 \\
        --train-cuts data/fbank/x_cuts_train.jsonl.gz \\
        --valid-cuts data/fbank/x_cuts_dev.jsonl.gz \\
        --bpe-model data/lang_bpe_256/bpe.model [--plan conf/plan_int4.yaml] \\
        [--init-from exp/float/final.pt] [--max-steps N] [--set train.lr=1e-3]

    torchrun --nproc-per-node 2 -m q4asr.bin.train ...   # DDP (gloo on CPU)

On a machine without a CUDA GPU, ``train.cpu_processes: N`` makes a plain
``q4asr-train`` start N such processes itself (the environment torchrun would give
them), sharing ``train.num_threads``.

Writes ``exp_dir/checkpoint-<step>.pt`` every ``train.checkpoint_every`` steps
(atomically; the newest ``train.keep_last_checkpoints`` are kept), tensorboard logs
in ``exp_dir/tensorboard``, ``exp_dir/final.pt`` (model state, config, plan) and
``exp_dir/train_summary.json``. When ``exp_dir`` already holds checkpoints, training
continues from the latest one: same data order, RNG states and optimizer state, so
an interrupted run ends with the same weights as an uninterrupted one.

``train_summary.json``: ``steps``, ``epochs_completed``, ``wall_time_s`` (time in
the training loop, summed over resumed runs; start-up and the final validation are
not counted), ``audio_seconds`` seen (all ranks), ``audio_sec_per_sec``,
``frames_per_sec`` (input feature frames), ``skipped_cuts`` (id -> reason),
``final_valid`` losses per encoder frame, and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from q4asr.checkpoint import (
    checkpoint_path,
    env_info,
    find_latest,
    get_rng_state,
    load_checkpoint,
    model_record,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from q4asr.config import Config, ConfigError, TrainConfig, amp_dtype, load_config
from q4asr.data.datamodule import (
    DataSpec,
    Loader,
    SpecAugmenter,
    make_loader,
    restore_sampler,
    sampler_state,
)
from q4asr.data.shar import make_train_loader
from q4asr.data.tokenizer import Tokenizer
from q4asr.model import ModelConfig
from q4asr.model import build_model as build_transducer
from q4asr.quant import load_plan, prepare, set_quant_mode
from q4asr.utils import atomic_write, setup_logging

log = logging.getLogger("q4asr.train")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="q4asr-train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="training YAML (model/train/quant)")
    p.add_argument("--exp-dir", required=True, help="output directory")
    p.add_argument(
        "--train-cuts",
        required=True,
        help="training cut manifest, or Lhotse Shar shards (a directory, or a "
        ".shar.json index of their URLs)",
    )
    p.add_argument("--valid-cuts", default=None, help="validation cut manifest")
    p.add_argument("--bpe-model", required=True, help="sentencepiece .model")
    p.add_argument("--plan", default=None, help="precision plan (sets quant.plan)")
    p.add_argument(
        "--init-from",
        default=None,
        help="float checkpoint to start from (sets train.init_from)",
    )
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--num-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-duration", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def build_config(args: argparse.Namespace) -> Config:
    """The YAML config with the command-line overrides applied."""
    overrides = list(args.overrides)
    for flag, key in [
        ("plan", "quant.plan"),
        ("init_from", "train.init_from"),
        ("max_steps", "train.max_steps"),
        ("num_epochs", "train.num_epochs"),
        ("seed", "train.seed"),
        ("max_duration", "train.max_duration"),
        ("lr", "train.lr"),
        ("num_workers", "train.num_workers"),
        ("num_threads", "train.num_threads"),
    ]:
        v = getattr(args, flag)
        if v is not None:
            overrides.append(f"{key}={v}")
    return load_config(args.config, overrides)


# ------------------------------------------------------------------ LR schedule


class LRSchedule:
    """Sets the learning rate of every param group from the optimizer step count.

    ``warmup_cosine``: linear warm-up to ``lr`` over ``warmup_steps``, then cosine
    decay to ``final_lr_ratio * lr`` at ``max_steps``. ``noam``: linear warm-up,
    then ``lr * sqrt(warmup_steps / step)``. ``constant``: warm-up, then ``lr``.
    ``eden``: warm-up, then ``lr * ((step^2 + D^2) / D^2) ** -0.25`` with
    ``D = lr_decay_steps`` (icefall's Eden factor over steps).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        c = self.cfg
        s = step + 1
        if c.warmup_steps and s <= c.warmup_steps:
            return c.lr * s / c.warmup_steps
        if c.lr_schedule == "constant":
            return c.lr
        if c.lr_schedule == "noam":
            return c.lr * math.sqrt(c.warmup_steps / s)
        if c.lr_schedule == "eden":
            d2 = float(c.lr_decay_steps) ** 2
            return c.lr * ((s * s + d2) / d2) ** -0.25
        span = max(1, c.max_steps - c.warmup_steps)
        frac = min(1.0, (s - c.warmup_steps) / span)
        floor = c.lr * c.final_lr_ratio
        return floor + (c.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def _apply(self) -> None:
        lr = self.lr_at(self.step_count)
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step_count = int(sd["step_count"])
        self._apply()


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter with ``tc.lr``, ``tc.adam_betas``,
    ``tc.weight_decay`` (its fused kernel with ``tc.adam_fused``)."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=tc.lr,
        betas=tuple(tc.adam_betas),
        weight_decay=tc.weight_decay,
        fused=True if tc.adam_fused else None,
    )


# ------------------------------------------------------------------ distributed


def wrap_ddp(
    model: torch.nn.Module, device: torch.device
) -> torch.nn.parallel.DistributedDataParallel:
    """``model`` in DistributedDataParallel over the process group, its gradients
    views of DDP's buckets: no copy of every gradient into a bucket and back each
    step (1.5-2.3% more audio per second on the demo's 2-process CPU training)."""
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


@dataclasses.dataclass
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1  # processes of this run on this machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def threads_each(self, threads: int) -> int:
        """Each process's share of a machine's ``threads`` (at least one)."""
        return max(1, threads // self.local_world_size)


def init_distributed(device_kind: str) -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, world_size=world_size, rank=rank)
    return Dist(world_size, rank, local_rank, local_world_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rank(
    rank: int, nprocs: int, port: int, fn: Callable[..., Any], args
) -> None:
    # the environment torchrun gives each process, read by init_distributed
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    fn(*args)


def run_local(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """``fn(*args)`` in ``nprocs`` fresh processes of one process group on this
    machine, as ``torchrun --standalone --nproc-per-node nprocs`` would start them;
    raises ``torch.multiprocessing.ProcessException`` when one of them fails."""
    mp.start_processes(
        _local_rank,
        args=(nprocs, free_port(), fn, args),
        nprocs=nprocs,
        start_method="spawn",
    )


def processes_to_start(cfg: Config) -> int:
    """How many processes a plain ``q4asr-train`` starts: ``train.cpu_processes``
    on a CPU-only machine, 1 under a launcher (torchrun) or with a CUDA GPU."""
    if "WORLD_SIZE" in os.environ or torch.cuda.is_available():
        return 1
    return cfg.train.cpu_processes


# ------------------------------------------------------------------ metrics

LOSSES = ("loss", "simple_loss", "pruned_loss", "ctc_loss")


@dataclasses.dataclass
class Metrics:
    """Sums over batches (and, after :meth:`all_reduce`, over ranks).

    The losses are sums over utterances; ``frames`` counts encoder output frames
    (what the losses are normalised by), ``in_frames`` input feature frames,
    ``audio`` seconds of audio, ``utts`` utterances.
    """

    loss: float = 0.0
    simple_loss: float = 0.0
    pruned_loss: float = 0.0
    ctc_loss: float = 0.0
    frames: float = 0.0
    in_frames: float = 0.0
    audio: float = 0.0
    utts: float = 0.0

    @classmethod
    def of_batch(
        cls,
        out: dict[str, Any],
        in_frames: float = 0.0,
        audio: float = 0.0,
        utts: float = 0.0,
    ) -> Metrics:
        """One batch's sums from the model's outputs (``loss``, ``simple_loss``,
        ``pruned_loss``, ``ctc_loss``: summed over the batch; ``num_frames``)."""
        return cls(
            *(float(out[k].detach()) for k in LOSSES),
            float(out["num_frames"]),
            in_frames,
            audio,
            utts,
        )

    def __iadd__(self, other: Metrics) -> Metrics:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def all_reduce(self, d: Dist, device: torch.device) -> Metrics:
        """The sums over every rank (itself when training on one process)."""
        if not d.enabled:
            return self
        t = torch.tensor(dataclasses.astuple(self), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return Metrics(*t.tolist())

    def per_frame(self) -> dict[str, float]:
        """Each loss divided by the number of encoder frames."""
        frames = max(self.frames, 1.0)
        return {k: getattr(self, k) / frames for k in LOSSES}

    def rates(self, seconds: float) -> dict[str, float]:
        """Input frames, audio seconds and utterances per second of ``seconds``."""
        dt = max(seconds, 1e-9)
        return {
            "frames_per_sec": self.in_frames / dt,
            "audio_sec_per_sec": self.audio / dt,
            "utts_per_sec": self.utts / dt,
        }


def report(
    writer: SummaryWriter | None,
    section: str,
    step: int,
    stats: dict[str, float],
    heading: str,
    fmt: str,
) -> None:
    """Write ``stats`` to tensorboard as ``<section>/<name>`` and log them on one line
    after ``heading``; nothing without a writer (ranks other than 0)."""
    if writer is None:
        return
    for k, v in stats.items():
        writer.add_scalar(f"{section}/{k}", v, step)
    log.info("%s: %s", heading, " ".join(f"{k}={v:{fmt}}" for k, v in stats.items()))


# ------------------------------------------------------------------ set-up


def build_model(cfg: Config, tokenizer: Tokenizer) -> tuple[torch.nn.Module, dict]:
    """The transducer from ``cfg.model``; vocab size filled from the BPE model."""
    model_dict = dict(cfg.model)
    if "vocab_size" not in model_dict:
        model_dict["vocab_size"] = tokenizer.vocab_size
    elif model_dict["vocab_size"] != tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {model_dict['vocab_size']} but the "
            f"BPE model has {tokenizer.vocab_size} pieces"
        )
    mcfg = ModelConfig.from_dict(model_dict)
    return build_transducer(mcfg), mcfg.to_dict()


def model_state_from(path: str | Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise ValueError(f"{path}: no 'model' entry in the checkpoint")
    return ckpt["model"]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@dataclasses.dataclass
class Run:
    """Everything one training run holds: what :func:`setup` builds, and the
    counters that :func:`resume` restores and the loop advances."""

    args: argparse.Namespace
    cfg: Config
    d: Dist
    device: torch.device
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler
    exp_dir: Path
    plan: dict[str, Any] | None  # PrecisionPlan.to_dict(); None for float
    model: torch.nn.Module
    model_config: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    train_data: Loader
    valid_loader: torch.utils.data.DataLoader | None
    augment: SpecAugmenter | None
    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    totals: dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "audio_seconds": 0.0,
            "frames": 0.0,
            "train_seconds": 0.0,
        }
    )
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    resumed_from: Path | None = None

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.amp, enabled=self.amp is not None
        )

    def warmup(self) -> float:
        """The model's ``warmup`` argument at the current step."""
        return self.step / self.tc.model_warmup_steps

    def set_quant(self) -> None:
        """Quantization on from ``quant.quant_start_step`` (QAT runs only)."""
        if self.plan is not None:
            set_quant_mode(self.model, self.step >= self.cfg.quant.quant_start_step)

    def finished(self) -> bool:
        tc = self.tc
        if tc.max_steps is not None and self.step >= tc.max_steps:
            return True
        return tc.num_epochs is not None and self.epoch >= tc.num_epochs

    def record(self) -> dict[str, Any]:
        """The checkpoint record of the model as it is now."""
        return model_record(
            self.model.state_dict(),
            self.cfg.to_dict(),
            self.model_config,
            self.plan,
            self.args.bpe_model,
            self.step,
        )


def setup(args: argparse.Namespace) -> Run:
    """Config, device, process group, model (initialised from ``train.init_from``
    when there is no checkpoint to resume from, then prepared for QAT), optimizer,
    schedule and data loaders."""
    cfg = build_config(args)
    tc = cfg.train
    device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    d = init_distributed(device_kind)
    setup_logging(rank=d.rank)
    if device_kind == "cuda":
        torch.cuda.set_device(d.local_rank)
        device = torch.device("cuda", d.local_rank)
    else:
        device = torch.device("cpu")
    if tc.num_threads:  # the machine's threads, shared by its processes
        torch.set_num_threads(d.threads_each(tc.num_threads))
    amp = amp_dtype(tc.amp, device_kind)
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range
    scaler = torch.amp.GradScaler(device_kind, enabled=amp == torch.float16)

    exp_dir = Path(args.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(args.bpe_model)
    plan = load_plan(cfg.quant.plan) if cfg.quant.plan is not None else None

    seed_all(tc.seed)
    model, model_config = build_model(cfg, tokenizer)
    # Every rank builds the same initial model; dropout and SpecAugment then draw
    # from a per-rank stream.
    seed_all(tc.seed + d.rank)
    if tc.init_from and find_latest(exp_dir) is None:
        model.load_state_dict(model_state_from(tc.init_from))
        log.info("initialised the model from %s", tc.init_from)
    if plan is not None:
        if tc.compile:
            raise ConfigError(
                f"train.compile: float training only, not with the plan {cfg.quant.plan}"
            )
        model = prepare(model, plan)
        log.info("prepared for QAT with plan %s", cfg.quant.plan)
    model.to(device)
    if tc.compile:
        model.encoder.compile_layers()
        log.info("train.compile: the encoder layers run compiled in training")
    log.info("model: %.2fM parameters", num_params(model) / 1e6)
    log.info(
        "mixed precision: %s (train.amp=%s, %s)",
        "off" if amp is None else str(amp).replace("torch.", ""),
        tc.amp,
        device_kind,
    )
    optimizer = make_optimizer(model, tc)
    scheduler = LRSchedule(optimizer, tc)

    spec = DataSpec(
        max_duration=tc.max_duration,
        num_buckets=tc.num_buckets,
        seed=tc.seed,
        num_workers=tc.num_workers,
        on_the_fly_features=tc.on_the_fly_features,
        num_mel_bins=int(model_config["num_mel_bins"]),
        max_utterance_duration=tc.max_utterance_duration,
    )
    ranks = dict(world_size=d.world_size, rank=d.rank)
    train_data = make_train_loader(args.train_cuts, tokenizer, spec, **ranks)
    valid_loader = None
    if args.valid_cuts:
        vspec = dataclasses.replace(spec, num_workers=min(spec.num_workers, 1))
        valid_loader = make_loader(
            args.valid_cuts, tokenizer, vspec, train=False, **ranks
        ).loader
    augment = SpecAugmenter(tc.spec_augment) if tc.spec_augment.enabled else None
    return Run(
        args=args,
        cfg=cfg,
        d=d,
        device=device,
        amp=amp,
        scaler=scaler,
        exp_dir=exp_dir,
        plan=plan.to_dict() if plan is not None else None,
        model=model,
        model_config=model_config,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data=train_data,
        valid_loader=valid_loader,
        augment=augment,
    )


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ resume


def resume(run: Run) -> None:
    """Continue from the latest checkpoint of the experiment directory, if any:
    model, optimizer, schedule, loss scaler, sampler position, counters and this
    rank's RNG state."""
    latest = find_latest(run.exp_dir)
    if latest is None:
        return
    ckpt = load_checkpoint(latest)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler.is_enabled() and ckpt.get("grad_scaler"):
        run.scaler.load_state_dict(ckpt["grad_scaler"])
    run.step, run.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    run.batches_done = int(ckpt["sampler"]["batches_done"])
    run.totals.update(ckpt.get("totals", {}))
    run.skipped.update(ckpt.get("skipped", {}))
    restore_sampler(run.train_data.sampler, ckpt["sampler"])
    rng = ckpt["rng"]
    set_rng_state(rng[run.d.rank] if len(rng) == run.d.world_size else rng[0])
    run.resumed_from = latest
    log.info(
        "resumed from %s (step %d, epoch %d, batch %d of the epoch)",
        latest,
        run.step,
        run.epoch,
        run.batches_done,
    )
    if run.tc.init_from:
        log.info("resuming: train.init_from is not used")


# ------------------------------------------------------------------ one step


def train_step(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor, list[list[int]]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: torch.dtype | None,
    grad_clip: float | None,
    warmup: float,
) -> tuple[dict[str, Any], float]:
    """One optimisation step on one batch; returns the model's outputs and the
    gradient norm (before clipping).

    batch: feats (N, T, F) float and feat_lens (N,) int64 on the model's device, and
    N token id lists. The forward runs under autocast in ``amp`` (None: float32); the
    loss summed over the batch is divided by N. The update is skipped when the
    gradient is not finite (by ``scaler`` when fp16 loss scaling is on).
    """
    feats, lens, tokens = batch
    with torch.autocast(feats.device.type, dtype=amp, enabled=amp is not None):
        out = model(feats, lens, tokens, warmup=warmup)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"] / feats.shape[0]).backward()
    scaler.unscale_(optimizer)  # a no-op unless fp16 loss scaling is on
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        grad_norm = float(
            torch.sqrt(
                sum(
                    (p.grad.detach().double() ** 2).sum()
                    for p in params
                    if p.grad is not None
                )
            )
        )
    if scaler.is_enabled():
        # skips the update on inf/nan gradients and lowers the loss scale
        scaler.step(optimizer)
        scaler.update()
    elif math.isfinite(grad_norm):
        optimizer.step()
    return out, grad_norm


def take_step(
    run: Run, ddp_model: torch.nn.Module, batch: dict[str, Any]
) -> tuple[Metrics, float] | None:
    """One training step on one batch of the loader: SpecAugment, the quantization
    mode of this step, :func:`train_step`, the LR schedule. Returns the batch's
    metrics summed over ranks and the gradient norm, or None when the batch is empty
    on some rank (then no rank takes the step)."""
    run.batches_done += 1
    run.skipped.update(batch["skipped"])
    feats, lens, tokens = batch["features"], batch["feature_lens"], batch["tokens"]
    n = feats.shape[0]
    if run.d.enabled:  # every rank must take the step, or none
        n_min = torch.tensor([n], device=run.device)
        dist.all_reduce(n_min, op=dist.ReduceOp.MIN)
        if int(n_min) == 0:
            return None
    elif n == 0:
        return None
    if run.augment is not None:
        feats = run.augment(feats, lens)
    run.set_quant()
    out, grad_norm = train_step(
        ddp_model,
        (feats.to(run.device), lens.to(run.device), tokens),
        run.optimizer,
        run.scaler,
        run.amp,
        run.tc.grad_clip,
        run.warmup(),
    )
    if not run.scaler.is_enabled() and not math.isfinite(grad_norm):
        log.warning(
            "step %d: non-finite gradient norm, update skipped (cuts %s)",
            run.step,
            ",".join(batch["cut_ids"][:5]),
        )
    run.scheduler.step()
    run.step += 1
    m = Metrics.of_batch(out, float(lens.sum()), batch["duration"], float(n))
    return m.all_reduce(run.d, run.device), grad_norm


# ------------------------------------------------------------------ validation


def validate(run: Run) -> dict[str, float] | None:
    """Losses per encoder frame over the validation set (all ranks), or None
    without one."""
    if run.valid_loader is None:
        return None
    run.model.eval()
    sums = Metrics()
    with torch.no_grad(), run.autocast():
        for b in run.valid_loader:
            if b["features"].shape[0] == 0:
                continue
            out = run.model(
                b["features"].to(run.device),
                b["feature_lens"].to(run.device),
                b["tokens"],
                warmup=run.warmup(),
            )
            sums += Metrics.of_batch(out)
    run.model.train()
    return sums.all_reduce(run.d, run.device).per_frame()


# ------------------------------------------------------------------ checkpoint


def save(run: Run) -> None:
    """Write ``checkpoint-<step>.pt`` (rank 0; every rank's RNG state gathered
    into it) and remove the oldest beyond ``train.keep_last_checkpoints``."""
    rng = get_rng_state()
    rngs = [rng]
    if run.d.enabled:
        rngs = [None] * run.d.world_size
        dist.all_gather_object(rngs, rng)
    if run.d.is_main:
        state = {
            **run.record(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "grad_scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "sampler": sampler_state(
                run.train_data.sampler, run.epoch, run.batches_done
            ),
            "rng": rngs,
            "epoch": run.epoch,
            "totals": dict(run.totals),
            "skipped": dict(run.skipped),
            "world_size": run.d.world_size,
        }
        path = save_checkpoint(checkpoint_path(run.exp_dir, run.step), state)
        removed = remove_old_checkpoints(run.exp_dir, run.tc.keep_last_checkpoints)
        log.info(
            "saved %s%s", path, f" (removed {len(removed)} old)" if removed else ""
        )
    if run.d.enabled:
        dist.barrier()


# ------------------------------------------------------------------ finish


def finish(run: Run, valid: dict[str, float] | None) -> dict[str, Any] | None:
    """Write ``final.pt`` and ``train_summary.json`` (rank 0); returns the summary."""
    if not run.d.is_main:
        return None
    save_checkpoint(run.exp_dir / "final.pt", run.record())
    wall = run.totals["train_seconds"]
    summary = {
        "steps": run.step,
        "epochs_completed": run.epoch,
        "wall_time_s": wall,
        "audio_seconds": run.totals["audio_seconds"],
        "audio_sec_per_sec": run.totals["audio_seconds"] / max(wall, 1e-9),
        "frames_per_sec": run.totals["frames"] / max(wall, 1e-9),
        "world_size": run.d.world_size,
        "num_threads": torch.get_num_threads(),
        "num_params": num_params(run.model),
        "quantized": run.plan is not None,
        "amp": "off" if run.amp is None else str(run.amp).replace("torch.", ""),
        "skipped_cuts": {**run.train_data.cut_filter.rejected, **run.skipped},
        "final_valid": valid,
        "env": env_info(),
    }
    atomic_write(
        run.exp_dir / "train_summary.json",
        lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)),
    )
    log.info(
        "done: %d steps, %.1f s of audio in %.1f s (%.1f audio s/s)",
        run.step,
        summary["audio_seconds"],
        wall,
        summary["audio_sec_per_sec"],
    )
    return summary


# ------------------------------------------------------------------ the loop


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run training; returns the summary dict on rank 0 (None on other ranks)."""
    run = setup(args)
    resume(run)
    d, tc, model = run.d, run.tc, run.model
    run.set_quant()
    ddp_model = wrap_ddp(model, run.device) if d.enabled else model

    writer = None
    progress = None
    if d.is_main:
        writer = SummaryWriter(
            log_dir=str(run.exp_dir / "tensorboard"), purge_step=run.step
        )
        log.info("config: %s", json.dumps(run.cfg.to_dict()))
        if not args.no_progress:
            progress = tqdm(
                total=tc.max_steps,
                initial=run.step,
                unit="step",
                mininterval=1.0,
                dynamic_ncols=True,
                file=sys.stderr,
            )

    model.train()
    t_start = time.time()
    interval = Metrics()
    t_interval = time.time()
    train_seconds_before = run.totals["train_seconds"]
    last_saved = run.step if run.resumed_from is not None else -1
    sampler = run.train_data.sampler

    while not run.finished():
        sampler.set_epoch(run.epoch)
        for batch in run.train_data.loader:
            taken = take_step(run, ddp_model, batch)
            if taken is None:
                continue
            m, grad_norm = taken
            interval += m
            run.totals["audio_seconds"] += m.audio
            run.totals["frames"] += m.in_frames
            run.totals["train_seconds"] = train_seconds_before + time.time() - t_start
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{m.per_frame()['loss']:.3f}", epoch=run.epoch, refresh=False
                )

            if run.step % tc.log_every == 0 or run.finished():
                stats = interval.per_frame()
                stats.update(lr=run.scheduler.get_last_lr(), grad_norm=grad_norm)
                stats.update(interval.rates(time.time() - t_interval))
                report(
                    writer,
                    "train",
                    run.step,
                    stats,
                    f"epoch {run.epoch} step {run.step}",
                    ".4g",
                )
                interval = Metrics()
                t_interval = time.time()
            if run.step % tc.valid_every == 0:
                v = validate(run)
                if v is not None:
                    report(
                        writer,
                        "valid",
                        run.step,
                        v,
                        f"step {run.step} validation",
                        ".4f",
                    )
            if run.step % tc.checkpoint_every == 0:
                save(run)
                last_saved = run.step
            if run.finished():
                break
        else:  # the epoch ended
            log.info("finished epoch %d at step %d", run.epoch, run.step)
            run.epoch += 1
            run.batches_done = 0

    if progress is not None:
        progress.close()
    if last_saved != run.step:
        save(run)
    valid = validate(run)
    if d.enabled:
        dist.barrier()
    summary = finish(run, valid)
    if writer is not None:
        writer.close()
    if d.enabled:
        dist.destroy_process_group()
    return summary


# what bad input raises: a one-line error and exit status 2, no traceback
BAD_INPUT = (ConfigError, FileNotFoundError, ValueError)


def _train_or_exit(args: argparse.Namespace) -> None:
    status = _train_status(args)
    if status:
        sys.exit(status)


def _train_status(args: argparse.Namespace) -> int:
    try:
        train(args)
    except BAD_INPUT as e:
        log.error("%s", e)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        nprocs = processes_to_start(build_config(args))
    except BAD_INPUT as e:
        log.error("%s", e)
        return 2
    if nprocs == 1:
        return _train_status(args)
    log.info("train.cpu_processes: %d processes on this CPU", nprocs)
    try:
        run_local(_train_or_exit, nprocs, args)
    except mp.ProcessExitedException as e:
        return e.exit_code or 1
    except mp.ProcessRaisedException as e:
        log.error("a training process failed:\n%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
