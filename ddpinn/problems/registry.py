"""Problem registry: names -> Problem classes, including classes from users' own files.

``problem.name`` in a config is either a registered name (``poisson2d``) or a reference to a
user's class: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

from ddpinn.config import ConfigError, convert_value
from ddpinn.problems.base import Problem, ProblemError

__all__ = ["register", "problem_class", "make_problem", "registered"]

_REGISTRY: dict[str, type[Problem]] = {}


def register(name: str):
    """Class decorator: make a Problem subclass available as ``problem.name: <name>``."""

    def deco(cls: type[Problem]) -> type[Problem]:
        if not (isinstance(cls, type) and issubclass(cls, Problem)):
            raise TypeError(f"@register({name!r}) must decorate a Problem subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered() -> list[str]:
    _load_library()
    return sorted(_REGISTRY)


def _load_library() -> None:
    importlib.import_module("ddpinn.problems.library")


def problem_class(name: str, base_dir: Path | None = None) -> type[Problem]:
    """Resolve a registered name or a ``file.py:Class`` / ``module:Class`` reference."""
    _load_library()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise ProblemError(
            f"problem.name: unknown problem {name!r}; choose one of {sorted(_REGISTRY)} "
            f"or give 'path/to/file.py:ClassName'"
        )
    where, cls_name = name.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.exists():
            raise ProblemError(f"problem.name: file {where!r} not found (looked in {path.resolve().parent})")
        mod_name = f"ddpinn_user_problem_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - a user's file may fail in any way; report where
            del sys.modules[mod_name]
            raise ProblemError(f"problem.name: {_where_it_failed(err, path)}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ProblemError(f"problem.name: cannot import module {where!r}: {err}") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Problem)):
        raise ProblemError(f"problem.name: {cls_name!r} in {where!r} is not a ddpinn Problem subclass")
    return cls


def _where_it_failed(err: BaseException, path: Path) -> str:
    """``file:line: what`` for an error raised while importing the user's ``path``, with the
    offending source line; the traceback through ddpinn and importlib says nothing more."""
    if isinstance(err, SyntaxError):
        line, text, what = err.lineno, err.text, f"syntax error: {err.msg}"
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        line = frames[-1].lineno if frames else None
        text = frames[-1].line if frames else None
        what = f"{type(err).__name__}: {err}"
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {what}" + (f"\n    {text.strip()}" if text and text.strip() else "")


def make_problem(name: str, params: dict[str, Any] | None = None, base_dir: Path | None = None) -> Problem:
    """Instantiate a problem with parameters checked against its dataclass fields."""
    cls = problem_class(name, base_dir)
    params = dict(params or {})
    known = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ProblemError(
            f"problem.params.{unknown[0]}: {cls.__name__} has no parameter {unknown[0]!r}; "
            f"its parameters are {sorted(known)}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key in hints:
            try:
                params[key] = convert_value(f"problem.params.{key}", value, hints[key])
            except ConfigError as err:
                raise ProblemError(str(err)) from None
    try:
        problem = cls(**params)
        problem.check()
    except ProblemError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's problem may fail in any way; report it as config
        raise ProblemError(
            f"problem.params: {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())}) "
            f"cannot be used: {type(err).__name__}: {err}"
        ) from None
    return problem
