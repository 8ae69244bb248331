"""Decoding: transducer search."""

from q4asr.decode.search import greedy_search, modified_beam_search

__all__ = ["greedy_search", "modified_beam_search"]
