"""Lhotse Shar shards: writing, splitting across ranks and workers, per-epoch shuffling,
resuming a stream where it stopped, and the order of a resumed epoch."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet

from q4asr.data.datamodule import DataSpec, restore_sampler, sampler_state
from q4asr.data.shar import (
    SharStream,
    _in_order,
    is_shar,
    main,
    make_train_loader,
    shar_fields,
    write_index,
    write_shar,
)
from q4asr.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_corpus):
    return Tokenizer(tiny_corpus.bpe_model)


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory):
    """The tiny corpus's 40 training cuts in 8 shards of 5."""
    out = tmp_path_factory.mktemp("shar") / "train"
    write_shar(tiny_corpus.cuts["train"], out, ["features"], shard_size=5)
    return out


def _spec(**kw) -> DataSpec:
    d = dict(max_duration=6.0, num_buckets=2, seed=3, num_workers=0)
    d.update(kw)
    return DataSpec(**d)


def _ids(batches) -> list[list[str]]:
    return [b["cut_ids"] for b in batches]


def test_write_keeps_every_cut_and_its_features(tiny_corpus, shards):
    fields = shar_fields(shards)
    assert set(fields) == {"cuts", "features"}
    assert len(fields["cuts"]) == len(fields["features"]) == 8
    assert sorted(p.name for p in shards.iterdir()) == sorted(
        [f"cuts.{i:06d}.jsonl.gz" for i in range(8)]
        + [f"features.{i:06d}.tar" for i in range(8)]
    )  # a plain lhotse Shar directory, nothing else in it
    assert not list(shards.parent.glob(".tmp.*"))
    assert is_shar(shards) and is_shar(shards.parent / "x.shar.json")
    assert not is_shar(tiny_corpus.cuts["train"])
    src = {c.id: c for c in CutSet.from_file(tiny_corpus.cuts["train"])}
    seen = []
    for c in CutSet.from_shar(in_dir=shards):
        a, b = src[c.id].load_features(), c.load_features()
        assert a.shape == b.shape
        # lilcom again on lilcom-decoded features: within lilcom's own precision
        np.testing.assert_allclose(a, b, atol=0.05 * float(np.abs(a).max()))
        assert c.supervisions[0].text == src[c.id].supervisions[0].text
        seen.append(c.id)
    assert sorted(seen) == sorted(src)
    # parallel writers: the same shards
    par = shards.parent / "parallel"
    index = write_shar(tiny_corpus.cuts["train"], par, shard_size=5, num_jobs=2)
    assert index == {k: [Path(p).name for p in v] for k, v in fields.items()}
    assert sorted(c.id for c in CutSet.from_shar(in_dir=par)) == sorted(src)


def test_an_index_of_urls_is_read_like_the_directory(shards, tmp_path):
    out = write_index(shards, "s3://bucket/train/", tmp_path / "train.shar.json")
    urls = shar_fields(out)
    assert urls["features"][3] == "s3://bucket/train/features.000003.tar"
    # an index of relative paths: relative to the index's directory
    rel = {k: [f"{shards.name}/{Path(p).name}" for p in v]
           for k, v in shar_fields(shards).items()}  # fmt: skip
    (shards.parent / "rel.shar.json").write_text(json.dumps(rel))
    local = shar_fields(shards.parent / "rel.shar.json")
    assert local == shar_fields(shards)
    with pytest.raises(ValueError, match="ends with .shar.json"):
        write_index(shards, "s3://b", tmp_path / "x.json")
    with pytest.raises(ValueError, match="must contain"):
        write_index(shards, "s3://b", tmp_path / "x.shar.json", pipe="cat")


def test_shards_streamed_through_pipe_commands(shards, tok, tmp_path):
    """An index of ``pipe:`` commands (here ``cat``, as ``aws s3 cp URL -`` would be)
    is read by the same training loader."""
    index = write_index(shards, str(shards), tmp_path / "p.shar.json", pipe="cat {url}")
    fields = shar_fields(index)
    assert fields["cuts"][0] == f"pipe:cat {shards}/cuts.000000.jsonl.gz | gunzip -c -"
    assert fields["features"][0] == f"pipe:cat {shards}/features.000000.tar"
    data = make_train_loader(index, tok, _spec())
    data.sampler.set_epoch(0)
    ids = [i for b in data.loader for i in b["cut_ids"]]
    assert len(ids) == len(set(ids)) == 40


