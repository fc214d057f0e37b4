"""User code, loaded in one place: ``--child module:function`` and ``--model
package.module:factory`` (or ``path/file.py:name``). ``models`` and ``trial`` both load through
here, so neither imports the other for it."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_space.errors import FieldError, user_error

__all__ = ["load_function", "check_child"]


def _add_paths(paths: list[str]) -> None:
    """Make the driver's folders importable in a Ray worker (``--model package.module:f``)."""
    import sys

    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def load_function(spec: str, field_name: str = "child") -> Callable[..., Any]:
    """``module:function`` or ``path/file.py:function`` -> the function (ValueError naming
    ``field_name`` when the module does not import or has no such function)."""
    target, _, fn = str(spec).rpartition(":")
    if not target or not fn:
        raise user_error(field_name, spec, "module:function or path/file.py:function")
    try:
        if target.endswith(".py"):
            if not Path(target).is_file():
                raise user_error(
                    field_name,
                    spec,
                    "module:function or path/file.py:function",
                    detail=f"bad value {spec!r} (file {target} not found)",
                )
            module_spec = importlib.util.spec_from_file_location(Path(target).stem + "_child_hook", target)
            if module_spec is None or module_spec.loader is None:
                raise user_error(field_name, spec, "a Python file", detail=f"bad value {spec!r} (cannot load {target})")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except FieldError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's spec
        raise user_error(
            field_name,
            spec,
            "an importable module",
            detail=f"bad value {spec!r} (importing {target} failed: {type(exc).__name__}: {exc})",
        ) from None
    func = getattr(module, fn, None)
    if not callable(func):
        raise user_error(
            field_name, spec, f"a function of {target}", detail=f"bad value {spec!r} ({target} has no function {fn!r})"
        )
    return func


def check_child(spec: str) -> str:
    """A ``--child`` must import and take (config, plan, report) like ``train_child``: refused
    here, before any trial, in one line. A file's path comes back absolute (Ray workers start
    in another folder)."""
    import inspect

    fn = load_function(spec, "child")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError as exc:
        raise user_error(
            "child",
            spec,
            "a function taking (config, plan, report) like child_trainer.train_child",
            detail=f"bad value {spec!r} ({exc})",
        ) from None
    except ValueError:  # no signature to read (some builtins): the trial will say
        pass
    target, _, name = spec.rpartition(":")
    return f"{Path(target).resolve()}:{name}" if target.endswith(".py") else spec
