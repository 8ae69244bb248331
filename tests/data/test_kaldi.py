"""Kaldi data dirs: order, relative paths, missing files, pipes; audio loading."""

import numpy as np
import pytest
import soundfile as sf
import torch

from q4asr.data.audio import load_audio
from q4asr.data.kaldi import read_kaldi_data_dir


def _tone(sr, seconds=0.5, freq=300.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_read_data_dir(tmp_path):
    d = tmp_path / "data" / "train"
    (d / "audio").mkdir(parents=True)
    sf.write(d / "audio" / "u2.wav", _tone(16000, 0.5), 16000)
    sf.write(tmp_path / "u1.flac", _tone(16000, 1.0), 16000)
    (d / "wav.scp").write_text(
        f"u2 audio/u2.wav\nu1 {tmp_path / 'u1.flac'}\nu3 audio/missing.wav\n"
        "u4 sox in.wav -t wav - |\n\n"
    )
    (d / "text").write_text("u1 HELLO WORLD\nu2 GOOD DAY\n")
    (d / "utt2spk").write_text("u1 s1\nu2 s1\n")
    res = read_kaldi_data_dir(d)
    assert [r.id for r in res.recordings] == ["u2", "u1"]
    assert [s.text for s in res.supervisions] == ["GOOD DAY", "HELLO WORLD"]
    assert res.recordings["u1"].duration == pytest.approx(1.0)
    assert len(res.failures) == 2
    assert "missing.wav" in res.failures[0] and "u3" in res.failures[0]
    assert "u4" in res.failures[1] and "pipe" in res.failures[1]


def test_segments_and_missing_wav_scp(tmp_path):
    sf.write(tmp_path / "long.wav", _tone(16000, 2.0), 16000)
    (tmp_path / "wav.scp").write_text("rec long.wav\n")
    (tmp_path / "segments").write_text("a rec 0.0 0.5\nb rec 1.0 1.75\n")
    (tmp_path / "text").write_text("a ONE\nb TWO\n")
    res = read_kaldi_data_dir(tmp_path)
    assert [(s.id, s.start, s.duration, s.text) for s in res.supervisions] == [
        ("a", 0.0, 0.5, "ONE"),
        ("b", 1.0, 0.75, "TWO"),
    ]
    with pytest.raises(FileNotFoundError, match="wav.scp"):
        read_kaldi_data_dir(tmp_path / "nothing")


def test_unreadable_audio_is_reported(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    (tmp_path / "wav.scp").write_text("bad bad.wav\n")
    res = read_kaldi_data_dir(tmp_path)
    assert len(res.recordings) == 0
    assert len(res.failures) == 1 and "bad.wav" in res.failures[0]


def test_load_audio_downmix_and_resample(tmp_path):
    left = _tone(8000, 1.0, 300.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # (S, 2)
    sf.write(tmp_path / "st.wav", stereo, 8000, subtype="PCM_16")
    x = load_audio(tmp_path / "st.wav", 16000)
    assert x.dtype == torch.float32 and x.ndim == 1
    assert abs(x.numel() - 16000) <= 1
    # mono average halves the amplitude; the tone stays at 300 Hz after resampling
    assert x.abs().max().item() == pytest.approx(0.2, abs=0.01)
    spec = torch.fft.rfft(x[:16000]).abs()
    assert spec.argmax().item() == pytest.approx(300, abs=2)
    same = load_audio(tmp_path / "st.wav", 8000)
    assert same.numel() == 8000
    with pytest.raises(ValueError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
