"""Log-mel filterbank features for lhotse manifests, stored as lilcom-compressed cuts.

Usage::

    python -m q4asr.data.features --manifests data/manifests --out-dir data/fbank \\
        --prefix synth --parts train dev test test_heldout [--num-mel-bins 80] [--nj 1] \\
        [--speed-perturb 0.9 1.1] [--volume-perturb 0.3 3] [--reverb] \\
        [--noise-snr 20 10] [--babble-snr 15] [--augment-seed 0] [--perturb-parts train] \\
        [--mux-parts train-clean-100 train-other-500 --mux-name train]

reads ``<manifests>/<prefix>_{recordings,supervisions}_<part>.jsonl.gz`` and writes
``<out-dir>/<prefix>_cuts_<part>.jsonl.gz`` with features in
``<out-dir>/<prefix>_feats_<part>[_<job>].lca``. Recordings at another sampling rate
are resampled to 16 kHz; an unreadable recording is logged by id and left out.

Every cut of the ``--perturb-parts`` gets augmented copies beside it, each made by
lhotse and marked by a cut-id suffix (:func:`augmented_copies`, :class:`Augmentation`):

- ``--speed-perturb F...``: one copy per factor, ``_sp<F>``, audio played F times
  faster (lhotse ``perturb_speed``: tempo and pitch change together, duration / F);
- ``--volume-perturb F...``: one copy per gain, ``_vp<F>`` (lhotse ``perturb_volume``).
  A gain adds a constant to every log-mel value, which the model's per-utterance
  mean and variance normalisation removes but where the audio is digital silence:
  on the synth test cuts the normalised features of ``_vp0.5`` moved by 0.02-0.04 on
  average, those of ``_noise20`` by 0.4-0.6;
- ``--reverb``: one copy, ``_rvb``, convolved with a simulated room impulse response
  (lhotse ``reverb_rir``, output at the input's energy). lhotse's own RIR generator
  needs torchaudio, which does not import beside this torch, so the RIRs are made
  here by the statistical model of late reverberation (Polack): a direct path, then
  Gaussian noise decaying by 60 dB in T60, T60 uniform in [0.15, 0.8] s,
  direct-to-reverberant ratio uniform in [-3, 12] dB; :data:`NUM_RIRS` of them are
  written as wav files with a lhotse Recording manifest, and each cut draws one;
- ``--noise-snr DB...``: one copy per SNR, ``_noise<DB>``, with stationary Gaussian
  noise mixed in at that SNR (lhotse ``CutSet.mix``): a random stretch of one of three
  30 s recordings of white, pink (1/f) and brown (1/f^2, flat below 50 Hz) noise,
  written as wav files with a Recording manifest (no noise corpus is at hand offline);
- ``--babble-snr DB...``: one copy per SNR, ``_babble<DB>``, with other cuts of the
  same part mixed in at that SNR as babble (lhotse ``CutSet.mix``, as many as cover
  the cut; their transcripts are not kept; a cut may draw itself, with chance 1/N).

Every copy is a pure function of ``--augment-seed`` and the cuts. Copies are of the
clean cuts (not of each other); the noise and babble copies are mixed before their
features are computed, so they keep features only, no recording (training on
precomputed features, or Shar shards of features, can use them; on-the-fly features
cannot). Reverb, noise and babble need 16 kHz audio. The RIR and noise files are in
``<out-dir>/augment/seed<N>/``. lhotse's tempo perturbation (pitch kept) runs
torchaudio's sox effects, and torchaudio does not import beside this torch; lhotse
has no pitch perturbation: neither is offered here.

``--mux-parts`` then writes ``<out-dir>/<prefix>_cuts_<mux-name>.jsonl.gz``: the cuts
of those parts interleaved at random by lhotse's lazy ``CutSet.mux``, each part
weighted by its hours of speech, so a training set of several corpora streams from
their own feature files without a copy.

Decoding and transcription compute the same features on the fly with
:func:`fbank_extractor`; :data:`FEATURE_CONFIG` is stored in exported models.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from lhotse import (
    CutSet,
    Fbank,
    FbankConfig,
    LilcomChunkyWriter,
    Recording,
    RecordingSet,
    load_manifest,
)
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from q4asr.data.audio import resample
from q4asr.utils import atomic_write, setup_logging

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


NUM_RIRS = 100  # simulated rooms for --reverb
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1/f^a
NOISE_SECONDS = 30.0


@dataclass(frozen=True)
class Augmentation:
    """The augmented copies of a part's cuts (see the module docstring); validated on
    construction. Sequences become tuples of floats.

    ``speed_perturb``: factors in [0.5, 2], != 1; ``volume_perturb``: gains in
    [0.05, 20], != 1; ``reverb``: one reverberated copy; ``noise_snr`` and
    ``babble_snr``: SNRs in dB, in [-10, 60]; ``seed``: every random draw.
    """

    speed_perturb: Sequence[float] = ()
    volume_perturb: Sequence[float] = ()
    reverb: bool = False
    noise_snr: Sequence[float] = ()
    babble_snr: Sequence[float] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        bounds = {
            "speed_perturb": (0.5, 2.0, "factors in [0.5, 2] and != 1"),
            "volume_perturb": (0.05, 20.0, "gains in [0.05, 20] and != 1"),
            "noise_snr": (-10.0, 60.0, "SNRs in [-10, 60] dB"),
            "babble_snr": (-10.0, 60.0, "SNRs in [-10, 60] dB"),
        }
        for name, (lo, hi, allowed) in bounds.items():
            values = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, values)
            for v in values:
                if not lo <= v <= hi or (name.endswith("perturb") and v == 1.0):
                    raise ValueError(f"{name} {v:g}: use {allowed}")
            if len(set(values)) < len(values):
                raise ValueError(
                    f"{name} {' '.join(f'{v:g}' for v in values)}: a value given "
                    "twice would give two copies the same cut ids"
                )
        if not isinstance(self.reverb, bool):
            raise ValueError(f"reverb must be True or False, got {self.reverb!r}")

    @property
    def num_copies(self) -> int:
        """How many augmented copies of every cut."""
        return (
            len(self.speed_perturb)
            + len(self.volume_perturb)
            + int(self.reverb)
            + len(self.noise_snr)
            + len(self.babble_snr)
        )

    def __str__(self) -> str:
        on = [f for f in fields(self) if f.name != "seed" and getattr(self, f.name)]
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in on) or "none"


def _seed(*parts: object) -> int:
    """A 32-bit seed from ``parts`` (stable across processes, unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def _write_wav(path: Path, samples: np.ndarray, sampling_rate: int) -> Recording:
    """Write ``samples: (S,) float`` as a float wav (atomically); its Recording."""
    data = samples.astype(np.float32)
    atomic_write(
        path, lambda tmp: sf.write(tmp, data, sampling_rate, "FLOAT", format="WAV")
    )
    return Recording.from_file(path, recording_id=path.stem)


def room_impulse_response(
    rng: np.random.Generator, sampling_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """One simulated RIR, ``(S,) float``: 1 at sample 0 (the direct path), then after a
    1-10 ms gap Gaussian noise decaying by 60 dB in T60 (uniform in [0.15, 0.8] s),
    scaled to a direct-to-reverberant energy ratio uniform in [-3, 12] dB."""
    t60 = rng.uniform(0.15, 0.8)
    drr_db = rng.uniform(-3.0, 12.0)
    gap = int(rng.uniform(0.001, 0.01) * sampling_rate)
    n = np.arange(int(np.ceil(t60 * sampling_rate)))
    tail = rng.standard_normal(len(n)) * np.exp(-6.9078 * n / (t60 * sampling_rate))
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    h = np.concatenate([[1.0], np.zeros(gap), tail])
    # lhotse aligns the output on the RIR's largest sample: it must be the direct path
    assert np.abs(h[1:]).max() < h[0], np.abs(h[1:]).max()
    return h


def coloured_noise(
    num_samples: int,
    exponent: float,
    rng: np.random.Generator,
    sampling_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink,
    2 brown), flat below 50 Hz, no DC; ``(num_samples,) float`` at RMS 0.05."""
    spec = rng.standard_normal(num_samples // 2 + 1) + 1j * rng.standard_normal(
        num_samples // 2 + 1
    )
    f = np.fft.rfftfreq(num_samples, 1.0 / sampling_rate)
    spec *= np.maximum(f, 50.0) ** (-exponent / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, num_samples)
    return 0.05 * x / np.sqrt(np.mean(x**2))


def write_augmentation_audio(
    work_dir: str | Path, seed: int
) -> dict[str, RecordingSet]:
    """Write the simulated RIRs and the noise recordings of ``seed`` under
    ``work_dir`` (wav files, and ``{rir,noise}_recordings.jsonl.gz``), the same
    files for the same seed; returns ``{"rir": ..., "noise": ...}``."""
    work_dir = Path(work_dir)
    rng = np.random.default_rng(_seed(seed, "rir"))
    rirs = RecordingSet.from_recordings(
        _write_wav(
            work_dir / "rir" / f"rir_{i:03d}.wav",
            room_impulse_response(rng),
            SAMPLE_RATE,
        )
        for i in range(NUM_RIRS)
    )
    noises = RecordingSet.from_recordings(
        _write_wav(
            work_dir / "noise" / f"noise_{name}.wav",
            coloured_noise(
                int(NOISE_SECONDS * SAMPLE_RATE),
                exponent,
                np.random.default_rng(_seed(seed, "noise", name)),
            ),
            SAMPLE_RATE,
        )
        for name, exponent in NOISE_COLOURS.items()
    )
    out = {"rir": rirs, "noise": noises}
    for kind, recs in out.items():
        recs.to_file(work_dir / f"{kind}_recordings.jsonl.gz")
    return out


def _with_suffix(cut: Cut, suffix: str) -> Cut:
    """``cut`` with ``suffix`` added to its id and its supervisions' ids."""
    sups = [fastcopy(s, id=s.id + suffix) for s in cut.supervisions]
    return fastcopy(cut, id=cut.id + suffix, supervisions=sups)


def _reverberate(cut: Cut, rirs: list[Recording], seed: int) -> Cut:
    rir = rirs[random.Random(_seed(seed, "rvb", cut.id)).randrange(len(rirs))]
    return cut.reverb_rir(rir_recording=rir)


def _mixed_copy(
    cuts: CutSet, others: CutSet, snr: float, suffix: str, seed: int
) -> CutSet:
    """``cuts`` (ids + ``suffix``) with random stretches of ``others`` mixed in at
    ``snr`` dB until each is covered (lhotse ``CutSet.mix``, seeded)."""
    return cuts.map(partial(_with_suffix, suffix=suffix)).mix(
        others,
        snr=snr,
        preserve_id="left",
        seed=_seed(seed, suffix),
        random_mix_offset=True,
    )


def augmented_copies(
    cuts: CutSet, augment: Augmentation, work_dir: str | Path
) -> list[tuple[str, CutSet]]:
    """(cut-id suffix, augmented copy of ``cuts``) for every copy ``augment`` asks for,
    in the order speed, volume, reverb, noise, babble. The copies are lazy: iterate
    each once (a second pass of a mixed copy draws other noise). RIR and noise files
    go to ``work_dir`` (:func:`write_augmentation_audio`); ValueError when reverb,
    noise or babble is asked of cuts not at 16 kHz."""
    copies = [(f"_sp{f}", cuts.perturb_speed(f)) for f in augment.speed_perturb]
    copies += [(f"_vp{f}", cuts.perturb_volume(f)) for f in augment.volume_perturb]
    if not (augment.reverb or augment.noise_snr or augment.babble_snr):
        return copies
    rates = {c.sampling_rate for c in cuts}
    if rates != {SAMPLE_RATE}:
        raise ValueError(
            f"reverb, noise_snr and babble_snr need {SAMPLE_RATE} Hz audio, these "
            f"cuts are at {sorted(rates)} Hz"
        )
    audio = write_augmentation_audio(work_dir, augment.seed)
    if augment.reverb:
        reverb = partial(_reverberate, rirs=list(audio["rir"]), seed=augment.seed)
        copies.append(("_rvb", cuts.map(reverb)))
    noise = CutSet.from_cuts(r.to_cut() for r in audio["noise"])
    for snr in augment.noise_snr:
        suffix = f"_noise{snr:g}"
        copies.append((suffix, _mixed_copy(cuts, noise, snr, suffix, augment.seed)))
    babble = cuts.drop_supervisions().to_eager()
    for snr in augment.babble_snr:
        suffix = f"_babble{snr:g}"
        copies.append((suffix, _mixed_copy(cuts, babble, snr, suffix, augment.seed)))
    return copies


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
                what = (  # a mixed cut has several recordings
                    f"recording {cut.recording_id}"
                    if hasattr(cut, "recording_id")
                    else f"cut {cut.id}"
                )
                failures.append(
                    f"{what}: unreadable, skipped "
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
    augment: Augmentation | None = None,
) -> tuple[Path, list[str]]:
    """Compute and store fbank features for one part; returns (cuts path, failures).

    ``augment``: the augmented copies of every cut added to the part after the
    original cuts, which are always kept (:func:`augmented_copies`; its RIR and
    noise files in ``<out_dir>/augment/seed<seed>/``).

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
    if augment is not None and augment.num_copies:
        copies = augmented_copies(
            cuts, augment, out_dir / "augment" / f"seed{augment.seed}"
        )
        log.info(
            "%s %s: %d cuts and their copies %s",
            prefix,
            part,
            len(cuts),
            " ".join(s for s, _ in copies),
        )
        # one pass over each lazy copy, so that every mixed copy is drawn once
        cuts = CutSet.from_cuts(c for cs in [cuts, *(c for _, c in copies)] for c in cs)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_jobs = max(1, min(num_jobs, len(cuts)))
    if num_jobs == 1:
        results = [
            _compute_job(cuts, out_dir / f"{prefix}_feats_{part}.lca", num_mel_bins)
        ]
    else:
        splits = cuts.split(num_jobs)
        # one thread per job: jobs that each spread over every core contend for them
        # (7.5x slower on 2 cores than with one thread each)
        with ProcessPoolExecutor(
            num_jobs, initializer=torch.set_num_threads, initargs=(1,)
        ) as ex:
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
    p.add_argument("--volume-perturb", type=float, nargs="*", default=[],
                   help="volume gains added to the --perturb-parts (e.g. 0.3 3)")
    p.add_argument("--reverb", action="store_true",
                   help="add a copy with simulated room reverberation")
    p.add_argument("--noise-snr", type=float, nargs="*", default=[],
                   help="SNRs (dB) of copies with white/pink/brown noise (e.g. 20 10)")
    p.add_argument("--babble-snr", type=float, nargs="*", default=[],
                   help="SNRs (dB) of copies with other cuts of the part mixed in")
    p.add_argument("--augment-seed", type=int, default=0,
                   help="seed of every augmentation draw")
    p.add_argument("--perturb-parts", nargs="*", default=[],
                   help="parts that get the augmented copies")
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
    try:
        augment = Augmentation(
            speed_perturb=args.speed_perturb,
            volume_perturb=args.volume_perturb,
            reverb=args.reverb,
            noise_snr=args.noise_snr,
            babble_snr=args.babble_snr,
            seed=args.augment_seed,
        )
    except ValueError as e:  # name the option as it was given
        p.error(f"--{str(e).replace('_', '-', 1)}")
    if augment.num_copies and not args.perturb_parts:
        p.error(f"augmentation ({augment}) given without --perturb-parts")
    setup_logging()
    for part in args.parts:
        compute_fbank(
            args.manifests, args.out_dir, args.prefix, part, args.num_mel_bins, args.nj,
            augment=augment if part in args.perturb_parts else None,
        )
    if args.mux_parts:
        mux_cuts(
            [args.out_dir / f"{args.prefix}_cuts_{q}.jsonl.gz" for q in args.mux_parts],
            args.out_dir / f"{args.prefix}_cuts_{args.mux_name}.jsonl.gz",
        )


if __name__ == "__main__":
    main()
