"""Training checkpoints: save atomically, load safely, find the latest, average.

A checkpoint is a ``torch.save`` of plain containers, tensors and strings, so it
is read with ``torch.load(weights_only=True)`` (no pickled code). Every checkpoint
(training ``<exp_dir>/checkpoint-<step>.pt``, ``final.pt``, averaged) starts from the
same record, :func:`model_record`: ``model``, ``config``, ``model_config``, ``plan``,
``bpe_model``, ``step``, ``env``. Training checkpoints add the state to resume from
(``optimizer``, ``scheduler``, ``grad_scaler``, ``sampler``, ``rng``, ``epoch``,
``totals``, ``skipped``, ``world_size``). Checkpoints written before the record had an
extra ``plan_path`` key (the plan file's path, also in ``config``); it is ignored.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from q4asr.utils import atomic_write, get_env_info

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


def to_plain(obj: Any) -> Any:
    """``obj`` with str/int/float subclasses (e.g. ``torch.__version__``) made plain,
    so that ``torch.load(weights_only=True)`` can read it back."""
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if isinstance(obj, bool) or obj is None or torch.is_tensor(obj):
        return obj
    for t in (str, int, float):
        if isinstance(obj, t):
            return t(obj)
    return obj


def env_info() -> dict[str, Any]:
    """``q4asr.utils.get_env_info()`` as plain containers (safe to checkpoint)."""
    return to_plain(get_env_info())


def checkpoint_path(exp_dir: str | Path, step: int) -> Path:
    return Path(exp_dir) / f"checkpoint-{step}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a reader never sees a partial file)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, pickled code, not a torch file...
        raise ValueError(f"{path}: cannot load checkpoint: {e}") from e


def list_checkpoints(exp_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>.pt`` files in ``exp_dir``, oldest (lowest step) first."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = []
    for p in exp_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_latest(exp_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``exp_dir``, or None."""
    ckpts = list_checkpoints(exp_dir)
    return ckpts[-1] if ckpts else None


def remove_old_checkpoints(exp_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; returns what was removed."""
    if keep_last < 1:
        raise ValueError(f"keep_last: must be >= 1, got {keep_last}")
    old = list_checkpoints(exp_dir)[:-keep_last]
    for p in old:
        p.unlink(missing_ok=True)
    return old


RECORD_KEYS = ("config", "model_config", "plan", "bpe_model", "step", "env")


def model_record(
    model: dict[str, torch.Tensor],
    config: dict[str, Any] | None,
    model_config: dict[str, Any] | None,
    plan: dict[str, Any] | None,
    bpe_model: str | None,
    step: int | None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What every checkpoint holds: the model state, the training config (as plain
    data; its ``quant.plan`` is only the path the run was given), the model config
    with the vocabulary size filled in, the precision plan itself
    (``PrecisionPlan.from_dict(record["plan"])``; None for float), the BPE model's
    path, the step and the environment (this machine's unless ``env`` is given)."""
    return {
        "model": model,
        "config": config,
        "model_config": model_config,
        "plan": plan,
        "bpe_model": None if bpe_model is None else str(bpe_model),
        "step": step,
        "env": env_info() if env is None else env,
    }


def average_states(
    states: Sequence[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The arithmetic mean of model state dicts.

    Floating-point entries are averaged (accumulated in float64, returned in their
    own dtype); integer and boolean entries (counters, quantizer buffers) are taken
    from the last state. All states must have the same keys and shapes.
    """
    if not states:
        raise ValueError("average_states: no states to average")
    last = states[-1]
    keys = list(last.keys())
    for i, s in enumerate(states):
        if list(s.keys()) != keys:
            missing = set(keys) ^ set(s.keys())
            raise ValueError(
                f"average_states: state {i} has different keys: {sorted(missing)[:5]}"
            )
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        v = last[k]
        if not torch.is_tensor(v) or not v.is_floating_point():
            out[k] = v.clone() if torch.is_tensor(v) else v
            continue
        acc = torch.zeros(v.shape, dtype=torch.float64)
        for i, s in enumerate(states):
            if s[k].shape != v.shape:
                raise ValueError(
                    f"average_states: '{k}' has shape "
                    f"{tuple(s[k].shape)} in state {i}, {tuple(v.shape)} "
                    "in the last"
                )
            acc += s[k].detach().to("cpu", torch.float64)
        out[k] = (acc / len(states)).to(v.dtype)
    return out


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Average the ``model`` states of ``paths``; the rest of the record
    (:data:`RECORD_KEYS`) comes from the last one.

    Returns a :func:`model_record`, as in ``exp_dir/final.pt``, plus
    ``averaged_from`` (the files averaged).
    """
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    ckpts = [load_checkpoint(p) for p in paths]
    for p, c in zip(paths, ckpts):
        if "model" not in c:
            raise ValueError(f"{p}: no 'model' entry in the checkpoint")
    last = ckpts[-1]
    record = model_record(
        average_states([c["model"] for c in ckpts]),
        **{k: last.get(k) for k in RECORD_KEYS},
    )
    record["averaged_from"] = [str(p) for p in paths]
    return record


# --------------------------------------------------------------------------- RNG


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), python and numpy RNG states as plain containers."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
