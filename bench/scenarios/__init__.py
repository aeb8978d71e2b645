"""Scenario registry: every module `bench/scenarios/<name>.py` (not starting with `_`) is a
scenario. Its docstring's first line is the description shown by `--list`, and it defines
`run(quick: bool) -> dict` returning the figures (a non-empty "error" key means it failed)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def available() -> dict[str, str]:
    """Scenario name -> one-line description, read without importing the modules."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out[path.stem.replace("_", "-")] = (doc.strip().splitlines() or ["(no description)"])[0]
    return out


def load(name: str) -> ModuleType:
    if name not in available():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
