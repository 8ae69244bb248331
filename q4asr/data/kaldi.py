"""Kaldi data directories -> lhotse manifests.

A Kaldi data dir holds ``wav.scp`` (``<recording-id> <audio path>``), optionally
``text`` (``<utterance-id> <words...>``) and ``segments`` (``<utterance-id>
<recording-id> <start> <end>``); ``utt2spk``/``spk2utt`` are ignored. Relative audio
paths are resolved against the data dir. Pipe entries (``<id> cmd args |``) and
``ark:`` offsets are reported as failures: convert such audio to files first (for
example with ``sox``). A missing or unreadable audio file is reported by name in the
returned failure list, never raised.

Multi-channel recordings keep their channels in the recording manifest; their
supervisions (and so the features) use channel 0. :func:`q4asr.data.audio.load_audio`
instead averages channels to mono, as transcription needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

log = logging.getLogger(__name__)


@dataclass
class KaldiDataDir:
    """What :func:`read_kaldi_data_dir` found: manifests in wav.scp order, failures."""

    recordings: RecordingSet
    supervisions: SupervisionSet
    failures: list[str] = field(default_factory=list)


def _read_table(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, rest of line) for each non-empty line of a Kaldi table."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            key, _, rest = line.partition(" ")
            out.append((n, key, rest.strip()))
    return out


def read_kaldi_data_dir(data_dir: str | Path) -> KaldiDataDir:
    """Read ``data_dir`` into lhotse manifests, keeping wav.scp order.

    Raises FileNotFoundError when ``wav.scp`` is missing and ValueError for a
    malformed ``segments`` line; every problem with a single recording (missing or
    unreadable file, pipe entry, duplicate id, empty path) becomes a one-line
    message in ``failures`` naming the file, line and recording.
    """
    data_dir = Path(data_dir)
    scp = data_dir / "wav.scp"
    if not scp.is_file():
        raise FileNotFoundError(f"{scp}: not found (a Kaldi data dir needs wav.scp)")
    recordings: list[Recording] = []
    failures: list[str] = []
    seen: set[str] = set()
    for n, rec_id, rest in _read_table(scp):
        where = f"{scp}:{n}: recording {rec_id}"
        if rec_id in seen:
            failures.append(f"{where}: duplicate id, skipped")
            continue
        seen.add(rec_id)
        if not rest:
            failures.append(f"{where}: no audio path, skipped")
            continue
        if rest.endswith("|"):
            failures.append(
                f"{where}: pipe entries ('cmd ... |') are not supported; write the "
                "audio to files (e.g. with sox) and list their paths"
            )
            continue
        path = Path(rest)
        if not path.is_absolute():
            path = data_dir / path
        if not path.is_file():
            failures.append(f"{where}: audio file {path} not found, skipped")
            continue
        try:
            rec = Recording.from_file(path, recording_id=rec_id)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            failures.append(
                f"{where}: audio file {path} unreadable ({type(e).__name__}: {msg}), "
                "skipped"
            )
            continue
        recordings.append(rec)
    by_id = {r.id: r for r in recordings}

    texts: dict[str, str] = {}
    if (data_dir / "text").is_file():
        texts = {k: v for _, k, v in _read_table(data_dir / "text")}

    sups: list[SupervisionSegment] = []
    seg_path = data_dir / "segments"
    if seg_path.is_file():
        for n, utt, rest in _read_table(seg_path):
            parts = rest.split()
            try:
                rec_id, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                raise ValueError(
                    f"{seg_path}:{n}: expected '<utt> <recording> <start> <end>', "
                    f"got {utt} {rest!r}"
                ) from None
            rec = by_id.get(rec_id)
            if rec is None:
                continue  # its recording failed and is already reported
            end = min(end, rec.duration) if end > 0 else rec.duration
            if not 0 <= start < end:
                failures.append(
                    f"{seg_path}:{n}: utterance {utt}: empty segment, skipped"
                )
                continue
            sups.append(
                SupervisionSegment(
                    id=utt,
                    recording_id=rec_id,
                    start=start,
                    duration=round(end - start, 6),
                    channel=0,
                    text=texts.get(utt),
                )
            )
    else:
        for rec in recordings:
            sups.append(
                SupervisionSegment(
                    id=rec.id,
                    recording_id=rec.id,
                    start=0.0,
                    duration=rec.duration,
                    channel=0,
                    text=texts.get(rec.id),
                )
            )
    for m in failures:
        log.warning("%s", m)
    return KaldiDataDir(
        recordings=RecordingSet.from_recordings(recordings),
        supervisions=SupervisionSet.from_segments(sups),
        failures=failures,
    )


def main(argv: list[str] | None = None) -> int:
    """Import Kaldi data dirs as lhotse manifests:
    ``python -m q4asr.data.kaldi --prefix NAME --out-dir data/manifests train=DIR dev=DIR``
    writes ``<prefix>_{recordings,supervisions}_<part>.jsonl.gz`` per part. Problems
    (missing audio, pipe entries) are listed and those utterances left out; a part with
    no usable utterance is an error.
    """
    import argparse
    import sys

    from lhotse import validate_recordings_and_supervisions

    from q4asr.utils import setup_logging

    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--prefix", required=True, help="corpus name in the manifest names")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("parts", nargs="+", help="PART=KALDI_DATA_DIR")
    args = p.parse_args(argv)
    setup_logging()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for item in args.parts:
        part, sep, data_dir = item.partition("=")
        if not sep or not part or not data_dir:
            print(f"error: {item!r}: expected PART=KALDI_DATA_DIR", file=sys.stderr)
            return 1
        if not (Path(data_dir) / "wav.scp").is_file():
            print(f"error: {data_dir}: not a Kaldi data dir (no wav.scp)", file=sys.stderr)
            return 1
        d = read_kaldi_data_dir(data_dir)
        if len(d.supervisions) == 0:
            print(f"error: {data_dir}: no usable utterance", file=sys.stderr)
            return 1
        validate_recordings_and_supervisions(d.recordings, d.supervisions)
        d.recordings.to_file(args.out_dir / f"{args.prefix}_recordings_{part}.jsonl.gz")
        d.supervisions.to_file(args.out_dir / f"{args.prefix}_supervisions_{part}.jsonl.gz")
        log.info("%s: %d recordings, %d utterances, %d problems", part,
                 len(d.recordings), len(d.supervisions), len(d.failures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
