"""Configs are frozen dataclasses with a docstring under each field; the CLI is generated from them.

Example::

    @dataclass(frozen=True)
    class EvalConfig(DataConfig):
        steps: int = 10
        \"\"\"Fine-tuning steps per episode.\"\"\"

``add_arguments(parser, EvalConfig)`` creates ``--steps`` with that docstring as help, and
``from_namespace(EvalConfig, ns)`` builds the config back. Presets are plain dicts of field values.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import re
import textwrap
import typing
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from dfmeta.errors import DfmetaError


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (and its dataclass bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Docstring markup as plain text for a terminal: ``:func:`x``` and double-backquoted literals lose their marks."""
    return _ROLE.sub(r"\1", text).replace("``", "")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--option`` per dataclass field, typed, with its docstring and default as help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = plain(docs.get(f.name, ""))
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif get_origin(tp) is Literal:
            choices = list(get_args(tp))
            parser.add_argument(_flag(f.name), choices=choices, type=type(choices[0]), metavar="{" + ",".join(map(str, choices)) + "}", **kw)
        elif get_origin(tp) in (tuple, list):
            inner = get_args(tp)[0]
            parser.add_argument(_flag(f.name), nargs="+", type=inner, **kw)
        else:
            conv = tp if tp in (int, float, str) else str
            if optional:
                conv = _optional(conv)
            parser.add_argument(_flag(f.name), type=conv, **kw)


def _optional(conv: Any) -> Any:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null", "") else conv(s)
    parse.__name__ = conv.__name__
    return parse


def from_namespace(cls: type, ns: argparse.Namespace, preset: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from parsed arguments; explicit flags override the preset, which overrides defaults. The config
    remembers which fields the call gave (:func:`given`)."""
    values = dict(preset or {})
    source = {k: "preset" for k in values}
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in vars(ns).items():
        if k in names:
            values[k], source[k] = v, "flag"
    obj = make(cls, values)
    object.__setattr__(obj, "_given", source)
    return obj


def given(cfg: Any) -> dict[str, str] | None:
    """The fields a command line gave ``cfg``, each with where from ("flag" or "preset"); None for a config not
    built by :func:`from_namespace`."""
    return getattr(cfg, "_given", None)


BEFORE_FIELD: dict[str, Any] = {"fisher_cosine": "layers"}
"""What a stored config written before a field existed ran, where that differs from the field's default now (the
authors' per-layer Eq. 6 was the only form): used to read old runs (a resume, the report)."""


def as_stored(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config's fields with :data:`BEFORE_FIELD`'s values for the fields of ``cls`` it lacks."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**{k: v for k, v in BEFORE_FIELD.items() if k in names}, **stored}


def make(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a dict, with a clear error for an unknown field; tuples restored from JSON lists."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DfmetaError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}; "
                          f"expected one of: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    fixed = {}
    for k, v in values.items():
        tp, _ = _unwrap_optional(hints[k])
        if get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        if get_origin(tp) is Literal and v not in get_args(tp):
            raise DfmetaError(f"field {k!r}: expected one of {list(get_args(tp))}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):  # nan or inf: never a meaningful setting (nor valid JSON)
            raise DfmetaError(f"field {k!r}: expected a finite number, got {v!r}")
        fixed[k] = v
    obj = cls(**fixed)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def require(checks: list[tuple[bool, str, str]]) -> None:
    """Raise a one-line error for the first failed ``(ok, field name, what was expected)``."""
    for ok, name, expected in checks:
        if not ok:
            raise DfmetaError(f"field {name!r}: expected {expected}")


def finite_positive(x: Any) -> bool:
    """Whether ``x`` is a finite number > 0 (a learning rate, a step size)."""
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def learning_rates(cfg: Any, *names: str) -> list[tuple[bool, str, str]]:
    """:func:`require` checks that the fields ``names`` of ``cfg`` are finite learning rates > 0."""
    return [(finite_positive(getattr(cfg, n)), n, f"a finite learning rate > 0, got {getattr(cfg, n)!r}")
            for n in names]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def replace(cfg: Any, **changes: Any) -> Any:
    """A copy of a frozen config with some fields changed (validated again)."""
    return make(type(cfg), {**dataclasses.asdict(cfg), **changes})
