"""The SMC trace viewer, rendered by headless Chromium.

Loads the page ``ppl run ... --trace`` writes (here written in-process by
[ppl.viz.write_trace][]), lets Chromium run its script, and checks the rendered DOM: one
``tr.particle`` row per particle with that particle's text, weight and parent. Also writes the
screenshot the docs show (``docs/img/trace.png``).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ppl
from ppl.viz import particle_texts, write_trace

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")


def chromium(*args, user_data_dir: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    from ppl.stdlib import constraints as C

    tmp = tmp_path_factory.mktemp("viewer")
    lm = ppl.models.load("tiny")
    program = ppl.steer(lm, "The king said unto them,", constraints=[C.max_word_length(3)],
                        max_tokens=14)
    res = ppl.infer(program, method="smc", particles=12, seed=0)
    page = write_trace(res, tmp / "trace.html", title="short words")
    return res, page, tmp


def _rows(dom: str) -> list[list[str]]:
    rows = re.findall(r'<tr class="particle">(.*?)</tr>', dom, flags=re.S)
    return [[html.unescape(re.sub(r"<[^>]*>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S)]
            for r in rows]


def test_rendered_dom_has_one_row_per_particle_with_its_text(traced):
    res, page, tmp = traced
    out = chromium("--dump-dom", page.resolve().as_uri(), user_data_dir=tmp / "profile-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    rows = _rows(dom)
    assert len(rows) == res.num_particles
    last = particle_texts(res)[-1]
    for i, cells in enumerate(rows):
        index, parent, weight, _bar, text = cells
        assert int(index) == i
        assert int(parent) == int(res.ancestors[-1, i])
        assert 0.0 <= float(weight) <= 1.0
        assert text == last[i]
    # the last step's slots hold the final particles, so the page shows the run's outputs
    assert sorted(last) == sorted(res.texts)
    weights = np.array([float(c[2]) for c in rows])
    assert abs(weights.sum() - 1.0) < 0.01
    assert "log-evidence" in dom and f"{res.num_particles} particles" in dom
    assert re.search(r'<svg id="ess"[^>]*><polyline [^>]*points="[0-9.,\- ]+"', dom)  # ESS curve drawn
    ess_svg = dom.split('<svg id="ess"')[1].split("</svg>")[0]
    assert '<g class="axes"' in ess_svg and ">step</text>" in ess_svg and ">ESS</text>" in ess_svg
    assert f">{res.num_particles}</text>" in ess_svg and ">0</text>" in ess_svg  # y ticks 0..N
    # the resampling threshold: ess_threshold (default 0.5) x N, a dashed line at that height
    thr = re.search(r'<line id="threshold" x1="[0-9.]+" y1="([0-9.]+)"', ess_svg)
    assert thr and "resampling threshold ESS &lt; 0.5 × 12" in ess_svg
    y_of = lambda e: 180 - 34 - (180 - 22 - 34) * e / res.num_particles  # noqa: E731
    assert float(thr.group(1)) == pytest.approx(y_of(0.5 * res.num_particles), abs=0.01)
    assert len(re.findall(r"<line ", dom.split('<svg id="tree"')[1].split("</svg>")[0])) == \
        (len(res.ess) - 1) * res.num_particles  # one lineage edge per particle per step


def test_screenshot_for_the_docs(traced):
    res, page, tmp = traced
    shot = tmp / "trace.png"
    out = chromium(f"--screenshot={shot}", "--window-size=1000,1100", "--hide-scrollbars",
                   page.resolve().as_uri(), user_data_dir=tmp / "profile-shot")
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    dest = ROOT / "docs" / "img" / "trace.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def test_threshold_comes_from_the_recorded_options():
    from ppl.viz import _threshold

    class R:  # only what _threshold reads
        num_particles = 8
        options = {"ess_threshold": 0.25}

    assert _threshold(R()) == {"threshold": 2.0, "threshold_label": "ESS < 0.25 × 8"}
    R.options = {}
    assert _threshold(R())["threshold"] is None
