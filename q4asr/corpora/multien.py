"""Manifests of several English corpora under one prefix, with one transcript style.

Used by ``egs/multien/ASR`` (LibriSpeech + GigaSpeech + Common Voice English). Two
commands::

    python -m q4asr.corpora.multien gigaspeech CORPUS_DIR OUT_DIR --parts XL DEV TEST
    python -m q4asr.corpora.multien combine --manifests data/manifests --out-dir data/manifests \\
        --part ls-train-clean-100=librispeech:train-clean-100 --part gs-XL=gigaspeech:XL \\
        --part cv-train=cv:en_train ...

``gigaspeech`` writes ``gigaspeech_{recordings,supervisions}_<PART>.jsonl.gz`` exactly as
lhotse's ``prepare_gigaspeech`` does (its ``parse_utterance`` builds every manifest
entry); lhotse's own function needs the ``speechcolab`` package only to iterate
``GigaSpeech.json``, which this streams with ``ijson`` (one audio entry in memory at a
time, whatever the file's size: the full corpus's file is several GB).

``combine`` reads ``<manifests>/<corpus prefix>_{recordings,supervisions}_<part>.jsonl.gz``
lazily and writes ``<out-dir>/<prefix>_{recordings,supervisions}_<name>.jsonl.gz`` for
every ``--part NAME=PREFIX:PART`` with transcripts normalised by :func:`normalize_text`
(segments left empty, or holding GigaSpeech's garbage tags, are dropped, and recordings
no segment uses are left out).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import ijson
from lhotse import RecordingSet, SupervisionSet
from lhotse.recipes.gigaspeech import parse_utterance

from q4asr.utils import setup_logging

log = logging.getLogger(__name__)

GIGASPEECH_PARTS = ("XL", "L", "M", "S", "XS", "DEV", "TEST")
# GigaSpeech's punctuation tags are dropped; a segment holding a garbage tag is dropped.
GIGASPEECH_PUNCT = ("<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>")
GIGASPEECH_GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
_KEEP = re.compile(r"[^A-Z' ]+")


def normalize_text(text: str) -> str | None:
    """One transcript of any of the corpora -> upper-case words, or None to drop it.

    Upper-cases, removes GigaSpeech punctuation tags, turns every character other
    than letters, apostrophes and spaces into a space (Common Voice punctuation,
    hyphens), strips apostrophes at word edges. None for an empty result or a
    GigaSpeech garbage tag (``<SIL>``, ``<MUSIC>``, ``<NOISE>``, ``<OTHER>``).
    """
    t = text.upper()
    if any(g in t for g in GIGASPEECH_GARBAGE):
        return None
    for p in GIGASPEECH_PUNCT:
        t = t.replace(p, " ")
    t = t.replace("\u2019", "'")
    t = _KEEP.sub(" ", t)
    words = [w.strip("'") for w in t.split()]
    words = [w for w in words if w]
    return " ".join(words) if words else None


def _gigaspeech_json(corpus_dir: Path) -> Iterator[dict[str, Any]]:
    """The entries of ``GigaSpeech.json``'s ``audios`` list, streamed one at a time."""
    path = corpus_dir / "GigaSpeech.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GigaSpeech metadata not found")
    with open(path, "rb") as f:
        try:
            yield from ijson.items(f, "audios.item", use_float=True)
        except ijson.JSONError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def prepare_gigaspeech(
    corpus_dir: str | Path, out_dir: str | Path, parts: Sequence[str]
) -> dict[str, tuple[Path, Path]]:
    """GigaSpeech manifests for ``parts``; returns {part: (recordings, supervisions)}.

    Segments are those whose ``subsets`` hold the part, as in ``speechcolab``.
    Parts already written are kept (resumable). Raises ValueError naming the audio
    or file for an entry lhotse cannot parse or a part with no audio.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    for p in parts:
        if p not in GIGASPEECH_PARTS:
            raise ValueError(f"GigaSpeech part {p!r} is not one of {GIGASPEECH_PARTS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, Path]] = {}
    for part in parts:
        rec_path = out_dir / f"gigaspeech_recordings_{part}.jsonl.gz"
        sup_path = out_dir / f"gigaspeech_supervisions_{part}.jsonl.gz"
        out[part] = (rec_path, sup_path)
        if rec_path.is_file() and sup_path.is_file():
            log.info("GigaSpeech %s: already prepared", part)
            continue
        tag = "{" + part + "}"
        tmp_r = rec_path.with_name(f".tmp.{rec_path.name}")
        tmp_s = sup_path.with_name(f".tmp.{sup_path.name}")
        n_audio = n_seg = 0
        with RecordingSet.open_writer(tmp_r) as rw, SupervisionSet.open_writer(
            tmp_s
        ) as sw:
            for audio in _gigaspeech_json(corpus_dir):
                if tag not in audio.get("subsets", []):
                    continue
                audio = dict(audio)
                audio["segments"] = [
                    s for s in audio.get("segments", []) if tag in s.get("subsets", [])
                ]
                try:
                    rec, segs = parse_utterance(audio, corpus_dir)
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(
                        f"{corpus_dir}/GigaSpeech.json: audio "
                        f"{audio.get('aid', '?')}: {type(e).__name__}: {e}"
                    ) from None
                if not Path(rec.sources[0].source).is_file():
                    log.warning("GigaSpeech %s: %s: no such file, skipped",
                                part, rec.sources[0].source)
                    continue
                rw.write(rec)
                for s in segs:
                    sw.write(s)
                n_audio += 1
                n_seg += len(segs)
        if n_audio == 0:
            tmp_r.unlink(missing_ok=True)
            tmp_s.unlink(missing_ok=True)
            raise ValueError(f"{corpus_dir}/GigaSpeech.json: no audio in part {part}")
        os.replace(tmp_r, rec_path)
        os.replace(tmp_s, sup_path)
        log.info("GigaSpeech %s: %d audios, %d segments", part, n_audio, n_seg)
    return out


def combine_part(
    manifest_dir: str | Path,
    out_dir: str | Path,
    prefix: str,
    name: str,
    src_prefix: str,
    src_part: str,
) -> tuple[int, int]:
    """One corpus part -> ``<prefix>_{recordings,supervisions}_<name>`` with normalised text.

    Returns (segments kept, segments dropped). Raises FileNotFoundError naming a
    missing manifest and ValueError when no segment is left.
    """
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    src = {
        k: manifest_dir / f"{src_prefix}_{k}_{src_part}.jsonl.gz"
        for k in ("recordings", "supervisions")
    }
    for p in src.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: manifest not found")
    dst = {k: out_dir / f"{prefix}_{k}_{name}.jsonl.gz" for k in src}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {k: v.with_name(f".tmp.{v.name}") for k, v in dst.items()}
    used: set[str] = set()
    kept = dropped = 0
    with SupervisionSet.open_writer(tmp["supervisions"]) as w:
        for s in SupervisionSet.from_jsonl_lazy(src["supervisions"]):
            text = normalize_text(s.text or "")
            if text is None:
                dropped += 1
                continue
            s.text = text
            w.write(s)
            used.add(s.recording_id)
            kept += 1
    if kept == 0:
        tmp["supervisions"].unlink(missing_ok=True)
        raise ValueError(f"{src['supervisions']}: no segment left after normalisation")
    with RecordingSet.open_writer(tmp["recordings"]) as w:
        for r in RecordingSet.from_jsonl_lazy(src["recordings"]):
            if r.id in used:
                w.write(r)
    for k in dst:
        os.replace(tmp[k], dst[k])
    log.info("%s <- %s:%s: %d segments (%d dropped)", name, src_prefix, src_part,
             kept, dropped)
    return kept, dropped


def _parse_part(spec: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)=([A-Za-z0-9_-]+):([A-Za-z0-9_.-]+)", spec)
    if not m:
        raise argparse.ArgumentTypeError(
            f"--part {spec!r}: expected NAME=PREFIX:PART, e.g. gs-XL=gigaspeech:XL"
        )
    return m.group(1), m.group(2), m.group(3)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gigaspeech", help="GigaSpeech.json -> lhotse manifests")
    g.add_argument("corpus_dir", type=Path)
    g.add_argument("out_dir", type=Path)
    g.add_argument("--parts", nargs="+", default=["XL", "DEV", "TEST"])
    c = sub.add_parser("combine", help="corpus manifests -> one prefix, normalised text")
    c.add_argument("--manifests", required=True, type=Path)
    c.add_argument("--out-dir", required=True, type=Path)
    c.add_argument("--prefix", default="multien")
    c.add_argument("--part", dest="parts", action="append", type=_parse_part,
                   required=True, metavar="NAME=PREFIX:PART")
    args = p.parse_args(argv)
    setup_logging()
    try:
        if args.cmd == "gigaspeech":
            prepare_gigaspeech(args.corpus_dir, args.out_dir, args.parts)
        else:
            for name, src_prefix, src_part in args.parts:
                combine_part(args.manifests, args.out_dir, args.prefix, name,
                             src_prefix, src_part)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
