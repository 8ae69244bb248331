"""The systems of a recipe: which models a recipe trains, quantizes and compares.

A recipe's ``conf/systems.yaml`` lists its systems in the order they are built::

    systems:
      - name: float32
        method: float               # float | ptq | qat
        config: conf/train.yaml     # training config (float and qat)
      - name: ptq_w8a8
        method: ptq
        plan: conf/plans/w8a8.yaml  # precision plan (ptq and qat)
        init_from: float32          # ptq: the float system it calibrates
      - name: qat_w4a8
        method: qat
        config: conf/train_qat.yaml
        plan: conf/plans/w4a8.yaml
        init_from: float32          # optional for qat: fine-tune that system's average
      - name: float32_ft
        method: float
        config: conf/train_qat.yaml
        init_from: float32          # optional for float: the same fine-tuning without a plan

The shell stages query it with ``python -m q4asr.recipe conf/systems.yaml list`` and
``... get NAME FIELD``; paths are relative to the recipe directory.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

METHODS = ("float", "ptq", "qat")


@dataclass
class System:
    name: str
    method: str
    config: str | None = None
    plan: str | None = None
    init_from: str | None = None
    description: str | None = None

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.name or ""):
            raise ValueError(f"system name {self.name!r}: use letters, digits and _.+-")
        if self.method not in METHODS:
            raise ValueError(f"system {self.name}: method {self.method!r} is not one of {METHODS}")
        if self.method in ("float", "qat") and not self.config:
            raise ValueError(f"system {self.name}: method {self.method} needs a training config")
        if self.method in ("ptq", "qat") and not self.plan:
            raise ValueError(f"system {self.name}: method {self.method} needs a plan")
        if self.method == "float" and self.plan:
            raise ValueError(f"system {self.name}: a float system has no plan")
        if self.method == "ptq" and not self.init_from:
            raise ValueError(f"system {self.name}: ptq needs init_from (a float system)")


def load_systems(path: str | Path, check_files: bool = True) -> list[System]:
    """Read and validate a systems file; errors name the file and the problem."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"systems"}:
        raise ValueError(f"{path}: expected one top-level key 'systems'")
    allowed = {f.name for f in fields(System)}
    out: list[System] = []
    for i, entry in enumerate(doc["systems"] or []):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: systems[{i}] is not a mapping")
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{path}: systems[{i}]: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(allowed)}")
        try:
            s = System(**entry)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        earlier = {x.name: x for x in out}
        if s.name in earlier:
            raise ValueError(f"{path}: system {s.name} is listed twice")
        if s.init_from:
            src = earlier.get(s.init_from)
            if src is None:
                raise ValueError(f"{path}: system {s.name}: init_from {s.init_from} is not a "
                                 "system listed before it")
            if src.method != "float":
                raise ValueError(f"{path}: system {s.name}: init_from {s.init_from} must be "
                                 "a float system")
        if check_files:
            for f in ("config", "plan"):
                v = getattr(s, f)
                if v and not Path(v).is_file():
                    raise ValueError(f"{path}: system {s.name}: {f} {v}: no such file")
        out.append(s)
    if not out:
        raise ValueError(f"{path}: no systems listed")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Query a recipe's systems file.")
    p.add_argument("systems", help="conf/systems.yaml")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="system names, one a line, in build order")
    ls.add_argument("--method", default=None, help="comma-separated methods to keep")
    g = sub.add_parser("get", help="one field of one system ('' when unset)")
    g.add_argument("name")
    g.add_argument("field", choices=[f.name for f in fields(System)])
    args = p.parse_args(argv)
    try:
        systems = load_systems(args.systems)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.cmd == "list":
        keep = set(args.method.split(",")) if args.method else set(METHODS)
        for s in systems:
            if s.method in keep:
                print(s.name)
        return 0
    by_name = {s.name: s for s in systems}
    if args.name not in by_name:
        print(f"error: {args.systems}: no system {args.name}", file=sys.stderr)
        return 1
    print(getattr(by_name[args.name], args.field) or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
