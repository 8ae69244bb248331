"""State shared by QAT and integer modules: precision, mode flags, static activation
range, and the operand descriptions the ops take."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from q4asr.quant.config import Precision
from q4asr.quant.ops import ActQuant
from q4asr.quant.quantizer import scale_from_amax


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers do nothing inside (modules built
    only to take over existing Parameters, or to be filled from a file). On the
    ``meta`` device some of them (``normal_``) would import much of sympy: about
    1.5 s and 70 MB in a fresh process."""
    saved = {n: getattr(torch.nn.init, n) for n in _INITIALISERS}
    try:
        for n in _INITIALISERS:
            setattr(torch.nn.init, n, _identity)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _identity(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return t


# the in-place initialisers (uniform_, normal_, kaiming_uniform_, ...)
_INITIALISERS = [
    n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")
]


class QuantModule:
    """Mixin of every QAT and integer module.

    ``precision``/``qname`` (the plan's decision and the module's name in the
    model), ``weight_bits``/``act_bits`` (None = float; an Embedding has no
    activation bits), ``quant_enabled`` (QAT: False runs the float module),
    ``observing`` (PTQ calibration: record max|x|), and the ``act_amax`` buffer of a
    static activation scale (None when scales are dynamic).
    """

    precision: Precision
    qname: str

    def _init_quant(self, precision: Precision, qname: str, act: bool = True) -> None:
        # plain values, set past nn.Module.__setattr__'s checks (loading a model
        # builds hundreds of these modules)
        self.__dict__.update(
            precision=precision,
            qname=qname,
            quant_enabled=True,
            observing=False,
            act_bits=precision.act_bits if act else None,
            weight_bits=precision.weight_bits,
        )
        if self.act_bits is not None and precision.act_static:
            self.register_buffer("act_amax", torch.zeros(()))  # type: ignore[attr-defined]
        else:
            self.__dict__["act_amax"] = None

    @property
    def w_keep(self) -> tuple[int, ...] | None:
        """Kept dims of the (n_out, K) weight: per output channel, or per tensor."""
        return (0,) if self.precision.weight_granularity == "channel" else None

    def _observe(self, x: torch.Tensor) -> None:
        if self.act_amax is not None:
            self.act_amax.copy_(torch.maximum(self.act_amax, x.detach().abs().amax()))

    def _act_scale(self, ndim: int) -> torch.Tensor | None:
        """The static activation scale, broadcastable to an ``ndim`` operand, or
        None when scales are dynamic."""
        if self.act_amax is None:
            return None
        if not float(self.act_amax) > 0:
            raise RuntimeError(
                f"{self.qname}: static activation scale is not calibrated "
                "(run q4asr.quant.calibrate first)"
            )
        return scale_from_amax(self.act_amax, self.act_bits).reshape([1] * ndim)

    def act_quant(self) -> ActQuant:
        """How this module's input is quantized."""
        return ActQuant(
            self.act_bits, self.precision.act_granularity, self._act_scale(0)
        )

    def _describe(self) -> str:
        """W<bits>A<bits> of what this module really quantizes (f = float)."""
        w = "f" if self.weight_bits is None else self.weight_bits
        a = "f" if self.act_bits is None else self.act_bits
        return f"W{w}A{a}"
