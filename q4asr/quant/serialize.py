"""Integer model files (safetensors, no pickle) and the per-layer size report.

File layout: every tensor of ``model.state_dict()`` under its own name (int8
``qweight``, packed uint8 ``qweight`` for <=4-bit weights, float32 ``w_scale``,
``bias``, ``act_amax``; float tensors of unquantized modules), extra tensors under
``extra.<name>``, and string metadata: the caller's entries plus ``q4asr.plan``
(the plan as JSON; absent for a float model) and ``q4asr.format``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from q4asr.quant.config import PlanError, PrecisionPlan
from q4asr.quant.convert import PLAN_ATTR, convert, prepare
from q4asr.quant.modules import INT_MODULES, _IntBase
from q4asr.utils import atomic_write

FORMAT = "q4asr-int-v1"
PLAN_KEY = "q4asr.plan"
FORMAT_KEY = "q4asr.format"
EXTRA_PREFIX = "extra."


def save_quantized(
    path: str | Path,
    model: nn.Module,
    metadata: dict[str, str],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (converted integer model, or a float model) to ``path``.

    ``metadata`` values must be strings (e.g. the model config as JSON). Written
    atomically. A QAT model that was not converted is refused.
    """
    if any(type(m) in INT_MODULES for m in model.modules()):
        raise ValueError(f"{path}: convert the QAT model before saving it")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"{path}: metadata must map str to str, got {k!r}: {type(v).__name__}"
            )
        if k in (PLAN_KEY, FORMAT_KEY):
            raise ValueError(f"{path}: metadata key {k!r} is reserved")
    meta = dict(metadata)
    meta[FORMAT_KEY] = FORMAT
    plan = getattr(model, PLAN_ATTR, None)
    if plan is not None and not plan.is_float:
        meta[PLAN_KEY] = plan.to_json()
    tensors = {
        k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
    }
    for k, v in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + k] = v.detach().contiguous().clone()
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_quantized(
    path: str | Path, build_model: Callable[[dict[str, str]], nn.Module]
) -> tuple[nn.Module, dict[str, str], dict[str, torch.Tensor]]:
    """Load a file written by :func:`save_quantized`.

    ``build_model(metadata)`` returns the float skeleton; the stored plan (if any)
    is re-applied (prepare + convert) and the state is loaded strictly.
    Returns ``(model in eval mode, metadata without q4asr.* keys, extra tensors)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    if meta.get(FORMAT_KEY) != FORMAT:
        raise ValueError(
            f"{path}: not a q4asr model file (format {meta.get(FORMAT_KEY)!r})"
        )
    user_meta = {k: v for k, v in meta.items() if k not in (PLAN_KEY, FORMAT_KEY)}
    model = build_model(user_meta)
    if PLAN_KEY in meta:
        plan = PrecisionPlan.from_json(meta[PLAN_KEY], f"{path}: {PLAN_KEY}")
        model = convert(prepare(model, plan))
    extra = {
        k[len(EXTRA_PREFIX) :]: v
        for k, v in tensors.items()
        if k.startswith(EXTRA_PREFIX)
    }
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: stored tensors do not fit the model: {e}") from None
    return model.eval(), user_meta, extra


def _bits(b: int | None) -> int | str:
    return "float" if b is None else b


def size_report(model: nn.Module) -> list[dict]:
    """One row per module that owns tensors: name, type, params (logical weight and
    bias elements), weight_bits, act_bits, bytes (of its stored tensors)."""
    rows = []
    for name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False)) + list(
            m.named_buffers(recurse=False)
        )
        if not own:
            continue
        nbytes = sum(t.numel() * t.element_size() for _, t in own)
        if isinstance(m, _IntBase):
            params, wb, ab = m.num_params(), _bits(m.weight_bits), _bits(m.act_bits)
        else:
            params = sum(t.numel() for _, t in m.named_parameters(recurse=False))
            wb, ab = getattr(m, "weight_bits", None), getattr(m, "act_bits", None)
            wb, ab = _bits(wb), _bits(ab)
        rows.append(
            {
                "name": name or "(root)",
                "type": type(m).__name__,
                "params": params,
                "weight_bits": wb,
                "act_bits": ab,
                "bytes": nbytes,
            }
        )
    return rows


def size_total(rows: list[dict]) -> dict:
    return {
        "name": "TOTAL",
        "type": "",
        "params": sum(r["params"] for r in rows),
        "weight_bits": "",
        "act_bits": "",
        "bytes": sum(r["bytes"] for r in rows),
    }


def size_report_json(model: nn.Module) -> str:
    rows = size_report(model)
    return json.dumps({"layers": rows, "total": size_total(rows)}, indent=1)


def format_size_table(rows: list[dict]) -> str:
    """Fixed-width text table of ``size_report`` rows plus a TOTAL line."""
    cols = ("name", "type", "params", "weight_bits", "act_bits", "bytes")
    body = [*rows, size_total(rows)]
    width = {c: max(len(c), *(len(str(r[c])) for r in body)) for c in cols}
    line = "  ".join(c.ljust(width[c]) for c in cols)
    out = [line, "-" * len(line)]
    for r in body:
        if r is body[-1]:
            out.append("-" * len(line))
        out.append(
            "  ".join(
                str(r[c]).rjust(width[c])
                if c in ("params", "bytes")
                else str(r[c]).ljust(width[c])
                for c in cols
            )
        )
    return "\n".join(out)


__all__ = [
    "save_quantized",
    "load_quantized",
    "size_report",
    "size_total",
    "size_report_json",
    "format_size_table",
    "PlanError",
]
