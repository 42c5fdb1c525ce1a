"""The example gallery as a pip user sees it: ``ppl examples`` and ``ppl run NAME``.

The programs live in the repository's ``examples/`` folder, which the wheel installs as the
package ``ppl.examples`` (``[tool.setuptools.package-dir]``): one source, no copies.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

__all__ = ["examples_dir", "list_examples", "find_example"]


def examples_dir() -> Path | None:
    """The folder holding the example programs: the installed ``ppl.examples`` package, or
    ``examples/`` next to the ``ppl`` package in a source checkout; None if neither exists."""
    try:
        spec = importlib.util.find_spec("ppl.examples")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "short_words.py").is_file():
                return Path(loc)
    here = Path(__file__).resolve().parent.parent / "examples"
    return here if (here / "short_words.py").is_file() else None


def list_examples() -> dict[str, str]:
    """``{name: first line of its docstring}`` of every example program, sorted by name."""
    d = examples_dir()
    if d is None:
        return {}
    out = {}
    for path in sorted(d.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError:
            doc = ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def find_example(name: str) -> Path | None:
    """The file of the example called ``name`` (``"short_words"`` or ``"short_words.py"``)."""
    d = examples_dir()
    if d is None or "/" in name or "\\" in name:
        return None
    stem = name[:-3] if name.endswith(".py") else name
    path = d / f"{stem}.py"
    return path if path.is_file() and not stem.startswith("_") else None
