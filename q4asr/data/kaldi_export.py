"""lhotse manifests -> a Kaldi data dir (``wav.scp``, ``segments``, ``text``,
``utt2spk``), so that tools reading Kaldi dirs (``q4asr-transcribe``, sherpa-onnx
scripts) see the same test audio and references as the recipe.

    python -m q4asr.data.kaldi_export --manifests data/manifests --prefix synth \\
        --part test --out data/kaldi/test

Audio paths are written absolute; a recording with more than one source file is an
error naming it (Kaldi's wav.scp holds one file per recording).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lhotse import load_manifest

from q4asr.data.features import part_manifests


def write_kaldi_data_dir(
    manifest_dir: str | Path, prefix: str, part: str, out_dir: str | Path
) -> int:
    """Write the Kaldi data dir of one part; returns the number of utterances."""
    paths = part_manifests(manifest_dir, prefix, part)
    out_dir = Path(out_dir)
    recs = load_manifest(paths["recordings"])
    sups = load_manifest(paths["supervisions"])
    wav, segments, text, utt2spk = [], [], [], []
    for r in recs:
        if len(r.sources) != 1 or r.sources[0].type != "file":
            raise ValueError(
                f"{paths['recordings']}: recording {r.id} is not one audio file"
            )
        wav.append(f"{r.id} {Path(r.sources[0].source).resolve()}\n")
    for s in sups:
        segments.append(f"{s.id} {s.recording_id} {s.start:.3f} {s.end:.3f}\n")
        text.append(f"{s.id} {s.text or ''}\n")
        utt2spk.append(f"{s.id} {s.speaker or s.id}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (
        ("wav.scp", wav),
        ("segments", segments),
        ("text", text),
        ("utt2spk", utt2spk),
    ):
        (out_dir / name).write_text("".join(lines))
    return len(segments)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifests", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--part", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        n = write_kaldi_data_dir(args.manifests, args.prefix, args.part, args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {n} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
