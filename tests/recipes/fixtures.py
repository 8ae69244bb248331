"""Tiny corpora laid out exactly like the real ones, with speech synthesised offline.

Each generator writes the corpus's own directory layout and metadata files, with
utterances spoken by espeak-ng through :func:`q4asr.corpora.synth.synth_chunk` (WordNet
sentences from :mod:`q4asr.corpora.text`). Nothing is downloaded and no audio is committed.

- :func:`make_librispeech`: ``LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``
  and ``<spk>-<chapter>.trans.txt``.
- :func:`make_gigaspeech`: ``GigaSpeech.json`` and long Opus podcasts
  ``audio/podcast/P0000/<aid>.opus`` holding several segments each, with GigaSpeech's
  punctuation and garbage tags in the transcripts.
- :func:`make_commonvoice`: ``cv-corpus-<v>/en/{train,dev,test}.tsv`` and 48 kHz MP3 clips
  ``en/clips/common_voice_en_<n>.mp3`` with mixed-case, punctuated sentences.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from q4asr.corpora.synth import UttSpec, synth_chunk
from q4asr.corpora.text import TextConfig, load_sentences
from q4asr.data.audio import resample

VOICES = ("en-us+m1", "en-us+f2", "en+m3", "en-gb-x-rp+f3", "en-us+klatt")


class _Sentences:
    """An endless, seeded stream of distinct WordNet sentences (upper case)."""

    def __init__(self, seed: int):
        self._s = load_sentences(TextConfig(vocab_size=400, min_words=3, max_words=8),
                                 seed=seed)
        self._i = 0

    def next(self) -> str:
        s = self._s[self._i % len(self._s)]
        self._i += 1
        return s



# A tiny model and schedule for running recipes end to end in seconds; tests override
# single fields with ``tiny_train(max_steps=...)``.
TINY_MODEL = {"num_mel_bins": 80, "subsampling_channels": 8, "d_model": 32,
              "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 7,
              "dropout": 0.0, "decoder_dim": 32, "joiner_dim": 32, "ctc_weight": 0.5}


def tiny_train(**overrides) -> dict:
    """The ``train:`` section of a tiny recipe config."""
    return {"seed": 1, "max_steps": 4, "max_duration": 20.0, "num_buckets": 2,
            "lr": 1.0e-3, "warmup_steps": 2, "model_warmup_steps": 2, "num_workers": 0,
            "log_every": 2, "valid_every": 4, "checkpoint_every": 2,
            "keep_last_checkpoints": 2, "num_threads": 1,
            "spec_augment": {"enabled": False}, **overrides}

def speak(texts: list[str], out_dir: Path, tag: str, seed: int) -> list[np.ndarray]:
    """16 kHz float32 samples ``(S,)`` of each text, spoken by espeak-ng voices."""
    rng = random.Random(f"{seed}:{tag}")
    specs = []
    for i, t in enumerate(texts):
        voice = VOICES[rng.randrange(len(VOICES))]
        specs.append(UttSpec(
            utt_id=f"{tag}-{i:04d}", split=tag, text=t, engine="espeak", voice=voice,
            speaker=voice, speed=rng.uniform(0.9, 1.2), pitch=rng.uniform(30, 70),
            peak_db=rng.uniform(1, 6), path=str(out_dir / f"{tag}-{i:04d}.flac")))
    out = []
    for spec, rec, err in synth_chunk(specs):
        if rec is None:
            raise RuntimeError(f"fixture speech for {spec.utt_id}: {err}")
        x, sr = sf.read(spec.path, dtype="float32")
        assert sr == 16000 and x.ndim == 1, (sr, x.shape)
        out.append(x)
        Path(spec.path).unlink()
    return out


def make_librispeech(root: Path, parts: dict[str, int], seed: int = 0) -> Path:
    """``root/LibriSpeech`` with ``parts[part]`` utterances per part; returns that dir.

    Two speakers a part, one chapter each, as in the real corpus's naming.
    """
    base = root / "LibriSpeech"
    sents = _Sentences(seed)
    tmp = root / ".tmp_speech"
    tmp.mkdir(parents=True, exist_ok=True)
    for k, (part, n) in enumerate(parts.items()):
        texts = [sents.next() for _ in range(n)]
        audio = speak(texts, tmp, f"ls{k}", seed)
        for i, (text, x) in enumerate(zip(texts, audio)):
            spk, chapter = 100 + 10 * k + i % 2, 1000 + 10 * k + i % 2
            d = base / part / str(spk) / str(chapter)
            d.mkdir(parents=True, exist_ok=True)
            utt = f"{spk}-{chapter}-{i:04d}"
            sf.write(d / f"{utt}.flac", x, 16000)
            with open(d / f"{spk}-{chapter}.trans.txt", "a") as f:
                f.write(f"{utt} {text}\n")
    tmp.rmdir()
    return base


def _gs_text(text: str, rng: random.Random) -> str:
    words = text.split()
    cut = rng.randrange(1, len(words))
    return " ".join(words[:cut] + ["<COMMA>"] + words[cut:] + ["<PERIOD>"])


def make_gigaspeech(root: Path, parts: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """``root/GigaSpeech``: ``parts[part] = (podcasts, segments per podcast)``.

    Training parts are named by GigaSpeech's subset (``XS`` here, also listed in
    the larger subsets as in the real metadata), ``DEV`` and ``TEST`` alike. Every
    podcast adds one ``<MUSIC>`` segment (dropped by the recipe).
    """
    base = root / "GigaSpeech"
    sents = _Sentences(seed + 1)
    rng = random.Random(seed)
    audios = []
    tmp = base / ".tmp_speech"
    tmp.mkdir(parents=True, exist_ok=True)
    n = 0
    for part, (n_pod, n_seg) in parts.items():
        subsets = ["{XL}", "{L}", "{M}", "{S}", "{XS}"] if part == "XS" else ["{" + part + "}"]
        for _ in range(n_pod):
            aid = f"POD{n:010d}"
            texts = [sents.next() for _ in range(n_seg)]
            audio = speak(texts, tmp, aid, seed)
            pieces, segs, t = [], [], 0.0
            gap = np.zeros(8000, dtype=np.float32)  # 0.5 s between segments
            for j, (text, x) in enumerate(zip(texts, audio)):
                pieces += [gap, x]
                t += len(gap) / 16000
                segs.append({"sid": f"{aid}_S{j:07d}", "speaker": "N/A",
                             "begin_time": round(t, 4),
                             "end_time": round(t + len(x) / 16000, 4),
                             "text_tn": _gs_text(text, rng), "subsets": subsets})
                t += len(x) / 16000
            music = (0.05 * np.sin(np.arange(8000) * 0.3)).astype(np.float32)
            segs.append({"sid": f"{aid}_S{len(texts):07d}", "speaker": "N/A",
                         "begin_time": round(t + 0.1, 4), "end_time": round(t + 0.5, 4),
                         "text_tn": "<MUSIC>", "subsets": subsets})
            pieces += [music, gap]
            wav = np.concatenate(pieces)
            rel = f"audio/podcast/P{n // 100:04d}/{aid}.opus"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(base / rel, wav, 16000, format="OGG", subtype="OPUS")
            audios.append({"title": f"fixture podcast {n}", "url": "", "path": rel,
                           "aid": aid, "source": "podcast", "sample_rate": 16000,
                           "codec": "opus", "channels": 1, "md5": "",
                           "duration": round(sf.info(str(base / rel)).duration, 4),
                           "subsets": subsets, "segments": segs})
            n += 1
    tmp.rmdir()
    meta = {"dataset": "GigaSpeech", "language": "EN", "version": "fixture",
            "audios": audios}
    (base / "GigaSpeech.json").write_text(json.dumps(meta, indent=1))
    return base


def _cv_text(text: str, rng: random.Random) -> str:
    words = text.lower().split()
    words[0] = words[0].capitalize()
    if len(words) > 2:
        words[1] = words[1] + ","
    return " ".join(words) + rng.choice([".", "!", "?", "."])


CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain",
              "up_votes", "down_votes", "age", "gender", "accents", "variant", "locale",
              "segment"]


def make_commonvoice(root: Path, parts: dict[str, int], seed: int = 0,
                     version: str = "cv-corpus-fixture") -> Path:
    """``root/<version>`` with ``en/<part>.tsv`` and 48 kHz MP3 clips; returns it."""
    base = root / version
    clips = base / "en" / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    sents = _Sentences(seed + 2)
    rng = random.Random(seed)
    n = 0
    for part, count in parts.items():
        texts = [sents.next() for _ in range(count)]
        audio = speak(texts, clips, f"cv{part}", seed)
        rows = []
        for text, x in zip(texts, audio):
            name = f"common_voice_en_{1000 + n}.mp3"
            x48 = resample(torch.from_numpy(x), 16000, 48000).numpy()
            sf.write(clips / name, x48, 48000, format="MP3")
            rows.append({"client_id": f"{rng.getrandbits(64):016x}", "path": name,
                         "sentence_id": f"{n:08x}", "sentence": _cv_text(text, rng),
                         "sentence_domain": "", "up_votes": "2", "down_votes": "0",
                         "age": "", "gender": "", "accents": "", "variant": "",
                         "locale": "en", "segment": ""})
            n += 1
        with open(base / "en" / f"{part}.tsv", "w", newline="") as f:
            w = csv.DictWriter(f, CV_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE)
            w.writeheader()
            w.writerows(rows)
    return base
