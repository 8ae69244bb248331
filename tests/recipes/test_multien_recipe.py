"""The large-scale recipe end to end on tiny corpora in LibriSpeech's, GigaSpeech's and
Common Voice's own layouts (flac, Opus podcasts with segments, 48 kHz MP3 clips).

The real run.sh prepares each corpus's manifests with its lhotse recipe, normalises the
transcripts into one prefix, muxes the three training sets by hours, and runs the
template's stages with a tiny model; training runs with 2 DDP processes (torchrun,
gloo) and is then resumed from its checkpoint with more steps.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import (
    TINY_MODEL,
    make_commonvoice,
    make_gigaspeech,
    make_librispeech,
    tiny_train,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "multien" / "ASR"

TINY_TRAIN = tiny_train(max_duration=15.0, keep_last_checkpoints=3)
CORPUS_OPTS = ["--ls-train-parts", "train-clean-100", "--ls-test-parts", "test-clean",
               "--gs-train-part", "XS", "--nbpe", "48", "--nj", "1", "--avg", "2",
               "--calibration-batches", "2", "--decode-methods", "greedy_search"]


def _recipe(tmp: Path) -> Path:
    d = tmp / "egs" / "multien" / "ASR"
    d.mkdir(parents=True)
    shutil.copy(RECIPE / "run.sh", d / "run.sh")
    shutil.copytree(RECIPE / "conf" / "plans", d / "conf" / "plans")
    for name, seed in (("train.yaml", 1), ("train_qat.yaml", 2)):
        cfg = {"model": TINY_MODEL, "train": {**TINY_TRAIN, "seed": seed}}
        (d / "conf" / name).write_text(yaml.safe_dump(cfg))
    shutil.copy(RECIPE / "conf" / "systems.yaml", d / "conf" / "systems.yaml")
    return d


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    ls = make_librispeech(root, {"train-clean-100": 6, "dev-clean": 2, "test-clean": 2})
    gs = make_gigaspeech(root, {"XS": (2, 3), "TEST": (1, 2)})
    cv = make_commonvoice(root, {"train": 5, "test": 2})
    return ["--ls-dir", str(ls), "--gs-dir", str(gs), "--cv-dir", str(cv)]


def run(d, corpora, *args, check=True):
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(d / "run.sh"), *corpora, *CORPUS_OPTS, *args], cwd=d,
                       env=env, capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed:\n{r.stderr[-4000:]}")
    return r


@pytest.mark.slow
def test_multien_recipe_with_ddp_training_and_resume(tmp_path, corpora, monkeypatch):
    from lhotse import load_manifest

    d = _recipe(tmp_path)
    run(d, corpora, "--stop-stage", "11", "--train-launcher", "")
    m = d / "data" / "manifests"
    sups = {p: load_manifest(m / f"multien_supervisions_{p}.jsonl.gz")
            for p in ("ls-train-clean-100", "gs-XS", "cv-train", "gs-TEST", "cv-test")}
    assert len(sups["gs-XS"]) == 6  # the <MUSIC> segments are dropped
    for p, s in sups.items():
        for seg in s:  # one transcript style: upper case, no tags, no punctuation
            assert seg.text == seg.text.upper() and "<" not in seg.text, (p, seg.text)
            assert not set(seg.text) & set(",.!?"), (p, seg.text)
    # the training set is the three corpora muxed: every cut exactly once
    train = load_manifest(d / "data/fbank/multien_cuts_train.jsonl.gz")
    ids = [c.id for c in train]
    assert len(ids) == len(set(ids)) == 6 + 6 + 5
    src = [("gs" if i.startswith("POD") else "cv" if "common_voice" in i else "ls")
           for i in ids]
    assert set(src) == {"ls", "gs", "cv"}
    assert src != sorted(src)  # interleaved, not concatenated
    monkeypatch.chdir(d)  # feature paths are relative to the recipe dir
    for c in train:  # 16 kHz fbank for 48 kHz MP3 and 16 kHz Opus alike
        assert c.load_features().shape[1] == 80

    # float32 trained by 2 processes; then told to go further, it resumes
    ddp = ["--train-launcher", "torchrun --standalone --nproc-per-node 2"]
    r = run(d, corpora, "--stage", "12", "--stop-stage", "12", *ddp,
            "--max-steps", "2")
    exp = d / "exp" / "float32"
    summ = json.loads((exp / "train_summary.json").read_text())
    assert summ["steps"] == 2
    assert "torchrun" in (d / "exp/commands.log").read_text()
    for s in ("float32", "qat_w8a8", "qat_mixed48"):
        (d / "exp" / s / ".train.done").unlink()
        (d / "exp" / s / ".avg.done").unlink(missing_ok=True)
    r = run(d, corpora, "--stage", "12", "--stop-stage", "12", *ddp)
    assert "resumed from" in r.stderr
    summ = json.loads((exp / "train_summary.json").read_text())
    assert summ["steps"] == TINY_TRAIN["max_steps"]

    run(d, corpora, "--stage", "13", "--train-launcher", "")
    res = json.loads((d / "exp" / "results.json").read_text())
    systems = {s["name"]: s for s in res["systems"]}
    assert list(systems) == ["float32", "ptq_w8a8", "qat_w8a8", "qat_mixed48"]
    for name, s in systems.items():
        assert s["size_bytes"] == (d / s["model_file"]).stat().st_size, name
        for part in ("ls-test-clean", "gs-TEST", "cv-test"):
            assert s["words"][part] > 0, (name, part)
    # the headline: mixed 4/8 below all-int8, below float32
    assert systems["qat_mixed48"]["size_bytes"] < systems["qat_w8a8"]["size_bytes"]
    assert systems["qat_w8a8"]["size_bytes"] < systems["float32"]["size_bytes"]


@pytest.mark.slow
def test_multien_recipe_trains_from_shar_shards(tmp_path, corpora):
    from lhotse import CutSet

    from q4asr.checkpoint import find_latest, load_checkpoint

    d = _recipe(tmp_path)
    systems = {"systems": [{"name": "float32", "method": "float",
                            "config": "conf/train.yaml"}]}
    (d / "conf" / "systems.yaml").write_text(yaml.safe_dump(systems))
    shar = d / "data" / "shar" / "multien_train"
    marker = d / "data" / "shar" / ".multien_train.done"
    # a failed write leaves neither shards nor a .done marker
    r = run(d, corpora, "--stop-stage", "10", "--train-launcher", "", "--train-shar",
            "true", "--shar-shard-size", "0", check=False)
    assert r.returncode != 0 and "shard size 0: must be at least 1" in r.stderr
    assert not marker.exists() and not shar.exists()

    ddp = ["--train-launcher", "torchrun --standalone --nproc-per-node 2"]
    run(d, corpora, "--stop-stage", "12", "--train-shar", "true", "--shar-shard-size",
        "4", "--max-steps", "2", *ddp)
    assert marker.exists()
    index = {p.name.split(".")[0] for p in shar.iterdir()}
    assert index == {"cuts", "features"} and len(list(shar.glob("cuts.*"))) == 5
    jsonl = CutSet.from_file(d / "data/fbank/multien_cuts_train.jsonl.gz")
    from_shar = CutSet.from_shar(in_dir=shar)
    assert sorted(c.id for c in from_shar) == sorted(c.id for c in jsonl)
    assert "--train-cuts data/shar/multien_train " in (d / "exp/commands.log").read_text()
    exp = d / "exp" / "float32"
    summ = json.loads((exp / "train_summary.json").read_text())
    assert summ["steps"] == 2 and summ["world_size"] == 2
    pos = load_checkpoint(find_latest(exp))["sampler"]
    assert pos["format"] == "lhotse-shar" and pos["num_shards"] == 5
    assert sum(map(sum, pos["batches"])) == 2 * pos["batches_done"]

    # the same shards read through an index of pipe commands (as from an object store)
    index = d / "data" / "shar" / "train.shar.json"
    subprocess.run([sys.executable, "-m", "q4asr.data.shar", "index", str(shar),
                    "--url-prefix", str(shar), "--pipe", "cat {url}", "--out", str(index)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    shutil.rmtree(exp)
    run(d, corpora, "--stage", "12", "--stop-stage", "12", "--train-shar", "true",
        "--shar-index", "data/shar/train.shar.json", "--max-steps", "2", *ddp)
    assert "--train-cuts data/shar/train.shar.json " in (d / "exp/commands.log").read_text()
    assert json.loads((exp / "train_summary.json").read_text())["steps"] == 2
