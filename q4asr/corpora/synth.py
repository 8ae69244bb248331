"""A synthetic English speech corpus made offline with Debian's speech synthesisers.

Sentences come from :mod:`q4asr.corpora.text` (WordNet examples, vocabulary-capped) and
are split by *sentence*: no test sentence is in train or dev, no dev sentence in
train. ``--num-train-glosses N`` adds N train utterances of WordNet definitions made
of the same words (none of them a sentence of any split). Each utterance is spoken by
one voice of espeak-ng, flite or festival (or SVOX Pico, with ``--engines``) with a
speaker-level speed/pitch variation
plus a small per-utterance jitter, then resampled to 16 kHz mono 16-bit with sox and
peak-normalised to a random level.

Speakers: a speaker is a voice plus one of ``NUM_VARIATIONS`` variations
(``espeak-en-us+f2-v1``). Voices are split in two disjoint groups:

- seen (train, dev, test): espeak-ng languages ``ESPEAK_LANGS`` with variants
  ``ESPEAK_VARIANTS_SEEN`` (``--espeak-variants all``: every variant espeak-ng has
  installed but the held-out ones, about 100); flite ``FLITE_SEEN``; festival
  ``FESTIVAL_SEEN``;
- held out (``test_heldout`` only): espeak-ng variants ``ESPEAK_VARIANTS_HELDOUT``
  (in any language); flite ``FLITE_HELDOUT``; festival ``FESTIVAL_HELDOUT``.

``test_heldout`` holds the test sentences again, spoken by held-out voices.

``--engines`` chooses the engines (default espeak flite festival). ``pico`` is SVOX
Pico through the Python package ``ttspico`` (an HMM synthesiser, two English voices,
``PICO_SEEN``, no held-out one): ``--engines espeak flite pico`` with
``--heldout-engine festival`` puts a third engine in festival's place in training.
Without ``--engines`` the corpus is the same as before the option existed.

``--heldout-engine ENGINE`` (espeak, flite or festival) keeps every voice of that
engine, seen or held out, out of train, dev, test and test_heldout, and adds a split
``test_engine``: the test sentences again, spoken by that engine's voices (accuracy on
a synthesiser the model never heard). The other engines then share its utterances in
proportion to their weights. Without it the corpus is the same as before the option
existed, for the same seed: the same voices, speeds and pitches for every utterance.

Usage::

    python -m q4asr.corpora.synth --out-dir data/synth --num-train 12000 \\
        --num-dev 300 --num-test 300 --seed 1 --nj 2 [--vocab-size 3000] \\
        [--num-train-glosses 12000] [--heldout-engine festival] \\
        [--espeak-variants all] [--engines espeak flite festival pico]

Outputs ``OUT/wav/<split>/<utt>.flac`` and
``OUT/manifests/synth_{recordings,supervisions}_<split>.jsonl.gz``. The run is
resumable (an existing readable audio file is kept) and deterministic for a seed
(same sentences, voices, speeds and pitches). A synthesiser failure for one
utterance is logged and that utterance left out.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from lhotse import (
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
    validate_recordings_and_supervisions,
)
from tqdm import tqdm

from q4asr.corpora.text import TextConfig, load_glosses, load_sentences
from q4asr.utils import setup_logging

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# every split a corpus can have; test_engine only with a held-out engine
SPLITS = ("train", "dev", "test", "test_heldout", "test_engine")
NUM_VARIATIONS = 3

ESPEAK_LANGS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS_SEEN = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "f1",
    "f2",
    "f3",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt5",
    "max",
    "john",
    "edward",
    "linda",
    "david",
)
ESPEAK_VARIANTS_HELDOUT = ("m7", "f4", "klatt4")
# "demo": the variants above; "all": every variant espeak-ng has installed (about 100,
# robots and whispers included) but the held-out ones
ESPEAK_VARIANT_SETS = ("demo", "all")
FLITE_SEEN = ("kal", "kal16", "rms", "slt")
FLITE_HELDOUT = ("awb",)
FESTIVAL_SEEN = ("kal_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_HELDOUT = ("ked_diphone",)
PICO_SEEN = ("en-US", "en-GB")  # SVOX Pico's English voices (lh0 and kh0)

# Fraction of utterances per engine, before dropping engines that are not installed.
ENGINE_WEIGHTS = {"espeak": 0.55, "flite": 0.3, "festival": 0.15, "pico": 0.15}
ENGINES = tuple(ENGINE_WEIGHTS)
DEFAULT_ENGINES = ("espeak", "flite", "festival")
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)


@dataclass(frozen=True)
class Voice:
    """One synthesiser voice: ``engine`` in :data:`ENGINES`, engine voice name."""

    engine: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.name}"


@dataclass(frozen=True)
class UttSpec:
    """Everything needed to synthesise one utterance, fixed by the seed."""

    utt_id: str
    split: str
    text: str  # upper-case transcript; the synthesiser reads it lower-cased
    engine: str
    voice: str
    speaker: str
    speed: float  # > 1 is faster
    pitch: float  # espeak: 0..99; flite/festival/pico: sox pitch shift in cents
    peak_db: float  # peak level after normalisation, dB below full scale
    path: str


def available_voices(engine: str, names: Sequence[str]) -> list[Voice]:
    """Those of ``names`` that are installed for ``engine`` (checked, not assumed)."""
    if engine == "espeak":
        if shutil.which("espeak-ng") is None:
            return []
        return [Voice("espeak", n) for n in names]
    if engine == "flite":
        if shutil.which("flite") is None:
            return []
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
        have = set(out.replace("Voices available:", "").split())
        return [Voice("flite", n) for n in names if n in have]
    if engine == "festival":
        if shutil.which("festival") is None:
            return []
        have = {
            p.name for d in FESTIVAL_VOICE_DIRS if d.is_dir() for p in d.glob("*/*")
        }
        return [Voice("festival", n) for n in names if n in have]
    if engine == "pico":
        voices = []
        for n in names:
            try:
                _pico_engine(n)
            except (ImportError, RuntimeError):  # no ttspico, or no language file
                continue
            voices.append(Voice("pico", n))
        return voices
    raise ValueError(f"unknown engine {engine!r}")


def _pico_engine(language: str):
    """A new SVOX Pico engine for ``language``. One per utterance: an engine's noise
    source carries on from one utterance to the next, so a reused engine would make
    an utterance's audio depend on those synthesised before it (a new one costs about
    4 ms)."""
    import ttspico

    return ttspico.TtsEngine(language)


def installed_espeak_variants() -> list[str]:
    """The voice variants espeak-ng has installed (the files of its data dir's
    ``voices/!v``), by the names ``-v LANG+NAME`` takes; [] without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        return []
    out = subprocess.run(
        ["espeak-ng", "--version"], capture_output=True, text=True, check=True
    ).stdout
    if "Data at:" not in out:
        return []
    vdir = Path(out.split("Data at:", 1)[1].strip()) / "voices" / "!v"
    if not vdir.is_dir():
        return []
    # "Mr serious" has no name -v takes
    return sorted(p.name for p in vdir.iterdir() if p.is_file() and " " not in p.name)


