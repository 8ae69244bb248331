"""Train a pruned RNN-T Conformer, in float or with native quantization-aware training.

Usage::

    q4asr-train --config conf/train.yaml --exp-dir exp/int4 \\
        --train-cuts data/fbank/x_cuts_train.jsonl.gz \\
        --valid-cuts data/fbank/x_cuts_dev.jsonl.gz \\
        --bpe-model data/lang_bpe_256/bpe.model [--plan conf/plan_int4.yaml] \\
        [--init-from exp/float/final.pt] [--max-steps N] [--set train.lr=1e-3]

    torchrun --nproc-per-node 2 -m q4asr.bin.train ...   # DDP (gloo on CPU)

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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from q4asr.checkpoint import (
    checkpoint_path,
    env_info,
    find_latest,
    get_rng_state,
    load_checkpoint,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from q4asr.config import Config, ConfigError, TrainConfig, amp_dtype, load_config
from q4asr.data.datamodule import (
    DataSpec,
    SpecAugmenter,
    make_loader,
    restore_sampler,
    sampler_state,
)
from q4asr.data.shar import make_train_loader
from q4asr.data.tokenizer import Tokenizer
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
        help="float checkpoint to start from (sets quant.init_from)",
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
        ("init_from", "quant.init_from"),
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


# ------------------------------------------------------------------ helpers


@dataclasses.dataclass
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, world_size=world_size, rank=rank)
    return Dist(world_size, rank, local_rank)


def all_reduce_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def build_model(cfg: Config, tokenizer: Tokenizer) -> tuple[torch.nn.Module, dict]:
    """The transducer from ``cfg.model``; vocab size filled from the BPE model."""
    from q4asr.model import ModelConfig
    from q4asr.model import build_model as _build

    model_dict = dict(cfg.model)
    fields = (
        {f.name for f in dataclasses.fields(ModelConfig)}
        if dataclasses.is_dataclass(ModelConfig)
        else set()
    )
    if "vocab_size" in fields:
        if "vocab_size" not in model_dict:
            model_dict["vocab_size"] = tokenizer.vocab_size
        elif model_dict["vocab_size"] != tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size: {model_dict['vocab_size']} but the "
                f"BPE model has {tokenizer.vocab_size} pieces"
            )
    try:
        mcfg = ModelConfig.from_dict(model_dict)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from e
    return _build(mcfg), mcfg.to_dict()


def read_plan(path: str | None) -> Any:
    """The validated ``PrecisionPlan`` at ``path`` (None for float training)."""
    if path is None:
        return None
    from q4asr.quant import load_plan

    return load_plan(path)


def model_state_from(path: str | Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise ValueError(f"{path}: no 'model' entry in the checkpoint")
    return ckpt["model"]


# ------------------------------------------------------------------ training


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


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run training; returns the summary dict on rank 0 (None on other ranks)."""
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
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    amp = amp_dtype(tc.amp, device_kind)
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range
    scaler = torch.amp.GradScaler(device_kind, enabled=amp == torch.float16)

    exp_dir = Path(args.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(args.bpe_model)
    plan = read_plan(cfg.quant.plan)
    # Stored in checkpoints as plain data: PrecisionPlan.from_dict(ckpt["plan"]).
    plan_info = plan.to_dict() if plan is not None else None

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)

    model, model_cfg_dict = build_model(cfg, tokenizer)
    # Every rank builds the same initial model; dropout and SpecAugment then draw
    # from a per-rank stream.
    torch.manual_seed(tc.seed + d.rank)
    random.seed(tc.seed + d.rank)
    np.random.seed(tc.seed + d.rank)
    latest = find_latest(exp_dir)
    ckpt = load_checkpoint(latest) if latest is not None else None
    if ckpt is None and cfg.quant.init_from:
        model.load_state_dict(model_state_from(cfg.quant.init_from))
        log.info("initialised the model from %s", cfg.quant.init_from)
    if plan is not None:
        from q4asr.quant import prepare

        model = prepare(model, plan)
        log.info("prepared for QAT with plan %s", cfg.quant.plan)
    model.to(device)
    num_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters", num_params / 1e6)
    log.info(
        "mixed precision: %s (train.amp=%s, %s)",
        "off" if amp is None else str(amp).replace("torch.", ""),
        tc.amp,
        device_kind,
    )

    def autocast():
        return torch.autocast(device_kind, dtype=amp, enabled=amp is not None)

    optimizer = make_optimizer(model, tc)
    scheduler = LRSchedule(optimizer, tc)

    spec = DataSpec(
        max_duration=tc.max_duration,
        num_buckets=tc.num_buckets,
        seed=tc.seed,
        num_workers=tc.num_workers,
        on_the_fly_features=tc.on_the_fly_features,
        num_mel_bins=int(model_cfg_dict["num_mel_bins"]),
        max_utterance_duration=tc.max_utterance_duration,
    )
    train_data = make_train_loader(
        args.train_cuts,
        tokenizer,
        spec,
        world_size=d.world_size,
        rank=d.rank,
    )
    train_loader, sampler = train_data.loader, train_data.sampler
    valid_loader = None
    if args.valid_cuts:
        vspec = dataclasses.replace(spec, num_workers=min(spec.num_workers, 1))
        valid_loader = make_loader(
            args.valid_cuts,
            tokenizer,
            vspec,
            train=False,
            world_size=d.world_size,
            rank=d.rank,
        ).loader
    augment = SpecAugmenter(tc.spec_augment) if tc.spec_augment.enabled else None

    step, epoch, batches_done = 0, 0, 0
    totals = {"audio_seconds": 0.0, "frames": 0.0, "train_seconds": 0.0}
    skipped: dict[str, str] = {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler.is_enabled() and ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        step, epoch = int(ckpt["step"]), int(ckpt["epoch"])
        batches_done = int(ckpt["sampler"]["batches_done"])
        totals.update(ckpt.get("totals", {}))
        skipped.update(ckpt.get("skipped", {}))
        restore_sampler(sampler, ckpt["sampler"])
        rng = ckpt["rng"]
        set_rng_state(rng[d.rank] if len(rng) == d.world_size else rng[0])
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d of the epoch)",
            latest,
            step,
            epoch,
            batches_done,
        )
        if cfg.quant.init_from:
            log.info("resuming: quant.init_from is not used")
    ckpt = None

    def quant_on(s: int) -> bool:
        return plan_info is not None and s >= cfg.quant.quant_start_step

    def set_quant(enabled: bool) -> None:
        if plan_info is not None:
            from q4asr.quant import set_quant_mode

            set_quant_mode(model, enabled)

    set_quant(quant_on(step))
    ddp_model: torch.nn.Module = model
    if d.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device_kind == "cuda" else None
        )

    writer = None
    if d.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(exp_dir / "tensorboard"), purge_step=step)
        log.info("config: %s", json.dumps(cfg.to_dict()))

    def checkpoint_state() -> dict[str, Any] | None:
        rng = get_rng_state()
        rngs = [rng]
        if d.enabled:
            rngs = [None] * d.world_size
            dist.all_gather_object(rngs, rng)
        if not d.is_main:
            return None
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "sampler": sampler_state(sampler, epoch, batches_done),
            "rng": rngs,
            "step": step,
            "epoch": epoch,
            "totals": dict(totals),
            "skipped": dict(skipped),
            "config": cfg.to_dict(),
            "model_config": model_cfg_dict,
            "plan": plan_info,
            "plan_path": cfg.quant.plan,
            "bpe_model": str(args.bpe_model),
            "world_size": d.world_size,
            "env": env_info(),
        }

    def save(s: int) -> None:
        state = checkpoint_state()
        if state is not None:
            path = save_checkpoint(checkpoint_path(exp_dir, s), state)
            removed = remove_old_checkpoints(exp_dir, tc.keep_last_checkpoints)
            log.info(
                "saved %s%s", path, f" (removed {len(removed)} old)" if removed else ""
            )
        if d.enabled:
            dist.barrier()

    def validate() -> dict[str, float] | None:
        if valid_loader is None:
            return None
        model.eval()
        sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss, simple, pruned, ctc, frames
        with torch.no_grad(), autocast():
            for b in valid_loader:
                if b["features"].shape[0] == 0:
                    continue
                out = model(
                    b["features"].to(device),
                    b["feature_lens"].to(device),
                    b["tokens"],
                    warmup=warmup_value(step),
                )
                sums = [
                    a + float(v)
                    for a, v in zip(
                        sums,
                        [
                            out["loss"],
                            out["simple_loss"],
                            out["pruned_loss"],
                            out["ctc_loss"],
                            out["num_frames"],
                        ],
                    )
                ]
        model.train()
        sums = all_reduce_sum(sums, d, device)
        frames = max(sums[4], 1.0)
        return {
            "loss": sums[0] / frames,
            "simple_loss": sums[1] / frames,
            "pruned_loss": sums[2] / frames,
            "ctc_loss": sums[3] / frames,
        }

    def warmup_value(s: int) -> float:
        return s / tc.model_warmup_steps

    def finished() -> bool:
        if tc.max_steps is not None and step >= tc.max_steps:
            return True
        return tc.num_epochs is not None and epoch >= tc.num_epochs

    progress = None
    if d.is_main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(
            total=tc.max_steps,
            initial=step,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    model.train()
    t_start = time.time()
    interval = {
        "loss": 0.0,
        "simple_loss": 0.0,
        "pruned_loss": 0.0,
        "ctc_loss": 0.0,
        "frames": 0.0,
        "in_frames": 0.0,
        "audio": 0.0,
        "utts": 0.0,
    }
    t_interval = time.time()
    train_seconds_before = totals["train_seconds"]
    last_saved = step if latest is not None else -1

    while not finished():
        sampler.set_epoch(epoch)
        for batch in train_loader:
            batches_done += 1
            skipped.update(batch["skipped"])
            feats, lens, tokens = (
                batch["features"],
                batch["feature_lens"],
                batch["tokens"],
            )
            n = feats.shape[0]
            if d.enabled:  # every rank must take the step, or none
                n_min = torch.tensor([n], device=device)
                dist.all_reduce(n_min, op=dist.ReduceOp.MIN)
                if int(n_min) == 0:
                    continue
            elif n == 0:
                continue
            if augment is not None:
                feats = augment(feats, lens)
            set_quant(quant_on(step))
            out, grad_norm = train_step(
                ddp_model,
                (feats.to(device), lens.to(device), tokens),
                optimizer,
                scaler,
                amp,
                tc.grad_clip,
                warmup_value(step),
            )
            loss = out["loss"]
            if not scaler.is_enabled() and not math.isfinite(grad_norm):
                log.warning(
                    "step %d: non-finite gradient norm, update skipped (cuts %s)",
                    step,
                    ",".join(batch["cut_ids"][:5]),
                )
            scheduler.step()
            step += 1

            in_frames = float(lens.sum())
            vals = all_reduce_sum(
                [
                    float(loss.detach()),
                    float(out["simple_loss"]),
                    float(out["pruned_loss"]),
                    float(out["ctc_loss"]),
                    float(out["num_frames"]),
                    in_frames,
                    batch["duration"],
                    float(n),
                ],
                d,
                device,
            )
            for k, v in zip(interval, vals):
                interval[k] += v
            totals["audio_seconds"] += vals[6]
            totals["frames"] += vals[5]
            totals["train_seconds"] = train_seconds_before + time.time() - t_start
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{vals[0] / max(vals[4], 1):.3f}", epoch=epoch, refresh=False
                )

            if step % tc.log_every == 0 or finished():
                dt = max(time.time() - t_interval, 1e-9)
                fr = max(interval["frames"], 1.0)
                stats = {
                    k: interval[k] / fr
                    for k in ("loss", "simple_loss", "pruned_loss", "ctc_loss")
                }
                stats.update(
                    lr=scheduler.get_last_lr(),
                    grad_norm=grad_norm,
                    frames_per_sec=interval["in_frames"] / dt,
                    audio_sec_per_sec=interval["audio"] / dt,
                    utts_per_sec=interval["utts"] / dt,
                )
                if writer is not None:
                    for k, v in stats.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    log.info(
                        "epoch %d step %d: %s",
                        epoch,
                        step,
                        " ".join(f"{k}={v:.4g}" for k, v in stats.items()),
                    )
                interval = dict.fromkeys(interval, 0.0)
                t_interval = time.time()
            if step % tc.valid_every == 0:
                v = validate()
                if v is not None and writer is not None:
                    for k, x in v.items():
                        writer.add_scalar(f"valid/{k}", x, step)
                    log.info(
                        "step %d validation: %s",
                        step,
                        " ".join(f"{k}={x:.4f}" for k, x in v.items()),
                    )
            if step % tc.checkpoint_every == 0:
                save(step)
                last_saved = step
            if finished():
                break
        else:  # the epoch ended
            log.info("finished epoch %d at step %d", epoch, step)
            epoch += 1
            batches_done = 0

    if progress is not None:
        progress.close()
    if last_saved != step:
        save(step)
    valid = validate()
    if d.enabled:
        dist.barrier()
    summary = None
    if d.is_main:
        final = {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "model_config": model_cfg_dict,
            "plan": plan_info,
            "plan_path": cfg.quant.plan,
            "step": step,
            "bpe_model": str(args.bpe_model),
            "env": env_info(),
        }
        save_checkpoint(exp_dir / "final.pt", final)
        wall = totals["train_seconds"]
        summary = {
            "steps": step,
            "epochs_completed": epoch,
            "wall_time_s": wall,
            "audio_seconds": totals["audio_seconds"],
            "audio_sec_per_sec": totals["audio_seconds"] / max(wall, 1e-9),
            "frames_per_sec": totals["frames"] / max(wall, 1e-9),
            "world_size": d.world_size,
            "num_threads": torch.get_num_threads(),
            "num_params": num_params,
            "quantized": plan_info is not None,
            "amp": "off" if amp is None else str(amp).replace("torch.", ""),
            "skipped_cuts": {**train_data.cut_filter.rejected, **skipped},
            "final_valid": valid,
            "env": env_info(),
        }
        atomic_write(
            exp_dir / "train_summary.json",
            lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)),
        )
        if writer is not None:
            writer.close()
        log.info(
            "done: %d steps, %.1f s of audio in %.1f s (%.1f audio s/s)",
            step,
            summary["audio_seconds"],
            wall,
            summary["audio_sec_per_sec"],
        )
    if d.enabled:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        train(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
