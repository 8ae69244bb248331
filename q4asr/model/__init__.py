"""Conformer pruned-transducer model: config, encoder, decoder, joiner, losses."""

from q4asr.model.config import ModelConfig
from q4asr.model.transducer import Decoder, Joiner, Transducer, build_model

__all__ = ["ModelConfig", "Transducer", "Decoder", "Joiner", "build_model"]
