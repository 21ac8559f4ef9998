"""From YAML (plus ``--set a.b=value`` overrides) to a validated :class:`~ddpinn.config.schema.Config`.

Defines :func:`load_config`, :func:`from_dict` and :func:`convert_value` (unknown keys and wrong
types rejected with the field's dotted name) and :func:`to_dict` (what is written to
``RUN_DIR/config.yaml``). Cross-checks that need the problem or the geometry (coverage gaps,
derivative names, dimensions) happen when the run is built (:mod:`ddpinn.build`), still before
any training step.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ddpinn.config.schema import Config, ConfigError

__all__ = ["apply_overrides", "convert_value", "from_dict", "load_config", "to_dict"]


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def convert_value(where: str, value: Any, hint: Any) -> Any:
    """``value`` (as YAML gives it) converted to the type ``hint``; :class:`ConfigError` naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        deeper = None
        for option in typing.get_args(hint):
            try:
                return convert_value(where, value, option)
            except ConfigError as err:
                # An error inside a nested value (a level's field, say) says more than "wrong type".
                if str(err).startswith((f"{where}.", f"{where}[")) and deeper is None:
                    deeper = err
        if deeper is not None:
            raise deeper
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [convert_value(f"{where}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, naming the offending key on any error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {sorted(fields)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert_value(f"{prefix}{name}", data[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        if where and "[]" in message:
            message = message.replace("decomposition.levels[]", where, 1)
        raise ConfigError(message) from None


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (dataclasses -> dicts), for YAML."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {path}: cannot parse value {raw!r}: {err}") from None
        node: Any = data
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"--set {path}: {'.'.join(keys[: i + 1])} is not an index of a list")
                node = node[int(key)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {path}: {'.'.join(keys[:i])} is not a section")
            node = node.setdefault(key, {})
        last = keys[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {path}: cannot set {last!r} inside {type(node).__name__}")
    return data


def _absolute_problem_file(data: dict[str, Any], base: Path) -> None:
    """A ``file.py:Class`` problem named relative to the config file: make it absolute, so the
    resolved config (and a resumed run) finds it from anywhere."""
    problem = data.get("problem")
    name = problem.get("name", "") if isinstance(problem, dict) else ""
    if isinstance(name, str) and ".py:" in name:
        file, cls = name.rsplit(":", 1)
        path = Path(file)
        if not path.is_absolute():
            path = base / path if (base / path).exists() else path
        problem["name"] = f"{path.resolve()}:{cls}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> Config:
    """Read a YAML config (or take ``data``), apply overrides and validate it."""
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    _absolute_problem_file(data, Path(path).parent if path is not None else Path.cwd())
    return from_dict(Config, data)
