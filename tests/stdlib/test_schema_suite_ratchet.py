"""Ratchet on the official JSON-Schema-Test-Suite (draft 2020-12): no false positive ever,
and no test that passed in the committed baseline may stop passing.

The suite is not vendored: it comes from the ``jsonschema`` sdist (see
``benchmarks/json_schema_suite.py``; ``python benchmarks/json_schema_suite.py`` downloads it
into ``~/.cache/steerppl``, or set ``$JSON_SCHEMA_SUITE``). Without it the test skips.
Refresh the baseline after an improvement with ``--baseline``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).with_name("schema_suite_baseline.json")


def _bench():
    spec = importlib.util.spec_from_file_location("json_schema_suite",
                                                  ROOT / "benchmarks" / "json_schema_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_schema_suite_ratchet():
    bench = _bench()
    suite = bench.find_suite()
    if suite is None:
        pytest.skip("JSON-Schema-Test-Suite not present: run `python benchmarks/json_schema_suite.py` "
                    "once (pip downloads the jsonschema sdist) or set $JSON_SCHEMA_SUITE")
    rows = bench.run_ours(bench.load(suite))
    fps = [f"{r['file']} | {r['group']} | {r['test']}" for r in rows if r["category"] == "false_positive"]
    assert not fps, "invalid instances accepted:\n" + "\n".join(fps)
    base = json.loads(BASELINE.read_text())
    passing = {f"{r['file']}|{r['group']}|{r['test']}" for r in rows if r["category"] == "pass"}
    lost = sorted(set(base["passing"]) - passing)
    assert not lost, f"{len(lost)} suite tests stopped passing:\n" + "\n".join(lost[:20])
    assert len(passing) >= base["total"]["pass"]
