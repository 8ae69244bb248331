"""Integer model files (safetensors, no pickle) and the per-layer size report.

File layout: every tensor of ``model.state_dict()`` under its own name (int8
``qweight``, packed uint8 ``qweight`` for <=4-bit weights, bfloat16 ``w_scale``,
float32 ``bias`` and ``act_amax``; float tensors of unquantized modules), extra
tensors under ``extra.<name>``, and string metadata: the caller's entries plus
``q4asr.plan`` (the plan as JSON; absent for a float model) and ``q4asr.format``.

Loading builds the model's skeleton on the ``meta`` device (no memory, no
initialisation), re-applies the stored plan there (``prepare`` + ``convert`` without
weights: integer modules of the stored shapes and precisions), and assigns the
file's tensors to it: nothing but the stored tensors is ever allocated.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from q4asr.quant.base import no_init
from q4asr.quant.config import PlanError, PrecisionPlan
from q4asr.quant.convert import PLAN_ATTR, integer_skeleton
from q4asr.quant.integer import QAT_TO_INT, IntModule
from q4asr.utils import atomic_write

FORMAT = "q4asr-int-v2"  # v2: bfloat16 weight scales
PLAN_KEY = "q4asr.plan"
FORMAT_KEY = "q4asr.format"
EXTRA_PREFIX = "extra."


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a model makes thousands of
    small objects, each batch of which would otherwise trigger a full scan of the
    growing module tree (most of a model's build time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def skeleton() -> Iterator[None]:
    """Modules built inside are on the ``meta`` device and skip ``torch.nn.init``:
    shapes and dtypes only, nothing allocated, nothing initialised."""
    with no_init(), torch.device("meta"):
        yield


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
    if any(type(m) in QAT_TO_INT for m in model.modules()):
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

    ``build_model(metadata)`` returns the float model; it is called on the
    ``meta`` device, so it allocates nothing. The stored plan (if any) is re-applied
    (prepare + convert without weights) and the file's tensors are assigned to the
    skeleton, strictly (every tensor present, of the right shape and dtype).
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
            f"{path}: not a q4asr model file of format {FORMAT} "
            f"(format {meta.get(FORMAT_KEY)!r}; re-export it with q4asr-export)"
        )
    user_meta = {k: v for k, v in meta.items() if k not in (PLAN_KEY, FORMAT_KEY)}
    with gc_paused():
        with skeleton():
            model = build_model(user_meta)
        if PLAN_KEY in meta:
            plan = PrecisionPlan.from_json(meta[PLAN_KEY], f"{path}: {PLAN_KEY}")
            model = integer_skeleton(model, plan)
    extra = {
        k[len(EXTRA_PREFIX) :]: v
        for k, v in tensors.items()
        if k.startswith(EXTRA_PREFIX)
    }
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    expected = model.state_dict()
    for k, v in state.items():
        e = expected.get(k)
        if e is not None and (e.dtype != v.dtype or e.shape != v.shape):
            raise ValueError(
                f"{path}: {k} is {v.dtype} {tuple(v.shape)}, the model needs "
                f"{e.dtype} {tuple(e.shape)}"
            )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: stored tensors do not fit the model: {e}") from None
    left = [
        n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
    ]
    if left:
        raise ValueError(f"{path}: the file holds no value for {left[:5]}")
    return model.eval(), user_meta, extra


def _bits(b: int | None) -> int | str:
    return "float" if b is None else b


# Bytes by kind: what each stored tensor of a module is.
KINDS = ("weights", "scales", "biases", "act_ranges", "float_layers")
_INT_KIND = {
    "qweight": "weights",
    "w_scale": "scales",
    "bias": "biases",
    "act_amax": "act_ranges",
    "weight": "float_layers",
}


def size_report(model: nn.Module) -> list[dict]:
    """One row per module that owns tensors: name, type, params (logical weight and
    bias elements), weight_bits, act_bits, bytes (of its stored tensors), and those
    bytes by kind (``KINDS``: quantized weights, their scales, biases of quantized
    modules, static activation ranges, and float tensors: unquantized modules and
    float weights)."""
    rows = []
    for name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False)) + list(
            m.named_buffers(recurse=False)
        )
        if not own:
            continue
        kinds = dict.fromkeys(KINDS, 0)
        for tname, t in own:
            kind = _INT_KIND[tname] if isinstance(m, IntModule) else "float_layers"
            kinds[kind] += t.numel() * t.element_size()
        if isinstance(m, IntModule):
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
                "bytes": sum(kinds.values()),
                **kinds,
            }
        )
    return rows


def size_by_kind(model: nn.Module, file_size: int | None = None) -> dict[str, int]:
    """Total bytes by kind; with the model file's size, ``metadata`` is the rest
    (safetensors header, plan and config)."""
    rows = size_report(model)
    out = {k: sum(r[k] for r in rows) for k in KINDS}
    if file_size is not None:
        out["metadata"] = file_size - sum(out.values())
    return out


def size_total(rows: list[dict]) -> dict:
    return {
        "name": "TOTAL",
        "type": "",
        "params": sum(r["params"] for r in rows),
        "weight_bits": "",
        "act_bits": "",
        "bytes": sum(r["bytes"] for r in rows),
    }


def size_report_json(model: nn.Module, file_size: int | None = None) -> str:
    rows = size_report(model)
    return json.dumps(
        {
            "layers": rows,
            "total": size_total(rows),
            "by_kind": size_by_kind(model, file_size),
        },
        indent=1,
    )


def format_size_table(rows: list[dict]) -> str:
    """Fixed-width text table of ``size_report`` rows, a TOTAL line and a line of
    bytes by kind."""
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
    total = size_total(rows)["bytes"] or 1
    out.append(
        "by kind: "
        + ", ".join(
            f"{k} {sum(r[k] for r in rows):,} ({100 * sum(r[k] for r in rows) / total:.1f}%)"
            for k in KINDS
        )
    )
    return "\n".join(out)


__all__ = [
    "save_quantized",
    "load_quantized",
    "size_report",
    "size_total",
    "size_report_json",
    "size_by_kind",
    "format_size_table",
    "PlanError",
]
