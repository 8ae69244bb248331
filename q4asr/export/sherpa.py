"""Running exported ONNX transducers: with sherpa-onnx (audio in, text out, what a
deployment runs) and with onnxruntime directly (features in, token ids out, for
checks against q4asr on identical features).

    rec = sherpa_recognizer("exp/qat_w4a8/onnx")
    texts = sherpa_transcribe(rec, [samples], 16000)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from q4asr.export.onnx_graph import ONNX_FILES


def check_onnx_dir(onnx_dir: str | Path) -> Path:
    """``onnx_dir`` if it holds every exported file, else FileNotFoundError naming
    the first one missing."""
    d = Path(onnx_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such ONNX model directory")
    for f in ONNX_FILES:
        if not (d / f).is_file():
            raise FileNotFoundError(
                f"{d / f}: missing (export with q4asr-export --format onnx)"
            )
    return d


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata properties of one ONNX file."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def feature_dim(onnx_dir: str | Path) -> int:
    """Mel bins the exported encoder takes (its metadata)."""
    meta = onnx_metadata(Path(onnx_dir) / "encoder.onnx")
    return int(meta.get("num_mel_bins", 80))


def sherpa_recognizer(
    onnx_dir: str | Path,
    num_threads: int = 1,
    decoding_method: str = "greedy_search",
    max_active_paths: int = 4,
    encoder: str = "encoder.onnx",
):
    """A ``sherpa_onnx.OfflineRecognizer`` for the exported files in ``onnx_dir``
    (``encoder`` may name another encoder file there, e.g. a quantize_dynamic one)."""
    import sherpa_onnx

    d = check_onnx_dir(onnx_dir)
    feats = json.loads(onnx_metadata(d / "encoder.onnx").get("feature_config", "{}"))
    return sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(d / encoder),
        decoder=str(d / "decoder.onnx"),
        joiner=str(d / "joiner.onnx"),
        tokens=str(d / "tokens.txt"),
        num_threads=num_threads,
        sample_rate=int(feats.get("sampling_rate", 16000)),
        feature_dim=feature_dim(d),
        dither=0.0,
        decoding_method=decoding_method,
        max_active_paths=max_active_paths,
    )


def sherpa_transcribe(
    recognizer, audios: list[np.ndarray], sample_rate: int
) -> list[str]:
    """audios: mono float32 samples in [-1, 1], each (S,) -> one text each, decoded
    as one batch (sherpa-onnx pads the features; the encoder masks the padding)."""
    streams = []
    for a in audios:
        s = recognizer.create_stream()
        s.accept_waveform(sample_rate, np.ascontiguousarray(a, dtype=np.float32))
        streams.append(s)
    recognizer.decode_streams(streams)
    return [s.result.text.strip() for s in streams]


class OrtTransducer:
    """The three exported files in onnxruntime sessions, with sherpa-onnx's offline
    greedy search (one symbol per frame, initial context ``[-1, ..., -1, 0]``).

    ``recognize(x, x_lens)``: x (N, T, F) float32 features, x_lens (N,) int64
    -> N lists of token ids.
    """

    def __init__(
        self, onnx_dir: str | Path, num_threads: int = 1, encoder: str = "encoder.onnx"
    ) -> None:
        import onnxruntime as ort

        d = check_onnx_dir(onnx_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = num_threads

        def session(name: str):
            return ort.InferenceSession(
                str(d / name), so, providers=["CPUExecutionProvider"]
            )

        self.encoder = session(encoder)
        self.decoder = session("decoder.onnx")
        self.joiner = session("joiner.onnx")
        meta = onnx_metadata(d / "decoder.onnx")
        self.context_size = int(meta["context_size"])
        self.vocab_size = int(meta["vocab_size"])

    def encode(
        self, x: np.ndarray, x_lens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> encoder_out (N, T', J), encoder_out_lens (N,)."""
        out, lens = self.encoder.run(
            None,
            {"x": np.asarray(x, np.float32), "x_lens": np.asarray(x_lens, np.int64)},
        )
        return out, lens

    def decode_one(self, context: list[int]) -> np.ndarray:
        y = np.array([context[-self.context_size :]], dtype=np.int64)
        return self.decoder.run(None, {"y": y})[0]  # (1, J)

    def greedy(self, enc: np.ndarray, length: int) -> list[int]:
        """enc: (T', J) of one utterance -> token ids."""
        hyp = [-1] * (self.context_size - 1) + [0]
        dec = self.decode_one(hyp)
        for t in range(length):
            logit = self.joiner.run(
                None, {"encoder_out": enc[t : t + 1], "decoder_out": dec}
            )[0]
            y = int(np.argmax(logit[0]))
            if y != 0:
                hyp.append(y)
                dec = self.decode_one(hyp)
        return hyp[self.context_size :]

    def recognize(self, x: np.ndarray, x_lens: np.ndarray) -> list[list[int]]:
        enc, lens = self.encode(x, x_lens)
        return [self.greedy(enc[i], int(lens[i])) for i in range(enc.shape[0])]
