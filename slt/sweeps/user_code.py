"""Importing the user's code (model factories, data and loss functions) without running anything else.

Python files named on the command line are loaded by path, under a name unique to that path, so two
``defs.py`` in different folders never collide and a file is never found by accident through
``sys.path``. Worker processes load the same files under the same names (see :func:`install`), so
functions defined in them can be sent to workers by reference. :func:`safe_path` moves the current
folder behind the standard library and the installed packages, so a file such as ``arviz.py`` or
``concurrent.py`` lying in the working folder cannot replace the module of that name.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["load_file", "loaded_files", "install", "safe_path"]

#: ``{module name: file path}`` of every file loaded by :func:`load_file` in this process.
_FILES: dict[str, str] = {}


class _FileFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`_FILES` by their unique names (in this process and in workers)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        file = _FILES.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


_FINDER = _FileFinder()


def _ensure_finder() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)


def module_name_for(path: str | os.PathLike[str]) -> str:
    """The unique module name of a Python file: its stem and a hash of its absolute path."""
    resolved = str(Path(path).resolve())
    stem = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in Path(resolved).stem)
    return f"slt_user_{stem}_{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


def load_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import the Python file at ``path`` under its unique name (once per process).

    Raises
    ------
    ValueError
        When the file does not exist or is not a ``.py`` file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"no such file {os.fspath(path)}")
    if file.suffix != ".py":
        raise ValueError(f"{os.fspath(path)} is not a Python (.py) file")
    name = module_name_for(file)
    if name in sys.modules:
        return sys.modules[name]
    _FILES[name] = str(file.resolve())
    _ensure_finder()
    import importlib

    return importlib.import_module(name)


def loaded_files() -> dict[str, str]:
    """``{module name: path}`` of the files loaded so far (what workers need to :func:`install`)."""
    return dict(_FILES)


def install(files: Mapping[str, str]) -> None:
    """Make the modules of ``files`` importable by their unique names in this (worker) process."""
    _FILES.update(files)
    if files:
        _ensure_finder()


def safe_path(path: Sequence[str], cwd: str | None = None) -> list[str]:
    """``path`` with the current folder (``""``, ``"."`` or its absolute path) moved to the end.

    The current folder stays importable (``--model mymodule:factory``), but after the standard
    library and the installed packages, so it cannot shadow them.
    """
    cwd = os.path.realpath(cwd or os.getcwd())

    def is_cwd(entry: str) -> bool:
        return entry in ("", ".") or os.path.realpath(entry) == cwd

    kept = [p for p in path if not is_cwd(p)]
    return [*kept, cwd]
