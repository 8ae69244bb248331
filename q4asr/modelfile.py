"""Self-contained model files: export a checkpoint, load a model for recognition.

An exported model is one safetensors file (no pickle) holding the weights (integers
where the plan quantized them, see :mod:`q4asr.quant.serialize`), and as metadata the
model config, the feature config, the method (float/ptq/qat), the parameter count and
the environment; the sentencepiece model travels as the extra tensor ``bpe_model``.
Nothing else is needed to run it.

Training checkpoints (``checkpoint-N.pt``, ``final.pt``, ``avg.pt``) can be loaded for
recognition too; they need the BPE model beside them.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from q4asr.checkpoint import load_checkpoint
from q4asr.data.features import feature_config
from q4asr.data.tokenizer import Tokenizer
from q4asr.model import ModelConfig, Transducer, build_model
from q4asr.quant import (
    PrecisionPlan,
    calibrate,
    convert,
    load_plan,
    load_quantized,
    prepare,
    save_quantized,
    set_quant_mode,
)
from q4asr.utils import get_env_info

log = logging.getLogger(__name__)

METHODS = ("float", "ptq", "qat")


@dataclass
class AsrModel:
    """A model ready for recognition, with what turns audio into text around it."""

    model: Transducer
    tokenizer: Tokenizer
    feature_config: dict[str, Any]
    metadata: dict[str, str]
    path: Path


def _plan_from_checkpoint(ckpt: dict, path: Path) -> PrecisionPlan | None:
    plan = ckpt.get("plan")
    if not plan:
        return None
    try:
        return PrecisionPlan.from_dict(plan)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: unreadable precision plan in checkpoint: {e}") from None


def _model_config(ckpt: dict, path: Path) -> dict:
    cfg = ckpt.get("model_config") or (ckpt.get("config") or {}).get("model")
    if cfg is None:
        raise ValueError(f"{path}: checkpoint has no model config")
    return cfg


def model_from_checkpoint(path: str | Path) -> tuple[Transducer, dict, PrecisionPlan | None]:
    """The checkpoint's model (QAT-prepared when it was trained with a plan), in eval
    mode and quantized mode; returns (model, checkpoint, plan)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise ValueError(f"{path}: no 'model' entry in the checkpoint")
    model = build_model(ModelConfig.from_dict(_model_config(ckpt, path)))
    plan = _plan_from_checkpoint(ckpt, path)
    if plan is not None:
        prepare(model, plan)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model config: "
                         f"{str(e).splitlines()[0]}") from None
    if plan is not None:
        set_quant_mode(model, True)
    return model.eval(), ckpt, plan


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    bpe_model: str | Path,
    method: str,
    plan_path: str | Path | None = None,
    calibration: Callable[[torch.nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Checkpoint -> one model file. Returns a summary (sizes, params, seconds).

    - ``float``: the float checkpoint as it is;
    - ``ptq``: a float checkpoint quantized with ``plan_path``; ``calibration(model)``
      runs a few batches through it to fix static activation scales (if the plan has
      any), no training;
    - ``qat``: a checkpoint trained with a plan, converted to its integer model.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    start = time.time()
    model, ckpt, plan = model_from_checkpoint(checkpoint)
    num_params = sum(p.numel() for p in model.parameters())
    if method == "float" and plan is not None:
        raise ValueError(f"{checkpoint}: trained with a plan; export it as qat")
    if method == "qat" and plan is None:
        raise ValueError(f"{checkpoint}: trained without a plan; export it as float or ptq")
    if method == "ptq":
        if plan is not None:
            raise ValueError(f"{checkpoint}: already trained with a plan; ptq starts "
                             "from a float checkpoint")
        if plan_path is None:
            raise ValueError("ptq needs a precision plan")
        plan = load_plan(plan_path)
        prepare(model, plan)
        if calibration is not None:
            calibrate(model, calibration)
        set_quant_mode(model, True)
    if plan is not None:
        convert(model)
    model_cfg = _model_config(ckpt, Path(checkpoint))
    metadata = {
        "model_config": json.dumps(model_cfg),
        "feature_config": json.dumps(feature_config(model_cfg.get("num_mel_bins", 80))),
        "method": method,
        "num_params": str(num_params),
        "source_checkpoint": str(checkpoint),
        "train_step": str(ckpt.get("step", "")),
        "env": json.dumps(get_env_info()),
    }
    bpe_bytes = Path(bpe_model).read_bytes()
    Tokenizer(bpe_bytes)  # refuse a broken BPE model before writing the file
    extra = {"bpe_model": torch.frombuffer(bytearray(bpe_bytes), dtype=torch.uint8)}
    path = save_quantized(out, model, metadata, extra_tensors=extra)
    summary = {"model_file": str(path), "size_bytes": path.stat().st_size,
               "num_params": num_params, "method": method,
               "seconds": round(time.time() - start, 2)}
    log.info("exported %s (%s): %d params, %d bytes", path, method, num_params,
             summary["size_bytes"])
    return summary


def load_asr_model(path: str | Path, bpe_model: str | Path | None = None) -> AsrModel:
    """An exported ``.safetensors`` model file, or a training checkpoint (``.pt``,
    which needs ``bpe_model``), ready for recognition (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        def build(meta: dict[str, str]) -> torch.nn.Module:
            if "model_config" not in meta:
                raise ValueError(f"{path}: not a q4asr model file (no model_config)")
            return build_model(ModelConfig.from_dict(json.loads(meta["model_config"])))

        model, meta, extra = load_quantized(path, build)
        if "bpe_model" not in extra:
            raise ValueError(f"{path}: no BPE model inside the model file")
        tokenizer = Tokenizer(extra["bpe_model"].numpy().tobytes())
        feats = json.loads(meta.get("feature_config", "{}")) or feature_config()
        return AsrModel(model, tokenizer, feats, meta, path)  # in eval mode
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(
            f"{path}: neither a model file (.safetensors, from q4asr-export) nor a "
            "training checkpoint (.pt)"
        )
    if bpe_model is None:
        raise ValueError(f"{path}: a training checkpoint needs --bpe-model")
    model, ckpt, _ = model_from_checkpoint(path)
    cfg = _model_config(ckpt, path)
    return AsrModel(model, Tokenizer(bpe_model),
                    feature_config(cfg.get("num_mel_bins", 80)),
                    {"method": "checkpoint"}, path)
