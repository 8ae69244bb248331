"""WER scoring (jiwer) and icefall-style result files: recogs-*, errs-*, wer-summary-*.

Scoring normalises references and hypotheses by default (``normalize_text``: upper
case, punctuation removed, hyphenated words split), as every q4asr recipe normalises
its training transcripts, so that a lower-case or punctuated reference ``text`` is
not scored as all errors; ``scoring="verbatim"`` compares words exactly as written.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import jiwer

log = logging.getLogger(__name__)

SCORING_MODES = ("normalized", "verbatim")
NORMALIZATION = "upper case, punctuation removed, hyphenated words split"
# anything but letters, digits, apostrophes and white space becomes a word break
_PUNCT = re.compile(r"[^\w'\s]|_")


def normalize_text(text: str) -> str:
    """The recipes' transcript normalisation, for scoring: upper case; punctuation
    and hyphens become word breaks; apostrophes are kept inside words and dropped at
    their ends (``"Don't stop -- 'rock-n-roll'!" -> "DON'T STOP ROCK N ROLL"``)."""
    words = (w.strip("'") for w in _PUNCT.sub(" ", text.upper()).split())
    return " ".join(w for w in words if w)


def scoring_note(scoring: str) -> str:
    """One line saying how words were compared (printed beside every WER)."""
    if scoring == "verbatim":
        return "words compared exactly as written (verbatim)"
    return f"words compared after normalisation ({NORMALIZATION}); verbatim: --scoring verbatim"


@dataclass
class Score:
    wer: float  # percent
    errors: int
    words: int
    utts: int
    substitutions: int
    deletions: int
    insertions: int
    # per utterance, in input order (for bootstrap intervals over utterances)
    utt_errors: list[int] = field(default_factory=list, repr=False)
    utt_words: list[int] = field(default_factory=list, repr=False)


def _align(ref: list[str], hyp: list[str], chunks) -> list[str]:
    """One token per aligned position: ``w``, ``(r->h)``, ``(r->*)``, ``(*->h)``."""
    out: list[str] = []
    for c in chunks:
        r = ref[c.ref_start_idx : c.ref_end_idx]
        h = hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            out += r
        elif c.type == "substitute":
            out += [f"({a}->{b})" for a, b in zip(r, h)]
        elif c.type == "delete":
            out += [f"({a}->*)" for a in r]
        else:
            out += [f"(*->{b})" for b in h]
    return out


def score(
    refs: Sequence[str], hyps: Sequence[str], scoring: str = "normalized"
) -> tuple[Score, list[list[str]]]:
    """Corpus WER of ``hyps`` against ``refs`` and each utterance's alignment (of
    the words as compared: normalised unless ``scoring="verbatim"``).

    An utterance with an empty reference counts its hypothesis words as insertions.
    """
    assert len(refs) == len(hyps), (len(refs), len(hyps))
    if scoring not in SCORING_MODES:
        raise ValueError(f"scoring {scoring!r} is not one of {SCORING_MODES}")
    if scoring == "normalized":
        refs = [normalize_text(r) for r in refs]
        hyps = [normalize_text(h) for h in hyps]
    keep = [i for i, r in enumerate(refs) if r.split()]
    subs = dels = ins = words = 0
    aligned: list[list[str]] = [[f"(*->{w})" for w in h.split()] for h in hyps]
    utt_errors = [len(h.split()) for h in hyps]  # right for empty references
    utt_words = [len(r.split()) for r in refs]
    for i in set(range(len(refs))) - set(keep):
        ins += len(hyps[i].split())
    if keep:
        # jiwer rejects empty hypotheses in a batch only when refs are empty too
        out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
        subs, dels, ins = out.substitutions, out.deletions, ins + out.insertions
        words = sum(len(refs[i].split()) for i in keep)
        for i, chunks, r, h in zip(
            keep, out.alignments, out.references, out.hypotheses
        ):
            aligned[i] = _align(r, h, chunks)
            utt_errors[i] = sum(
                max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                for c in chunks
                if c.type != "equal"
            )
    errors = subs + dels + ins
    assert sum(utt_errors) == errors, (sum(utt_errors), errors)
    wer = 100.0 * errors / max(words, 1)
    return (
        Score(
            round(wer, 4),
            errors,
            words,
            len(refs),
            subs,
            dels,
            ins,
            utt_errors,
            utt_words,
        ),
        aligned,
    )


def write_results(
    out_dir: str | Path,
    test_set: str,
    method: str,
    ids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    extra: dict | None = None,
    scoring: str = "normalized",
) -> dict:
    """Writes recogs-, errs-, wer-summary- text files and ``<test_set>-<method>.json``.

    Returns the summary dict (the JSON file's content): Score fields, ``scoring``
    (how words were compared), ``per_utt`` (``{utt_id: [errors, reference words]}``,
    for bootstrap intervals) plus ``extra``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, aligned = score(refs, hyps, scoring)
    tag = f"{test_set}-{method}"
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    with open(out_dir / f"recogs-{tag}.txt", "w") as f:
        for i in order:
            f.write(
                f"{ids[i]}:\tref={refs[i].split()}\n{ids[i]}:\thyp={hyps[i].split()}\n"
            )
    with open(out_dir / f"errs-{tag}.txt", "w") as f:
        f.write(f"%WER = {s.wer:.2f}\n")
        f.write(
            f"Errors: {s.insertions} insertions, {s.deletions} deletions, "
            f"{s.substitutions} substitutions, over {s.words} reference words "
            f"({s.words - s.substitutions - s.deletions} correct)\n\n"
        )
        f.write("PER-UTT DETAILS: corr or (ref->hyp)\n")
        for i in order:
            f.write(f"{ids[i]}:\t{' '.join(aligned[i])}\n")
    with open(out_dir / f"wer-summary-{tag}.txt", "w") as f:
        f.write(f"settings\tWER\n{method}\t{s.wer:.2f}\n")
    fields = asdict(s)
    per_utt = {
        u: [e, w]
        for u, e, w in zip(ids, fields.pop("utt_errors"), fields.pop("utt_words"))
    }
    summary = {
        "test_set": test_set,
        "method": method,
        **fields,
        "scoring": scoring,
        **(extra or {}),
        "per_utt": per_utt,
    }
    (out_dir / f"{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info(
        "%s %s: WER %.2f%% (%d errors / %d words, %d utts); %s",
        test_set,
        method,
        s.wer,
        s.errors,
        s.words,
        s.utts,
        scoring_note(scoring),
    )
    return summary
