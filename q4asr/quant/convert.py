"""Model-level operations: prepare (float -> QAT), unprepare (QAT -> float),
calibrate (PTQ), set_quant_mode, convert (QAT -> integer), integer_skeleton
(float -> empty integer modules, for loading a model file).

The plan a model was prepared with is kept on the root module as
``model.q4asr_plan`` (a :class:`PrecisionPlan`), so that conversion and
serialization can record it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from q4asr.quant.base import QuantModule
from q4asr.quant.config import PlanError, PrecisionPlan
from q4asr.quant.integer import QAT_TO_INT, IntLayerNorm, IntModule
from q4asr.quant.qat import FLOAT_TO_QAT, QATLayerNorm

PLAN_ATTR = "q4asr_plan"


def _replace(modules: dict[str, nn.Module], name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``name``; ``modules`` maps every name
    to its module (as :func:`_named` lists them), so no path is walked."""
    parent_name, _, leaf = name.rpartition(".")
    modules[parent_name]._modules[leaf] = new


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every submodule; the root is named '' ."""
    return list(model.named_modules(remove_duplicate=False))


def _swap(
    model: nn.Module,
    plan: PrecisionPlan,
    make: Callable[..., nn.Module],
    make_norm: Callable[[nn.LayerNorm], nn.Module],
) -> nn.Module:
    """Replace every module ``plan`` quantizes by ``make(mod, precision, qname)``
    and, when the plan quantizes anything, every LayerNorm by ``make_norm(mod)``,
    in place (a new object only when the root itself is swapped), and record the
    plan on the root. The checks of :func:`prepare`."""
    if not isinstance(plan, PrecisionPlan):
        raise TypeError(f"plan must be a PrecisionPlan, got {type(plan).__name__}")
    named = _named(model)
    if any(isinstance(m, QuantModule) for _, m in named):
        raise PlanError("prepare: model already holds QAT or integer modules")
    names_types = [(n, type(m)) for n, m in named if n]
    if isinstance(model, tuple(FLOAT_TO_QAT)) and not named[0][0]:
        names_types.insert(0, ("", type(model)))
    assignment = plan.assign(names_types, set(FLOAT_TO_QAT))
    modules = dict(named)
    for name, precision in assignment.items():
        mod = modules[name]
        if isinstance(mod, nn.Embedding) and precision.weight_bits is None:
            continue  # embeddings quantize weights only
        try:
            new = make(mod, precision, name or type(mod).__name__)
        except ValueError as e:
            raise PlanError(f"plan: module {e}") from None
        if name:
            _replace(modules, name, new)
        else:
            model = new
    if not plan.is_float:  # every LayerNorm of a quantized model
        for name, mod in named:
            if name and type(mod) is nn.LayerNorm:
                _replace(modules, name, make_norm(mod))
    setattr(model, PLAN_ATTR, plan)
    return model


def prepare(model: nn.Module, plan: PrecisionPlan) -> nn.Module:
    """Swap float modules for QAT modules (sharing their Parameters) per ``plan``,
    and, when the plan quantizes anything, every LayerNorm for a
    :class:`~q4asr.quant.qat.QATLayerNorm` (parameters stored in bfloat16).

    In place; returns the model (a new object only when the root itself is swapped).
    Modules whose precision is float stay untouched; an all-float plan is valid.
    Raises PlanError for a pattern matching no module, a quantizing rule matching
    only unquantizable modules, or a module whose configuration cannot be
    quantized.
    """

    def make(mod: nn.Module, precision, qname: str) -> nn.Module:
        return FLOAT_TO_QAT[type(mod)].from_float(mod, precision, qname)

    return _swap(model, plan, make, QATLayerNorm.from_float)


def integer_skeleton(model: nn.Module, plan: PrecisionPlan) -> nn.Module:
    """Swap float modules for empty integer modules per ``plan``: the model that
    :func:`prepare` then :func:`convert` would give, built from the float modules'
    shapes only (no QAT module, no weight read or quantized; a float model on the
    ``meta`` device gives a skeleton on it). The checks and errors of
    :func:`prepare`. In eval mode."""

    def make(mod: nn.Module, precision, qname: str) -> nn.Module:
        qat_cls = FLOAT_TO_QAT[type(mod)]
        qat_cls.check(mod, precision, qname)
        return QAT_TO_INT[qat_cls].like(mod, precision, qname, mod.weight.device)

    return _swap(model, plan, make, IntLayerNorm.like).eval()


def qat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in QAT_TO_INT]


def unprepare(model: nn.Module) -> nn.Module:
    """The inverse of :func:`prepare`: every QAT module back to its float module,
    sharing the same Parameters (e.g. to export a QAT-trained model in float, or
    to train on in float). In place; returns the model."""
    modules = dict(_named(model))
    for name, mod in qat_modules(model):
        new = mod.to_float()
        if name:
            _replace(modules, name, new)
        else:
            model = new
    if hasattr(model, PLAN_ATTR):
        delattr(model, PLAN_ATTR)
    return model


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
    """Replace QAT modules by integer modules (int8 / packed int4 weights + bfloat16
    scales). In place; returns the model (a new object only when the root is a QAT
    module). The result is in eval mode and computes exactly what the QAT model
    computes in eval mode."""
    plan = getattr(model, PLAN_ATTR, None)
    named = _named(model)
    if any(isinstance(m, IntModule) for _, m in named):
        raise PlanError("convert: model is already converted")
    modules = dict(named)
    for name, mod in named:
        int_cls = QAT_TO_INT.get(type(mod))
        if int_cls is None:
            continue
        new = int_cls.from_qat(mod)
        if name:
            _replace(modules, name, new)
        else:
            model = new
    if plan is not None:
        setattr(model, PLAN_ATTR, plan)
    return model.eval()
