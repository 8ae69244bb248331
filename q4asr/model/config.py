"""The model configuration: the YAML ``model:`` section as a validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    """Sizes and loss settings of a Conformer pruned transducer.

    The defaults give a small model (about 3M parameters with a 256-token
    vocabulary) that trains on a CPU; ``ModelConfig.tiny()`` gives the sizes used in
    tests. Every field is checked in ``__post_init__``; errors name the field.
    """

    # input and encoder
    num_mel_bins: int = 80
    subsampling_channels: int = 64
    subsampling_first_channels: int = 0  # 0: the same as subsampling_channels
    d_model: int = 144
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 576
    conv_kernel: int = 15
    dropout: float = 0.1
    # prediction network and joiner
    vocab_size: int = 256
    blank_id: int = 0
    decoder_dim: int = 256
    joiner_dim: int = 256
    context_size: int = 2
    # loss
    prune_range: int = 5
    lm_scale: float = 0.25
    am_scale: float = 0.0
    simple_loss_scale: float = 0.5
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        positive = (
            "num_mel_bins",
            "subsampling_channels",
            "d_model",
            "num_layers",
            "num_heads",
            "ffn_dim",
            "conv_kernel",
            "decoder_dim",
            "joiner_dim",
            "context_size",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ModelConfig.{name} must be a positive integer, got {value!r}"
                )
        for name in (
            "vocab_size",
            "blank_id",
            "prune_range",
            "subsampling_first_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"ModelConfig.{name} must be an integer, got {value!r}"
                )
        for name in (
            "dropout",
            "lm_scale",
            "am_scale",
            "simple_loss_scale",
            "ctc_weight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ModelConfig.{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if self.subsampling_first_channels < 0:
            raise ValueError(
                "ModelConfig.subsampling_first_channels must be >= 0 (0: the same as "
                f"subsampling_channels), got {self.subsampling_first_channels}"
            )
        if self.num_mel_bins < 7:
            raise ValueError(
                "ModelConfig.num_mel_bins must be >= 7 for the x4 conv subsampling, "
                f"got {self.num_mel_bins}"
            )
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by "
                f"ModelConfig.num_heads ({self.num_heads})"
            )
        if self.conv_kernel % 2 != 1:
            raise ValueError(
                f"ModelConfig.conv_kernel must be odd, got {self.conv_kernel}"
            )
        if self.vocab_size < 2:
            raise ValueError(
                f"ModelConfig.vocab_size must be >= 2 (blank + one token), "
                f"got {self.vocab_size}"
            )
        if self.blank_id != 0:
            raise ValueError(
                f"ModelConfig.blank_id must be 0 (the tokenizer's blank), "
                f"got {self.blank_id}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"ModelConfig.dropout must be in [0, 1), got {self.dropout}"
            )
        if self.prune_range < 2:
            raise ValueError(
                f"ModelConfig.prune_range must be >= 2, got {self.prune_range}"
            )
        for name in ("lm_scale", "am_scale", "simple_loss_scale", "ctc_weight"):
            if getattr(self, name) < 0.0:
                raise ValueError(
                    f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if self.simple_loss_scale > 1.0:
            raise ValueError(
                "ModelConfig.simple_loss_scale must be in [0, 1], "
                f"got {self.simple_loss_scale}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a mapping (the YAML ``model:`` section); unknown keys are errors."""
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; allowed: {sorted(known)}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field; ``from_dict(to_dict())`` gives an equal config."""
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """Test-sized model: d_model 32, 2 layers, small vocabulary."""
        d: dict[str, Any] = dict(
            num_mel_bins=20,
            subsampling_channels=8,
            d_model=32,
            num_layers=2,
            num_heads=2,
            ffn_dim=64,
            conv_kernel=7,
            dropout=0.0,
            vocab_size=16,
            decoder_dim=32,
            joiner_dim=32,
        )
        d.update(overrides)
        return cls.from_dict(d)
