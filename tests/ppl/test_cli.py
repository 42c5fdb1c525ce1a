"""The ``ppl`` command line: help, listings, and a real run with --json, --trace and --plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ppl

ROOT = Path(__file__).resolve().parents[2]


def ppl_cmd() -> list[str]:
    exe = shutil.which("ppl") or str(Path(sys.executable).with_name("ppl"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "ppl.cli"]


def run_cli(*args, cwd=ROOT, timeout=300, env_extra=None):
    env = dict(os.environ, PPL_CACHE_DIR="", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env.update(env_extra or {})
    return subprocess.run(ppl_cmd() + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_the_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for cmd in ("run", "models", "methods"):
        assert cmd in out.stdout
    run_help = run_cli("run", "--help")
    assert run_help.returncode == 0
    for flag in ("--model", "--method", "--particles", "--json", "--trace", "--plot", "--max-tokens"):
        assert flag in run_help.stdout


def test_methods_lists_every_registered_backend():
    out = run_cli("methods")
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split()
    assert listed == ppl.methods()
    assert {"is", "smc", "smc_steer"} <= set(listed)


def test_models_lists_tiny():
    out = run_cli("models")
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout.split()


def test_run_missing_file_fails_cleanly(tmp_path):
    out = run_cli("run", str(tmp_path / "nope.py"))
    assert out.returncode != 0
    assert "no such file" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    trace, plot = tmp / "out.html", tmp / "out.png"
    out = run_cli("run", "examples/short_words.py", "--particles", "4", "--max-tokens", "8",
                  "--json", "--trace", str(trace), "--plot", str(plot))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), trace, plot


def test_run_json_has_outputs_probabilities_and_evidence(cli_run):
    summary, _, _ = cli_run
    assert summary["method"] == "smc" and summary["particles"] == 4
    assert isinstance(summary["log_evidence"], float) and summary["log_evidence"] <= 1e-6
    outs = summary["outputs"]
    assert 1 <= len(outs) <= 4 and len(outs) == summary["distinct_outputs"]
    probs = [o["probability"] for o in outs]
    assert all(0 < p <= 1 for p in probs) and abs(sum(probs) - 1) < 1e-6
    assert probs == sorted(probs, reverse=True)
    # short_words defines check(): every reported output passes it
    assert all(o["ok"] is True for o in outs)
    assert all(isinstance(o["text"], str) for o in outs)


def test_run_trace_writes_a_page_with_the_run(cli_run):
    summary, trace, _ = cli_run
    page = trace.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert data["method"] == "smc"
    assert len(data["texts"][-1]) == 4  # one text per particle at the last step
    assert len(data["ess"]) == len(data["texts"]) == len(data["ancestors"])


def test_run_plot_writes_a_png(cli_run):
    _, _, plot = cli_run
    head = plot.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 5000


@pytest.mark.slow
def test_trace_of_an_mcmc_run_is_refused_with_a_message(tmp_path):
    if "pimh" not in ppl.methods():
        pytest.skip("pimh not available")
    out = run_cli("run", "examples/short_words.py", "--method", "pimh", "--particles", "2",
                  "--max-tokens", "3", "--option", "steps=2", "--json", "--trace",
                  str(tmp_path / "t.html"))
    assert out.returncode != 0
    assert "--trace" in out.stderr and "Traceback" not in out.stderr


def test_run_over_a_file_of_prompts_writes_one_result_per_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('The king said\n\n{"prompt": "Once upon a time"}\nAnd then\n')
    out_file = tmp_path / "out.jsonl"
    out = run_cli("run", "examples/short_words.py", "--prompts", str(prompts), "--out",
                  str(out_file), "--particles", "4", "--max-tokens", "4", "--seed", "5")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["The king said", "Once upon a time", "And then"]
    assert [r["seed"] for r in rows] == [5, 6, 7]
    for r in rows:
        assert r["method"] == "smc" and r["particles"] == 4 and r["outputs"]
        assert r["timings"]["batch_size"] == 3
    # Each line is what a run of that prompt alone gives with its seed.
    import importlib.util

    spec = importlib.util.spec_from_file_location("sw", ROOT / "examples" / "short_words.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prog = mod.make_program(ppl.models.load("tiny"), max_tokens=4)
    prog.prompt = "Once upon a time"
    alone = ppl.infer(prog, particles=4, seed=6)
    assert rows[1]["log_evidence"] == pytest.approx(alone.log_evidence, abs=0, rel=0)
    bad = tmp_path / "bad.txt"
    bad.write_text('{"text": "no prompt field"}\n')
    err = run_cli("run", "examples/short_words.py", "--prompts", str(bad))
    assert err.returncode != 0 and 'needs a "prompt" field' in err.stderr
