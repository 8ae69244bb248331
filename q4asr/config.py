"""The training configuration: one YAML file with ``model:``, ``train:`` and ``quant:``.

Example::

    model:            # passed unchanged to q4asr.model.ModelConfig.from_dict
      encoder_dim: 144
    train:
      seed: 42
      max_steps: 20000
      max_duration: 200.0
      lr: 3.0e-3
      lr_schedule: warmup_cosine
      amp: auto                    # bf16 on a CUDA GPU, float32 on a CPU
      init_from: null              # a float checkpoint to fine-tune from
      spec_augment: {enabled: true, num_frame_masks: 5}
    quant:
      plan: conf/plan_int4.yaml     # null -> float training
      quant_start_step: 0

Every section is a dataclass validated in ``__post_init__`` by the helpers of
:mod:`q4asr.validation` (errors are :class:`ConfigError`); an unknown key is an error
naming the key and the allowed ones. Single fields are overridden from the command
line with ``section.field=value`` (``train.spec_augment.enabled=false``).

``quant.init_from`` (where ``init_from`` was filed before) is still read: it moves to
``train.init_from`` with a deprecation warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from q4asr.validation import (
    ConfigError,
    check_bool,
    check_choice,
    check_fraction,
    check_integer,
    check_keys,
    check_positive,
    require,
)

__all__ = ["AMP_MODES", "LR_SCHEDULES", "Config", "ConfigError", "QuantConfig"]
__all__ += ["SpecAugmentConfig", "TrainConfig", "amp_dtype", "load_config"]

log = logging.getLogger(__name__)

LR_SCHEDULES = ("warmup_cosine", "noam", "constant", "eden")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class SpecAugmentConfig:
    """lhotse ``SpecAugment`` parameters (applied to training batches only).

    ``freq_warp`` > 0 first warps each utterance's mel axis by a factor drawn
    uniformly from ``[1 - freq_warp, 1 + freq_warp]`` (vocal tract length
    perturbation on the features; see :func:`q4asr.data.datamodule.warp_mel_axis`);
    0 leaves the features as they are.
    """

    enabled: bool = True
    freq_warp: float = 0.0
    time_warp_factor: int = 80
    num_feature_masks: int = 2
    features_mask_size: int = 27
    num_frame_masks: int = 10
    frames_mask_size: int = 100
    max_frames_mask_fraction: float = 0.15
    p: float = 0.9

    def __post_init__(self) -> None:
        w = "train.spec_augment"
        check_bool(self, w, "enabled")
        counts = (
            "time_warp_factor",
            "num_feature_masks",
            "features_mask_size",
            "num_frame_masks",
            "frames_mask_size",
        )
        check_integer(self, w, *counts)
        check_positive(self, w, *counts, allow_zero=True)
        check_fraction(self, w, "max_frames_mask_fraction", "p", "freq_warp")
        require(
            self.freq_warp < 0.5, f"{w}.freq_warp", f"must be < 0.5, got {self.freq_warp!r}"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpecAugmentConfig:
        check_keys(cls, d, "train.spec_augment")
        return cls(**d)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lhotse.dataset.SpecAugment``."""
        d = dataclasses.asdict(self)
        del d["enabled"], d["freq_warp"]
        return d


