"""Log-mel filterbank features for lhotse manifests, stored as lilcom-compressed cuts.

Usage::

    python -m q4asr.data.features --manifests data/manifests --out-dir data/fbank \\
        --prefix synth --parts train dev test test_heldout [--num-mel-bins 80] [--nj 1] \\
        [--speed-perturb 0.9 1.1 --perturb-parts train] \\
        [--mux-parts train-clean-100 train-other-500 --mux-name train]

reads ``<manifests>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz`` and writes
``<out-dir>/<prefix>_cuts_<part>.jsonl.gz`` with features in
``<out-dir>/<prefix>_feats_<part>[_<job>].lca``. Recordings at another sampling rate
are resampled to 16 kHz; an unreadable recording is logged by id and left out.

``--speed-perturb`` adds speed-perturbed copies (lhotse ``perturb_speed``, cut ids
suffixed ``_sp<factor>``) of every cut of the ``--perturb-parts``. ``--mux-parts``
then writes ``<out-dir>/<prefix>_cuts_<mux-name>.jsonl.gz``: the cuts of those parts
interleaved at random by lhotse's lazy ``CutSet.mux``, each part weighted by its
hours of speech, so a training set of several corpora streams from their own feature
files without a copy.

Decoding and transcription compute the same features on the fly with
:func:`fbank_extractor`; :data:`FEATURE_CONFIG` is stored in exported models.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, load_manifest
from lhotse.utils import fastcopy

from q4asr.data.audio import resample
from q4asr.utils import setup_logging

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FEATURE_CONFIG: dict = {
    "type": "fbank",
    "library": "lhotse.Fbank",
    "sampling_rate": SAMPLE_RATE,
    "num_mel_bins": 80,
    "frame_length_s": 0.025,
    "frame_shift_s": 0.01,
    "dither": 0.0,
    "snip_edges": False,
}


def feature_config(num_mel_bins: int = 80) -> dict:
    """:data:`FEATURE_CONFIG` with ``num_mel_bins`` set (a copy)."""
    if num_mel_bins < 1:
        raise ValueError(f"num_mel_bins must be >= 1, got {num_mel_bins}")
    return {**FEATURE_CONFIG, "num_mel_bins": num_mel_bins}


def fbank_extractor(num_mel_bins: int = 80) -> Fbank:
    """lhotse's Kaldi-compatible torch ``Fbank`` at 16 kHz, as used for training.

    ``extractor.extract(samples, 16000)`` maps ``samples: (S,) float`` to
    ``(T, num_mel_bins) float32`` with T = ceil(S / 160) (10 ms frames).
    """
    cfg = feature_config(num_mel_bins)
    return Fbank(
        FbankConfig(
            sampling_rate=cfg["sampling_rate"],
            num_mel_bins=cfg["num_mel_bins"],
            frame_length=cfg["frame_length_s"],
            frame_shift=cfg["frame_shift_s"],
            dither=cfg["dither"],
            snip_edges=cfg["snip_edges"],
        )
    )


def _compute_job(
    cuts: CutSet, storage_path: Path, num_mel_bins: int
) -> tuple[CutSet, list[str]]:
    """Features for ``cuts`` in one storage file; returns (cuts, failure messages)."""
    extractor = fbank_extractor(num_mel_bins)
    out = []
    failures: list[str] = []
    with LilcomChunkyWriter(storage_path) as writer:
        for cut in cuts:
            try:
                if cut.sampling_rate == SAMPLE_RATE:
                    out.append(cut.compute_and_store_features(extractor, writer))
                else:  # lhotse's own resampling needs torchaudio or scipy
                    samples = resample(
                        torch.from_numpy(cut.load_audio()),
                        cut.sampling_rate,
                        SAMPLE_RATE,
                    )
                    feats = extractor.extract_from_samples_and_store(
                        samples.numpy(),
                        storage=writer,
                        sampling_rate=SAMPLE_RATE,
                        offset=cut.start,
                        channel=cut.channel,
                    )
                    out.append(fastcopy(cut, features=feats))
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(
                    f"recording {cut.recording_id}: unreadable, skipped "
                    f"({type(e).__name__}: {first[:200]})"
                )
    return CutSet.from_cuts(out), failures


def part_manifests(manifest_dir: str | Path, prefix: str, part: str) -> dict[str, Path]:
    """``{"recordings": path, "supervisions": path}`` of one part of a corpus
    (``<prefix>_{recordings,supervisions}_<part>.jsonl.gz``); FileNotFoundError names
    a missing one."""
    paths = {
        k: Path(manifest_dir) / f"{prefix}_{k}_{part}.jsonl.gz"
        for k in ("recordings", "supervisions")
    }
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: manifest not found")
    return paths


def compute_fbank(
    manifest_dir: str | Path,
    out_dir: str | Path,
    prefix: str,
    part: str,
    num_mel_bins: int = 80,
    num_jobs: int = 1,
    speed_perturb: Sequence[float] = (),
) -> tuple[Path, list[str]]:
    """Compute and store fbank features for one part; returns (cuts path, failures).

    ``speed_perturb``: factors (e.g. 0.9, 1.1) whose perturbed copies of every cut
    are added to the part (the original cuts are always kept).

    Raises FileNotFoundError naming the missing manifest, and RuntimeError when no
    recording of the part could be read.
    """
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    paths = part_manifests(manifest_dir, prefix, part)
    recordings = load_manifest(paths["recordings"])
    supervisions = load_manifest(paths["supervisions"])
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    if any(s.start > 0 for s in supervisions):  # Kaldi segments: one cut each
        cuts = cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
    for f in speed_perturb:
        if not 0.5 <= f <= 2.0 or f == 1.0:
            raise ValueError(f"speed_perturb factor {f}: use factors in [0.5, 2] and != 1")
    if speed_perturb:
        cuts = CutSet.from_cuts(
            c for cs in [cuts, *(cuts.perturb_speed(f) for f in speed_perturb)]
            for c in cs
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    num_jobs = max(1, min(num_jobs, len(cuts)))
    if num_jobs == 1:
        results = [
            _compute_job(cuts, out_dir / f"{prefix}_feats_{part}.lca", num_mel_bins)
        ]
    else:
        splits = cuts.split(num_jobs)
        with ProcessPoolExecutor(num_jobs) as ex:
            futs = [
                ex.submit(
                    _compute_job,
                    s,
                    out_dir / f"{prefix}_feats_{part}_{i}.lca",
                    num_mel_bins,
                )
                for i, s in enumerate(splits)
            ]
            results = [f.result() for f in futs]
    failures = [m for _, fs in results for m in fs]
    for m in failures:
        log.warning("%s %s: %s", prefix, part, m)
    done = CutSet.from_cuts(c for cs, _ in results for c in cs)
    if len(done) == 0:
        raise RuntimeError(f"{paths['recordings']}: no recording could be read")
    cuts_path = out_dir / f"{prefix}_cuts_{part}.jsonl.gz"
    tmp = cuts_path.with_name(f".tmp.{cuts_path.name}")
    done.to_file(tmp)
    os.replace(tmp, cuts_path)
    log.info(
        "%s %s: %d cuts (%d skipped) -> %s",
        prefix,
        part,
        len(done),
        len(failures),
        cuts_path,
    )
    return cuts_path, failures


def mux_cuts(
    inputs: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Interleave cut manifests with lhotse's lazy ``CutSet.mux`` into ``out``.

    ``weights`` default to each manifest's hours of speech (one streaming pass per
    manifest), so every corpus is drawn in proportion to its size until all are
    used up; every cut of every input is written exactly once. Returns
    ``{input path: hours}``. Raises FileNotFoundError naming a missing input and
    ValueError for an empty input or a duplicate cut id.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("mux_cuts: no input manifests")
    hours: dict[str, float] = {}
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: cut manifest not found")
        h = sum(c.duration for c in CutSet.from_jsonl_lazy(p)) / 3600
        if h <= 0:
            raise ValueError(f"{p}: no cuts to mux")
        hours[str(p)] = h
    if weights is None:
        weights = list(hours.values())
    if len(weights) != len(paths):
        raise ValueError(f"mux_cuts: {len(weights)} weights for {len(paths)} inputs")
    sets = [CutSet.from_jsonl_lazy(p) for p in paths]
    # lhotse's mux needs two or more inputs; one is copied as it is
    muxed = (
        CutSet.mux(*sets, weights=list(weights), seed=seed) if len(sets) > 1 else sets[0]
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp.{out.name}")
    seen: set[str] = set()
    with CutSet.open_writer(tmp) as w:
        for cut in muxed:
            if cut.id in seen:
                tmp.unlink(missing_ok=True)
                raise ValueError(f"mux_cuts: cut id {cut.id} occurs twice in {inputs}")
            seen.add(cut.id)
            w.write(cut)
    os.replace(tmp, out)
    log.info(
        "muxed %s -> %s (%d cuts)",
        ", ".join(f"{Path(p).name} {h:.3f} h" for p, h in hours.items()),
        out,
        len(seen),
    )
    return hours


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifests", required=True, type=Path, help="manifest directory")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--prefix", default="synth")
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--num-mel-bins", type=int, default=80)
    p.add_argument("--nj", type=int, default=1)
    p.add_argument("--speed-perturb", type=float, nargs="*", default=[],
                   help="speed factors added to the --perturb-parts (e.g. 0.9 1.1)")
    p.add_argument("--perturb-parts", nargs="*", default=[],
                   help="parts that get the --speed-perturb copies")
    p.add_argument("--mux-parts", nargs="*", default=[],
                   help="parts whose cuts are interleaved into --mux-name")
    p.add_argument("--mux-name", default=None,
                   help="part name of the muxed cuts (<prefix>_cuts_<mux-name>)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = get_parser()
    args = p.parse_args(argv)
    if bool(args.mux_parts) != bool(args.mux_name):
        p.error("--mux-parts and --mux-name go together")
    for q in [*args.perturb_parts, *args.mux_parts]:
        if q not in args.parts:
            p.error(f"part {q} is not one of --parts {args.parts}")
    setup_logging()
    for part in args.parts:
        sp = args.speed_perturb if part in args.perturb_parts else ()
        compute_fbank(
            args.manifests, args.out_dir, args.prefix, part, args.num_mel_bins, args.nj,
            speed_perturb=sp,
        )
    if args.mux_parts:
        mux_cuts(
            [args.out_dir / f"{args.prefix}_cuts_{q}.jsonl.gz" for q in args.mux_parts],
            args.out_dir / f"{args.prefix}_cuts_{args.mux_name}.jsonl.gz",
        )


if __name__ == "__main__":
    main()
