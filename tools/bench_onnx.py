#!/usr/bin/env python3
"""The ONNX section of the benchmark: what a sherpa-onnx deployment gets from each way
of making a small model, side by side in one process, one thread.

Systems, all exported from the same Conformer transducer:

- ``onnx_float32``: ``q4asr-export --format onnx`` of the float model;
- ``onnx_dynamic_int8``: onnxruntime's ``quantize_dynamic`` of those files (icefall's
  ``export-onnx.py`` way: MatMul weights int8 per tensor, uint8 activations);
- ``onnx_q4asr_int8`` / ``onnx_q4asr_int4`` / ``onnx_q4asr_mixed48``: the q4asr
  integer models of the W8A8 / W4A8 / mixed 4/8 plans, exported with their integer
  layers as integer ops.

For each: the bytes of encoder.onnx + decoder.onnx + joiner.onnx; the encoder time in
onnxruntime on the same features (median over round-robin repeats); the real-time
factor of sherpa-onnx (``OfflineRecognizer.from_transducer``, greedy search, features
from the audio) on the same audio. With ``--exp DIR`` the models are a recipe's
trained ones (``DIR/<system>/model.safetensors``: float32, and for each integer row its
QAT system, else its PTQ one, else the row is left out) and ``--manifests`` gives its
test audio and texts: then WER too. Without, the model has random weights of the
``--train-config`` model (the rest of tools/bench.py does the same) and the audio is
speech synthesised by espeak-ng; WER is then not reported.

    python tools/bench_onnx.py --markdown BENCHMARKS.md     # replaces its section
    python tools/bench.py --onnx ...                        # as part of the whole run
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from q4asr.utils import update_marked

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "egs" / "synth" / "ASR"
PLANS = {
    "onnx_q4asr_int8": "w8a8.yaml",
    "onnx_q4asr_int4": "w4a8.yaml",
    "onnx_q4asr_mixed48": "mixed48.yaml",
}
SYSTEMS = ("onnx_float32", "onnx_dynamic_int8", *PLANS)
# benchmark system -> the recipe systems that can stand for it (with --exp), the
# first one the recipe has made is used; a system with none is left out
RECIPE_SYSTEMS = {
    "onnx_float32": ("float32",),
    "onnx_dynamic_int8": ("float32",),
    "onnx_q4asr_int8": ("qat_w8a8", "ptq_w8a8"),
    "onnx_q4asr_int4": ("qat_w4a8", "ptq_w4a8"),
    "onnx_q4asr_mixed48": ("qat_mixed48", "ptq_mixed48"),
}
BEGIN, END = "<!-- bench_onnx:begin -->", "<!-- bench_onnx:end -->"


def markers(tag: str | None) -> tuple[str, str]:
    """The section markers: one section per ``--tag`` (none: the main section)."""
    if not tag:
        return BEGIN, END
    return f"<!-- bench_onnx {tag}:begin -->", f"<!-- bench_onnx {tag}:end -->"


log = logging.getLogger("q4asr.bench_onnx")


def onnx_bytes(d: Path, encoder: str = "encoder.onnx") -> int:
    return sum((d / f).stat().st_size for f in (encoder, "decoder.onnx", "joiner.onnx"))


def quantize_dynamic_dir(src: Path, dst: Path) -> None:
    """icefall's int8 export: ``quantize_dynamic`` of every MatMul, int8 weights."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.mkdir(parents=True, exist_ok=True)
    for f in ("encoder.onnx", "decoder.onnx", "joiner.onnx"):
        quantize_dynamic(
            model_input=src / f,
            model_output=dst / f,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
        )
    shutil.copy(src / "tokens.txt", dst / "tokens.txt")