def test_write_errors_name_the_problem(tiny_corpus, shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl.gz: no such cut manifest"):
        write_shar(tmp_path / "nope.jsonl.gz", tmp_path / "x")
    with pytest.raises(ValueError, match="already exists"):
        write_shar(tiny_corpus.cuts["train"], shards)
    with pytest.raises(ValueError, match="must be one of"):
        write_shar(tiny_corpus.cuts["train"], tmp_path / "x", ["fbank"])
    assert not (tmp_path / "x").exists()
    # the CLI: one line, exit status 1, no output directory left behind
    assert (
        main(
            [
                "write",
                "--cuts",
                str(tmp_path / "no.jsonl.gz"),
                "--out-dir",
                str(tmp_path / "y"),
            ]
        )
        == 1
    )
    assert not (tmp_path / "y").exists()
    bad = tmp_path / "bad.shar.json"
    bad.write_text(json.dumps({"cuts": ["a", "b"], "features": ["a"]}))
    with pytest.raises(ValueError, match="field 'features' has 1 shards, 'cuts' has 2"):
        shar_fields(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.shar.json: not valid JSON"):
        shar_fields(bad)
    with pytest.raises(FileNotFoundError, match="no.shar.json: no such Shar index"):
        shar_fields(tmp_path / "no.shar.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no Shar cut shards"):
        shar_fields(tmp_path / "empty")


def test_jsonl_stays_the_default(tiny_corpus, tok):
    from lhotse.dataset import DynamicBucketingSampler

    data = make_train_loader(tiny_corpus.cuts["train"], tok, _spec())
    assert isinstance(data.sampler, DynamicBucketingSampler)


def _epoch(path, tok, spec, epoch, rank=0, world_size=1, monkeypatch=None):
    if monkeypatch is not None:  # what torchrun sets; lhotse splits shards by it
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
    stream = make_train_loader(path, tok, spec).loader  # no gather: one process
    stream.set_epoch(epoch)
    return list(stream)


def test_shards_split_across_ranks_and_workers_without_overlap(
    shards, tok, monkeypatch
):
    spec = _spec(num_workers=2)
    per_rank = []
    for rank in (0, 1):
        batches = _epoch(shards, tok, spec, 0, rank, 2, monkeypatch)
        workers = {b["stream"]["worker"] for b in batches}
        assert workers == {0, 1}  # both dataloader workers gave batches
        ids = [i for b in _ids(batches) for i in b]
        per_rank.append(ids)
        assert len(ids) == len(set(ids))
        assert all(b["duration"] <= 6.0 + 1e-6 for b in batches)
    # 8 shards / (2 ranks x 2 workers): each rank reads 4 shards, 20 distinct cuts
    assert len(per_rank[0]) == len(per_rank[1]) == 20
    assert not set(per_rank[0]) & set(per_rank[1])


def test_epochs_reshuffle_the_shards(shards, tok):
    spec = _spec()
    e0 = [i for b in _ids(_epoch(shards, tok, spec, 0)) for i in b]
    e1 = [i for b in _ids(_epoch(shards, tok, spec, 1)) for i in b]
    again = [i for b in _ids(_epoch(shards, tok, spec, 0)) for i in b]
    assert sorted(e0) == sorted(e1) and len(e0) == 40
    assert e0 != e1  # another order
    assert e0 == again  # the same seed and epoch: the same order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_stream_continues_with_the_next_batch(shards, tok, num_workers):
    spec = _spec(num_workers=num_workers)
    full = make_train_loader(shards, tok, spec)
    full.sampler.set_epoch(1)
    ref = _ids(full.loader)
    for stop in (1, 3, len(ref) - 1):
        first = make_train_loader(shards, tok, spec)
        first.sampler.set_epoch(1)
        taken = _ids(itertools.islice(first.loader, stop))
        state = sampler_state(first.sampler, 1, stop)
        assert state["epoch"] == 1 and state["batches_done"] == stop
        assert sum(state["batches"][0]) == stop
        assert sum(state["cuts"][0]) == sum(len(b) for b in taken)
        state = json.loads(json.dumps(state))  # as stored: plain data
        second = make_train_loader(shards, tok, spec)
        restore_sampler(second.sampler, state)
        second.sampler.set_epoch(1)
        rest = _ids(second.loader)
        assert taken + rest == ref, stop  # nothing repeated or skipped, same order
        second.sampler.set_epoch(2)  # the next epoch starts from its beginning
        assert sum(len(b) for b in _ids(second.loader)) == 40


def test_a_changed_layout_restarts_the_epoch(shards, tok, caplog):
    a = make_train_loader(shards, tok, _spec(num_workers=0))
    a.sampler.set_epoch(0)
    next(iter(a.loader))
    state = sampler_state(a.sampler, 0, 1)
    b = make_train_loader(shards, tok, _spec(num_workers=2))
    restore_sampler(b.sampler, state)
    assert "restarts from its first shard" in caplog.text
    b.sampler.set_epoch(0)
    assert sum(len(x) for x in _ids(b.loader)) == 40
    jsonl_state = {"epoch": 0, "batches_done": 1}
    with pytest.raises(ValueError, match="not a Shar stream's"):
        restore_sampler(b.sampler, jsonl_state)


def test_too_few_shards_for_the_ranks(shards, tok):
    with pytest.raises(ValueError, match="8 Shar shards for 9 ranks"):
        SharStream(shar_fields(shards), tok, _spec(), None, world_size=9, rank=0)


def _dataloader_order(counts: list[int]) -> list[tuple[int, int]]:
    """(worker, local batch) in the order a DataLoader yields K workers' batches."""
    out = []
    for r in range(max(counts)):
        out += [(k, r) for k in range(len(counts)) if r < counts[k]]
    return out


@pytest.mark.parametrize("counts", [[3, 3], [4, 2], [1, 5, 3], [2, 2, 2, 0]])
def test_in_order_matches_an_uninterrupted_dataloader(counts):
    ref = _dataloader_order(counts)
    for cut in range(len(ref) + 1):
        done = ref[:cut]
        offsets = [sum(1 for k, _ in done if k == w) for w in range(len(counts))]
        left = [c - o for c, o in zip(counts, offsets)]
        # the resumed DataLoader's order: local rounds of what each worker has left
        resumed = [
            {"stream": {"worker": k}, "id": (k, offsets[k] + s)}
            for k, s in _dataloader_order(left)
        ]
        got = [b["id"] for b in _in_order(iter(resumed), offsets)]
        assert got == ref[cut:], (counts, cut)


def test_state_of_an_epoch_not_started_is_its_beginning(shards, tok):
    data = make_train_loader(shards, tok, _spec())
    data.sampler.set_epoch(0)
    n = len(list(data.loader))
    assert sum(sampler_state(data.sampler, 0, n)["batches"][0]) == n
    # the epoch ended; training moved to the next one and saves before its first batch
    data.sampler.set_epoch(1)
    state = sampler_state(data.sampler, 1, 0)
    assert state["epoch"] == 1 and state["batches"] == [[0]] and state["cuts"] == [[0]]
    with pytest.raises(ValueError, match="training says 3 batches of epoch 1"):
        sampler_state(data.sampler, 1, 3)


def test_audio_shards_for_on_the_fly_features(tiny_corpus, tok, tmp_path):
    audio = tmp_path / "audio"
    write_shar(tiny_corpus.cuts["dev"], audio, ["recording"], shard_size=4)
    assert set(shar_fields(audio)) == {"cuts", "recording"}
    data = make_train_loader(audio, tok, _spec(on_the_fly_features=True))
    data.sampler.set_epoch(0)
    batches = list(data.loader)
    assert sum(len(b["cut_ids"]) for b in batches) == 8
    for b in batches:
        n, t, f = b["features"].shape
        assert n == len(b["cut_ids"]) and f == 80 and t >= 7
    with pytest.raises(ValueError, match="training needs 'features'"):
        make_train_loader(audio, tok, _spec())
