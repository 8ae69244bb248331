"""tools/new_recipe.sh: a new recipe that imports Kaldi data dirs as lhotse manifests."""

import os
import shutil
import subprocess
from pathlib import Path

from lhotse import load_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_scaffold_and_kaldi_import(tiny_corpus, tmp_path):
    # a copy of the tree parts the scaffold reads, so the repo itself is not touched
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools/new_recipe.sh", tmp_path / "tools")
    shutil.copytree(ROOT / "egs/synth/ASR/conf", tmp_path / "egs/synth/ASR/conf")
    r = subprocess.run([str(tmp_path / "tools/new_recipe.sh"), "mycorpus"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "egs/mycorpus/ASR"
    assert (d / "conf/systems.yaml").is_file() and (d / "conf/plans/w4a8.yaml").is_file()
    again = subprocess.run([str(tmp_path / "tools/new_recipe.sh"), "mycorpus"],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = subprocess.run([str(tmp_path / "tools/new_recipe.sh"), "my corpus"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "usage" in bad.stderr

    # Kaldi data dirs of the tiny corpus (absolute audio paths)
    dirs = {}
    for part in ("train", "dev", "test"):
        k = tmp_path / "kaldi" / part
        k.mkdir(parents=True)
        recs = load_manifest(tiny_corpus.manifest_dir / f"synth_recordings_{part}.jsonl.gz")
        sups = load_manifest(tiny_corpus.manifest_dir / f"synth_supervisions_{part}.jsonl.gz")
        (k / "wav.scp").write_text("".join(f"{r.id} {r.sources[0].source}\n" for r in recs))
        (k / "text").write_text("".join(f"{s.recording_id} {s.text}\n" for s in sups))
        dirs[part] = k
    env = {**os.environ, "Q4ASR_ROOT": str(ROOT)}
    run = [str(d / "run.sh"), "--stop-stage", "0"]
    r = subprocess.run(run, cwd=d, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "needs --train-dir" in r.stderr
    assert not (d / "data/manifests/.import.done").exists()
    r = subprocess.run(run + ["--train-dir", str(dirs["train"]), "--dev-dir", str(dirs["dev"]),
                              "--test-dirs", str(dirs["test"])],
                       cwd=d, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (d / "data/manifests/.import.done").exists()
    sups = load_manifest(d / "data/manifests/mycorpus_supervisions_test.jsonl.gz")
    assert [s.text for s in sups] == tiny_corpus.texts["test"]
