"""Integer model files (safetensors, no pickle) and the per-layer size report.

File layout: the tensors of ``model.state_dict()`` in their order, concatenated
into one flat tensor per dtype named ``data.<dtype>`` (``data.uint8`` for packed
int4 weights, ``data.int8``, ``data.float8_e4m3fn`` for weight scales,
``data.bfloat16``, ``data.float32``, ...; see :mod:`q4asr.quant.integer` for what each
module stores), extra tensors under ``extra.<name>``, and string metadata: the
caller's entries plus ``q4asr.plan`` (the plan as JSON; absent for a float model),
``q4asr.layout`` (a digest of the state dict's names, dtypes and shapes) and
``q4asr.format``. Names, shapes and dtypes come from the model itself, so the file
spends no bytes on a header entry per tensor (over 300 in a Conformer).

Loading builds the model's skeleton on the ``meta`` device (no memory, no
initialisation), re-applies the stored plan there (``prepare`` + ``convert`` without
weights: integer modules of the stored shapes and precisions), checks that its state
dict has the stored layout, and assigns views of the file's flat tensors to it:
nothing but the stored tensors is ever allocated.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from collections.abc import Iterable, Iterator
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

FORMAT = "q4asr-int-v3"  # v3: one tensor per dtype; float8 scales, int8 biases
PLAN_KEY = "q4asr.plan"
FORMAT_KEY = "q4asr.format"
LAYOUT_KEY = "q4asr.layout"
EXTRA_PREFIX = "extra."
DATA_PREFIX = "data."


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_digest(entries: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of the (name, tensor) entries' names, dtypes and shapes, in order."""
    text = ";".join(f"{k}:{_dtype_name(t.dtype)}:{tuple(t.shape)}" for k, t in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict's tensors, in order, as one flat tensor per dtype."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in state.values():
        groups.setdefault(t.dtype, []).append(t.detach().reshape(-1))
    return {
        DATA_PREFIX + _dtype_name(dtype): torch.cat(ts) for dtype, ts in groups.items()
    }


def _state_slots(model: nn.Module) -> list[tuple[str, dict, str, torch.Tensor]]:
    """``(name, holder, key, tensor)`` of every entry of ``model.state_dict()``, in
    its order (each module's parameters, then its persistent buffers, then its
    children's), with the dict that holds it (a module's ``_parameters`` or
    ``_buffers``) so that it can be replaced in place."""
    slots = []
    for name, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        for k, p in mod._parameters.items():
            if p is not None:
                slots.append((prefix + k, mod._parameters, k, p))
        skip = mod._non_persistent_buffers_set
        for k, b in mod._buffers.items():
            if b is not None and k not in skip:
                slots.append((prefix + k, mod._buffers, k, b))
    return slots


def assign_flat(
    model: nn.Module, flat: dict[str, torch.Tensor], digest: str | None, where: str
) -> None:
    """Make views of :func:`pack_state`'s flat tensors ``model``'s parameters and
    persistent buffers (what ``load_state_dict(..., strict=True, assign=True)`` of
    the unpacked state would do, in one pass and without its per-module checks).
    The model's layout (names, dtypes, shapes; e.g. a skeleton on the meta device)
    must have the stored ``digest``, and the flat tensors exactly its values.
    Parameters keep their ``requires_grad``."""
    slots = _state_slots(model)
    mine = layout_digest((name, t) for name, _, _, t in slots)
    if mine != digest:
        raise ValueError(
            f"{where}: the stored tensors do not fit the model its metadata describes "
            f"(layout {digest!r}, the model's {mine!r})"
        )
    sizes: dict[torch.dtype, list[int]] = {}
    for _, _, _, t in slots:
        sizes.setdefault(t.dtype, []).append(t.numel())
    names = {DATA_PREFIX + _dtype_name(d): d for d in sizes}
    if set(names) != set(flat):
        raise ValueError(
            f"{where}: the file holds {sorted(flat)}, the model needs {sorted(names)}"
        )
    parts = {}
    for key, dtype in names.items():
        n, want = flat[key].numel(), sum(sizes[dtype])
        if flat[key].dtype != dtype or n != want:
            raise ValueError(
                f"{where}: {key} holds {n} {flat[key].dtype} values, the model needs "
                f"{want} {dtype}"
            )
        parts[dtype] = iter(flat[key].split(sizes[dtype]))
    for _, holder, k, t in slots:
        v = next(parts[t.dtype])
        if t.dim() != 1:
            v = v.view(t.shape)
        holder[k] = (
            nn.Parameter(v, t.requires_grad) if isinstance(t, nn.Parameter) else v
        )


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
        if k in (PLAN_KEY, FORMAT_KEY, LAYOUT_KEY):
            raise ValueError(f"{path}: metadata key {k!r} is reserved")
    meta = dict(metadata)
    meta[FORMAT_KEY] = FORMAT
    plan = getattr(model, PLAN_ATTR, None)
    if plan is not None and not plan.is_float:
        meta[PLAN_KEY] = plan.to_json()
    state = model.state_dict()
    meta[LAYOUT_KEY] = layout_digest(state.items())
    tensors = pack_state(state)
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
    skeleton, strictly (the skeleton's state dict has the stored layout: names,
    dtypes and shapes).
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
    reserved = (PLAN_KEY, FORMAT_KEY, LAYOUT_KEY)
    user_meta = {k: v for k, v in meta.items() if k not in reserved}
    with gc_paused():
        with skeleton():
            model = build_model(user_meta)
        if PLAN_KEY in meta:
            plan = PrecisionPlan.from_json(meta[PLAN_KEY], f"{path}: {PLAN_KEY}")
            model = integer_skeleton(model, plan)  # in eval mode
        else:
            model.eval()
    extra = {
        k[len(EXTRA_PREFIX) :]: v
        for k, v in tensors.items()
        if k.startswith(EXTRA_PREFIX)
    }
    flat = {k: v for k, v in tensors.items() if k.startswith(DATA_PREFIX)}
    assign_flat(model, flat, meta.get(LAYOUT_KEY), str(path))
    left = [
        n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
    ]
    if left:
        raise ValueError(f"{path}: the file holds no value for {left[:5]}")
    return model, user_meta, extra


def _bits(b: int | None) -> int | str:
    return "float" if b is None else b


# Bytes by kind: what each stored tensor of a module is.
KINDS = ("weights", "scales", "biases", "act_ranges", "float_layers")
_INT_KIND = {
    "qweight": "weights",
    "w_scale": "scales",
    "w_scale_base": "scales",
    "bias": "biases",
    "bias_scale": "biases",
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
