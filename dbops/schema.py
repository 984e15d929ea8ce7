"""Validated frozen dataclasses: just enough of a schema layer for dbops' config.

Why not pydantic: building its models costs ~200 ms at import, a fifth of the console's
first-frame budget, and every message it writes had to be rewritten anyway to say what an
operator needs (a key path, a did-you-mean, never a secret's value).

A model is a frozen dataclass subclassing `Model`. Field types understood: str, int, float,
bool, Literal[...], X | None, list[X], dict[str, X] and nested models. Constraints go in the
field's metadata: `field(default=1, metadata=limits(ge=1, le=65535))`. A model may define
`check(self) -> list[str]` for rules across fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

Loc = tuple[str, ...]

# Keys whose values are never echoed in an error message.
SECRET_KEYS = frozenset({"password", "value", "token", "secret"})


@dataclass(frozen=True)
class Error:
    loc: Loc
    kind: str  # "unknown", "missing", "type", "value"
    message: str


class Invalid(Exception):
    def __init__(self, errors: list[Error]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(e.loc)}: {e.message}" for e in errors))


def limits(*, ge: float | None = None, le: float | None = None, gt: float | None = None, min_length: int | None = None) -> dict[str, Any]:
    return {k: v for k, v in {"ge": ge, "le": le, "gt": gt, "min_length": min_length}.items() if v is not None}


class Model:
    """Base of the config models. Subclasses are `@dataclass(frozen=True)`."""

    _hints_cache: ClassVar[dict[type, dict[str, Any]]] = {}

    def check(self) -> list[Any]:
        """Rules across fields: messages, or (sub-path tuple, message) pairs."""
        return []

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def sections(cls) -> dict[str, type[Model]]:
        """Keys this model takes besides its fields, each with its model: tables whose set is
        known only at run time (an engine's own section, by engine kind). They are collected
        into the field whose metadata says {"sections": True}."""
        return {}

    @classmethod
    def key_names(cls) -> list[str]:
        """Every key a config file may give this model."""
        fields = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("sections")]  # type: ignore[arg-type]
        return fields + list(cls.sections())

    @classmethod
    def hints(cls) -> dict[str, Any]:
        if cls not in Model._hints_cache:
            Model._hints_cache[cls] = typing.get_type_hints(cls)
        return Model._hints_cache[cls]

    @classmethod
    def validate(cls, data: Any) -> Any:
        """Build an instance from plain TOML data, or raise Invalid listing every problem."""
        errors: list[Error] = []
        value = _convert(cls, data, (), errors)
        if errors:
            raise Invalid(errors)
        return value


def _show(value: Any, loc: Loc) -> str:
    if any(part in SECRET_KEYS for part in loc):
        return ""
    if isinstance(value, (str, int, float, bool)):
        return f" (got {value!r})"
    return f" (got a {_toml_type(value)})"


def _toml_type(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _convert(tp: Any, value: Any, loc: Loc, errors: list[Error]) -> Any:
    origin = get_origin(tp)
    if value is None and origin not in (typing.Union, types.UnionType):
        errors.append(Error(loc, "type", "needs a value"))
        return None
    if isinstance(tp, type) and issubclass(tp, Model):
        return _convert_model(tp, value, loc, errors)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        errors.append(Error(loc, "value", "must be one of " + ", ".join(repr(c) for c in choices) + _show(value, loc)))
        return None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, loc, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(Error(loc, "type", f"expected an array{_show(value, loc)}"))
            return None
        (item,) = get_args(tp)
        items = [_convert(item, v, loc + (str(i),), errors) for i, v in enumerate(value)]
        # One bad item makes the container unusable (reported already); None tells the parent.
        return None if any(x is None for x in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(Error(loc, "type", f"expected a table{_show(value, loc)}"))
            return None
        _, item = get_args(tp)
        mapping = {k: _convert(item, v, loc + (str(k),), errors) for k, v in value.items()}
        return None if any(x is None for x in mapping.values()) else mapping
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(Error(loc, "type", f"expected true or false{_show(value, loc)}"))
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append(Error(loc, "type", f"expected a whole number{_show(value, loc)}"))
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                errors.append(Error(loc, "value", f"must be a finite number{_show(value, loc)}"))
                return None
            return float(value)
        errors.append(Error(loc, "type", f"expected a number{_show(value, loc)}"))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append(Error(loc, "type", f"expected a string{_show(value, loc)}"))
        return None
    raise TypeError(f"schema: unsupported field type {tp!r} at {'.'.join(loc)}")  # a bug in a model, not in a config


def _check_limits(value: Any, meta: Any, loc: Loc, errors: list[Error]) -> None:
    if value is None:
        return
    shown = _show(value, loc)
    if "ge" in meta and value < meta["ge"]:
        errors.append(Error(loc, "value", f"must be >= {meta['ge']}{shown}"))
    if "le" in meta and value > meta["le"]:
        errors.append(Error(loc, "value", f"must be <= {meta['le']}{shown}"))
    if "gt" in meta and value <= meta["gt"]:
        errors.append(Error(loc, "value", f"must be > {meta['gt']}{shown}"))
    if "min_length" in meta and len(value) < meta["min_length"]:
        errors.append(Error(loc, "value", f"needs at least {meta['min_length']} entr{'y' if meta['min_length'] == 1 else 'ies'}"))


def _convert_model(cls: type[Model], value: Any, loc: Loc, errors: list[Error]) -> Any:
    if not isinstance(value, dict):
        hint = ' like { env = "VAR" } or { file = "/path" }' if loc and loc[-1] in SECRET_KEYS else ""
        errors.append(Error(loc, "type", f"expected a table{hint}{_show(value, loc)}"))
        return None
    hints = cls.hints()
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    collector = next((f.name for f in fields.values() if f.metadata.get("sections")), None)
    sections = cls.sections() if collector is not None else {}
    for key in value:
        if (key not in fields or key == collector) and key not in sections:
            errors.append(Error(loc + (str(key),), "unknown", "unknown key"))
    kwargs: dict[str, Any] = {}
    complete = True
    if collector is not None:
        given = {k: _convert(model, value[k], loc + (k,), errors) for k, model in sections.items() if k in value}
        complete = all(v is not None for v in given.values())
        kwargs[collector] = given
    for name, f in fields.items():
        if name == collector:
            continue
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(Error(loc + (name,), "missing", "required key is missing"))
                complete = False
            continue
        before = len(errors)
        converted = _convert(hints[name], value[name], loc + (name,), errors)
        if len(errors) > before and converted is None:
            complete = False  # reported by _convert; the model cannot be built without it
        _check_limits(converted, f.metadata, loc + (name,), errors)
        kwargs[name] = converted
    if not complete:
        return None
    # Built even when a nested model reported a cross-field problem, so this model's own
    # rules are checked too and every problem is reported in one run.
    instance = cls(**kwargs)
    for problem in instance.check():
        # check() returns a message, or (sub-path, message) to point at the key at fault.
        sub, message = problem if isinstance(problem, tuple) else ((), problem)
        errors.append(Error(loc + tuple(sub), "value", message))
    return instance
