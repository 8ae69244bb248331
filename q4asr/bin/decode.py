"""q4asr-decode: decode lhotse cuts with a model file or checkpoint; score with jiwer.

    q4asr-decode --model exp/qat_w4a8/model.safetensors \\
        --cuts data/fbank/synth_cuts_test.jsonl.gz --test-set test \\
        --method modified_beam_search --out-dir exp/qat_w4a8/decode

Several test sets (``--cuts A B --test-set a b``) and methods (``--method
greedy_search modified_beam_search``) are decoded in one process, each set's encoder
output shared by the methods. For each set and method it writes
``recogs-<set>-<method>.txt``, ``errs-<set>-<method>.txt`` (per-utterance alignments),
``wer-summary-<set>-<method>.txt`` and ``<set>-<method>.json`` (WER, errors, words,
utts, RTF, per-utterance errors) to the output dir. References and
hypotheses are compared after the recipes' transcript normalisation (upper case,
punctuation removed), so a lower-case or punctuated ``text`` scores as it should;
``--scoring verbatim`` compares words exactly as written.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from q4asr.data.datamodule import load_cuts
from q4asr.decode.recognize import METHODS, DecodeResult, decode_cuts
from q4asr.decode.scoring import SCORING_MODES, scoring_note, write_results
from q4asr.modelfile import load_asr_model
from q4asr.utils import setup_logging

log = logging.getLogger("q4asr.decode")


def write_result(args: argparse.Namespace, test_set: str, method: str,
                 res: DecodeResult) -> None:
    for cut_id, why in res.failed.items():
        log.warning("%s: %s (scored as an empty hypothesis)", cut_id, why)
    write_results(
        args.out_dir,
        test_set,
        method,
        res.ids,
        res.refs,
        res.hyps,
        extra={
            "rtf": round(res.rtf, 5),
            "audio_seconds": round(res.audio_seconds, 2),
            "decode_seconds": round(res.decode_seconds, 2),
            "failed_utts": len(res.failed),
            "model": str(args.model),
            "num_threads": torch.get_num_threads(),
        },
        scoring=args.scoring,
    )
    print(f"{test_set} {method}: {scoring_note(args.scoring)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        required=True,
        help="model file (.safetensors) or training checkpoint (.pt)",
    )
    p.add_argument("--bpe-model", default=None, help="needed with a .pt checkpoint")
    p.add_argument("--cuts", required=True, nargs="+", help="one manifest per test set")
    p.add_argument(
        "--test-set", required=True, nargs="+", help="names used in the output files"
    )
    p.add_argument(
        "--method", default=["greedy_search"], nargs="+", choices=METHODS
    )
    p.add_argument("--beam", type=int, default=4)
    p.add_argument(
        "--scoring",
        default="normalized",
        choices=SCORING_MODES,
        help="normalized (default): upper case, punctuation removed; "
        "verbatim: words exactly as written",
    )
    p.add_argument("--max-duration", type=float, default=200.0)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    setup_logging()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if len(args.cuts) != len(args.test_set):
        p.error(
            f"{len(args.cuts)} --cuts against {len(args.test_set)} --test-set names: "
            "give one name per manifest"
        )
    methods = list(dict.fromkeys(args.method))
    try:
        for cuts in args.cuts:  # a missing manifest is named before anything is decoded
            load_cuts(cuts)
        asr = load_asr_model(args.model, args.bpe_model)
        for cuts, test_set in zip(args.cuts, args.test_set):
            results = decode_cuts(asr, cuts, methods, args.beam, args.max_duration)
            for method, res in results.items():
                write_result(args, test_set, method, res)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