def voice_groups(
    espeak_langs: Sequence[str] = ESPEAK_LANGS,
    espeak_variants: str = "demo",
    engines: Sequence[str] = DEFAULT_ENGINES,
) -> tuple[dict[str, list[Voice]], dict[str, list[Voice]]]:
    """(seen, held-out) voices per engine of ``engines``, only engines and voices that
    are installed. ``espeak_variants``: one of :data:`ESPEAK_VARIANT_SETS` (the seen
    variants). ValueError for an engine beyond :data:`DEFAULT_ENGINES` (asked for
    explicitly) with no voice installed."""

    def espeak(variants: Sequence[str]) -> list[str]:
        return [f"{lang}+{v}" for lang in espeak_langs for v in variants]

    if espeak_variants == "all":
        seen_variants = [
            v for v in installed_espeak_variants() if v not in ESPEAK_VARIANTS_HELDOUT
        ]
    else:
        seen_variants = list(ESPEAK_VARIANTS_SEEN)
    seen_names = {
        "espeak": espeak(seen_variants),
        "flite": FLITE_SEEN,
        "festival": FESTIVAL_SEEN,
        "pico": PICO_SEEN,
    }
    held_names = {
        "espeak": espeak(ESPEAK_VARIANTS_HELDOUT),
        "flite": FLITE_HELDOUT,
        "festival": FESTIVAL_HELDOUT,
        "pico": (),
    }
    seen = {e: available_voices(e, seen_names[e]) for e in engines}
    held = {e: available_voices(e, held_names[e]) for e in engines}
    for e in engines:
        if e not in DEFAULT_ENGINES and not seen[e]:
            raise ValueError(
                f"--engines {e}: no voice of {e} is installed on this machine "
                "(SVOX Pico comes with the Python package ttspico; tools/install.sh "
                "installs it)"
            )
    seen = {k: v for k, v in seen.items() if v}
    held = {k: v for k, v in held.items() if v}
    if not seen or not held:
        raise RuntimeError(
            "no speech synthesiser found (espeak-ng, flite or festival): "
            "install them with tools/install.sh"
        )
    return seen, held


