"""Training-data readers side by side: Lhotse Shar shards vs the jsonl manifest with
lilcom feature archives, in one process, on the same training cuts.

Both readers are the ones q4asr-train uses (``make_train_loader`` on the Shar directory,
``make_loader`` on the jsonl manifest), with the same batch size, bucketing and
filtering, no dataloader workers; every round reads one full epoch with each, in
turn, so load from other processes falls on both alike. Reported per reader: seconds
of audio delivered per second of wall time and per second of CPU time (features
read, decoded and padded into batches), the median over rounds of the wall-time
ratio, and bytes on disk (jsonl: the manifest and every feature archive its cuts
use; Shar: every shard).

  # the multien recipe's fixture corpus (tests/recipes/fixtures.py), stages 0-11 with
  # --train-shar true, then the measurement:
  python tools/bench_shar.py --prepare /tmp/bench_shar --rounds 30

  # an already prepared recipe directory (run from it: feature paths are relative):
  cd egs/multien/ASR && python ../../../tools/bench_shar.py \\
      --cuts data/fbank/multien_cuts_train.jsonl.gz --shar data/shar/multien_train \\
      --bpe-model data/lang_bpe_500/bpe.model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from lhotse import CutSet

from q4asr.data.datamodule import DataSpec, make_loader
from q4asr.data.shar import make_train_loader, shar_fields
from q4asr.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "multien" / "ASR"
# fixture corpus sizes: LibriSpeech utterances, GigaSpeech (podcasts, segments each),
# Common Voice clips
SIZES = {"ls": 60, "gs": (8, 6), "cv": 40}


def prepare(work: Path, shard_size: int) -> dict[str, Path]:
    """The multien fixture corpora and run.sh stages 0-11 with --train-shar true in
    ``work``; returns the recipe dir, cuts, Shar dir and BPE model."""
    sys.path.insert(0, str(REPO / "tests" / "recipes"))
    from fixtures import (  # noqa: E402  (the recipe test's fixture corpora)
        TINY_MODEL,
        make_commonvoice,
        make_gigaspeech,
        make_librispeech,
        tiny_train,
    )

    corpora = work / "corpora"
    if not (corpora / ".done").exists():
        shutil.rmtree(corpora, ignore_errors=True)
        corpora.mkdir(parents=True)
        make_librispeech(corpora, {"train-clean-100": SIZES["ls"], "dev-clean": 2,
                                   "test-clean": 2})  # fmt: skip
        make_gigaspeech(corpora, {"XS": SIZES["gs"], "TEST": (1, 2)})
        make_commonvoice(corpora, {"train": SIZES["cv"], "test": 2})
        (corpora / ".done").touch()
    d = work / "egs" / "multien" / "ASR"
    (d / "conf").mkdir(parents=True, exist_ok=True)
    shutil.copy(RECIPE / "run.sh", d / "run.sh")
    cfg = {"model": TINY_MODEL, "train": tiny_train()}
    for name in ("train.yaml", "train_qat.yaml"):  # what conf/systems.yaml names
        (d / "conf" / name).write_text(yaml.safe_dump(cfg))
    shutil.copy(RECIPE / "conf" / "systems.yaml", d / "conf" / "systems.yaml")
    shutil.rmtree(d / "conf" / "plans", ignore_errors=True)
    shutil.copytree(RECIPE / "conf" / "plans", d / "conf" / "plans")
    env = {**os.environ, "Q4ASR_ROOT": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [str(d / "run.sh"), "--ls-dir", str(corpora / "LibriSpeech"),
         "--gs-dir", str(corpora / "GigaSpeech"),
         "--cv-dir", str(corpora / "cv-corpus-fixture"),
         "--ls-train-parts", "train-clean-100", "--ls-test-parts", "test-clean",
         "--gs-train-part", "XS", "--nbpe", "48", "--nj", "1", "--stop-stage", "11",
         "--train-launcher", "", "--train-shar", "true",
         "--shar-shard-size", str(shard_size)],
        cwd=d, env=env, check=True,
    )  # fmt: skip
    return {
        "dir": d,
        "cuts": Path("data/fbank/multien_cuts_train.jsonl.gz"),
        "shar": Path("data/shar/multien_train"),
        "bpe": Path("data/lang_bpe_48/bpe.model"),
    }


def disk_bytes(cuts_path: Path, shar_dir: Path) -> dict[str, int]:
    """Bytes on disk of each reader's training data."""
    archives = {c.features.storage_path for c in CutSet.from_file(cuts_path)}
    jsonl = cuts_path.stat().st_size + sum(Path(p).stat().st_size for p in archives)
    shar = sum(
        Path(p).stat().st_size for v in shar_fields(shar_dir).values() for p in v
    )
    return {"jsonl_lilcom": jsonl, "shar": shar}


