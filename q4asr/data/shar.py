"""Training cuts as Lhotse Shar shards: writing them, and streaming them to training.

At the scale of the multien recipe (10,000+ hours, many nodes) random reads of small
feature chunks on a shared filesystem are what breaks first. Lhotse Shar stores the
cuts and their data (fbank features, audio, or both) as numbered sequential shards
(``cuts.000000.jsonl.gz``, ``features.000000.tar``, ...) that each DDP rank and each
dataloader worker reads front to back.

- :func:`write_shar`: a cut manifest -> a Shar directory (``CutSet.to_shar``), written
  into a temporary directory and renamed, so it exists only when complete.
- :func:`write_index`: ``<name>.shar.json``, every field's shards of a Shar directory as
  URLs under a prefix (``s3://bucket/dir``, ``https://...``), for shards copied to an
  object store; lhotse opens them with ``smart_open``. Entries may also be
  ``pipe:`` commands (``pipe:aws s3 cp s3://b/cuts.000000.jsonl.gz -``).
- :func:`make_train_loader`: the training loader: a Shar directory or ``.shar.json``
  index (:func:`is_shar`) is streamed by :class:`SharStream`, anything else is a jsonl
  manifest read by :func:`q4asr.data.datamodule.make_loader` (the default).
- :class:`SharStream`: ``CutSet.from_shar`` with ``split_for_dataloading`` (shards
  split across DDP ranks, then dataloader workers, without overlap), shard order
  reshuffled every epoch (seed + epoch), a lhotse ``DynamicBucketingSampler`` in each
  worker behind lhotse's ``IterableDatasetWrapper`` (bucketing kept). Its state, kept
  in every checkpoint, says where the stream is: the epoch and, for every rank and
  worker, the batches and cuts consumed by training; a resumed run skips exactly those
  and continues with the next batch, in the uninterrupted run's order.

Every rank takes the same number of steps: an epoch ends on all ranks as soon as one
rank's shards are used up (what the others still held is logged and is not used in
that epoch; the next epoch reads the shards in another order). Write at least as many
shards as ranks x workers, best a multiple of it.

CLI::

    python -m q4asr.data.shar write --cuts data/fbank/x_cuts_train.jsonl.gz \\
        --out-dir data/shar/x_train --fields features [--shard-size 1000] [--nj 4]
    python -m q4asr.data.shar index data/shar/x_train --url-prefix s3://bucket/x_train \\
        --out data/shar/x_train.shar.json [--pipe 'aws s3 cp {url} -']
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from lhotse import CutSet
from lhotse.dataset import IterableDatasetWrapper
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.shar.readers.lazy import LazySharIterator

from q4asr.data.datamodule import (
    AsrDataset,
    CutFilter,
    DataSpec,
    Loader,
    make_loader,
    make_sampler,
)
from q4asr.data.tokenizer import Tokenizer
from q4asr.utils import atomic_write, setup_logging

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".shar.json"
# what each field is written as: features re-encoded with lilcom, audio as flac
FIELD_FORMATS = {"features": "lilcom", "recording": "flac"}
STATE_FORMAT = "lhotse-shar"
BINS_ESTIMATE_CUTS = 10000  # as lhotse's DynamicBucketingSampler


# ------------------------------------------------------------------ writing


def write_shar(
    cuts_path: str | Path,
    out_dir: str | Path,
    fields: Sequence[str] = ("features",),
    shard_size: int = 1000,
    num_jobs: int = 1,
) -> dict[str, list[str]]:
    """Write the cuts of ``cuts_path`` as Shar shards in ``out_dir``; returns the index.

    ``fields``: ``features`` (fbank, lilcom) and/or ``recording`` (audio, flac).
    ``out_dir`` appears only when every shard is written (a temporary sibling is
    renamed); an existing ``out_dir`` is an error. Raises FileNotFoundError naming a
    missing manifest, ValueError for an unknown field or a cut without that field.
    """
    cuts_path, out_dir = Path(cuts_path), Path(out_dir)
    if not cuts_path.is_file():
        raise FileNotFoundError(f"{cuts_path}: no such cut manifest")
    if out_dir.exists():
        raise ValueError(
            f"{out_dir}: already exists; remove it to write the shards again"
        )
    unknown = [f for f in fields if f not in FIELD_FORMATS]
    if unknown or not fields:
        raise ValueError(
            f"Shar fields {list(fields)}: each must be one of {sorted(FIELD_FORMATS)}"
        )
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size}: must be at least 1")
    cuts = CutSet.from_jsonl_lazy(cuts_path)
    for cut in cuts.subset(first=1):
        for f in fields:
            has = cut.has_features if f == "features" else cut.has_recording
            if not has:
                raise ValueError(f"{cuts_path}: cut {cut.id} has no {f} to write")
    tmp = out_dir.with_name(f".tmp.{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        written = cuts.to_shar(
            tmp,
            fields={f: FIELD_FORMATS[f] for f in fields},
            shard_size=shard_size,
            num_jobs=num_jobs,
            warn_unused_fields=False,
        )
        index = {k: sorted(Path(p).name for p in v) for k, v in written.items()}
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "%s -> %s: %d shards of %s (shard size %d)",
        cuts_path,
        out_dir,
        len(index["cuts"]),
        ",".join(fields),
        shard_size,
    )
    return index


# ------------------------------------------------------------------ reading


def is_shar(path: str | Path) -> bool:
    """True for a Shar directory or a ``.shar.json`` index."""
    path = Path(path)
    return path.is_dir() or path.name.endswith(INDEX_SUFFIX)


def _check_fields(fields: Any, where: Path) -> dict[str, list[str]]:
    if not isinstance(fields, dict) or not fields.get("cuts"):
        raise ValueError(f"{where}: no Shar cut shards (cuts.NNNNNN.jsonl.gz)")
    n = len(fields["cuts"])
    for name, shards in fields.items():
        if not isinstance(shards, list) or len(shards) != n:
            count = len(shards) if isinstance(shards, list) else repr(shards)
            raise ValueError(
                f"{where}: field {name!r} has {count} shards, 'cuts' has {n}"
            )
    return {k: [str(p) for p in v] for k, v in fields.items()}


def shar_fields(path: str | Path) -> dict[str, list[str]]:
    """``{field: [shard, ...]}`` of a Shar directory or index, for ``CutSet.from_shar``.

    A directory is listed as lhotse lists it (``LazySharIterator(in_dir=...)``);
    relative entries of an index are taken relative to the index's directory, URLs
    and ``pipe:`` commands are kept as they are. Raises FileNotFoundError or
    ValueError naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        try:
            streams = LazySharIterator(in_dir=path).streams
        except AssertionError:
            streams = None
        return _check_fields(streams, path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Shar index")
    try:
        fields = _check_fields(json.loads(path.read_text()), path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return {
        name: [
            s if ("://" in s or s.startswith("pipe:")) else str(path.parent / s)
            for s in shards
        ]
        for name, shards in fields.items()
    }


def write_index(
    shar_dir: str | Path, url_prefix: str, out: str | Path, pipe: str | None = None
) -> Path:
    """Write ``out`` (a ``.shar.json``): the shards of ``shar_dir`` as
    ``<url_prefix>/<file name>``, for the same shards copied to an object store.

    Plain URLs are opened by lhotse through ``smart_open`` (not a q4asr dependency).
    With ``pipe`` (a command with ``{url}``, e.g. ``aws s3 cp {url} -``) every entry
    is a lhotse ``pipe:`` command instead, gzipped cut shards piped through
    ``gunzip``.
    """
    out = Path(out)
    if not out.name.endswith(INDEX_SUFFIX):
        raise ValueError(f"{out}: a Shar index's name ends with {INDEX_SUFFIX}")
    if pipe is not None and "{url}" not in pipe:
        raise ValueError(f"--pipe {pipe!r}: the command must contain {{url}}")
    prefix = url_prefix.rstrip("/")

    def entry(name: str) -> str:
        url = f"{prefix}/{name}"
        if pipe is None:
            return url
        gunzip = " | gunzip -c -" if name.endswith(".gz") else ""
        return f"pipe:{pipe.format(url=url)}{gunzip}"

    fields = shar_fields(shar_dir)
    index = {k: [entry(Path(p).name) for p in v] for k, v in fields.items()}
    text = json.dumps(index, indent=1)
    return atomic_write(out, lambda tmp: Path(tmp).write_text(text))


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardBatches(AsrDataset):
    """:class:`AsrDataset` batches tagged with where they came from.

    Adds ``batch["stream"] = {"worker": k, "cuts": n}`` (the dataloader worker and the
    number of cuts the sampler gave, read or not) and puts the cuts the filter has
    rejected in this worker since the last batch into ``batch["skipped"]``.
    """

    def __init__(self, tokenizer: Tokenizer, spec: DataSpec, cut_filter: CutFilter):
        super().__init__(
            tokenizer,
            on_the_fly_features=spec.on_the_fly_features,
            num_mel_bins=spec.num_mel_bins,
        )
        self.cut_filter = cut_filter
        self._reported = 0

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        batch = super().__getitem__(cuts)
        rejected = list(self.cut_filter.rejected.items())
        batch["skipped"].update(dict(rejected[self._reported :]))
        self._reported = len(rejected)
        batch["stream"] = {"worker": _worker()[0], "cuts": len(cuts)}
        return batch


class SharEpoch(IterableDatasetWrapper):
    """lhotse's ``IterableDatasetWrapper`` over one epoch of a Shar stream.

    ``set_epoch(e)`` builds the epoch's lazy ``CutSet.from_shar`` (shards shuffled
    with ``seed + e``, split across ranks and workers) and its bucketing sampler;
    in each worker, iteration first skips ``skip[worker]`` batches (a resumed epoch).
    """

    def __init__(
        self,
        fields: dict[str, list[str]],
        dataset: ShardBatches,
        spec: DataSpec,
    ):
        self.fields = fields
        self.spec = spec
        self.skip: list[int] = []
        self.cut_filter = dataset.cut_filter
        # bucket bounds from the cut manifests alone (no tar read), once for all
        # epochs, ranks and workers
        manifests = CutSet.from_shar(fields={"cuts": fields["cuts"]})
        self.duration_bins = estimate_duration_buckets(
            islice(manifests, BINS_ESTIMATE_CUTS), num_buckets=spec.num_buckets
        )
        super().__init__(dataset, self._sampler(0), reset_on_iter=True)

    def _sampler(self, epoch: int):
        cuts = CutSet.from_shar(
            fields=self.fields,
            split_for_dataloading=True,
            shuffle_shards=True,
            stateful_shuffle=False,
            seed=self.spec.seed + epoch,
        )
        sampler = make_sampler(
            cuts,
            self.spec,
            self.cut_filter,
            shuffle=True,
            duration_bins=self.duration_bins,
        )
        sampler.set_epoch(epoch)
        return sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler = self._sampler(epoch)

    def __iter__(self):
        super().__iter__()
        worker, _ = _worker()
        for _ in range(self.skip[worker] if worker < len(self.skip) else 0):
            if next(self._sampler_iter, None) is None:
                break
        return self


def _in_order(
    batches: Iterator[dict[str, Any]], offsets: list[int]
) -> Iterator[dict[str, Any]]:
    """The batches of a resumed epoch in the order an uninterrupted run takes them.

    A DataLoader over K workers yields round ``r`` of every worker still running, in
    worker order, then round ``r + 1``. A worker that already gave ``offsets[k]``
    batches before the resume starts at its round ``offsets[k]``, so its rounds are
    shifted; this yields ``(offsets[k] + local round, k)`` in increasing order,
    holding back at most one round. A batch that does not come (its worker ran out)
    is known missing once a later batch in the DataLoader's order has arrived.
    """
    k_n = len(offsets)
    if not any(offsets):
        yield from batches
        return
    held: dict[tuple[int, int], dict[str, Any]] = {}
    count = [0] * k_n
    last: tuple[int, int] | None = None  # (local round, worker) of the newest arrival
    ended = False
    g, k = min(offsets), 0
    while True:
        s = g - offsets[k]
        if (
            s < 0
            or (ended and (k, s) not in held)
            or (last is not None and (s, k) < last and (k, s) not in held)
        ):
            k, g = (0, g + 1) if k + 1 == k_n else (k + 1, g)  # consumed or missing
            if ended and not held:
                return
            continue
        if (k, s) in held:
            yield held.pop((k, s))
            k, g = (0, g + 1) if k + 1 == k_n else (k + 1, g)
            continue
        b = next(batches, None)
        if b is None:
            ended = True
            continue
        w = b["stream"]["worker"]
        held[(w, count[w])] = b
        last = (count[w], w)
        count[w] += 1


class SharStream:
    """Training batches streamed from Shar shards; the loader *and* the sampler of a
    :class:`~q4asr.data.datamodule.Loader`.

    ``set_epoch(e)`` then iteration gives the epoch's batches. In DDP every step
    all-gathers (has a batch, worker, cuts) from each rank, so every rank knows the
    position of all of them and all stop together. :meth:`state_dict` /
    :meth:`load_state_dict` save and restore that position.
    """

    def __init__(
        self,
        fields: dict[str, list[str]],
        tokenizer: Tokenizer,
        spec: DataSpec,
        cut_filter: CutFilter,
        world_size: int = 1,
        rank: int = 0,
    ):
        self.num_shards = len(fields["cuts"])
        if self.num_shards < world_size:
            raise ValueError(
                f"{fields['cuts'][0]}: {self.num_shards} Shar shards for {world_size} "
                f"ranks; write at least one shard per rank (a smaller shard size)"
            )
        self.num_workers = max(spec.num_workers, 1)
        if self.num_shards < world_size * self.num_workers:
            log.warning(
                "%d Shar shards for %d ranks x %d workers: some workers get none",
                self.num_shards,
                world_size,
                self.num_workers,
            )
        self.world_size, self.rank = world_size, rank
        self.spec = spec
        self.dataset = SharEpoch(
            fields, ShardBatches(tokenizer, spec, cut_filter), spec
        )
        # its own generator: starting an epoch draws no number from the global torch
        # RNG, so a run resumed mid-epoch keeps the uninterrupted run's dropout
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=spec.num_workers,
            generator=torch.Generator().manual_seed(spec.seed),
        )
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        self._counts_epoch: int | None = None  # the epoch the counts are of
        self._reset()

    def _reset(self) -> None:
        k, w = self.num_workers, self.world_size
        self.batches = [[0] * k for _ in range(w)]
        self.cuts = [[0] * k for _ in range(w)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _gather(self, have: bool, worker: int, cuts: int) -> list[list[int]]:
        row = [int(have), worker, cuts]
        if self.world_size == 1:
            return [row]
        dev = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        mine = torch.tensor(row, dtype=torch.int64, device=dev)
        rows = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(rows, mine)
        return [r.tolist() for r in rows]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._reset()
        self._counts_epoch = self.epoch
        offsets = [0] * self.num_workers
        r = self._resume
        self._resume = None
        if r is not None and r["epoch"] == self.epoch:
            self.batches = [list(x) for x in r["batches"]]
            self.cuts = [list(x) for x in r["cuts"]]
            offsets = list(self.batches[self.rank])
        self.dataset.set_epoch(self.epoch)
        self.dataset.skip = offsets
        n = sum(offsets)
        batches = _in_order(iter(self.loader), offsets)
        while True:
            b = next(batches, None)
            rows = self._gather(
                b is not None,
                b["stream"]["worker"] if b is not None else -1,
                b["stream"]["cuts"] if b is not None else 0,
            )
            if not all(row[0] for row in rows):
                left = [i for i, row in enumerate(rows) if row[0]]
                if left:
                    log.info(
                        "epoch %d ends: rank(s) %s used up their shards; ranks %s "
                        "still had batches, not used this epoch",
                        self.epoch,
                        [i for i, row in enumerate(rows) if not row[0]],
                        left,
                    )
                if n == 0:
                    raise ValueError(
                        f"{self.dataset.fields['cuts'][0]}: epoch {self.epoch} of the "
                        f"Shar stream gave no batch on some rank"
                    )
                return
            for i, (_, w, c) in enumerate(rows):
                self.batches[i][w] += 1
                self.cuts[i][w] += c
            n += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "rank %d epoch %d batch %d worker %d: %s",
                    self.rank,
                    self.epoch,
                    n,
                    b["stream"]["worker"],
                    ",".join(b["cut_ids"] + sorted(b["skipped"])),
                )
            yield b

    def state_dict(self, epoch: int, batches_done: int) -> dict[str, Any]:
        """Where the stream is after training consumed ``batches_done`` batches of
        ``epoch``: ``batches[rank][worker]`` and ``cuts[rank][worker]`` consumed, the
        layout (world size, workers, shards) they hold for, and the seed.

        Raises ValueError when ``batches_done`` is not what this rank's stream gave
        in ``epoch`` (0 for an epoch not started yet).
        """
        started = epoch == self._counts_epoch
        given = sum(self.batches[self.rank]) if started else 0
        if given != batches_done:
            raise ValueError(
                f"Shar stream: training says {batches_done} batches of epoch {epoch} "
                f"were consumed, the stream gave {given}"
            )
        if given == 0:
            self._reset()  # an epoch not started: nothing consumed
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "batches_done": batches_done,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "num_shards": self.num_shards,
            "seed": self.spec.seed,
            "batches": [list(x) for x in self.batches],
            "cuts": [list(x) for x in self.cuts],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration of its epoch.

        The position holds only for the same world size, workers, shards and seed;
        otherwise the epoch restarts from its first shard, and the log says so.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                "the checkpoint's sampler state is not a Shar stream's (it was trained "
                "from a jsonl manifest); resume with the same --train-cuts"
            )
        here = {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "num_shards": self.num_shards,
            "seed": self.spec.seed,
        }
        there = {k: state[k] for k in here}
        if here != there:
            log.warning(
                "Shar position saved for %s, this run has %s: epoch %d restarts from "
                "its first shard",
                there,
                here,
                state["epoch"],
            )
            return
        self._resume = state
        log.info(
            "Shar stream resumes in epoch %d: rank %d skips %s batches (%s cuts) "
            "per worker",
            state["epoch"],
            self.rank,
            state["batches"][self.rank],
            state["cuts"][self.rank],
        )


