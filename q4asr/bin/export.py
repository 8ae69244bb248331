"""q4asr-export: a float, PTQ or QAT checkpoint -> one self-contained model file.

    q4asr-export --checkpoint exp/qat_w4a8/avg.pt --method qat \\
        --bpe-model data/lang_bpe_256/bpe.model --out exp/qat_w4a8/model.safetensors
    q4asr-export --checkpoint exp/float32/avg.pt --method ptq --plan conf/plans/w4a8.yaml \\
        --calibration-cuts data/fbank/synth_cuts_train.jsonl.gz --bpe-model ... --out ...

Beside the model file, ``<out>.size.txt`` and ``<out>.size.json`` give the per-layer
size report (name, params, weight bits, activation bits, bytes) and the total.

``--format onnx`` writes the files sherpa-onnx runs (``encoder.onnx``, ``decoder.onnx``,
``joiner.onnx``, ``tokens.txt``; integer layers as integer ops, see docs/onnx.md) into
the directory ``--out``, from an exported model file (``--model``) or from a checkpoint
(which is first exported to ``<out>/model.safetensors``):

    q4asr-export --format onnx --model exp/qat_w4a8/model.safetensors --out exp/qat_w4a8/onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from q4asr.modelfile import METHODS, export_model, load_asr_model
from q4asr.utils import setup_logging

log = logging.getLogger("q4asr.export")


def calibration_runner(cuts_path: str, bpe_model: str, num_batches: int,
                       max_duration: float = 100.0):
    """A ``calibrate`` callback: the model's forward (loss) on the first batches."""
    from lhotse import CutSet
    from lhotse.dataset import SimpleCutSampler

    from q4asr.data.datamodule import AsrDataset
    from q4asr.data.tokenizer import Tokenizer

    if not Path(cuts_path).is_file():
        raise FileNotFoundError(f"{cuts_path}: no such cut manifest")
    dataset = AsrDataset(Tokenizer(bpe_model))
    sampler = SimpleCutSampler(CutSet.from_jsonl_lazy(cuts_path),
                               max_duration=max_duration, shuffle=False)

    @torch.no_grad()
    def run(model: torch.nn.Module) -> None:
        for i, cuts in enumerate(sampler):
            if i >= num_batches:
                break
            b = dataset[cuts]  # unreadable or too short cuts are skipped there
            if b["cut_ids"]:
                model(b["features"], b["feature_lens"], b["tokens"])

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="avg.pt, final.pt or checkpoint-N.pt")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--bpe-model")
    p.add_argument("--plan", default=None, help="precision plan (ptq)")
    p.add_argument("--calibration-cuts", default=None, help="cuts for PTQ calibration")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--out", required=True,
                   help="model file (.safetensors), or a directory with --format onnx")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "onnx"))
    p.add_argument("--model", default=None,
                   help="with --format onnx: an exported model file to convert")
    args = p.parse_args(argv)
    setup_logging()
    if args.model is not None and args.format != "onnx":
        p.error("--model goes with --format onnx")
    if args.model is None and not (args.checkpoint and args.method and args.bpe_model):
        p.error("--checkpoint, --method and --bpe-model are required (or --format onnx "
                "--model FILE)")
    if args.format == "onnx":
        return export_onnx_main(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        print(f"error: --out {out}: must end in .safetensors", file=sys.stderr)
        return 1
    try:
        calib = None
        if args.method == "ptq" and args.calibration_cuts:
            calib = calibration_runner(args.calibration_cuts, args.bpe_model,
                                       args.calibration_batches)
        summary = export_model(args.checkpoint, out, args.bpe_model, args.method,
                               plan_path=args.plan, calibration=calib)
        from q4asr.quant import format_size_table, size_report, size_report_json

        asr = load_asr_model(out)  # the file must load back on its own
        Path(f"{out}.size.txt").write_text(format_size_table(size_report(asr.model)) + "\n")
        Path(f"{out}.size.json").write_text(size_report_json(asr.model) + "\n")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def export_onnx_main(args: argparse.Namespace) -> int:
    """--format onnx: model file (or checkpoint -> model file) -> ONNX directory."""
    from q4asr.export.onnx_graph import export_onnx

    out = Path(args.out)
    if out.suffix in (".safetensors", ".onnx"):
        print(f"error: --out {out}: with --format onnx, --out is a directory",
              file=sys.stderr)
        return 1
    try:
        model_file = Path(args.model) if args.model else out / "model.safetensors"
        if args.model is None:
            out.mkdir(parents=True, exist_ok=True)
            rc = main(["--checkpoint", args.checkpoint, "--method", args.method,
                       "--bpe-model", args.bpe_model, "--out", str(model_file),
                       "--calibration-batches", str(args.calibration_batches)]
                      + (["--plan", args.plan] if args.plan else [])
                      + (["--calibration-cuts", args.calibration_cuts]
                         if args.calibration_cuts else []))
            if rc:
                return rc
        summary = export_onnx(load_asr_model(model_file), out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