def measure(
    cuts_path: Path, shar_dir: Path, bpe: Path, rounds: int, max_duration: float
) -> dict[str, Any]:
    """Both readers, one epoch each per round, alternating.

    Per reader: audio seconds per second of wall time and per second of this
    process's CPU time (what the reader costs, less sensitive to other processes on a
    shared machine), over all rounds; and the median over rounds of the Shar/jsonl
    ratio of wall-time throughput (each round's two epochs run back to back).
    """
    tok = Tokenizer(bpe)
    spec = DataSpec(max_duration=max_duration, num_buckets=4, seed=1, num_workers=0)
    readers = {
        "jsonl_lilcom": make_loader(cuts_path, tok, spec, train=True),
        "shar": make_train_loader(shar_dir, tok, spec),
    }
    tot = {k: {"audio_s": 0.0, "cuts": 0, "wall_s": 0.0, "cpu_s": 0.0} for k in readers}
    ratios = []
    for r in range(rounds + 1):  # round 0 warms the page cache and is not counted
        rate = {}
        for name, data in readers.items():
            data.sampler.set_epoch(r)
            t0, c0 = time.perf_counter(), time.process_time()
            a, n = 0.0, 0
            for batch in data.loader:
                a += batch["duration"]
                n += len(batch["cut_ids"])
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rate[name] = a / dt
            if r > 0:
                for k, v in (
                    ("audio_s", a),
                    ("cuts", n),
                    ("wall_s", dt),
                    ("cpu_s", dc),
                ):
                    tot[name][k] += v
        if r > 0:
            ratios.append(rate["shar"] / rate["jsonl_lilcom"])
    out: dict[str, Any] = {}
    for name, t in tot.items():
        out[name] = {
            **t,
            "audio_s_per_s": t["audio_s"] / t["wall_s"],
            "audio_s_per_cpu_s": t["audio_s"] / t["cpu_s"],
        }
    out["shar_vs_jsonl"] = {
        "wall": out["shar"]["audio_s_per_s"] / out["jsonl_lilcom"]["audio_s_per_s"],
        "cpu": out["shar"]["audio_s_per_cpu_s"]
        / out["jsonl_lilcom"]["audio_s_per_cpu_s"],
        "median_round_wall": statistics.median(ratios),
    }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, help="build the fixture corpus here first")
    ap.add_argument("--cuts", type=Path, help="jsonl training cuts (lilcom features)")
    ap.add_argument("--shar", type=Path, help="the same cuts as Shar shards")
    ap.add_argument("--bpe-model", type=Path)
    ap.add_argument("--shard-size", type=int, default=20, help="with --prepare")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-duration", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if args.prepare:
        p = prepare(args.prepare.resolve(), args.shard_size)
        os.chdir(p["dir"])  # feature paths in the cuts are relative to the recipe
        args.cuts, args.shar, args.bpe_model = p["cuts"], p["shar"], p["bpe"]
    if not (args.cuts and args.shar and args.bpe_model):
        ap.error("give --prepare DIR, or --cuts, --shar and --bpe-model")
    res = measure(args.cuts, args.shar, args.bpe_model, args.rounds, args.max_duration)
    res["disk_bytes"] = disk_bytes(args.cuts, args.shar)
    res["config"] = {"rounds": args.rounds, "max_duration": args.max_duration,
                     "num_workers": 0, "cpu_count": os.cpu_count()}  # fmt: skip
    j, ratio = res["jsonl_lilcom"], res["shar_vs_jsonl"]
    print(f"training cuts: {j['cuts'] // args.rounds} ({j['audio_s'] / args.rounds:.1f} s "
          f"of audio), {args.rounds} epochs per reader, alternating, one process, "
          f"no dataloader workers")  # fmt: skip
    print("| reader | audio s / s (wall) | audio s / CPU s | disk |")
    print("|---|---|---|---|")
    for name, key in (("jsonl + lilcom archives", "jsonl_lilcom"),
                      ("Lhotse Shar (lilcom)", "shar")):  # fmt: skip
        r, mb = res[key], res["disk_bytes"][key] / 1e6
        print(f"| {name} | {r['audio_s_per_s']:,.0f} | {r['audio_s_per_cpu_s']:,.0f} "
              f"| {mb:.2f} MB |")  # fmt: skip
    disk = res["disk_bytes"]["shar"] / res["disk_bytes"]["jsonl_lilcom"]
    print(f"Shar / jsonl: wall {ratio['wall']:.2f}x (median of rounds "
          f"{ratio['median_round_wall']:.2f}x), CPU {ratio['cpu']:.2f}x, "
          f"disk {disk:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
