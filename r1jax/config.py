"""Typed, frozen, validated configuration.

Every configurable part of r1jax declares a frozen dataclass whose fields are made with
:func:`field`, which records the allowed range or choices and a one-line help text::

    @dataclasses.dataclass(frozen=True)
    class AlgoConfig:
        kl_coef: float = field(0.001, ge=0.0, help="β of the KL term")
        loss_agg: str = field("seq_mean_token_mean", choices=("token_mean", ...))

A config is built from a YAML file plus dotted command-line overrides
(``algo.kl_coef=0.001``) by :func:`load_config`. Everything is checked before any work starts:
an unknown key, a wrong type, an out-of-range value or a missing file raises :class:`ConfigError`
naming the dotted key, the bad value and what is allowed. The resolved config is written back
as YAML by :func:`save_config`, beside every run's outputs.

Frozen dataclasses are hashable, so a whole config (or a section of it) can be a static
argument of a jitted function.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import math
import pathlib
import types
import typing
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "field",
    "key_of",
    "from_dict",
    "to_dict",
    "load_config",
    "read_config",
    "apply_overrides",
    "parse_overrides",
    "save_config",
    "replace",
    "describe",
    "validate_fields",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the dotted key at fault."""


_META = "r1jax"


def field(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    help: str = "",  # noqa: A002 - mirrors argparse
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with validation metadata.

    Args:
      default: the default value (immutable: use tuples, not lists).
      ge, gt, le, lt: inclusive / exclusive bounds for numbers (and for each item of a tuple).
      choices: the allowed values, or a function returning them when the config is checked (the
        names of a registry, so that entries registered by ``run.imports`` are allowed).
      help: one line shown by ``describe`` and in error messages.
      default_factory: as in ``dataclasses.field`` (e.g. a nested config class).

    Returns:
      A ``dataclasses.Field``.
    """
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    meta = {_META: dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices or None, help=help)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable: use a tuple or a nested dataclass")
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Type checking and coercion of one value.


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Returns ``value`` converted to type ``tp`` or raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(repr, args))}")
    if _is_config(tp):
        if isinstance(value, tp):  # re-validated: a default instance may hold plain dicts
            value = {key_of(f): getattr(value, f.name) for f in dataclasses.fields(tp) if f.init}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if origin is tuple or tp is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        items = {_coerce(k, kt, f"{key}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        return _FrozenDict(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


class _FrozenDict(dict):
    """A hashable, read-only dict for ``dict[str, X]`` config fields."""

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _readonly(self, *args, **kwargs):
        raise TypeError("config mappings are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    choices = _choices(meta)
    for v in items:
        if choices is not None and v not in choices:
            allowed = ", ".join(map(repr, choices))
            raise ConfigError(f"{key}: {v!r} is not allowed; allowed: {allowed}")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: {v!r} is not allowed; numbers must be finite (NaN and inf are rejected)")
        for name, ok, sym in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            bound = meta.get(name)
            if bound is not None and not ok(v, bound):
                raise ConfigError(f"{key}: {v!r} is out of range; must be {sym} {bound}")


def _choices(meta: Mapping[str, Any]) -> tuple | None:
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def validate_fields(obj: Any, prefix: str = "") -> None:
    """Checks every field of a config instance against its declared range / choices.

    For configs that validate on direct construction (``__post_init__``), so a hand-built config
    is held to exactly the rules :func:`from_dict` applies.

    Raises:
      ConfigError: naming ``prefix + field``, the bad value and the allowed range.
    """
    for f in dataclasses.fields(obj):
        meta = f.metadata.get(_META)
        value = getattr(obj, f.name)
        if meta and value is not None:
            _check_bounds(value, meta, f"{prefix}{key_of(f)}")


def key_of(f: dataclasses.Field) -> str:
    """The YAML key of a config field: its name, less the trailing ``_`` of a name that would
    otherwise be a Python keyword (field ``async_`` is key ``async``)."""
    return f.name[:-1] if f.name.endswith("_") and keyword.iskeyword(f.name[:-1]) else f.name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {key_of(f): f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
        raise ConfigError(
            f"unknown key '{_join(prefix, str(k))}'{hint}; allowed keys of "
            f"{prefix or cls.__name__}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            value = data[name]
            choices = _choices(f.metadata.get(_META) or {})
            if isinstance(value, bool) and choices and ("off" if value is False else "on") in choices:
                value = "off" if value is False else "on"  # YAML 1.1 reads a bare off / on as a bool
            value = _coerce(value, hints[f.name], key)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = _coerce(f.default_factory(), hints[f.name], key)  # type: ignore[misc]
        else:
            raise ConfigError(f"missing required key '{key}' ({_type_name(hints[f.name])})")
        meta = f.metadata.get(_META)
        if meta:
            _check_bounds(value, meta, key)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{prefix}: {e}" if prefix and not str(e).startswith(prefix) else str(e)) from None
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Builds and validates config ``cls`` from a (nested) mapping.

    Args:
      cls: a frozen config dataclass.
      data: nested mapping of values; missing keys take their defaults.

    Returns:
      An instance of ``cls``.

    Raises:
      ConfigError: naming the dotted key of the first unknown key, wrong type or bad value.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}")
    return _build(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain (YAML-ready) nested dict of a config dataclass."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {key_of(f): plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Parses ``key.sub=value`` strings; values are read as YAML (``1e-3``, ``[1, 2]``, ``true``)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, value))
    return parsed


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a copy of nested ``data`` with dotted ``overrides`` applied (unknown keys are caught later)."""
    out = _deep_copy(data)
    for key, value in parse_overrides(overrides):
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_config(path: str | pathlib.Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The nested mapping of a YAML config file with dotted overrides applied (not yet validated).

    Raises:
      ConfigError: missing or unreadable file (named), YAML syntax error (file and line), a
        malformed override.
    """
    data: Any = {}
    if path is not None:
        p = pathlib.Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: the top of a config must be a mapping of sections")
    return apply_overrides(data, overrides)


def load_config(cls: type[T], path: str | pathlib.Path | None, overrides: Sequence[str] = ()) -> T:
    """Reads a YAML config file, applies dotted overrides and validates.

    Args:
      cls: the top-level config dataclass.
      path: a YAML file, or None for the defaults.
      overrides: ``key.sub=value`` strings, applied in order after the file.

    Returns:
      The validated config.

    Raises:
      ConfigError: missing or unreadable file (named), YAML syntax error (file and line), or
        any invalid key or value (the dotted key named).
    """
    return from_dict(cls, read_config(path, overrides))


def save_config(config: Any, path: str | pathlib.Path) -> pathlib.Path:
    """Writes the fully resolved config as YAML; returns the path."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return p


def replace(config: T, overrides: Sequence[str]) -> T:
    """A validated copy of ``config`` with dotted overrides applied."""
    return from_dict(type(config), apply_overrides(to_dict(config), overrides))


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per key: dotted name, type, default, constraints and help (for ``--help``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, key_of(f))
        tp = hints[f.name]
        if _is_config(tp):
            lines.extend(describe(tp, key))
            continue
        meta = f.metadata.get(_META) or {}
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        limits = [f"{k} {meta[k]}" for k in ("ge", "gt", "le", "lt") if meta.get(k) is not None]
        if _choices(meta):
            limits.append("one of " + "/".join(map(str, _choices(meta))))
        extra = f" [{'; '.join(limits)}]" if limits else ""
        lines.append(f"{key}: {_type_name(tp)} = {default!r}{extra}  {meta.get('help', '')}".rstrip())
    return lines
