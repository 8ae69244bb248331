"""BPE tokenizer: training and using a sentencepiece model.

Token id 0 is ``<blk>`` (the transducer's blank), 1 is ``<unk>``; there is no BOS/EOS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

log = logging.getLogger(__name__)


def train_bpe(
    texts: Iterable[str], model_prefix: str | Path, vocab_size: int,
    model_type: str = "unigram",
) -> Path:
    """Train a sentencepiece model on ``texts``; returns the ``.model`` path."""
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    transcript = model_prefix.parent / "transcript_words.txt"
    n = 0
    with open(transcript, "w") as f:
        for t in texts:
            t = t.strip()
            if t:
                f.write(t + "\n")
                n += 1
    if n == 0:
        raise ValueError(f"{transcript}: no text to train a BPE model on")
    spm.SentencePieceTrainer.train(
        input=str(transcript),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        input_sentence_size=100_000_000,
        user_defined_symbols=[],
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["<blk>"],
        # the recipes normalise text themselves; without a normalisation rule the
        # model carries no 240 kB character map (it travels inside every model file)
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    log.info("trained %s-piece BPE on %d lines -> %s.model", vocab_size, n, model_prefix)
    return model_prefix.with_suffix(".model")


class Tokenizer:
    """Text <-> token ids with a sentencepiece model (from a file or its bytes)."""

    def __init__(self, model: str | Path | bytes):
        self.sp = spm.SentencePieceProcessor()
        if isinstance(model, bytes):
            self.sp.LoadFromSerializedProto(model)
            self.model_bytes = model
        else:
            self.model_bytes = Path(model).read_bytes()
            self.sp.LoadFromSerializedProto(self.model_bytes)
        if self.sp.piece_to_id("<blk>") != 0:
            raise ValueError(f"{model if not isinstance(model, bytes) else 'BPE model'}: "
                             "token 0 must be <blk>")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def blank_id(self) -> int:
        return 0

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        # one call per text: given a list, sentencepiece starts a thread pool on every
        # call (~0.5 ms for one short text on a busy 2-core machine, vs ~3 us)
        return [self.sp.encode(t, out_type=int) for t in texts]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [self.sp.decode([int(i) for i in seq]) for seq in ids]


def main(argv: list[str] | None = None) -> None:
    """Train a BPE model on the transcripts of a lhotse supervision manifest."""
    import argparse

    from lhotse import load_manifest_lazy

    from q4asr.utils import setup_logging

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--supervisions", required=True, nargs="+",
                   help="lhotse supervision manifests (.jsonl.gz)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--out", required=True, help="output .model path")
    args = p.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    if out.suffix != ".model":
        raise SystemExit(f"--out {out}: must end in .model")

    def texts():
        for path in args.supervisions:
            if not Path(path).is_file():
                raise SystemExit(f"{path}: no such supervision manifest")
            for sup in load_manifest_lazy(path):
                if sup.text:
                    yield sup.text

    train_bpe(texts(), out.with_suffix(""), args.vocab_size, args.model_type)


if __name__ == "__main__":
    main()