def _check_engine(name: str, option: str = "--heldout-engine") -> str:
    if name not in ENGINES:
        raise ValueError(
            f"{option} {name!r}: unknown engine, expected one of {', '.join(ENGINES)}"
        )
    return name


def split_voices(
    heldout_engine: str | None = None,
    espeak_variants: str = "demo",
    engines: Sequence[str] = DEFAULT_ENGINES,
) -> tuple[dict[str, list[Voice]], dict[str, list[Voice]], list[Voice]]:
    """(seen, held-out, held-out engine's) voices: :func:`voice_groups` without the
    voices of ``heldout_engine``, and those voices (seen ones first; [] for None).
    The held-out engine need not be one of ``engines``.

    ValueError, naming the option, when ``heldout_engine`` is not an engine, has no
    voice installed, or is the only engine with seen or with held-out voices.
    """
    if heldout_engine is not None and heldout_engine not in engines:
        engines = (*engines, heldout_engine)
    seen, held = voice_groups(espeak_variants=espeak_variants, engines=engines)
    if heldout_engine is None:
        return seen, held, []
    out = _check_engine(heldout_engine)
    engine_voices = seen.get(out, []) + held.get(out, [])
    if not engine_voices:
        raise ValueError(
            f"--heldout-engine {out}: no voice of {out} is installed on this "
            "machine (tools/install.sh installs espeak-ng, flite and festival)"
        )
    seen = {e: v for e, v in seen.items() if e != out}
    held = {e: v for e, v in held.items() if e != out}
    if not seen or not held:
        raise ValueError(
            f"--heldout-engine {out}: no other engine has "
            f"{'seen' if not seen else 'held-out'} voices installed, so none is "
            "left for train, dev, test and test_heldout"
        )
    return seen, held, engine_voices


def _variation(seed: int, voice: Voice, k: int) -> tuple[float, float]:
    """Speaker-level (speed factor, pitch) for variation ``k`` of ``voice``."""
    rng = random.Random(f"{seed}:{voice.id}:{k}")
    speed = rng.uniform(0.8, 1.25)
    pitch = rng.uniform(25, 75) if voice.engine == "espeak" else rng.uniform(-300, 300)
    return speed, pitch


@dataclass
class SynthConfig:
    """Corpus size, seed and vocabulary; validated on construction."""

    num_train: int
    num_dev: int
    num_test: int
    seed: int = 0
    vocab_size: int = 3000
    min_words: int = 3
    max_words: int = 14
    audio_format: str = "flac"
    heldout_engine: str | None = None  # an engine kept out of training (test_engine)
    num_train_glosses: int = 0  # train utterances of WordNet definitions, added
    espeak_variants: str = "demo"  # seen espeak-ng variants: ESPEAK_VARIANT_SETS
    engines: tuple[str, ...] = DEFAULT_ENGINES  # the synthesisers: ENGINES

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test", "num_train_glosses"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if self.num_train == 0:
            raise ValueError("SynthConfig.num_train must be > 0")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(
                f"SynthConfig.audio_format must be 'flac' or 'wav', got {self.audio_format!r}"
            )
        if self.heldout_engine is not None:
            _check_engine(self.heldout_engine)
        if self.espeak_variants not in ESPEAK_VARIANT_SETS:
            raise ValueError(
                f"--espeak-variants {self.espeak_variants!r}: expected one of "
                f"{', '.join(ESPEAK_VARIANT_SETS)}"
            )
        self.engines = tuple(self.engines)
        for e in self.engines:
            _check_engine(e, "--engines")
        if not self.engines or len(set(self.engines)) != len(self.engines):
            raise ValueError(
                f"--engines {' '.join(self.engines)!r}: expected one or more "
                "different engines"
            )
        TextConfig(self.vocab_size, self.min_words, self.max_words)  # validates those