def make_train_loader(
    cuts_path: str | Path,
    tokenizer: Tokenizer,
    spec: DataSpec,
    *,
    world_size: int = 1,
    rank: int = 0,
) -> Loader:
    """The training :class:`Loader`: streamed from Shar shards when ``cuts_path`` is a
    Shar directory or index (:func:`is_shar`), else from a jsonl manifest."""
    if not is_shar(cuts_path):
        return make_loader(
            cuts_path, tokenizer, spec, train=True, world_size=world_size, rank=rank
        )
    fields = shar_fields(cuts_path)
    need = "recording" if spec.on_the_fly_features else "features"
    if need not in fields:
        raise ValueError(
            f"{cuts_path}: the shards hold {sorted(set(fields) - {'cuts'})}, "
            f"training needs {need!r} (train.on_the_fly_features="
            f"{spec.on_the_fly_features})"
        )
    cut_filter = CutFilter(
        tokenizer,
        need_features=not spec.on_the_fly_features,
        max_duration=spec.max_utterance_duration,
        name=Path(cuts_path).name,
    )
    stream = SharStream(fields, tokenizer, spec, cut_filter, world_size, rank)
    return Loader(stream, stream, cut_filter)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="a cut manifest -> Lhotse Shar shards")
    w.add_argument("--cuts", required=True, type=Path, help="cut manifest (jsonl)")
    w.add_argument("--out-dir", required=True, type=Path)
    w.add_argument(
        "--fields",
        nargs="+",
        default=["features"],
        choices=sorted(FIELD_FORMATS),
        help="what to store with the cuts (default: features)",
    )
    w.add_argument("--shard-size", type=int, default=1000, help="cuts per shard")
    w.add_argument("--nj", type=int, default=1, help="parallel writers")
    x = sub.add_parser("index", help="a Shar directory -> a .shar.json of its URLs")
    x.add_argument("shar_dir", type=Path)
    x.add_argument("--url-prefix", required=True, help="where the shards are copied")
    x.add_argument("--out", required=True, type=Path, help="<name>.shar.json")
    x.add_argument(
        "--pipe",
        default=None,
        help="a command that writes {url} to stdout, e.g. 'aws s3 cp {url} -'",
    )
    args = p.parse_args(argv)
    setup_logging()
    try:
        if args.cmd == "index":
            write_index(args.shar_dir, args.url_prefix, args.out, args.pipe)
        else:
            write_shar(args.cuts, args.out_dir, args.fields, args.shard_size, args.nj)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
