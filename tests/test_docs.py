"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing pages
and unresolvable API references fail), and the numeric example in docs/concepts.md is right."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
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
