"""Average the model weights of several training checkpoints.

Usage::

    python -m q4asr.bin.average --exp-dir exp/int4 --last 5 --out exp/int4/avg5.pt
    python -m q4asr.bin.average --out avg.pt exp/a/checkpoint-100.pt exp/a/checkpoint-200.pt

Floating-point tensors are averaged; integer buffers come from the last checkpoint.
The output has the format of ``exp_dir/final.pt`` (model, config, plan) plus the
list of averaged files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from q4asr.checkpoint import average_checkpoints, list_checkpoints, save_checkpoint
from q4asr.utils import setup_logging

log = logging.getLogger("q4asr.average")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="q4asr-average",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="*", help="checkpoint files to average")
    p.add_argument("--exp-dir", default=None, help="take checkpoints from here")
    p.add_argument(
        "--last",
        type=int,
        default=None,
        help="average the newest N checkpoint-<step>.pt of --exp-dir",
    )
    p.add_argument("--out", required=True, help="output file")
    return p


def select(args: argparse.Namespace) -> list[Path]:
    """The checkpoint files the arguments name, oldest first."""
    if args.checkpoints and (args.exp_dir or args.last):
        raise ValueError("give checkpoint files or --exp-dir/--last, not both")
    if args.checkpoints:
        paths = [Path(p) for p in args.checkpoints]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such checkpoint")
        return paths
    if not args.exp_dir or not args.last:
        raise ValueError("give checkpoint files, or --exp-dir and --last N")
    if args.last < 1:
        raise ValueError(f"--last: must be >= 1, got {args.last}")
    found = list_checkpoints(args.exp_dir)
    if not found:
        raise ValueError(f"{args.exp_dir}: no checkpoint-<step>.pt files")
    if len(found) < args.last:
        log.warning(
            "%s: only %d checkpoints, averaging those instead of --last %d",
            args.exp_dir,
            len(found),
            args.last,
        )
    return found[-args.last :]


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        paths = select(args)
        averaged = average_checkpoints(paths)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    save_checkpoint(args.out, averaged)
    log.info(
        "averaged %d checkpoints (%s) -> %s",
        len(paths),
        ", ".join(p.name for p in paths),
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
