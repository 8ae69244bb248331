"""The LibriSpeech recipe end to end on a tiny corpus in LibriSpeech's own layout.

The fixture (tests/recipes/fixtures.py) writes ``LibriSpeech/<part>/<spk>/<chapter>/``
flac files and ``.trans.txt`` transcripts; the real run.sh then runs stage 0 (the
download, skipped because the corpus dir exists), stage 1 (lhotse's
``prepare_librispeech``) and the template's stages with speed perturbation, on a copy
of the recipe whose configs are tiny.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures import TINY_MODEL, make_librispeech, tiny_train

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "librispeech" / "ASR"

TINY_TRAIN = tiny_train()
PARTS = {"train-clean-100": 8, "train-other-500": 4, "dev-clean": 2, "test-clean": 3,
         "test-other": 3}


def _recipe(tmp: Path) -> Path:
    d = tmp / "egs" / "librispeech" / "ASR"
    d.mkdir(parents=True)
    shutil.copy(RECIPE / "run.sh", d / "run.sh")
    shutil.copytree(RECIPE / "conf" / "plans", d / "conf" / "plans")
    for name, seed in (("train.yaml", 1), ("train_qat.yaml", 2)):
        cfg = {"model": TINY_MODEL, "train": {**TINY_TRAIN, "seed": seed}}
        (d / "conf" / name).write_text(yaml.safe_dump(cfg))
    # the real systems file, every system kept: the whole sweep runs
    shutil.copy(RECIPE / "conf" / "systems.yaml", d / "conf" / "systems.yaml")
    return d


def run(d: Path, corpus: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [str(d / "run.sh"), "--corpus-dir", str(corpus), "--nj", "1",
           "--train-parts", "train-clean-100 train-other-500", "--nbpe", "48",
           "--avg", "2", "--train-launcher", "", "--calibration-batches", "2",
           "--decode-methods", "greedy_search modified_beam_search", *args]
    r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed:\n{r.stderr[-4000:]}")
    return r


@pytest.mark.slow
def test_librispeech_recipe_end_to_end(tmp_path):
    corpus = make_librispeech(tmp_path / "corpus", PARTS)
    d = _recipe(tmp_path)
    r = run(d, corpus, "--stop-stage", "11")
    assert f"skip: {corpus} exists" in r.stderr
    m = d / "data" / "manifests"
    for part in PARTS:
        assert (m / f"librispeech_supervisions_{part}.jsonl.gz").is_file(), part
    from lhotse import load_manifest

    # speed perturbation 0.9/1.1 on both training parts; their mux holds every cut once
    fb = d / "data" / "fbank"
    ids = [c.id for c in load_manifest(fb / "librispeech_cuts_train.jsonl.gz")]
    n_train = PARTS["train-clean-100"] + PARTS["train-other-500"]
    assert len(ids) == len(set(ids)) == 3 * n_train
    assert sum(i.endswith("_sp0.9") for i in ids) == n_train
    assert sum(i.endswith("_sp1.1") for i in ids) == n_train
    assert len(load_manifest(fb / "librispeech_cuts_test-other.jsonl.gz")) == 3
    assert (d / "data" / "lang_bpe_48" / "bpe.model").is_file()
    assert not (d / "exp" / "float32").exists()

    run(d, corpus, "--stage", "12")
    res = json.loads((d / "exp" / "results.json").read_text())
    systems = {s["name"]: s for s in res["systems"]}
    want = yaml.safe_load((RECIPE / "conf" / "systems.yaml").read_text())["systems"]
    assert list(systems) == [s["name"] for s in want]
    for name, s in systems.items():
        path = d / s["model_file"]
        assert s["size_bytes"] == path.stat().st_size, name
        for part in ("test-clean", "test-other"):
            assert s["words"][part] > 0 and s["wer"][part] >= 0
        for m_ in ("greedy_search", "modified_beam_search"):
            assert list((d / "exp" / name / "decode").glob(f"*{m_}*")), (name, m_)
    f32 = systems["float32"]["size_bytes"]
    assert systems["qat_w4a8"]["size_bytes"] < systems["qat_w8a8"]["size_bytes"] < f32
    assert systems["qat_w4afloat"]["size_bytes"] < systems["qat_w8afloat"]["size_bytes"]
    assert systems["qat_w4a4"]["train_steps"] == TINY_TRAIN["max_steps"]
    md = (d / "RESULTS.md").read_text()
    assert "qat_w4a4" in md and "ptq_w4a8" in md

    # a re-run redoes nothing but the report
    r = run(d, corpus, "--stage", "10")
    assert "q4asr.bin.train" not in r.stderr and "q4asr-train --config" not in \
        r.stderr.replace("skip (done", "")


def test_download_offline_is_one_line_naming_the_option(tmp_path):
    """Stage 0 without the corpus and without a network: one line that says so and
    names --corpus-dir (an unresolvable mirror stands for the network being down)."""
    d = _recipe(tmp_path)
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT)}
    cmd = [str(d / "run.sh"), "--stage", "0", "--stop-stage", "0", "--dl-dir",
           str(tmp_path / "dl"), "--openslr-url", "http://openslr.invalid/resources"]
    r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "Stage 0" not in line]
    assert len(errors) == 1, r.stderr
    assert "cannot reach http://openslr.invalid/resources/12/" in errors[0]
    assert "existing copy with --corpus-dir DIR" in errors[0]
    assert not (tmp_path / "dl").exists()


def test_readme_states_the_computed_parameter_count():
    """README's parameter counts are those of the configs (computed, not typed)."""
    from q4asr.model.config import ModelConfig
    from q4asr.model.transducer import build_model

    for recipe in ("librispeech", "multien"):
        d = ROOT / "egs" / recipe / "ASR"
        readme = (d / "README.md").read_text()
        m = re.search(r"conf/train\.yaml 500\n(\d+)\n", readme)
        assert m, f"{recipe}/README.md: no parameter count after the command"
        cfg = yaml.safe_load((d / "conf" / "train.yaml").read_text())["model"]
        with __import__("torch").device("meta"):
            model = build_model(ModelConfig(**{**cfg, "vocab_size": 500}))
        assert int(m.group(1)) == sum(p.numel() for p in model.parameters()), recipe
