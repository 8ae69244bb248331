"""Precision plans: which module runs at which precision.

A plan is a YAML (or dict) with a ``default`` precision and an ordered list of
``rules``; each rule is a module-name glob pattern (``fnmatch``, where ``*`` also
matches dots) plus a precision. The first rule whose pattern matches a module's
qualified name decides its precision; modules no rule matches get the default::

    default: {weight_bits: 4, act_bits: 8}
    rules:
      - {pattern: "encoder.embed.*", weight_bits: 8, act_bits: 8}
      - {pattern: "*.norm*", float: true}
      - {pattern: "joiner.output", weight_bits: 8, act_bits: float}

Top-level keys: ``default`` (required), ``rules`` (optional list), ``description``
(optional string). A precision has these keys, all optional:

``weight_bits``
    2..8, or ``float`` / ``null`` (keep the weight in float32). Default ``float``.
``act_bits``
    2..8, or ``float`` / ``null`` (activations stay float32). Default ``float``.
    Ignored for ``nn.Embedding`` (a lookup has no activation matmul).
``weight_granularity``
    ``channel`` (one scale per output channel, the default) or ``tensor``.
``act_granularity``
    ``token`` (one scale per row of the matmul operand, i.e. per frame; the
    default) or ``tensor`` (one scale for the whole batch).
``act_static``
    ``false`` (default): activation scales are computed from each input (dynamic).
    ``true``: one per-tensor scale fixed by :func:`q4asr.quant.calibrate`
    (requires ``act_granularity: tensor``); inputs beyond it are clipped and
    get zero gradient.
``float``
    ``true`` keeps the module in float32 (no other key may then be set).

Validation is strict: an unknown key, a bit width out of range, a granularity not
in the allowed list, or a conflicting ``float: true`` is a ``PlanError`` naming the
field. Matching against a model (:func:`PrecisionPlan.assign`) additionally rejects
a pattern that matches no module (listing the closest module names) and a
quantizing rule that matches only modules that cannot be quantized.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from q4asr.validation import ConfigError

MIN_BITS = 2
MAX_BITS = 8
WEIGHT_GRANULARITIES = ("channel", "tensor")
ACT_GRANULARITIES = ("token", "tensor")
_PRECISION_KEYS = (
    "weight_bits",
    "act_bits",
    "weight_granularity",
    "act_granularity",
    "act_static",
    "float",
)
_PLAN_KEYS = ("default", "rules", "description")


class PlanError(ConfigError):
    """A precision plan is malformed or does not fit the model it is applied to."""


def _parse_bits(value: Any, field_name: str, where: str) -> int | None:
    if value is None or value == "float":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(
            f"{where}: {field_name} must be an integer {MIN_BITS}..{MAX_BITS} or "
            f"'float', got {value!r}"
        )
    if not MIN_BITS <= value <= MAX_BITS:
        raise PlanError(
            f"{where}: {field_name}={value} is out of range {MIN_BITS}..{MAX_BITS}"
        )
    return value


@dataclass(frozen=True)
class Precision:
    """How one module is quantized. ``None`` bits mean float32."""

    weight_bits: int | None = None
    act_bits: int | None = None
    weight_granularity: str = "channel"
    act_granularity: str = "token"
    act_static: bool = False

    def __post_init__(self) -> None:
        _parse_bits(self.weight_bits, "weight_bits", "Precision")
        _parse_bits(self.act_bits, "act_bits", "Precision")
        if self.weight_granularity not in WEIGHT_GRANULARITIES:
            raise PlanError(
                f"Precision: weight_granularity={self.weight_granularity!r} is not "
                f"one of {WEIGHT_GRANULARITIES}"
            )
        if self.act_granularity not in ACT_GRANULARITIES:
            raise PlanError(
                f"Precision: act_granularity={self.act_granularity!r} is not one of "
                f"{ACT_GRANULARITIES}"
            )
        if not isinstance(self.act_static, bool):
            raise PlanError(
                f"Precision: act_static must be true/false, got {self.act_static!r}"
            )
        if self.act_static and self.act_granularity != "tensor":
            raise PlanError(
                "Precision: act_static=true needs act_granularity='tensor' "
                "(a per-token scale is always dynamic)"
            )
        if self.act_static and self.act_bits is None:
            raise PlanError("Precision: act_static=true needs integer act_bits")

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None and self.act_bits is None

    @classmethod
    def from_dict(cls, d: Any, where: str = "precision") -> Precision:
        if not isinstance(d, dict):
            raise PlanError(f"{where}: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_PRECISION_KEYS))
        if unknown:
            raise PlanError(
                f"{where}: unknown key(s) {unknown}; allowed: {list(_PRECISION_KEYS)}"
            )
        if d.get("float", False) not in (True, False):
            raise PlanError(f"{where}: float must be true/false, got {d['float']!r}")
        if d.get("float", False):
            others = sorted(k for k in d if k != "float")
            if others:
                raise PlanError(
                    f"{where}: float: true cannot be combined with {others}"
                )
            return cls()
        kwargs = dict(d)
        kwargs.pop("float", None)
        for key in ("weight_bits", "act_bits"):
            if key in kwargs:
                kwargs[key] = _parse_bits(kwargs[key], key, where)
        try:
            return cls(**kwargs)
        except PlanError as e:
            raise PlanError(f"{where}: {str(e).removeprefix('Precision: ')}") from None

    def to_dict(self) -> dict[str, Any]:
        if self.is_float:
            return {"float": True}
        d = asdict(self)
        for key in ("weight_bits", "act_bits"):
            if d[key] is None:
                d[key] = "float"
        return d

    def describe(self) -> str:
        w = "f" if self.weight_bits is None else str(self.weight_bits)
        a = "f" if self.act_bits is None else str(self.act_bits)
        return f"W{w}A{a}"


@dataclass(frozen=True)
class Rule:
    pattern: str
    precision: Precision


@dataclass
class PrecisionPlan:
    """A default precision plus ordered glob rules; the first matching rule wins."""

    default: Precision
    rules: list[Rule] = field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.default, Precision):
            raise PlanError("plan: default must be a Precision")
        for i, r in enumerate(self.rules):
            if (
                not isinstance(r, Rule)
                or not isinstance(r.pattern, str)
                or not r.pattern
            ):
                raise PlanError(
                    f"plan: rules[{i}] must be a Rule with a non-empty pattern"
                )

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan") -> PrecisionPlan:
        if not isinstance(d, dict):
            raise PlanError(
                f"{source}: expected a mapping at top level, got {type(d).__name__}"
            )
        unknown = sorted(set(d) - set(_PLAN_KEYS))
        if unknown:
            raise PlanError(
                f"{source}: unknown key(s) {unknown}; allowed: {list(_PLAN_KEYS)}"
            )
        if "default" not in d:
            raise PlanError(f"{source}: missing required key 'default'")
        default = Precision.from_dict(d["default"], f"{source}: default")
        raw_rules = d.get("rules") or []
        if not isinstance(raw_rules, list):
            raise PlanError(
                f"{source}: rules must be a list, got {type(raw_rules).__name__}"
            )
        rules = []
        for i, r in enumerate(raw_rules):
            where = f"{source}: rules[{i}]"
            if not isinstance(r, dict):
                raise PlanError(f"{where}: expected a mapping, got {type(r).__name__}")
            pattern = r.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                raise PlanError(f"{where}: missing or empty 'pattern'")
            body = {k: v for k, v in r.items() if k != "pattern"}
            rules.append(
                Rule(pattern, Precision.from_dict(body, f"{where} ({pattern!r})"))
            )
        description = d.get("description", "")
        if not isinstance(description, str):
            raise PlanError(f"{source}: description must be a string")
        return cls(default=default, rules=rules, description=description)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"default": self.default.to_dict()}
        if self.rules:
            d["rules"] = [
                {"pattern": r.pattern, **r.precision.to_dict()} for r in self.rules
            ]
        if self.description:
            d["description"] = self.description
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> PrecisionPlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{source}: not valid JSON: {e}") from None
        return cls.from_dict(d, source)

    @property
    def is_float(self) -> bool:
        return self.default.is_float and all(r.precision.is_float for r in self.rules)

    def lookup(self, name: str) -> tuple[Precision, int | None]:
        """The precision for module ``name`` and the index of the deciding rule."""
        for i, r in enumerate(self.rules):
            if fnmatch.fnmatchcase(name, r.pattern):
                return r.precision, i
        return self.default, None

    def assign(
        self, names_types: list[tuple[str, type]], quantizable: set[type]
    ) -> dict[str, Precision]:
        """Match the plan against a model's modules.

        Args:
          names_types: every (qualified name, class) of the model, root excluded.
          quantizable: the classes that can be quantized.
        Returns:
          name -> Precision for every quantizable module that is not float.
        Raises:
          PlanError: a pattern matches no module, or a quantizing rule matches only
            modules that cannot be quantized.
        """
        names = [n for n, _ in names_types]
        for i, r in enumerate(self.rules):
            hits = [(n, t) for n, t in names_types if fnmatch.fnmatchcase(n, r.pattern)]
            if not hits:
                near = difflib.get_close_matches(r.pattern, names, n=5, cutoff=0.3)
                raise PlanError(
                    f"plan rules[{i}]: pattern {r.pattern!r} matches no module; "
                    f"nearby module names: {near or names[:5]}"
                )
            if not r.precision.is_float and not any(t in quantizable for _, t in hits):
                shown = ", ".join(f"{n} ({t.__name__})" for n, t in hits[:5])
                raise PlanError(
                    f"plan rules[{i}]: pattern {r.pattern!r} asks for "
                    f"{r.precision.describe()} but matches only modules that cannot be "
                    f"quantized: {shown}; quantizable types: "
                    f"{sorted(t.__name__ for t in quantizable)}"
                )
        out: dict[str, Precision] = {}
        for n, t in names_types:
            if t not in quantizable:
                continue
            p, _ = self.lookup(n)
            if not p.is_float:
                out[n] = p
        return out


def load_plan(path: str | Path) -> PrecisionPlan:
    """Read and validate a precision plan YAML file."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found") from None
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML: {e}") from None
    return PrecisionPlan.from_dict(d, str(path))


FLOAT_PLAN = PrecisionPlan(default=Precision())
