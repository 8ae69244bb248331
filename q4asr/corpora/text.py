"""English sentences for the synthetic corpus, from WordNet's example sentences.

WordNet glosses (``/usr/share/wordnet/data.{noun,verb,adj,adv}``, Debian package
``wordnet-base``) end in double-quoted usage examples: ``| a gloss; "an example"``.
This module extracts them, normalises them to transcripts (upper-case words of
letters and apostrophes), removes duplicates and caps the vocabulary so that a small
model can learn acoustics rather than memorise sentences. The definitions themselves
(``a gloss``, split at semicolons) are a second source of training text:
:func:`load_glosses` keeps those whose words are all in a given vocabulary.

Normalisation is conservative: a sentence whose spoken form is ambiguous (digits
other than 0-99, abbreviations with periods, all-capital acronyms, symbols such as
``&`` or ``%``) is dropped rather than guessed, so that what a synthesiser says
matches the transcript.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

# Punctuation that is silent (removed); anything else outside letters, digits,
# apostrophes, spaces and hyphens makes the sentence ambiguous and it is dropped.
_SILENT = re.compile(r"[,;:!?\"()\[\]]")
_QUOTE = re.compile(r"[`\u2018\u2019]")
_ALLOWED = re.compile(r"^[A-Za-z0-9' \-.]*$")
_WORD = re.compile(r"^[A-Z]+(?:'[A-Z]+)*$")


def spell_number(n: int) -> str:
    """0..99 as English words (``42 -> 'forty two'``); ValueError outside that range."""
    if not 0 <= n <= 99:
        raise ValueError(f"spell_number: {n} is outside 0..99")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def normalize(sentence: str) -> str | None:
    """One raw sentence -> an upper-case transcript, or None when it is ambiguous.

    Keeps words of letters and inner apostrophes; spells integers 0..99; drops the
    sentence when it holds other numbers, acronyms, abbreviations or symbols.
    """
    s = _QUOTE.sub("'", sentence.strip())
    s = _SILENT.sub(" ", s)
    s = s.rstrip(" .")
    if not s or not _ALLOWED.match(s):
        return None
    if "." in s:  # an abbreviation or a decimal inside the sentence
        return None
    words: list[str] = []
    for tok in s.replace("-", " ").split():
        tok = tok.strip("'")
        if not tok:
            continue
        if tok.isdigit():
            if len(tok) > 2:
                return None
            words.extend(spell_number(int(tok)).upper().split())
            continue
        if any(c.isdigit() for c in tok):  # 9th, 1990s, 3D
            return None
        if len(tok) > 1 and tok.isupper():  # an acronym a synthesiser would spell
            return None
        w = tok.upper()
        if not _WORD.match(w):
            return None
        words.append(w)
    return " ".join(words) if words else None


def _wordnet_glosses(wordnet_dir: str | Path) -> Iterator[str]:
    """The gloss field (after ``|``) of every synset line of the WordNet data files."""
    paths = [Path(wordnet_dir) / name for name in WORDNET_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: WordNet data not found; install wordnet-base: "
            "tools/install.sh"
        )
    for p in paths:
        with open(p, encoding="latin-1") as f:
            for line in f:
                if not line.startswith("  ") and "|" in line:  # not the licence
                    yield line.split("|", 1)[1]


def read_wordnet_examples(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """The raw double-quoted example sentences of every WordNet gloss, in file order."""
    return [
        ex
        for gloss in _wordnet_glosses(wordnet_dir)
        for ex in re.findall(r'"([^"]+)"', gloss)
    ]


def read_wordnet_glosses(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """The raw definitions of every WordNet gloss (its examples removed, split at
    semicolons), in file order."""
    return [
        part.strip()
        for gloss in _wordnet_glosses(wordnet_dir)
        for part in re.sub(r'"[^"]*"', "", gloss).split(";")
        if part.strip()
    ]


@dataclass
class TextConfig:
    """How to select sentences: vocabulary cap and sentence length in words."""

    vocab_size: int = 2000
    min_words: int = 3
    max_words: int = 14

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(
                f"TextConfig.vocab_size must be >= 1, got {self.vocab_size}"
            )
        if self.min_words < 1:
            raise ValueError(f"TextConfig.min_words must be >= 1, got {self.min_words}")
        if self.max_words < self.min_words:
            raise ValueError(
                f"TextConfig.max_words ({self.max_words}) must be >= "
                f"min_words ({self.min_words})"
            )


def cap_vocabulary(
    sentences: Sequence[str], vocab_size: int, min_words: int = 1, max_words: int = 1000
) -> tuple[list[str], list[str]]:
    """Keep sentences whose words are all among the ``vocab_size`` most frequent.

    Frequencies are counted over ``sentences`` (normalised, deduplicated); ties are
    broken alphabetically so the result is deterministic. Returns (kept sentences in
    input order, the vocabulary sorted by falling frequency).
    """
    counts = Counter(w for s in sentences for w in s.split())
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab = vocab[:vocab_size]
    allowed = set(vocab)
    kept = [
        s
        for s in sentences
        if min_words <= len(s.split()) <= max_words
        and all(w in allowed for w in s.split())
    ]
    return kept, vocab


def normalize_all(raw: Iterable[str]) -> list[str]:
    """Normalise and deduplicate, keeping first occurrences in order."""
    seen: set[str] = set()
    out: list[str] = []
    for r in raw:
        s = normalize(r)
        if s is not None and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def load_sentences(
    config: TextConfig | None = None,
    seed: int = 0,
    wordnet_dir: str | Path = WORDNET_DIR,
) -> list[str]:
    """Normalised, deduplicated, vocabulary-capped WordNet sentences, shuffled by seed.

    The same ``config``, ``seed`` and source give the same list.
    """
    config = config or TextConfig()
    raw = read_wordnet_examples(wordnet_dir)
    norm = normalize_all(raw)
    kept, vocab = cap_vocabulary(
        norm, config.vocab_size, config.min_words, config.max_words
    )
    log.info(
        "%d raw WordNet examples -> %d normalised unique -> %d within %d words, "
        "%d-%d words long",
        len(raw),
        len(norm),
        len(kept),
        config.vocab_size,
        config.min_words,
        config.max_words,
    )
    if not kept:
        raise ValueError(
            f"{wordnet_dir}: no sentence left with vocab_size={config.vocab_size}, "
            f"min_words={config.min_words}, max_words={config.max_words}"
        )
    kept = sorted(kept)
    random.Random(seed).shuffle(kept)
    return kept


def load_glosses(
    vocabulary: set[str],
    exclude: set[str],
    min_words: int = 3,
    max_words: int = 14,
    seed: int = 0,
    wordnet_dir: str | Path = WORDNET_DIR,
) -> list[str]:
    """Normalised, deduplicated WordNet definitions whose words are all in
    ``vocabulary``, ``min_words``-``max_words`` words long, none of them in
    ``exclude``, shuffled by seed."""
    raw = read_wordnet_glosses(wordnet_dir)
    kept = sorted(
        s
        for s in normalize_all(raw)
        if min_words <= len(s.split()) <= max_words
        and s not in exclude
        and all(w in vocabulary for w in s.split())
    )
    log.info(
        "%d raw WordNet definitions -> %d within the corpus's %d words, %d-%d words "
        "long",
        len(raw),
        len(kept),
        len(vocabulary),
        min_words,
        max_words,
    )
    random.Random(seed).shuffle(kept)
    return kept


def main() -> None:  # pragma: no cover - a reporting helper
    import argparse

    p = argparse.ArgumentParser(
        description="Count WordNet sentences per vocabulary cap"
    )
    p.add_argument(
        "--vocab-sizes", type=int, nargs="+", default=[500, 1000, 2000, 3000]
    )
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=14)
    a = p.parse_args()
    norm = normalize_all(read_wordnet_examples())
    words = sum(len(s.split()) for s in norm)
    print(f"normalised unique sentences: {len(norm)} ({words} words)")
    for v in a.vocab_sizes:
        kept, _ = cap_vocabulary(norm, v, a.min_words, a.max_words)
        n_words = sum(len(s.split()) for s in kept)
        print(f"vocab {v}: {len(kept)} sentences, {n_words} words")


if __name__ == "__main__":  # pragma: no cover
    main()