def make_specs(
    config: SynthConfig,
    out_dir: str | Path,
    sentences: Sequence[str] | None = None,
    glosses: Sequence[str] | None = None,
) -> dict[str, list[UttSpec]]:
    """The utterances of every split; a pure function of ``config``, ``sentences``
    and ``glosses``.

    ``sentences`` defaults to :func:`q4asr.corpora.text.load_sentences`. Test sentences
    are the first ``num_test`` of the shuffled list, dev the next ``num_dev``, train
    cycles through the rest (reshuffled each pass) when it needs more utterances
    than sentences. ``config.num_train_glosses`` more train utterances follow them:
    the first of ``glosses`` (default :func:`q4asr.corpora.text.load_glosses`,
    definitions whose words are all among the sentences' words, none of them a
    sentence); the utterances before them are the same whatever their number.
    ValueError when there are fewer glosses than asked for. With
    ``config.heldout_engine`` the result also has ``"test_engine"`` (the test sentences
    spoken by that engine's seen and held-out voices) and no other split has a voice
    of that engine; ValueError when that engine has no voice installed, or when no
    other engine is left for the other splits.
    """
    out_dir = Path(out_dir).resolve()
    if sentences is None:
        sentences = load_sentences(
            TextConfig(config.vocab_size, config.min_words, config.max_words),
            seed=config.seed,
        )
    sentences = list(sentences)
    n_eval = config.num_test + config.num_dev
    if len(sentences) <= n_eval:
        raise ValueError(
            f"only {len(sentences)} sentences for {config.num_test} test + "
            f"{config.num_dev} dev and some train; raise --vocab-size"
        )
    test_s = sentences[: config.num_test]
    dev_s = sentences[config.num_test : n_eval]
    train_pool = sentences[n_eval:]
    rng = random.Random(config.seed)
    train_s: list[str] = []
    while len(train_s) < config.num_train:
        batch = list(train_pool)
        rng.shuffle(batch)
        train_s.extend(batch)
    train_s = train_s[: config.num_train]
    if config.num_train_glosses:
        if glosses is None:
            glosses = load_glosses(
                {w for t in sentences for w in t.split()},
                set(sentences),
                config.min_words,
                config.max_words,
                seed=config.seed,
            )
        if len(glosses) < config.num_train_glosses:
            raise ValueError(
                f"--num-train-glosses {config.num_train_glosses}: only "
                f"{len(glosses)} WordNet definitions are within the corpus's words"
            )
        train_s += list(glosses[: config.num_train_glosses])

    seen, held, engine_voices = split_voices(
        config.heldout_engine, config.espeak_variants, config.engines
    )

    def assign(
        split: str, texts: list[str], groups: dict[str, list[Voice]]
    ) -> list[UttSpec]:
        engines = sorted(groups)
        weights = [ENGINE_WEIGHTS[e] for e in engines]
        srng = random.Random(f"{config.seed}:{split}")
        specs = []
        for i, text in enumerate(texts):
            engine = srng.choices(engines, weights)[0]
            voice = srng.choice(groups[engine])
            k = srng.randrange(NUM_VARIATIONS)
            speed, pitch = _variation(config.seed, voice, k)
            speed *= srng.uniform(0.95, 1.05)
            pitch += (
                srng.uniform(-5, 5) if engine == "espeak" else srng.uniform(-50, 50)
            )
            utt_id = f"{split}-{i:06d}"
            specs.append(
                UttSpec(
                    utt_id=utt_id,
                    split=split,
                    text=text,
                    engine=engine,
                    voice=voice.name,
                    speaker=f"{voice.id}-v{k}",
                    speed=round(speed, 3),
                    pitch=round(pitch, 1),
                    peak_db=round(srng.uniform(1.0, 8.0), 1),
                    path=str(
                        out_dir / "wav" / split / f"{utt_id}.{config.audio_format}"
                    ),
                )
            )
        return specs

    by_split = {
        "train": assign("train", train_s, seen),
        "dev": assign("dev", dev_s, seen),
        "test": assign("test", test_s, seen),
        "test_heldout": assign("test_heldout", test_s, held),
    }
    if engine_voices:
        by_split["test_engine"] = assign(
            "test_engine", test_s, {config.heldout_engine: engine_voices}
        )
    return by_split