def synthetic_setup(cfg: dict, work: Path, n_utts: int, seed: int = 0):
    """Random-weight models of ``cfg`` with a real BPE model, and espeak-ng speech.

    Returns (AsrModel float, {plan system: AsrModel}, [(id, samples, text)])."""
    import soundfile as sf

    from q4asr.corpora.synth import UttSpec, synth_chunk
    from q4asr.corpora.text import TextConfig, load_sentences
    from q4asr.data.tokenizer import Tokenizer, train_bpe
    from q4asr.model import ModelConfig, build_model
    from q4asr.modelfile import AsrModel
    from q4asr.quant import convert, load_plan, prepare

    sents = load_sentences(TextConfig(vocab_size=2000, min_words=6, max_words=14), seed)
    if len(sents) < n_utts + 100:
        raise SystemExit(f"error: only {len(sents)} sentences for the benchmark audio")
    tok = Tokenizer(train_bpe(sents[n_utts:], work / "bpe" / "bpe", cfg["vocab_size"]))
    cfg = {**cfg, "vocab_size": tok.vocab_size}
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(cfg)).eval()
    meta = {"method": "float"}
    base = AsrModel(model, tok, {"num_mel_bins": cfg["num_mel_bins"]}, meta, work)
    int_models = {}
    for name, plan in PLANS.items():
        m = convert(
            prepare(copy.deepcopy(model), load_plan(RECIPE / "conf/plans" / plan))
        )
        int_models[name] = AsrModel(
            m.eval(), tok, base.feature_config, {"method": "ptq"}, work
        )
    specs = [
        UttSpec(
            utt_id=f"bench-{i}",
            split="bench",
            text=t,
            engine="espeak",
            voice="en-us+m1",
            speaker="m1",
            speed=1.0,
            pitch=50.0,
            peak_db=3.0,
            path=str(work / f"bench-{i}.flac"),
        )
        for i, t in enumerate(sents[:n_utts])
    ]
    audio = []
    for spec, rec, err in synth_chunk(specs):
        if rec is None:
            raise SystemExit(f"error: espeak-ng synthesis of {spec.utt_id}: {err}")
        x, sr = sf.read(spec.path, dtype="float32")
        assert sr == 16000, sr
        audio.append((spec.utt_id, x, spec.text))
    return base, int_models, audio