@dataclass
class TrainConfig:
    """Optimisation, data and bookkeeping settings.

    Training stops at ``max_steps`` or after ``num_epochs`` passes, whichever comes
    first (at least one must be set). ``lr`` is the peak learning rate, reached after
    ``warmup_steps``; ``lr_schedule`` is one of ``warmup_cosine`` (cosine decay to
    ``final_lr_ratio * lr`` at the last step), ``noam`` (inverse square root after
    warm-up) or ``constant``. ``model_warmup_steps`` ramps the pruned RNN-T loss in
    (the model's ``warmup`` argument is ``step / model_warmup_steps``).

    ``amp`` is the mixed precision of the forward pass: ``bf16`` or ``fp16``
    (autocast; fp16 with a gradient scaler), ``off`` (float32), or ``auto``: bf16 on
    a CUDA GPU, off on a CPU. Parameters and optimizer state stay float32; the
    losses are computed in float32.

    ``adam_fused`` uses AdamW's fused kernel (one pass over all parameters instead of
    a loop of small ops per tensor: on a 2-core CPU ~5% of a demo training step).
    ``compile`` runs the encoder's Conformer layers through ``torch.compile`` in
    training (``ConformerEncoder.compile_layers``: one compilation with symbolic batch
    and time sizes, paid once at the first step, reused from Inductor's on-disk cache
    by later runs; evaluation stays eager). Float training only: QAT's integer
    modules are not compiled.
    ``eden`` (icefall's Eden factor, over steps): warm-up, then
    ``lr * ((step^2 + lr_decay_steps^2) / lr_decay_steps^2) ** -0.25``.

    ``num_threads`` is the CPU threads of the whole run on a machine: several
    training processes on one machine (``torchrun --nproc-per-node N``) share them,
    ``num_threads // N`` each (at least one), so a config need not change with the
    number of processes. Unset: torch's default (torchrun sets one per process).

    ``cpu_processes``: on a machine without a CUDA GPU, ``q4asr-train`` started
    without a launcher runs this many processes itself, as ``torchrun
    --nproc-per-node N`` would (DDP over gloo, ``max_duration`` seconds per process
    and step, ``num_threads`` shared). Ignored under torchrun and on a GPU, where the
    launcher decides (one process per GPU).

    ``init_from`` is a float checkpoint whose model weights start the run (when
    there is no checkpoint to resume from): QAT fine-tuning of a float model, or
    float fine-tuning.
    """

    seed: int = 42
    max_steps: int | None = None
    num_epochs: int | None = None
    max_duration: float = 200.0
    num_buckets: int = 10
    lr: float = 3e-3
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 500
    final_lr_ratio: float = 0.02
    lr_decay_steps: int = 5000
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_fused: bool = False
    compile: bool = False
    weight_decay: float = 1e-3
    grad_clip: float | None = 5.0
    model_warmup_steps: int = 2000
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    on_the_fly_features: bool = False
    max_utterance_duration: float = 30.0
    num_workers: int = 2
    log_every: int = 50
    valid_every: int = 500
    checkpoint_every: int = 1000
    keep_last_checkpoints: int = 5
    num_threads: int | None = None
    cpu_processes: int = 1
    amp: str = "auto"
    init_from: str | None = None

    def __post_init__(self) -> None:
        w = "train"
        if isinstance(self.spec_augment, dict):
            self.spec_augment = SpecAugmentConfig.from_dict(self.spec_augment)
        if not isinstance(self.spec_augment, SpecAugmentConfig):
            raise ConfigError(
                f"{w}.spec_augment: expected a mapping, got {self.spec_augment!r}"
            )
        check_integer(
            self,
            w,
            "seed",
            "max_steps",
            "num_epochs",
            "num_buckets",
            "warmup_steps",
            "lr_decay_steps",
            "model_warmup_steps",
            "num_workers",
            "log_every",
            "valid_every",
            "checkpoint_every",
            "keep_last_checkpoints",
            "num_threads",
            "cpu_processes",
        )
        check_positive(
            self,
            w,
            "max_steps",
            "num_epochs",
            "max_duration",
            "num_buckets",
            "lr",
            "lr_decay_steps",
            "model_warmup_steps",
            "max_utterance_duration",
            "log_every",
            "valid_every",
            "checkpoint_every",
            "keep_last_checkpoints",
            "num_threads",
            "cpu_processes",
            "grad_clip",
        )
        check_positive(
            self,
            w,
            "warmup_steps",
            "weight_decay",
            "num_workers",
            "final_lr_ratio",
            allow_zero=True,
        )
        require(
            self.max_steps is not None or self.num_epochs is not None,
            w,
            "set max_steps or num_epochs (or both)",
        )
        check_choice(self, w, "lr_schedule", LR_SCHEDULES)
        check_choice(self, w, "amp", AMP_MODES)
        require(
            self.lr_schedule != "warmup_cosine" or self.max_steps is not None,
            f"{w}.lr_schedule",
            "warmup_cosine decays to max_steps; set train.max_steps or use noam/constant",
        )
        require(
            self.lr_schedule != "noam" or self.warmup_steps != 0,
            f"{w}.warmup_steps",
            "noam needs warmup_steps > 0",
        )
        require(
            self.final_lr_ratio <= 1,
            f"{w}.final_lr_ratio",
            f"must be <= 1, got {self.final_lr_ratio!r}",
        )
        betas = self.adam_betas
        require(
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
            f"{w}.adam_betas",
            f"expected two numbers in [0, 1), got {betas!r}",
        )
        self.adam_betas = [float(b) for b in betas]
        check_bool(self, w, "adam_fused", "compile", "on_the_fly_features")
        require(
            self.init_from is None or isinstance(self.init_from, str),
            f"{w}.init_from",
            f"expected a path or null, got {self.init_from!r}",
        )
        for name in (
            "max_duration",
            "lr",
            "final_lr_ratio",
            "weight_decay",
            "max_utterance_duration",
        ):
            setattr(self, name, float(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_keys(cls, d, "train")
        return cls(**d)


@dataclass
class QuantConfig:
    """Quantization-aware training: a precision plan file, or null for float.

    ``quant_start_step`` delays switching quantization on (0: from the first step).
    """

    plan: str | None = None
    quant_start_step: int = 0

    def __post_init__(self) -> None:
        require(
            self.plan is None or isinstance(self.plan, str),
            "quant.plan",
            f"expected a path or null, got {self.plan!r}",
        )
        check_integer(self, "quant", "quant_start_step")
        check_positive(self, "quant", "quant_start_step", allow_zero=True)
        require(
            not self.quant_start_step or self.plan is not None,
            "quant.quant_start_step",
            "set only with quant.plan",
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        check_keys(cls, d, "quant")
        return cls(**d)


def _moved_init_from(train: Any, quant: Any) -> tuple[Any, Any]:
    """``train`` and ``quant`` sections with an old ``quant.init_from`` moved to
    ``train.init_from`` (a warning says so; null is dropped silently)."""
    if not isinstance(quant, dict) or "init_from" not in quant:
        return train, quant
    quant = dict(quant)
    old = quant.pop("init_from")
    if old is None:
        return train, quant
    train = dict(train) if isinstance(train, dict) else train
    if isinstance(train, dict):
        if train.get("init_from") not in (None, old):
            raise ConfigError(
                f"quant.init_from: {old!r} and train.init_from: "
                f"{train['init_from']!r}; keep only train.init_from"
            )
        train["init_from"] = old
    log.warning("quant.init_from is deprecated: it is now train.init_from")
    return train, quant


@dataclass
class Config:
    """The whole training config. ``model`` stays a plain dict for ModelConfig."""

    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1000))
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = {}
        if not isinstance(self.model, dict):
            raise ConfigError(f"model: expected a mapping, got {self.model!r}")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if isinstance(self.quant, dict):
            self.quant = QuantConfig.from_dict(self.quant)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train: expected a mapping, got {self.train!r}")
        if not isinstance(self.quant, QuantConfig):
            raise ConfigError(f"quant: expected a mapping, got {self.quant!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        d = dict(d or {})
        check_keys(cls, d, "config")
        train, quant = _moved_init_from(d.get("train") or {}, d.get("quant") or {})
        return cls(model=d.get("model") or {}, train=train, quant=quant)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (safe for ``torch.load(weights_only=True)``)."""
        return {
            "model": dict(self.model),
            "train": dataclasses.asdict(self.train),
            "quant": dataclasses.asdict(self.quant),
        }

    def override(self, assignments: list[str]) -> Config:
        """A new config with ``section.field=value`` assignments applied.

        Values are parsed as YAML (``1e-3``, ``null``, ``false``, ``[0.9, 0.99]``).
        """
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"override {a!r}: expected section.field=value")
            key, value = a.split("=", 1)
            parts = key.strip().split(".")
            if len(parts) < 2 or parts[0] not in d:
                raise ConfigError(
                    f"override {a!r}: the key must start with one of "
                    f"{', '.join(d)} and name a field (train.lr=1e-3)"
                )
            node = d
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            node[parts[-1]] = yaml.safe_load(value)
        return Config.from_dict(d)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a training YAML; errors name the file and the field."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from e
    try:
        cfg = Config.from_dict(d or {})
        if overrides:
            cfg = cfg.override(overrides)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg


def amp_dtype(mode: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on a device type, or None for float32."""
    require(
        mode in AMP_MODES,
        "train.amp",
        f"{mode!r} is not one of {', '.join(AMP_MODES)}",
    )
    if mode == "auto":
        mode = "bf16" if device_type == "cuda" else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]
