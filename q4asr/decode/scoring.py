"""WER scoring (jiwer) and icefall-style result files: recogs-*, errs-*, wer-summary-*."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import jiwer

log = logging.getLogger(__name__)


@dataclass
class Score:
    wer: float  # percent
    errors: int
    words: int
    utts: int
    substitutions: int
    deletions: int
    insertions: int


def _align(ref: list[str], hyp: list[str], chunks) -> list[str]:
    """One token per aligned position: ``w``, ``(r->h)``, ``(r->*)``, ``(*->h)``."""
    out: list[str] = []
    for c in chunks:
        r = ref[c.ref_start_idx:c.ref_end_idx]
        h = hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "equal":
            out += r
        elif c.type == "substitute":
            out += [f"({a}->{b})" for a, b in zip(r, h)]
        elif c.type == "delete":
            out += [f"({a}->*)" for a in r]
        else:
            out += [f"(*->{b})" for b in h]
    return out


def score(refs: Sequence[str], hyps: Sequence[str]) -> tuple[Score, list[list[str]]]:
    """Corpus WER of ``hyps`` against ``refs`` and each utterance's alignment.

    An utterance with an empty reference counts its hypothesis words as insertions.
    """
    assert len(refs) == len(hyps), (len(refs), len(hyps))
    keep = [i for i, r in enumerate(refs) if r.split()]
    subs = dels = ins = words = 0
    aligned: list[list[str]] = [[f"(*->{w})" for w in h.split()] for h in hyps]
    for i in set(range(len(refs))) - set(keep):
        ins += len(hyps[i].split())
    if keep:
        # jiwer rejects empty hypotheses in a batch only when refs are empty too
        out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
        subs, dels, ins = out.substitutions, out.deletions, ins + out.insertions
        words = sum(len(refs[i].split()) for i in keep)
        for i, chunks, r, h in zip(keep, out.alignments, out.references, out.hypotheses):
            aligned[i] = _align(r, h, chunks)
    errors = subs + dels + ins
    wer = 100.0 * errors / max(words, 1)
    return Score(round(wer, 4), errors, words, len(refs), subs, dels, ins), aligned


def write_results(
    out_dir: str | Path, test_set: str, method: str,
    ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
    extra: dict | None = None,
) -> dict:
    """Writes recogs-, errs-, wer-summary- text files and ``<test_set>-<method>.json``.

    Returns the summary dict (the JSON file's content): Score fields plus ``extra``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, aligned = score(refs, hyps)
    tag = f"{test_set}-{method}"
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    with open(out_dir / f"recogs-{tag}.txt", "w") as f:
        for i in order:
            f.write(f"{ids[i]}:\tref={refs[i].split()}\n{ids[i]}:\thyp={hyps[i].split()}\n")
    with open(out_dir / f"errs-{tag}.txt", "w") as f:
        f.write(f"%WER = {s.wer:.2f}\n")
        f.write(f"Errors: {s.insertions} insertions, {s.deletions} deletions, "
                f"{s.substitutions} substitutions, over {s.words} reference words "
                f"({s.words - s.substitutions - s.deletions} correct)\n\n")
        f.write("PER-UTT DETAILS: corr or (ref->hyp)\n")
        for i in order:
            f.write(f"{ids[i]}:\t{' '.join(aligned[i])}\n")
    with open(out_dir / f"wer-summary-{tag}.txt", "w") as f:
        f.write(f"settings\tWER\n{method}\t{s.wer:.2f}\n")
    summary = {"test_set": test_set, "method": method, **asdict(s), **(extra or {})}
    (out_dir / f"{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%s %s: WER %.2f%% (%d errors / %d words, %d utts)",
             test_set, method, s.wer, s.errors, s.words, s.utts)
    return summary
