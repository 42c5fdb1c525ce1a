"""mkdocs hook: lets mkdocstrings find ``ppl.inference``/``ppl.models``/``ppl.stdlib``.

The package is one import namespace spread over four folders (``[tool.setuptools.package-dir]``:
``ppl.stdlib`` lives in ``stdlib/``). Griffe, which reads the sources for mkdocstrings, only
looks inside ``ppl/``. This hook builds a throwaway copy of the sources,
``<tmp>/ppl/{*.py, inference/, models/, stdlib/}`` (copies, not links: griffe does not follow
linked folders when it lists a package's submodules), and points the Python handler at it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"inference": "inference", "models": "models", "stdlib": "stdlib"}


def _build_tree() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="ppl-api-src-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    pkg = tmp / "ppl"
    pkg.mkdir()
    for f in (ROOT / "ppl").iterdir():
        if f.suffix == ".py":
            shutil.copy2(f, pkg / f.name)
    only_py = shutil.ignore_patterns("__pycache__", "*.pyc", "tiny", "*.safetensors", "*.json")
    for name, folder in SUBPACKAGES.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=only_py)
    return tmp


@event_priority(100)  # before mkdocstrings creates its handlers in its own on_config
def on_config(config, **kwargs):
    src = str(_build_tree())
    plugin = config.plugins.get("mkdocstrings")
    handlers = plugin.config.setdefault("handlers", {})
    python = handlers.setdefault("python", {})
    python["paths"] = [src]
    return config
