"""q4asr-transcribe: speech to text with one model file.

    q4asr-transcribe --model exp/qat_w4a8/model.safetensors a.wav b.flac
    q4asr-transcribe --model model.safetensors data/test --json wer.json
    q4asr-transcribe --onnx exp/qat_w4a8/onnx data/test     # with sherpa-onnx

``--onnx DIR`` runs the files of ``q4asr-export --format onnx`` in sherpa-onnx (its own
kaldi-native-fbank features, greedy or modified beam search) instead of PyTorch.

DATA is audio files (utterance id = file name without extension) or Kaldi data dirs
(``wav.scp``, optional ``text`` and ``segments``; ``utt2spk`` ignored; relative paths
are resolved against the data dir). Audio is downmixed to mono and resampled to the
model's rate. Prints ``utt-id<TAB>hypothesis`` per utterance, in input (wav.scp)
order. When a ``text`` file is there, a WER summary goes to stderr and ``--json FILE``
writes ``{"wer", "errors", "words", "utts", "rtf", "scoring"}``. Words are compared
after the recipes' transcript normalisation (upper case, punctuation removed), so a
lower-case or punctuated ``text`` scores as it should; ``--scoring verbatim`` compares
them exactly as written. A missing or unreadable audio
file is reported by name and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from q4asr.data.audio import load_audio
from q4asr.data.features import fbank_extractor
from q4asr.data.kaldi import read_kaldi_data_dir
from q4asr.decode.recognize import METHODS, recognize_batch
from q4asr.decode.scoring import SCORING_MODES, score, scoring_note
from q4asr.modelfile import load_asr_model
from q4asr.utils import setup_logging

log = logging.getLogger("q4asr.transcribe")


def utterances(inputs: list[str], errors: list[str]):
    """Yields (utt_id, audio path, start s, duration s or None, reference text or None)
    in input order; problems are appended to ``errors``."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if not (path / "wav.scp").is_file():
                errors.append(f"{path}: not a Kaldi data dir (no wav.scp)")
                continue
            d = read_kaldi_data_dir(path)
            errors.extend(d.failures)
            recs = {r.id: r for r in d.recordings}
            for sup in d.supervisions:
                src = recs[sup.recording_id].sources[0].source
                yield sup.id, src, sup.start, sup.duration, sup.text
        else:
            yield path.stem, str(path), 0.0, None, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model file (.safetensors)")
    which.add_argument("--onnx", help="ONNX model dir (q4asr-export --format onnx)")
    p.add_argument("data", nargs="+", help="audio files or Kaldi data dirs")
    p.add_argument("--method", default="greedy_search", choices=METHODS)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="write the WER summary here")
    p.add_argument("--out", default=None, help="write the hypotheses here, not stdout")
    p.add_argument("--scoring", default="normalized", choices=SCORING_MODES,
                   help="normalized (default): upper case, punctuation removed; "
                   "verbatim: words exactly as written")
    p.add_argument("--num-threads", type=int, default=None)
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        if args.onnx:
            from q4asr.export.sherpa import sherpa_recognizer, sherpa_transcribe

            recognizer = sherpa_recognizer(args.onnx, args.num_threads or 1,
                                           args.method, args.beam)
            sr = 16000
        else:
            asr = load_asr_model(args.model)
            sr = int(asr.feature_config.get("sampling_rate", 16000))
            extractor = fbank_extractor(int(asr.feature_config.get("num_mel_bins", 80)))
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    errors: list[str] = []
    refs: list[str] = []
    hyps: list[str] = []
    audio_s = compute_s = 0.0
    batch: list[tuple[str, torch.Tensor, str | None]] = []

    def flush() -> None:
        nonlocal compute_s
        if not batch:
            return
        start = time.perf_counter()
        if args.onnx:
            texts = sherpa_transcribe(recognizer, [a.numpy() for _, a, _ in batch], sr)
        else:
            feats = [torch.as_tensor(extractor.extract(a.numpy(), sr))
                     for _, a, _ in batch]
            lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
            x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
            texts = recognize_batch(asr, x, lens, args.method, args.beam)
        compute_s += time.perf_counter() - start
        for (utt, _, ref), hyp in zip(batch, texts):
            print(f"{utt}\t{hyp}", file=out, flush=True)
            if ref is not None:
                refs.append(ref)
                hyps.append(hyp)
        batch.clear()

    for utt, path, start, dur, ref in utterances(args.data, errors):
        try:
            audio = load_audio(path, sr)
        except ValueError as e:
            errors.append(f"{utt}: {e}")
            continue
        a, b = int(round(start * sr)), None if dur is None else int(round((start + dur) * sr))
        audio = audio[a:b]
        audio_s += audio.shape[0] / sr
        batch.append((utt, audio, ref))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    if args.out:
        out.close()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if refs:
        s, _ = score(refs, hyps, args.scoring)
        rtf = compute_s / max(audio_s, 1e-9)
        summary = {"wer": s.wer, "errors": s.errors, "words": s.words, "utts": s.utts,
                   "rtf": round(rtf, 5), "scoring": args.scoring}
        print(f"%WER {s.wer:.2f} [ {s.errors} / {s.words}, {s.insertions} ins, "
              f"{s.deletions} del, {s.substitutions} sub ] over {s.utts} utterances, "
              f"RTF {rtf:.3f}; {scoring_note(args.scoring)}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    elif args.json:
        print("warning: no reference text given; --json not written", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
