"""Problem registry: names -> Problem classes, including classes from users' own files.

``problem.name`` in a config is either a registered name (``poisson2d``) or a reference to a
user's class: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path
from typing import Any

from ddpinn.config import ConfigError, convert_value
from ddpinn.problems.base import Problem, ProblemError
from ddpinn.user_code import UserCodeError, load_user_class

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
    try:
        return load_user_class(name, Problem, base_dir)
    except UserCodeError as err:
        raise ProblemError(f"problem.name: {err}") from None


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
