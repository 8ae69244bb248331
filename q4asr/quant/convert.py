"""Model-level operations: prepare (float -> QAT), calibrate (PTQ), set_quant_mode,
convert (QAT -> integer).

The plan a model was prepared with is kept on the root module as
``model.q4asr_plan`` (a :class:`PrecisionPlan`), so that conversion and
serialization can record it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from q4asr.quant.config import PlanError, PrecisionPlan
from q4asr.quant.modules import INT_MODULES, QAT_MODULES, _IntBase, _QuantMixin

PLAN_ATTR = "q4asr_plan"


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every submodule; the root is named '' ."""
    return list(model.named_modules(remove_duplicate=False))


def prepare(model: nn.Module, plan: PrecisionPlan) -> nn.Module:
    """Swap float modules for QAT modules (sharing their Parameters) per ``plan``.

    In place; returns the model (a new object only when the root itself is swapped).
    Modules whose precision is float stay untouched; an all-float plan is valid.
    Raises PlanError for a pattern matching no module, a quantizing rule matching
    only unquantizable modules, or a module whose configuration cannot be
    quantized.
    """
    if not isinstance(plan, PrecisionPlan):
        raise TypeError(
            f"prepare: plan must be a PrecisionPlan, got {type(plan).__name__}"
        )
    named = _named(model)
    if any(isinstance(m, (_QuantMixin,)) for _, m in named):
        raise PlanError("prepare: model already holds QAT or integer modules")
    names_types = [(n, type(m)) for n, m in named if n]
    if isinstance(model, tuple(QAT_MODULES)) and not named[0][0]:
        names_types.insert(0, ("", type(model)))
    assignment = plan.assign(names_types, set(QAT_MODULES))
    modules = dict(named)
    for name, precision in assignment.items():
        mod = modules[name]
        if isinstance(mod, nn.Embedding) and precision.weight_bits is None:
            continue  # embeddings quantize weights only
        qat_cls = QAT_MODULES[type(mod)]
        try:
            new = qat_cls.from_float(mod, precision, name or type(mod).__name__)
        except ValueError as e:
            raise PlanError(f"plan: module {e}") from None
        if name:
            _set_child(model, name, new)
        else:
            model = new
    setattr(model, PLAN_ATTR, plan)
    return model


def qat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in INT_MODULES]


def set_quant_mode(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every QAT module between quantized (True) and float (False) forward."""
    for _, m in qat_modules(model):
        m.quant_enabled = bool(enabled)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, run_batches: Callable[[nn.Module], None]) -> nn.Module:
    """Post-training quantization: observe activations, no training.

    ``run_batches(model)`` runs a few forward passes. QAT modules run in float while
    observing; modules with static activation scales (``act_static: true``) record
    max|x|, which fixes their scale. Dynamic scales and weight scales need no
    calibration (they come from the data / weights themselves), so for a dynamic
    plan PTQ is simply ``prepare`` + ``convert`` of the float model.
    Restores the previous train/eval mode.
    """
    mods = qat_modules(model)
    if not mods:
        raise PlanError("calibrate: model has no QAT modules (call prepare first)")
    was_training = model.training
    model.eval()
    for _, m in mods:
        if m.act_amax is not None:
            m.act_amax.zero_()
        m.observing = True
    try:
        run_batches(model)
    finally:
        for _, m in mods:
            m.observing = False
        model.train(was_training)
    for n, m in mods:
        if m.act_amax is not None and not float(m.act_amax) > 0:
            raise RuntimeError(
                f"calibrate: module {n} saw no non-zero input; its static activation "
                "scale is undefined"
            )
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace QAT modules by integer modules (int8 / packed int4 weights + float
    scales). In place; returns the model (a new object only when the root is a QAT
    module). The result is in eval mode and computes exactly what the QAT model
    computes in eval mode."""
    plan = getattr(model, PLAN_ATTR, None)
    named = _named(model)
    if any(isinstance(m, _IntBase) for _, m in named):
        raise PlanError("convert: model is already converted")
    for name, mod in named:
        int_cls = INT_MODULES.get(type(mod))
        if int_cls is None:
            continue
        new = int_cls.from_qat(mod)
        if name:
            _set_child(model, name, new)
        else:
            model = new
    if plan is not None:
        setattr(model, PLAN_ATTR, plan)
    return model.eval()
