"""Shared fixtures: a tiny synthetic corpus built with the project's own data code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TINY_PARTS = ("train", "dev", "test", "test_heldout")


@dataclass
class TinyCorpus:
    """Paths and texts of the tiny corpus.

    ``cuts[part]`` is ``<root>/fbank/synth_cuts_<part>.jsonl.gz`` (80-bin fbank,
    lilcom); ``texts[part]`` the supervision texts in manifest order; ``bpe_model``
    a sentencepiece model trained on the train texts (blank id 0).
    """

    root: Path
    manifest_dir: Path
    fbank_dir: Path
    cuts: dict[str, Path]
    bpe_model: Path
    bpe_vocab_size: int
    texts: dict[str, list[str]] = field(default_factory=dict)
    num_mel_bins: int = 80


def build_tiny_corpus(root: Path, seed: int = 0, num_train: int = 40) -> TinyCorpus:
    """Synthesise ~56 short utterances, compute fbank cuts and train a small BPE."""
    from lhotse import load_manifest

    from q4asr.corpora.synth import SynthConfig, synthesize_corpus
    from q4asr.corpora.text import TextConfig, load_sentences
    from q4asr.data.features import compute_fbank
    from q4asr.data.tokenizer import train_bpe

    sentences = load_sentences(
        TextConfig(vocab_size=400, min_words=2, max_words=6), seed
    )
    config = SynthConfig(
        num_train=num_train,
        num_dev=8,
        num_test=8,
        seed=seed,
        vocab_size=400,
        min_words=2,
        max_words=6,
    )
    synthesize_corpus(config, root, num_jobs=1, sentences=sentences, progress=False)
    manifest_dir = root / "manifests"
    fbank_dir = root / "fbank"
    cuts = {}
    texts = {}
    for part in TINY_PARTS:
        cuts[part], failures = compute_fbank(manifest_dir, fbank_dir, "synth", part)
        assert not failures, failures
        sups = load_manifest(manifest_dir / f"synth_supervisions_{part}.jsonl.gz")
        texts[part] = [s.text for s in sups]
    vocab = 64
    bpe = train_bpe(texts["train"], root / "lang_bpe" / "bpe", vocab)
    return TinyCorpus(
        root=root,
        manifest_dir=manifest_dir,
        fbank_dir=fbank_dir,
        cuts=cuts,
        bpe_model=bpe,
        bpe_vocab_size=vocab,
        texts=texts,
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    """A tiny real corpus (40 train, 8 dev, 8 test, 8 held-out-voice test utterances)."""
    logging.getLogger("q4asr").setLevel(logging.WARNING)
    return build_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no CUDA GPU is."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
