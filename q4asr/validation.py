"""Validation of the config dataclasses (``model:``, ``train:``, ``quant:``, plans).

Every check raises :class:`ConfigError`, whose message starts with where the bad value
sits (``train.lr: must be > 0, got 0``), so a config file's error can name its file and
field in one line. The dataclasses call these helpers from ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


def check_keys(cls: type, d: Any, where: str) -> None:
    """``d`` must be a mapping whose keys are fields of the dataclass ``cls``."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key '{key}' (allowed: {', '.join(allowed)})"
            )


def _missing(v: Any, where: str, name: str, optional: bool) -> bool:
    if v is None and not optional:
        raise ConfigError(f"{where}.{name}: must be set, got null")
    return v is None


def check_integer(obj: Any, where: str, *names: str, optional: bool = True) -> None:
    """Each field in ``names`` is an integer (or null, when ``optional``)."""
    for name in names:
        v = getattr(obj, name)
        if _missing(v, where, name, optional):
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}.{name}: expected an integer, got {v!r}")


def check_positive(
    obj: Any,
    where: str,
    *names: str,
    allow_zero: bool = False,
    optional: bool = True,
) -> None:
    """Each field in ``names`` is a number > 0 (>= 0 with ``allow_zero``; null when
    ``optional``). A string that reads as a number (YAML 1.1 reads ``3e-3`` as a
    string) is replaced by the float."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(
                    f"{where}.{name}: expected a number, got {v!r}"
                ) from None
            setattr(obj, name, v)
        if _missing(v, where, name, optional):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}.{name}: expected a number, got {v!r}")
        if v < 0 or (v == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{where}.{name}: must be {bound}, got {v!r}")


def check_fraction(obj: Any, where: str, *names: str) -> None:
    """Each field in ``names`` is a number in [0, 1]."""
    check_positive(obj, where, *names, allow_zero=True, optional=False)
    for name in names:
        v = getattr(obj, name)
        require(v <= 1, f"{where}.{name}", f"must be in [0, 1], got {v!r}")


def check_bool(obj: Any, where: str, *names: str) -> None:
    """Each field in ``names`` is true or false."""
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, bool):
            raise ConfigError(f"{where}.{name}: expected true/false, got {v!r}")


def check_choice(obj: Any, where: str, name: str, choices: tuple[str, ...]) -> None:
    """The field ``name`` is one of ``choices``."""
    v = getattr(obj, name)
    if v not in choices:
        raise ConfigError(f"{where}.{name}: {v!r} is not one of {', '.join(choices)}")


def require(ok: bool, where: str, message: str) -> None:
    """A check of its own: ``where: message`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {message}")
