"""Users' own classes named in a config: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.

Defines :func:`load_user_class` and :class:`UserCodeError`. Used for problems (``problem.name``)
and subdomain schedules (``schedule.kind``); each caller puts its config field in front of the
message.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

__all__ = ["UserCodeError", "load_user_class"]


class UserCodeError(ValueError):
    """A reference that does not lead to a usable class; the message names the file or module."""


def load_user_class(reference: str, base: type, base_dir: Path | None = None) -> type:
    """The class ``reference`` names, which must subclass ``base``. A file path is tried from the
    working directory, then relative to ``base_dir`` (the config's directory). An error raised
    while importing the user's file is reported as ``file:line: what`` with the offending line."""
    where, _, cls_name = reference.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.exists():
            raise UserCodeError(f"file {where!r} not found (looked in {path.resolve().parent})")
        mod_name = f"ddpinn_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - a user's file may fail in any way; report where
            del sys.modules[mod_name]
            raise UserCodeError(_where_it_failed(err, path)) from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise UserCodeError(f"cannot import module {where!r}: {err}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UserCodeError(f"{where!r} defines no {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserCodeError(f"{cls_name!r} in {where!r} is not a ddpinn {base.__name__} subclass")
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