def _audio_ok(path: str | Path) -> bool:
    """True when ``path`` exists and its header reads with at least one frame."""
    try:
        return sf.info(str(path)).frames > 0
    except Exception:  # unreadable or missing: synthesise again
        return False


def _sox_finish(raw: Path, spec: UttSpec) -> None:
    """Resample ``raw`` to 16 kHz mono 16-bit, shift pitch, normalise; atomic write."""
    final = Path(spec.path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp{final.suffix}")
    effects: list[str] = []
    if spec.engine != "espeak" and abs(spec.pitch) >= 1:
        effects += ["pitch", f"{spec.pitch:.0f}"]
    effects += ["rate", str(SAMPLE_RATE), "norm", f"-{spec.peak_db}"]
    # -R: dither (to 16 bits) from a fixed seed, so the same spec gives the same audio
    cmd = ["sox", "-V1", "-R", str(raw), "-c", "1", "-b", "16", str(tmp), *effects]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    if not _audio_ok(tmp) or sf.info(str(tmp)).duration < 0.1:
        tmp.unlink(missing_ok=True)
        raise RuntimeError("synthesiser produced no audio")
    os.replace(tmp, final)


def _run_espeak(spec: UttSpec, raw: Path) -> None:
    wpm = max(80, min(450, round(175 * spec.speed)))
    pitch = max(0, min(99, round(spec.pitch)))
    cmd = [
        "espeak-ng",
        "-v",
        spec.voice,
        "-s",
        str(wpm),
        "-p",
        str(pitch),
        "-w",
        str(raw),
        spec.text.lower(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _run_flite(spec: UttSpec, raw: Path) -> None:
    cmd = [
        "flite",
        "-voice",
        spec.voice,
        "--setf",
        f"duration_stretch={1.0 / spec.speed:.3f}",
        "-t",
        spec.text.lower(),
        "-o",
        str(raw),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _run_pico(spec: UttSpec, raw: Path) -> None:
    engine = _pico_engine(spec.voice)
    engine.rate = max(20, min(500, round(100 * spec.speed)))  # Pico's limits
    # the text goes into Pico's markup: no tags or entities of its own
    text = spec.text.lower().replace("<", " ").replace(">", " ").replace("&", " ")
    audio = engine.speak(text)
    if not audio:
        raise RuntimeError("pico wrote no audio")
    samples = np.frombuffer(audio, dtype="<i2")
    sf.write(str(raw), samples, SAMPLE_RATE, subtype="PCM_16")


def _run_festival(specs: Sequence[UttSpec], raws: Sequence[Path], tmp: Path) -> None:
    """One festival process for several utterances of one voice (start-up is slow)."""
    voice = specs[0].voice
    assert all(p.voice == voice for p in specs), "one voice per festival batch"
    lines = [f"(voice_{voice})"]
    for p, raw in zip(specs, raws):
        text = p.text.lower().replace("\\", "").replace('"', "")
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / p.speed:.3f})")
        lines.append(
            f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{raw}" \'riff)'
        )
    script = tmp / f"batch_{specs[0].utt_id}.scm"
    script.write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["festival", "-b", str(script)],
        capture_output=True,
        timeout=60 + 10 * len(specs),
    )


def synth_chunk(
    specs: Sequence[UttSpec],
) -> list[tuple[UttSpec, Recording | None, str]]:
    """Synthesise ``specs`` (skipping those already on disk).

    Returns (spec, recording or None, error message) per spec; never raises for
    a single utterance's failure.
    """
    results: list[tuple[UttSpec, Recording | None, str]] = []
    todo = [p for p in specs if not _audio_ok(p.path)]
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="q4asr_synth_") as td:
        tmp = Path(td)
        raw = {p.utt_id: tmp / f"{p.utt_id}.raw.wav" for p in todo}
        # festival: one process per voice, then one retry each for what is missing
        fest: dict[str, list[UttSpec]] = {}
        for p in todo:
            if p.engine == "festival":
                fest.setdefault(p.voice, []).append(p)
        for group in fest.values():
            try:
                _run_festival(group, [raw[p.utt_id] for p in group], tmp)
            except Exception as e:  # a timeout: retried one by one below
                log.debug("festival batch failed: %s", e)
            for p in group:
                if not raw[p.utt_id].exists():
                    try:
                        _run_festival([p], [raw[p.utt_id]], tmp)
                    except Exception as e:
                        errors[p.utt_id] = f"festival: {e}"
        for p in todo:
            try:
                if p.engine == "espeak":
                    _run_espeak(p, raw[p.utt_id])
                elif p.engine == "flite":
                    _run_flite(p, raw[p.utt_id])
                elif p.engine == "pico":
                    _run_pico(p, raw[p.utt_id])
                if not raw[p.utt_id].exists():
                    raise RuntimeError(
                        errors.get(p.utt_id, f"{p.engine} wrote no audio")
                    )
                _sox_finish(raw[p.utt_id], p)
            except subprocess.CalledProcessError as e:
                msg = (e.stderr or b"").decode(errors="replace").strip().splitlines()
                errors[p.utt_id] = (
                    f"{e.cmd[0]} failed: {msg[-1] if msg else e.returncode}"
                )
            except Exception as e:
                errors[p.utt_id] = f"{type(e).__name__}: {e}"
    for p in specs:
        if p.utt_id in errors:
            results.append((p, None, errors[p.utt_id]))
            continue
        try:
            results.append((p, Recording.from_file(p.path, recording_id=p.utt_id), ""))
        except Exception as e:
            results.append((p, None, f"unreadable audio: {e}"))
    return results


