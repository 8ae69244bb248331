"""q4asr-train end to end on the tiny corpus: outputs, exact resume after SIGKILL,
DDP on two CPU processes, bad utterances, QAT from a float checkpoint, config errors.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lhotse import CutSet
from lhotse.utils import fastcopy

from q4asr.bin import train
from q4asr.checkpoint import find_latest, list_checkpoints, load_checkpoint
from q4asr.config import Config, ConfigError, load_config
from q4asr.model import ModelConfig, build_model

MAX_STEPS = 40
TINY_MODEL = dict(
    num_mel_bins=80,
    subsampling_channels=8,
    d_model=32,
    num_layers=2,
    num_heads=2,
    ffn_dim=64,
    conv_kernel=7,
    dropout=0.1,
    decoder_dim=32,
    joiner_dim=32,
)


def _config(tmp: Path, **train_overrides) -> Path:
    tr = dict(
        seed=7,
        max_steps=MAX_STEPS,
        max_duration=10.0,
        num_buckets=2,
        lr=3.0e-3,
        warmup_steps=5,
        model_warmup_steps=10,
        num_workers=0,
        log_every=5,
        valid_every=20,
        checkpoint_every=5,
        keep_last_checkpoints=3,
        num_threads=1,
        spec_augment={
            "time_warp_factor": 5,
            "frames_mask_size": 10,
            "num_frame_masks": 2,
        },
    )
    tr.update(train_overrides)
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": tr}))
    return path


def _args(corpus, config: Path, exp_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(config),
        "--exp-dir",
        str(exp_dir),
        "--train-cuts",
        str(corpus.cuts["train"]),
        "--valid-cuts",
        str(corpus.cuts["dev"]),
        "--bpe-model",
        str(corpus.bpe_model),
        "--no-progress",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    """One uninterrupted in-process run of MAX_STEPS steps."""
    tmp = tmp_path_factory.mktemp("train_ref")
    config = _config(tmp)
    exp = tmp / "exp"
    assert train.main(_args(tiny_corpus, config, exp)) == 0
    return config, exp


def test_run_writes_checkpoints_logs_and_summary(reference, tiny_corpus):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    _, exp = reference
    # keep_last_checkpoints=3 of every 5 steps
    assert [p.name for p in list_checkpoints(exp)] == [
        f"checkpoint-{s}.pt" for s in (30, 35, 40)
    ]
    ckpt = load_checkpoint(exp / "checkpoint-35.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "sampler",
        "rng",
        "step",
        "epoch",
        "config",
        "env",
        "plan",
    ):
        assert key in ckpt, key
    assert ckpt["step"] == 35 and ckpt["plan"] is None
    assert ckpt["config"]["train"]["max_steps"] == MAX_STEPS

    final = load_checkpoint(exp / "final.pt")
    model = build_model(ModelConfig.from_dict(final["model_config"]))
    model.load_state_dict(final["model"])  # strict: every key matches
    assert final["model_config"]["vocab_size"] == tiny_corpus.bpe_vocab_size
    last = load_checkpoint(exp / "checkpoint-40.pt")
    assert all(torch.equal(final["model"][k], last["model"][k]) for k in last["model"])

    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["world_size"] == 1
    total_audio = sum(c.duration for c in CutSet.from_file(tiny_corpus.cuts["train"]))
    # 40 steps of <= 10 s batches: several passes over the 40 training cuts
    assert total_audio < summary["audio_seconds"] <= MAX_STEPS * 10.0 + 1e-6
    assert summary["audio_sec_per_sec"] > 0 and summary["frames_per_sec"] > 0
    assert summary["epochs_completed"] >= 2
    assert summary["final_valid"]["loss"] > 0

    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/simple_loss",
        "train/pruned_loss",
        "train/ctc_loss",
        "train/lr",
        "train/frames_per_sec",
        "train/audio_sec_per_sec",
        "valid/loss",
    ):
        assert tag in tags, tag
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(5, 41, 5))
    assert losses[-1] < losses[0]  # it learns something in 40 steps
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert max(lrs) <= 3.0e-3 + 1e-12 and lrs[-1] < lrs[1]  # warm-up then decay


def test_resume_after_sigkill_is_bit_exact(reference, tiny_corpus, tmp_path):
    config, ref_exp = reference
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "q4asr.bin.train", *_args(tiny_corpus, config, exp)]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    try:
        while find_latest(exp) is None:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint written in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = find_latest(exp)
    assert proc.returncode == -signal.SIGKILL
    assert not (exp / "final.pt").exists(), "the run finished before it was killed"
    assert load_checkpoint(killed_at)["step"] < MAX_STEPS

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {killed_at}" in done.stderr
    resumed_step = load_checkpoint(exp / "final.pt")["step"]
    assert resumed_step == MAX_STEPS

    ref = load_checkpoint(ref_exp / "final.pt")["model"]
    got = load_checkpoint(exp / "final.pt")["model"]
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, different[:5]
    ref_summary = json.loads((ref_exp / "train_summary.json").read_text())
    got_summary = json.loads((exp / "train_summary.json").read_text())
    assert got_summary["audio_seconds"] == pytest.approx(ref_summary["audio_seconds"])
    assert got_summary["final_valid"] == ref_summary["final_valid"]


def test_ddp_two_processes_on_cpu(tiny_corpus, tmp_path):
    """torchrun's 2 processes, and the same 2 started by q4asr-train itself from
    ``train.cpu_processes`` (ignored under torchrun): one run, the same weights."""
    config = _config(
        tmp_path,
        max_steps=4,
        checkpoint_every=2,
        valid_every=2,
        log_every=2,
        num_threads=2,
        cpu_processes=2,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launchers = {
        "torchrun": [*torchrun, "--nproc-per-node", "2", "-m", "q4asr.bin.train"],
        "cpu_processes": [sys.executable, "-m", "q4asr.bin.train"],
    }
    for name, launcher in launchers.items():
        exp = tmp_path / name
        cmd = [*launcher, *_args(tiny_corpus, config, exp)]
        out = subprocess.run(
            cmd, env=_env(), capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        log = out.stdout + out.stderr
        assert "[rank 1]" in log  # a second process really ran
        for step in (2, 4):
            assert log.count(f"saved {exp}/checkpoint-{step}.pt") == 1
        summary = json.loads((exp / "train_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 4
        assert summary["num_threads"] == 1  # the config's 2 threads shared by 2
        ckpt = load_checkpoint(exp / "checkpoint-4.pt")
        assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
        # each rank draws its own dropout/SpecAugment stream
        assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    ref = load_checkpoint(tmp_path / "torchrun" / "final.pt")["model"]
    got = load_checkpoint(tmp_path / "cpu_processes" / "final.pt")["model"]
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []


def test_cpu_processes_failure_is_one_clear_error(tiny_corpus, tmp_path):
    config = _config(tmp_path, max_steps=2, num_threads=2, cpu_processes=2)
    exp = tmp_path / "exp"
    args = _args(tiny_corpus, config, exp)
    args[args.index("--train-cuts") + 1] = str(tmp_path / "missing_cuts.jsonl.gz")
    cmd = [sys.executable, "-m", "q4asr.bin.train", *args]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "missing_cuts.jsonl.gz" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (exp / "final.pt").exists()


def test_bad_utterances_are_skipped_and_logged(tiny_corpus, tmp_path, capfd):
    cuts = CutSet.from_file(tiny_corpus.cuts["train"]).to_eager()
    garbage = tmp_path / "garbage.lca"
    garbage.write_bytes(os.urandom(4096))
    first, second = cuts[0], cuts[1]
    bad_feats = fastcopy(
        first,
        id="corrupt-features",
        features=fastcopy(first.features, storage_path=str(garbage)),
    )
    no_text = fastcopy(
        second,
        id="empty-transcript",
        supervisions=[fastcopy(second.supervisions[0], text="")],
    )
    manifest = tmp_path / "bad_cuts_train.jsonl.gz"
    CutSet.from_cuts([bad_feats, no_text, *list(cuts)[2:]]).to_file(manifest)

    config = _config(tmp_path, max_steps=None, num_epochs=1, lr_schedule="constant")
    exp = tmp_path / "exp"
    args = _args(tiny_corpus, config, exp)
    args[args.index("--train-cuts") + 1] = str(manifest)
    assert train.main(args) == 0
    err = capfd.readouterr().err
    assert "skipping cut corrupt-features: cannot read features" in err
    assert "skipping cut empty-transcript: empty transcript" in err
    summary = json.loads((exp / "train_summary.json").read_text())
    assert set(summary["skipped_cuts"]) == {"corrupt-features", "empty-transcript"}
    assert summary["epochs_completed"] == 1 and summary["steps"] > 0
    assert (exp / "final.pt").is_file()


def test_qat_from_float_checkpoint(reference, tiny_corpus, tmp_path):
    from q4asr.quant import load_plan

    _, ref_exp = reference
    plan = tmp_path / "w4a8.yaml"
    plan.write_text("default: {weight_bits: 4, act_bits: 8}\n")
    exp = tmp_path / "exp"
    config = _config(tmp_path, max_steps=3, checkpoint_every=3, valid_every=3)
    assert (
        train.main(
            _args(
                tiny_corpus,
                config,
                exp,
                "--plan",
                str(plan),
                "--init-from",
                str(ref_exp / "final.pt"),
                "--lr",
                "1e-12",
            )
        )
        == 0
    )
    final = load_checkpoint(exp / "final.pt")
    assert final["plan"] == load_plan(plan).to_dict()
    assert final["config"]["train"]["init_from"] == str(ref_exp / "final.pt")
    assert json.loads((exp / "train_summary.json").read_text())["quantized"] is True
    # it started from the float weights (a 1e-12 learning rate barely moves them)
    init = load_checkpoint(ref_exp / "final.pt")["model"]
    for k, v in init.items():
        if v.is_floating_point():
            torch.testing.assert_close(final["model"][k], v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_qat_mixed_precision_training_and_resume(amp, reference, tiny_corpus, tmp_path):
    """QAT under autocast on the CPU (bf16, or fp16 with a gradient scaler whose
    state is checkpointed and restored on resume); auto is float32 on a CPU."""
    _, ref_exp = reference
    summary = json.loads((ref_exp / "train_summary.json").read_text())
    assert summary["amp"] == "off"  # train.amp: auto, on a CPU
    plan = tmp_path / "w4a8.yaml"
    plan.write_text("default: {weight_bits: 4, act_bits: 8}\n")
    exp = tmp_path / "exp"
    config = _config(tmp_path, max_steps=6, checkpoint_every=3, valid_every=3)
    common = ["--plan", str(plan), "--init-from", str(ref_exp / "final.pt")]
    common += ["--set", f"train.amp={amp}"]
    args = _args(tiny_corpus, config, exp, *common)
    assert train.main([*args, "--max-steps", "3"]) == 0
    ckpt = load_checkpoint(exp / "checkpoint-3.pt")
    if amp == "fp16":
        assert ckpt["grad_scaler"]["scale"] > 0
    else:
        assert ckpt["grad_scaler"] is None
    assert train.main(args) == 0  # resumes from checkpoint-3
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["amp"] == {"bf16": "bfloat16", "fp16": "float16"}[amp]
    assert all(math.isfinite(v) for v in summary["final_valid"].values())
    final = load_checkpoint(exp / "final.pt")["model"]
    assert all(
        v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in final.values()
    )


def test_compiled_float_training_and_no_compile_with_a_plan(
    tiny_corpus, tmp_path, capfd
):
    """train.compile: a float run with compiled encoder layers trains, validates
    (eager) and checkpoints; with a precision plan it is one clear error."""
    exp = tmp_path / "exp"
    config = _config(
        tmp_path, max_steps=4, checkpoint_every=2, valid_every=2, compile=True
    )
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert train.main(_args(tiny_corpus, config, exp)) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["steps"] == 4
    assert all(math.isfinite(v) for v in summary["final_valid"].values())
    assert load_checkpoint(exp / "final.pt")["config"]["train"]["compile"] is True

    plan = tmp_path / "w4a8.yaml"
    plan.write_text("default: {weight_bits: 4, act_bits: 8}\n")
    exp2 = tmp_path / "exp2"
    assert train.main(_args(tiny_corpus, config, exp2, "--plan", str(plan))) == 2
    assert "train.compile: float training only" in capfd.readouterr().err
    assert not (exp2 / "final.pt").exists()


def test_config_errors_name_the_field(tiny_corpus, tmp_path, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"model": TINY_MODEL, "train": {"max_steps": 2, "learning_rate": 1}}
        )
    )
    assert train.main(_args(tiny_corpus, bad, tmp_path / "exp")) == 2
    err = capfd.readouterr().err
    assert "train: unknown key 'learning_rate'" in err and "allowed: seed" in err
    assert not (tmp_path / "exp" / "final.pt").exists()

    with pytest.raises(ConfigError, match="train.spec_augment: unknown key 'q'"):
        Config.from_dict({"train": {"max_steps": 1, "spec_augment": {"q": 1}}})
    with pytest.raises(ConfigError, match="config: unknown key 'optim'"):
        Config.from_dict({"optim": {}})
    with pytest.raises(ConfigError, match="quant: unknown key 'bits'"):
        Config.from_dict({"train": {"max_steps": 1}, "quant": {"bits": 4}})
    with pytest.raises(ConfigError, match="train.max_duration: must be > 0"):
        Config.from_dict({"train": {"max_steps": 1, "max_duration": 0}})
    with pytest.raises(ConfigError, match="train.lr_schedule: warmup_cosine"):
        Config.from_dict({"train": {"num_epochs": 1}})
    with pytest.raises(ConfigError, match="train.lr_schedule: 'linear' is not one"):
        Config.from_dict({"train": {"max_steps": 1, "lr_schedule": "linear"}})
    with pytest.raises(ConfigError, match="set max_steps or num_epochs"):
        Config.from_dict({"train": {"max_steps": None}})

    bad_model = tmp_path / "bad_model.yaml"
    bad_model.write_text(
        yaml.safe_dump({"model": {"d_modle": 8}, "train": {"max_steps": 1}})
    )
    assert train.main(_args(tiny_corpus, bad_model, tmp_path / "exp2")) == 2
    assert "d_modle" in capfd.readouterr().err


def test_command_line_overrides_single_fields(tmp_path):
    config = _config(tmp_path)
    args = train.get_parser().parse_args(
        [
            "--config",
            str(config),
            "--exp-dir",
            "x",
            "--train-cuts",
            "t",
            "--bpe-model",
            "b",
            "--max-steps",
            "3",
            "--seed",
            "11",
            "--lr",
            "1e-4",
            "--set",
            "train.spec_augment.enabled=false",
            "--set",
            "model.dropout=0.2",
        ]
    )
    cfg = train.build_config(args)
    assert cfg.train.max_steps == 3 and cfg.train.seed == 11
    assert cfg.train.lr == 1e-4 and cfg.train.spec_augment.enabled is False
    assert cfg.model["dropout"] == 0.2 and cfg.train.max_duration == 10.0
    assert cfg.train.spec_augment.time_warp_factor == 5  # untouched siblings stay
    assert load_config(config).train.lr == 3.0e-3
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(config, ["train.lr"])
    with pytest.raises(ConfigError, match="train: unknown key 'lrr'"):
        load_config(config, ["train.lrr=1"])


def test_init_from_moved_to_train_old_configs_still_load(tmp_path, caplog):
    config = _config(tmp_path)
    old = yaml.safe_load(config.read_text())
    old["quant"] = {"init_from": "exp/float/avg.pt"}
    config.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING", logger="q4asr.config"):
        cfg = load_config(config)
    assert cfg.train.init_from == "exp/float/avg.pt"
    assert "quant.init_from is deprecated: it is now train.init_from" in caplog.text
    assert "init_from" not in cfg.to_dict()["quant"]
    # a checkpoint's config from before the move (init_from: null) loads silently
    caplog.clear()
    old_ckpt_config = {**cfg.to_dict(), "quant": {"plan": None, "init_from": None}}
    assert Config.from_dict(old_ckpt_config).train.init_from == "exp/float/avg.pt"
    assert "deprecated" not in caplog.text
    with pytest.raises(ConfigError, match="keep only train.init_from"):
        Config.from_dict(
            {
                "train": {"max_steps": 1, "init_from": "a.pt"},
                "quant": {"init_from": "b"},
            }
        )
    with pytest.raises(ConfigError, match="train.init_from: expected a path"):
        Config.from_dict({"train": {"max_steps": 1, "init_from": 3}})


def test_every_config_error_is_one_type():
    from q4asr.quant import PlanError, load_plan
    from q4asr.validation import ConfigError as BaseError

    assert ConfigError is BaseError
    with pytest.raises(BaseError, match="model.d_model: 30 must be divisible"):
        ModelConfig(d_model=30, num_heads=4)
    with pytest.raises(BaseError, match="train.lr: must be > 0"):
        Config.from_dict({"train": {"max_steps": 1, "lr": 0}})
    with pytest.raises(BaseError) as e:
        load_plan("no/such/plan.yaml")
    assert isinstance(e.value, PlanError)


EGS = Path(__file__).resolve().parents[2] / "egs"


@pytest.mark.parametrize(
    "path",
    sorted(EGS.glob("*/ASR/conf/**/train*.yaml")),
    ids=lambda p: str(p.relative_to(EGS)),
)
def test_every_recipe_training_config_loads(path):
    """Every training config a recipe ships passes the checks of its sections, and
    its model builds (vocabulary size as the demo's BPE model)."""
    cfg = load_config(path)
    model = build_model(ModelConfig.from_dict({**cfg.model, "vocab_size": 128}))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cfg.train.max_steps or cfg.train.num_epochs


@pytest.mark.parametrize(
    "path",
    sorted(EGS.glob("*/ASR/conf/**/systems.yaml")),
    ids=lambda p: str(p.relative_to(EGS)),
)
def test_every_recipe_systems_file_loads(path, monkeypatch):
    """Every systems file a recipe ships names configs and plans that exist (paths
    are relative to the recipe dir, where run.sh runs)."""
    from q4asr.recipe import load_systems

    monkeypatch.chdir(next(d for d in path.parents if d.name == "ASR"))
    systems = load_systems(path)
    assert systems and systems[0].method == "float"
