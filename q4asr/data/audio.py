"""Audio for every recipe: band-limited resampling, and reading a file as 16 kHz mono
(what the features, on-the-fly feature extraction and transcription all use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from lhotse.augmentation.resample import Resample


def resample(samples: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited sinc resampling (lhotse's torch port of torchaudio's).

    samples: (..., S) float -> (..., S') float with S' = ceil(S * target_sr / orig_sr).
    """
    if orig_sr == target_sr:
        return samples
    return Resample(orig_sr, target_sr)(samples)


def load_audio(path: str | Path, target_sr: int = 16000) -> torch.Tensor:
    """Read an audio file, average its channels to mono, resample to ``target_sr``.

    Returns ``(S,) float32`` in [-1, 1]. Raises ValueError naming the file when it
    is missing, unreadable or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except Exception as e:
        raise ValueError(
            f"{path}: unreadable audio ({type(e).__name__}: {e})"
        ) from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: audio file is empty")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    out = resample(mono, sr, target_sr)
    assert out.ndim == 1, out.shape
    return out.contiguous()