def _write_manifests(
    out_dir: Path, split: str, done: list[tuple[UttSpec, Recording]], prefix: str
) -> None:
    recs = RecordingSet.from_recordings(r for _, r in done)
    sups = SupervisionSet.from_segments(
        SupervisionSegment(
            id=p.utt_id,
            recording_id=p.utt_id,
            start=0.0,
            duration=r.duration,
            channel=0,
            text=p.text,
            speaker=p.speaker,
            language="English",
            custom={
                "engine": p.engine,
                "voice": p.voice,
                "speed": p.speed,
                "pitch": p.pitch,
            },
        )
        for p, r in done
    )
    validate_recordings_and_supervisions(recs, sups)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, manifest in (("recordings", recs), ("supervisions", sups)):
        path = out_dir / f"{prefix}_{kind}_{split}.jsonl.gz"
        tmp = path.with_name(f".tmp.{path.name}")
        manifest.to_file(tmp)
        os.replace(tmp, path)


def synthesize_corpus(
    config: SynthConfig,
    out_dir: str | Path,
    num_jobs: int = 1,
    sentences: Sequence[str] | None = None,
    chunk_size: int = 20,
    progress: bool = True,
    prefix: str = "synth",
) -> dict[str, float]:
    """Synthesise every split and write its manifests; returns speed statistics.

    Statistics: ``audio_s`` (seconds of audio in the manifests), ``wall_s``,
    ``x_real_time`` (audio_s / wall_s, counting only utterances synthesised in
    this call), ``num_utts``, ``num_failed``.
    """
    out_dir = Path(out_dir)
    by_split = make_specs(config, out_dir, sentences)
    all_specs = [p for s in SPLITS for p in by_split.get(s, [])]
    pre_done = {p.utt_id for p in all_specs if _audio_ok(p.path)}
    # chunks mix splits but keep festival voices together for batching
    order = sorted(all_specs, key=lambda p: (p.engine != "festival", p.voice, p.utt_id))
    chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
    results: dict[str, tuple[UttSpec, Recording]] = {}
    failed = 0
    new_audio = 0.0
    t0 = time.time()
    bar = tqdm(
        total=len(all_specs), desc="synthesising", unit="utt", disable=not progress
    )

    def collect(res: list[tuple[UttSpec, Recording | None, str]]) -> None:
        nonlocal failed, new_audio
        for p, rec, err in res:
            if rec is None:
                failed += 1
                log.warning("%s (%s %s): skipped: %s", p.utt_id, p.engine, p.voice, err)
            else:
                results[p.utt_id] = (p, rec)
                if p.utt_id not in pre_done:
                    new_audio += rec.duration
        bar.update(len(res))

    if num_jobs <= 1:
        for c in chunks:
            collect(synth_chunk(c))
    else:
        with ProcessPoolExecutor(num_jobs) as ex:
            futures = [ex.submit(synth_chunk, c) for c in chunks]
            for f in as_completed(futures):
                collect(f.result())
    bar.close()
    wall = time.time() - t0
    audio = 0.0
    for split in SPLITS:
        specs = by_split.get(split, [])
        done = [results[p.utt_id] for p in specs if p.utt_id in results]
        if not done:
            if specs:
                raise RuntimeError(
                    f"{out_dir}: no utterance of {split} was synthesised"
                )
            continue
        audio += sum(r.duration for _, r in done)
        _write_manifests(out_dir / "manifests", split, done, prefix)
        log.info(
            "%s: %d utterances, %.2f h",
            split,
            len(done),
            sum(r.duration for _, r in done) / 3600,
        )
    stats = {
        "audio_s": audio,
        "wall_s": wall,
        "num_utts": float(len(results)),
        "num_failed": float(failed),
        "new_audio_s": new_audio,
        "x_real_time": new_audio / wall if wall > 0 else 0.0,
    }
    log.info(
        "synthesised %.1f s of new audio in %.1f s (%.0fx real time), %d failed",
        new_audio,
        wall,
        stats["x_real_time"],
        failed,
    )
    return stats


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-dev", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nj", type=int, default=1, help="parallel synthesis processes")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=3000,
        help="keep sentences whose words are all in the N most frequent",
    )
    p.add_argument(
        "--num-train-glosses",
        type=int,
        default=0,
        help="add N train utterances of WordNet definitions whose words are all\n"
        "in the sentences' vocabulary (more distinct training text; dev and test\n"
        "stay example sentences)",
    )
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=14)
    p.add_argument("--audio-format", choices=["flac", "wav"], default="flac")
    p.add_argument(
        "--heldout-engine",
        default=None,
        metavar="ENGINE",
        help="keep every voice of this engine (espeak, flite or festival) out of\n"
        "train/dev/test/test_heldout and write split test_engine: the test\n"
        "sentences spoken by its voices (default, or '' or none: no engine held out)",
    )
    p.add_argument(
        "--espeak-variants",
        choices=ESPEAK_VARIANT_SETS,
        default="demo",
        help="the espeak-ng voice variants of train, dev and test: demo (19 of them,\n"
        "default) or all (every installed variant but the held-out ones); the\n"
        "held-out voices and test_engine stay the same",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=list(DEFAULT_ENGINES),
        metavar="ENGINE",
        help=f"the synthesisers ({', '.join(ENGINES)}; default "
        f"{' '.join(DEFAULT_ENGINES)}):\n"
        "pico (SVOX Pico, Python package ttspico) is only used when named here",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; a bad option value exits with one line naming it."""
    args = get_parser().parse_args(argv)
    setup_logging()
    heldout = args.heldout_engine
    try:
        config = SynthConfig(
            num_train=args.num_train,
            num_dev=args.num_dev,
            num_test=args.num_test,
            seed=args.seed,
            vocab_size=args.vocab_size,
            min_words=args.min_words,
            max_words=args.max_words,
            audio_format=args.audio_format,
            heldout_engine=None if heldout in (None, "", "none") else heldout,
            num_train_glosses=args.num_train_glosses,
            espeak_variants=args.espeak_variants,
            engines=tuple(args.engines),
        )
        # installed voices, before any work
        split_voices(config.heldout_engine, config.espeak_variants, config.engines)
    except ValueError as e:
        raise SystemExit(f"q4asr.corpora.synth: error: {e}") from None
    log.info("config: %s", asdict(config))
    synthesize_corpus(config, args.out_dir, num_jobs=args.nj)


if __name__ == "__main__":
    main()
