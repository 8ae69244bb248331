"""The model configuration: the YAML ``model:`` section as a validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from q4asr.validation import (
    check_fraction,
    check_integer,
    check_keys,
    check_positive,
    require,
)


@dataclass
class ModelConfig:
    """Sizes and loss settings of a Conformer pruned transducer.

    The defaults give a small model (about 3M parameters with a 256-token
    vocabulary) that trains on a CPU; ``ModelConfig.tiny()`` gives the sizes used in
    tests. Every field is checked in ``__post_init__``; errors
    (:class:`q4asr.validation.ConfigError`) name the field (``model.d_model``).
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
    # layers half_rate_first ... half_rate_first + half_rate_layers - 1 run at half the
    # encoder's frame rate (pairs of frames averaged, then repeated and added to the
    # input of the first of them); 0 layers: every layer at the full rate
    half_rate_first: int = 1
    half_rate_layers: int = 0
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
        w = "model"
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
        scales = ("lm_scale", "am_scale", "simple_loss_scale", "ctc_weight")
        check_integer(
            self,
            w,
            *positive,
            "vocab_size",
            "blank_id",
            "prune_range",
            "subsampling_first_channels",
            "half_rate_first",
            "half_rate_layers",
            optional=False,
        )
        check_positive(self, w, *positive)
        check_positive(
            self,
            w,
            "subsampling_first_channels",
            "dropout",
            *scales,
            allow_zero=True,
            optional=False,
        )
        for name in ("dropout", *scales):
            setattr(self, name, float(getattr(self, name)))
        require(
            self.num_mel_bins >= 7,
            f"{w}.num_mel_bins",
            f"must be >= 7 for the x4 conv subsampling, got {self.num_mel_bins}",
        )
        require(
            self.d_model % self.num_heads == 0,
            f"{w}.d_model",
            f"{self.d_model} must be divisible by model.num_heads ({self.num_heads})",
        )
        require(
            self.conv_kernel % 2 == 1,
            f"{w}.conv_kernel",
            f"must be odd, got {self.conv_kernel}",
        )
        require(
            self.vocab_size >= 2,
            f"{w}.vocab_size",
            f"must be >= 2 (blank + one token), got {self.vocab_size}",
        )
        require(
            self.blank_id == 0,
            f"{w}.blank_id",
            f"must be 0 (the tokenizer's blank), got {self.blank_id}",
        )
        require(
            self.dropout < 1.0, f"{w}.dropout", f"must be in [0, 1), got {self.dropout}"
        )
        require(
            self.prune_range >= 2,
            f"{w}.prune_range",
            f"must be >= 2, got {self.prune_range}",
        )
        check_fraction(self, w, "simple_loss_scale")
        require(
            self.half_rate_first >= 0
            and self.half_rate_layers >= 0
            and self.half_rate_first + self.half_rate_layers <= self.num_layers,
            f"{w}.half_rate_layers",
            f"layers {self.half_rate_first} to "
            f"{self.half_rate_first + self.half_rate_layers - 1} at half rate: expected "
            f"0 <= model.half_rate_first and first + count <= model.num_layers "
            f"({self.num_layers})",
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a mapping (the YAML ``model:`` section); unknown keys are errors."""
        check_keys(cls, d, "model")
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
