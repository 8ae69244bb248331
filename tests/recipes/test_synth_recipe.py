"""The synthetic-speech recipe end to end on a tiny corpus: every stage, through report.

The recipe dir is copied to a temporary dir with a tiny model config and a systems file of
three systems (float32, PTQ int4 and QAT W4A8), so the real run.sh and the real template
run stage by stage on real synthesized audio.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import TINY_MODEL, tiny_train

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "synth" / "ASR"

TINY_TRAIN = tiny_train(max_steps=6, valid_every=3, checkpoint_every=3,
                        keep_last_checkpoints=3)
CORPUS = ["--num-train", "40", "--num-dev", "6", "--num-test", "6", "--vocab-size", "300",
          "--nbpe", "64", "--avg", "2", "--decode-methods", "greedy_search"]


def _recipe(tmp: Path) -> Path:
    """A copy of the recipe with tiny configs; returns its dir."""
    d = tmp / "egs" / "synth" / "ASR"
    d.mkdir(parents=True)
    shutil.copy(RECIPE / "run.sh", d / "run.sh")
    shutil.copytree(RECIPE / "conf" / "plans", d / "conf" / "plans")
    cfg = {"model": TINY_MODEL, "train": TINY_TRAIN}
    (d / "conf" / "train.yaml").write_text(yaml.safe_dump(cfg))
    qat = {"model": TINY_MODEL, "train": {**TINY_TRAIN, "seed": 2}}
    (d / "conf" / "train_qat.yaml").write_text(yaml.safe_dump(qat))
    systems = {"systems": [
        {"name": "float32", "method": "float", "config": "conf/train.yaml"},
        {"name": "ptq_w4a8", "method": "ptq", "plan": "conf/plans/w4a8.yaml",
         "init_from": "float32"},
        {"name": "qat_w4a8", "method": "qat", "config": "conf/train_qat.yaml",
         "plan": "conf/plans/w4a8.yaml", "init_from": "float32"},
    ]}
    (d / "conf" / "systems.yaml").write_text(yaml.safe_dump(systems, sort_keys=False))
    return d


def run(d: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(d / "run.sh"), *CORPUS, *args], cwd=d, env=env,
                       capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed:\n{r.stderr[-4000:]}")
    return r


def test_options_are_checked_and_the_rest_reach_the_template(tmp_path):
    d = _recipe(tmp_path)
    r = run(d, "--stage", "abc", check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{d / 'run.sh'}: option --stage takes a non-negative integer, not 'abc'"
    ]
    # options of the template only: checked at once, then passed on to it
    r = run(d, "--calibration-batches", "x", check=False)
    assert r.returncode == 1 and "--calibration-batches takes a non-negative" in r.stderr
    assert not (d / "data").exists()
    r = run(d, "--stage", "16", "--systems", "conf/none.yaml", check=False)
    assert r.returncode == 1
    assert "--systems conf/none.yaml: no such file" in r.stderr
    r = run(d, "--stage", "16", "--max-steps", "many", check=False)
    assert r.returncode == 1 and "--max-steps takes a non-negative integer" in r.stderr
    r = run(d, "--gpu-schedule", "maybe", check=False)
    assert r.returncode == 1 and "--gpu-schedule takes true or false" in r.stderr
    r = run(d, "--gpu-schedule", "true", "--quick", "true", check=False)
    assert r.returncode == 1 and "choose one" in r.stderr
    if not torch.cuda.is_available():
        r = run(d, "--gpu-schedule", "true", check=False)
        assert r.returncode == 1 and "needs a CUDA GPU" in r.stderr
        assert not (d / "data").exists() and not (d / "exp" / "gpu").exists()
    r = run(d, "--stage", "17", "--stop-stage", "16", "--train-launcher", "torchrun",
            "--calibration-batches", "3")
    assert r.returncode == 0 and "unknown option" not in r.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return _recipe(tmp_path_factory.mktemp("synth"))


@pytest.mark.slow
def test_stop_after_middle_stage_then_resume_to_report(recipe):
    # data, features and BPE only
    r = run(recipe, "--stop-stage", "11")
    assert (recipe / "data/manifests/.synth.done").exists()
    assert (recipe / "data/fbank/.fbank.done").exists()
    assert (recipe / "data/lang_bpe_64/bpe.model").exists()
    assert not (recipe / "exp/float32").exists()
    assert "Stage 12" not in r.stderr
    # everything else, resumed from stage 12
    r = run(recipe, "--stage", "12")
    assert "Stage 0:" not in r.stderr and "Stage 10:" not in r.stderr

    results = json.loads((recipe / "exp/results.json").read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert list(systems) == ["float32", "ptq_w4a8", "qat_w4a8"]
    f32 = systems["float32"]["size_bytes"]
    for s in systems.values():
        path = recipe / s["model_file"]
        assert path.is_file(), path
        assert s["size_bytes"] == path.stat().st_size
        assert s["size_ratio"] == pytest.approx(f32 / s["size_bytes"], abs=1e-3)
        assert s["params"] > 0
        for part in ("test", "test_heldout"):
            assert 0 <= s["wer"][part] and s["words"][part] > 0
            assert s["rtf"][part] > 0
    assert systems["ptq_w4a8"]["size_ratio"] > 3  # int4 weights, tiny model
    assert systems["qat_w4a8"]["train_steps"] == 6
    assert systems["qat_w4a8"]["train_seconds"] > 0
    assert results["environment"]["torch"]
    assert any("q4asr-train" in c for c in results["commands"])
    assert (recipe / "exp/wer_vs_size.png").stat().st_size > 1000
    md = (recipe / "RESULTS.md").read_text()
    assert "qat_w4a8" in md and "q4asr-report:begin" in md
    # stage 17: ONNX files and the test parts transcribed by sherpa-onnx
    for name in systems:
        for f in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
            assert (recipe / f"exp/{name}/onnx/{f}").is_file(), (name, f)
        for part in ("test", "test_heldout"):
            summary = json.loads((recipe / f"exp/{name}/decode_onnx/{part}.json").read_text())
            assert summary["utts"] == len((recipe / f"data/kaldi/{part}/text").read_text()
                                          .splitlines())

    # a second run with everything done redoes nothing but the report
    r = run(recipe, "--stage", "12")
    assert "q4asr-train" not in r.stderr.replace("skip (done", "")
    assert r.stderr.count("skip (done:") >= 8


@pytest.mark.slow
def test_failing_stage_leaves_no_marker_and_is_redone(tmp_path):
    d = _recipe(tmp_path)
    run(d, "--stop-stage", "11")
    # break the float system's config: the train stage must fail without a marker
    good = (d / "conf/train.yaml").read_text()
    (d / "conf/train.yaml").write_text(good.replace("max_steps", "no_such_key"))
    r = run(d, "--stage", "12", "--stop-stage", "12", check=False)
    assert r.returncode != 0
    assert "no_such_key" in r.stderr
    assert not (d / "exp/float32/.train.done").exists()
    # mended: the next run trains it and writes the marker
    (d / "conf/train.yaml").write_text(good)
    run(d, "--stage", "12", "--stop-stage", "12")
    assert (d / "exp/float32/.train.done").exists()
    assert (d / "exp/float32/final.pt").exists()


@pytest.mark.slow
def test_heldout_engine_corpus_with_augmented_features(tmp_path):
    d = _recipe(tmp_path)
    r = run(d, "--heldout-engine", "mbrola", check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{d / 'run.sh'}: --heldout-engine mbrola: expected espeak, flite or festival"
    ]
    assert not (d / "data").exists() and not (d / "exp").exists()
    r = run(d, "--heldout-engine", "flite", "--stop-stage", "10", "--speed-perturb",
            "1.1", "--reverb", "true", "--noise-snr", "10")
    # a corpus of its own, test_engine among the test parts of every later stage
    data = d / "data" / "heldout_flite"
    assert not (d / "data" / "manifests").exists()
    assert "for train dev test test_heldout test_engine" in r.stderr
    from lhotse import load_manifest

    engines = {}
    for part in ("train", "dev", "test", "test_heldout", "test_engine"):
        sups = load_manifest(data / "manifests" / f"synth_supervisions_{part}.jsonl.gz")
        engines[part] = {s.custom["engine"] for s in sups}
        cuts = load_manifest(data / "fbank" / f"synth_cuts_{part}.jsonl.gz")
        n = len(cuts) if part != "train" else len(cuts) // 4
        assert n == len(sups), part
    assert engines["test_engine"] == {"flite"}
    assert all("flite" not in engines[p] for p in ("train", "dev", "test", "test_heldout"))
    ids = [c.id for c in load_manifest(data / "fbank" / "synth_cuts_train.jsonl.gz")]
    for suffix in ("_sp1.1", "_rvb", "_noise10"):
        assert sum(i.endswith(suffix) for i in ids) == len(ids) // 4, suffix
    assert (d / "exp" / "heldout_flite" / "commands.log").is_file()
