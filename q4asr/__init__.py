"""q4asr: 4-bit and 8-bit Conformer transducers with native quantization-aware training."""

__version__ = "0.1.0"