def recipe_setup(exp: Path, manifests: Path, part: str, n_utts: int):
    """The recipe's trained model files and ``n_utts`` utterances of its test part."""
    from lhotse import load_manifest

    from q4asr.data.audio import load_audio
    from q4asr.modelfile import load_asr_model

    def made(name: str) -> str | None:
        return next(
            (
                s
                for s in RECIPE_SYSTEMS[name]
                if (exp / s / "model.safetensors").is_file()
            ),
            None,
        )

    if made("onnx_float32") is None:
        raise SystemExit(
            f"error: {exp}/float32/model.safetensors: no such model file "
            "(run the recipe first)"
        )
    used = {name: made(name) for name in SYSTEMS}
    for name, system in used.items():
        if system is None:
            log.info("%s left out: %s has none of %s", name, exp, RECIPE_SYSTEMS[name])
    base = load_asr_model(exp / used["onnx_float32"] / "model.safetensors")
    int_models = {
        name: load_asr_model(exp / used[name] / "model.safetensors")
        for name in PLANS
        if used[name]
    }
    recs = load_manifest(manifests / f"synth_recordings_{part}.jsonl.gz")
    sups = {
        s.recording_id: s.text
        for s in load_manifest(manifests / f"synth_supervisions_{part}.jsonl.gz")
    }
    audio = [
        (r.id, load_audio(r.sources[0].source, 16000).numpy(), sups[r.id])
        for r in list(recs)[:n_utts]
    ]
    return base, int_models, audio, {k: v for k, v in used.items() if v}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, time and score every system; returns the section's JSON."""
    import onnxruntime as ort

    from q4asr.data.features import fbank_extractor
    from q4asr.decode.scoring import score
    from q4asr.export.onnx_graph import export_onnx
    from q4asr.export.sherpa import sherpa_recognizer, sherpa_transcribe

    torch.set_num_threads(1)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="q4asr_bench_onnx_"))
    if args.exp:
        base, int_models, audio, used = recipe_setup(
            args.exp, args.manifests, args.part, args.utts
        )
    else:
        cfg = args.model_config
        base, int_models, audio = synthetic_setup(cfg, work, args.utts)
        used = {}
    systems = ("onnx_float32", "onnx_dynamic_int8", *int_models)
    dirs: dict[str, Path] = {"onnx_float32": work / "onnx_float32"}
    export_onnx(base, dirs["onnx_float32"])
    dirs["onnx_dynamic_int8"] = work / "onnx_dynamic_int8"
    quantize_dynamic_dir(dirs["onnx_float32"], dirs["onnx_dynamic_int8"])
    for name, asr in int_models.items():
        dirs[name] = work / name
        export_onnx(asr, dirs[name])
    sizes = {s: onnx_bytes(dirs[s]) for s in systems}

    # the same features for every encoder (lhotse fbank, one padded batch)
    ext = fbank_extractor(base.model.cfg.num_mel_bins)
    feats = [ext.extract(a, 16000) for _, a, _ in audio]
    lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
    x = np.zeros((len(feats), int(lens.max()), feats[0].shape[1]), np.float32)
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    audio_s = sum(len(a) for _, a, _ in audio) / 16000
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    encoders = {
        s: ort.InferenceSession(
            str(dirs[s] / "encoder.onnx"), so, providers=["CPUExecutionProvider"]
        )
        for s in systems
    }
    recognizers = {s: sherpa_recognizer(dirs[s], num_threads=1) for s in systems}
    samples = [a for _, a, _ in audio]
    enc_t: dict[str, list[float]] = {s: [] for s in systems}
    rtf_t: dict[str, list[float]] = {s: [] for s in systems}
    texts: dict[str, list[str]] = {}
    for s in systems:  # warm-up (and the hypotheses)
        encoders[s].run(None, {"x": x, "x_lens": lens})
        texts[s] = sherpa_transcribe(recognizers[s], samples, 16000)
    for _ in range(args.repeats):  # round robin: load from others falls on all alike
        for s in systems:
            t = time.perf_counter()
            encoders[s].run(None, {"x": x, "x_lens": lens})
            enc_t[s].append(time.perf_counter() - t)
            t = time.perf_counter()
            sherpa_transcribe(recognizers[s], samples, 16000)
            rtf_t[s].append((time.perf_counter() - t) / audio_s)
    rows = {}
    for s in systems:
        row = {
            "bytes": sizes[s],
            "x_smaller": sizes["onnx_float32"] / sizes[s],
            "encoder_s": statistics.median(enc_t[s]),
            "rtf": statistics.median(rtf_t[s]),
        }
        row["encoder_x_faster"] = (
            rows.get("onnx_float32", row)["encoder_s"] / row["encoder_s"]
        )
        row["rtf_x_better"] = rows.get("onnx_float32", row)["rtf"] / row["rtf"]
        if args.exp:
            stats, _ = score([t for _, _, t in audio], texts[s])
            row["wer"] = stats.wer
        rows[s] = row
    r = {
        "command": getattr(args, "command", None)
        or "python tools/bench_onnx.py " + shlex.join(args.argv),
        "trained": bool(args.exp),
        "utterances": len(audio),
        "audio_seconds": round(audio_s, 2),
        "feature_frames": int(lens.sum()),
        "repeats": args.repeats,
        "num_params": sum(p.numel() for p in base.model.parameters()),
        "model_config": base.model.cfg.to_dict(),
        "versions": versions(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.time() - t0, 1),
        "systems": rows,
        "recipe_systems": used,
        "tag": getattr(args, "tag", None),
        "hypotheses_equal_float32": {
            s: sum(a == b for a, b in zip(texts[s], texts["onnx_float32"]))
            for s in systems
        },
    }
    r["goals"] = goals(r)
    return r


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import sherpa_onnx

    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "sherpa_onnx": getattr(sherpa_onnx, "__version__", "?"),
        "torch": torch.__version__,
    }


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked on this run's figures; a target whose systems
    were left out is listed as not run."""
    s = r["systems"]
    g = []

    def goal(text: str, needs: tuple[str, ...], value, met) -> None:
        ran = all(n in s for n in needs)
        g.append(
            {
                "goal": text,
                "value": value() if ran else "not run",
                "met": met() if ran else None,
            }
        )

    int4, int8, dyn = "onnx_q4asr_int4", "onnx_q4asr_int8", "onnx_dynamic_int8"
    goal(
        "q4asr int4 ONNX >= 7x smaller than float32 ONNX",
        (int4,),
        lambda: f"{s[int4]['x_smaller']:.2f}x",
        lambda: s[int4]["x_smaller"] >= 7,
    )
    goal(
        "q4asr int8 ONNX RTF >= 1.6x better than float32 ONNX",
        (int8,),
        lambda: f"{s[int8]['rtf_x_better']:.2f}x",
        lambda: s[int8]["rtf_x_better"] >= 1.6,
    )
    goal(
        "q4asr int8 ONNX RTF no worse than quantize_dynamic int8",
        (int8,),
        lambda: f"{s[int8]['rtf']:.4f} vs {s[dyn]['rtf']:.4f}",
        lambda: s[int8]["rtf"] <= s[dyn]["rtf"],
    )
    if r["trained"]:
        goal(
            "WER of q4asr int4 ONNX no worse than quantize_dynamic int8",
            (int4,),
            lambda: f"{s[int4]['wer']:.2f} vs {s[dyn]['wer']:.2f}",
            lambda: s[int4]["wer"] <= s[dyn]["wer"],
        )
    return g


def render(r: dict[str, Any]) -> str:
    """The section's markdown (between the section markers)."""
    cfg = r["model_config"]
    v = r["versions"]
    tag = r.get("tag")
    begin, end = markers(tag)
    L = [
        begin,
        "",
        "## ONNX for sherpa-onnx" + (f": {tag}" if tag else ""),
        "",
        f"Generated by `{r['command']}` ({r['seconds']} s), onnxruntime "
        f"{v['onnxruntime']}, sherpa-onnx {v['sherpa_onnx']}, 1 thread; load average "
        f"at the end {r['load_average']} (the machine was shared with other work).",
        "",
        f"Model: Conformer transducer, {r['num_params']:,} parameters (d_model "
        f"{cfg['d_model']}, {cfg['num_layers']} layers, vocab {cfg['vocab_size']}), "
        + (
            "the recipe's trained models ("
            + ", ".join(f"{k}: {v}" for k, v in r["recipe_systems"].items())
            + ")."
            if r["trained"]
            else "random weights (speed and size only)."
        ),
        f"Audio: {r['utterances']} utterances, {r['audio_seconds']} s, "
        + ("the recipe's test part." if r["trained"] else "espeak-ng speech.")
        + f" Medians of {r['repeats']} round-robin repeats.",
        "",
    ]
    head = [
        "system",
        "ONNX bytes",
        "x smaller",
        "encoder s (onnxruntime)",
        "x faster",
        "RTF (sherpa-onnx)",
        "x better",
    ]
    if r["trained"]:
        head.append("WER %")
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, row in r["systems"].items():
        cells = [
            s,
            f"{row['bytes']:,}",
            f"{row['x_smaller']:.2f}",
            f"{row['encoder_s']:.4f}",
            f"{row['encoder_x_faster']:.2f}",
            f"{row['rtf']:.4f}",
            f"{row['rtf_x_better']:.2f}",
        ]
        if r["trained"]:
            cells.append(f"{row['wer']:.2f}")
        L.append("| " + " | ".join(cells) + " |")
    L += [
        "",
        "- Size: encoder.onnx + decoder.onnx + joiner.onnx. q4asr's int4 weights are"
        " two a byte in the file (unpacked into constants when onnxruntime loads it);"
        " its int8 weights are stored as uint8 `w + 128`.",
        "- Encoder: the same padded batch of lhotse features through each encoder.onnx;"
        " RTF: sherpa-onnx from the audio (its own kaldi-native-fbank features, greedy"
        " search), all utterances as one batch.",
        "- q4asr's int8 layers run uint8 x uint8 `MatMulInteger`: exact on every CPU."
        " uint8 x int8 (what quantize_dynamic uses) is faster on CPUs without VNNI but"
        " sums pairs of products in int16, which saturates for 8-bit weights (wrong"
        " sums measured on this AVX2 CPU); q4asr's int4 layers use uint8 x int8, where"
        " no pair can saturate.",
        "",
        "| goal | this run | met |",
        "|---|---|---|",
    ]
    L += [
        f"| {g['goal']} | {g['value']} | "
        f"{'-' if g['met'] is None else 'yes' if g['met'] else '**no**'} |"
        for g in r["goals"]
    ]
    L += ["", end]
    return "\n".join(L) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--onnx-utts",
        dest="utts",
        type=int,
        default=8,
        help="utterances for the ONNX section",
    )
    ap.add_argument("--onnx-repeats", dest="onnx_repeats", type=int, default=5)
    ap.add_argument(
        "--exp",
        type=Path,
        default=None,
        help="a recipe's exp dir: benchmark its trained models (and WER)",
    )
    ap.add_argument("--manifests", type=Path, default=RECIPE / "data/manifests")
    ap.add_argument("--part", default="test")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tools"))
    from bench import model_config

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--small", action="store_true", help="the small model of bench.py")
    ap.add_argument(
        "--train-config",
        type=Path,
        default=RECIPE / "conf/train.yaml",
        help="YAML whose model: section is the random-weight model (without --exp)",
    )
    ap.add_argument(
        "--tag",
        default=None,
        help="name of this run's own section in --markdown (e.g. the model)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="replace (or append) the ONNX section of this file",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    args.argv = argv
    args.repeats = args.onnx_repeats
    args.model_config = model_config(args.small, args.train_config)
    r = run(args)
    text = json.dumps(r, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        update_marked(args.markdown, render(r), markers(args.tag))
    return r


if __name__ == "__main__":
    main()
