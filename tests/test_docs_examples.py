"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace (a page builds its example step by
step). A block preceded by an HTML comment ``<!-- skip: reason -->`` is not run (the reason
says why: a real checkpoint, the network, an outline with ``...``); every other block must
run, on the embedded tiny model, quickly (the docs keep their examples small).
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<pre>(?:<!--[^\n]*-->[ \t]*\n[ \t]*)?)```python[^\n]*\n(?P<code>.*?)^[ \t]*```",
                   re.S | re.M)
SKIP = re.compile(r"<!--\s*skip(?::\s*(?P<reason>.*?))?\s*-->")


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        skip = SKIP.search(m.group("pre") or "")
        out.append((line, textwrap.dedent(m.group("code")), (skip.group("reason") or "marked skip") if skip else None))
    return out


PAGES_WITH_CODE = [p for p in PAGES if blocks(p)]
# Pages whose blocks compile several runs of their own (15-20 s each on 2 shared cores) run
# in the slow tier; the first-contact pages (README, tutorial, concepts, ...) in every run.
SLOW_PAGES = {"backends.md", "performance.md", "testing.md"}


def test_every_page_with_code_is_collected():
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"README.md", "tutorial.md", "concepts.md"} <= names


@pytest.mark.parametrize("page", [pytest.param(p, id=p.name, marks=[pytest.mark.slow]
                                               if p.name in SLOW_PAGES else [])
                                  for p in PAGES_WITH_CODE])
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    monkeypatch.syspath_prepend(str(ROOT))
    # a real module, so that classes the blocks define (dataclasses) find their module
    module = types.ModuleType(f"_docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    ran = 0
    for line, code, skip in blocks(page):
        if skip is not None:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), ns)  # noqa: S102
        except Exception as e:  # name the page and line in the failure
            raise AssertionError(f"{page.relative_to(ROOT)} block at line {line} failed: "
                                 f"{type(e).__name__}: {e}") from e
        ran += 1
    if ran == 0:
        pytest.skip(f"every block of {page.name} is marked skip")
