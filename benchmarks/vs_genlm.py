"""ppl against genlm-control (PyPI ``genlm-control``, HF backend, CPU) on the word-length task.

The task is vs_llamppl.py's ``words`` task: fixed prompt, N particles, T tokens, every word at
most 5 letters, SMC with resampling when ESS < 0.5 N. genlm-control side, written the way its
README does: ``PromptedLLM.from_name(folder, backend="hf")``, the constraint as
``BoolFSA.from_regex(WORDS_RE).coerce(llm, f=b"".join)``, the token sampler
``AWRS(llm, fsa)`` (exact-weight adaptive rejection sampling) and
``sampler.smc(n_particles=N, ess_threshold=0.5, max_tokens=T)``. EOS: the condition is the FSA
times a boolean potential ``NoEnd`` (every prefix allowed, never complete), so EOS is never
accepted and every particle runs T tokens, as on the ppl side (EOS masked). The ``free`` task
(no constraint) uses ``AWRS(llm, NoEnd)``.

genlm-control runs in its own virtualenv (``benchmarks/_work/venvs/genlm``: ``pip install
torch==2.13.0`` then ``pip install -c <torch pin> genlm-control``), never a dependency of ppl.
Each cell runs in its own process; 1 thread on both sides (see vs_llamppl.py). Usage::

    python benchmarks/vs_genlm.py --models tiny gpt2-4l --n 8 32 --t 32
    python benchmarks/vs_genlm.py --models tiny --n 8 --t 16 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import os

# Decode throughput here is the unrolled layer loop's, as published in docs/benchmarks.md
# (the default above 4 layers is the scanned loop: compile time independent of depth, some
# speed per step on the CPU; docs/performance.md). PPL_LAYER_LOOP=scan measures that one.
os.environ.setdefault("PPL_LAYER_LOOP", "unroll")
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from vs_llamppl import (  # noqa: E402
    MAX_WORD, MODELS, PROMPT, ROOT, TORCH_VERSION, child_env, commands_block, ensure_checkpoints,
    ensure_venv, loadavg, merge_cells, peak_rss_mib, record_run, replace_section, stamp, utc_now,
    worker_ours,
)

RESULTS = BENCH / "results" / "vs_genlm.json"
SECTION = "## Versus genlm-control"
# Every maximal run of letters has 1..5 letters (genlm's negative classes range over
# string.printable).
WORDS_RE = r"[^A-Za-z]*([A-Za-z]{1,%d}[^A-Za-z]+)*([A-Za-z]{1,%d})?" % (MAX_WORD, MAX_WORD)


def worker_genlm(model: str, task: str, n: int, t: int, repeats: int, threads: int) -> dict:
    import asyncio
    import importlib.metadata as md
    import re

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from genlm.control import AWRS, BoolFSA, Potential, PromptedLLM

    class NoEnd(Potential):
        """Boolean potential: any prefix, never complete (EOS excluded)."""

        async def complete(self, context):
            return float("-inf")

        async def prefix(self, context):
            return 0.0

    llm = PromptedLLM.from_name(str(MODELS[model]), backend="hf")
    llm.model.batch_size = max(n, 1)  # one batched forward per step, as for LLaMPPL
    llm.set_prompt_from_str(PROMPT)
    if task == "words":
        fsa = BoolFSA.from_regex(WORDS_RE).coerce(llm, f=b"".join)
        sampler = AWRS(llm, fsa * NoEnd(fsa.vocab))
    else:
        sampler = AWRS(llm, NoEnd(llm.vocab))

    def run(seed, n_, t_):
        np.random.seed(seed)
        torch.manual_seed(seed)
        llm.model.clear_cache()
        return asyncio.run(sampler.smc(n_particles=n_, ess_threshold=0.5, max_tokens=t_))

    run(0, 2, 2)  # warm-up, not timed
    times, lengths = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        seqs = run(r + 1, n, t)
        times.append(time.perf_counter() - t0)
        lengths = sorted({len(c) for c in seqs.contexts})
    texts = [b"".join(x for x in c if isinstance(x, bytes)).decode("utf-8", "replace")
             for c in seqs.contexts]
    ok = sum(all(len(w) <= MAX_WORD for w in re.findall(r"[A-Za-z]+", s)) for s in texts)
    return {"times": times, "compile_s": None, "peak_rss_mib": peak_rss_mib(),
            "lengths": lengths, "texts_all_words_ok": ok, "sample_text": texts[0][:200],
            "genlm_control": md.version("genlm-control"), "genlm_backend": md.version("genlm-backend")}


def run_cell(side, model, task, n, t, repeats, threads, timeout) -> dict:
    py = ensure_venv("genlm", ["genlm-control"]) if side == "genlm" else Path(sys.executable)
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", side, "--models", model,
           "--tasks", task, "--n", str(n), "--t", str(t), "--repeats", str(repeats),
           "--threads", str(threads)]
    load0 = loadavg()
    try:
        res = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True,
                             cwd=str(ROOT), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s", **stamp(load0)}
    if res.returncode != 0:
        return {"error": res.stderr[-3000:], **stamp(load0)}
    return {**json.loads(res.stdout.strip().splitlines()[-1]), **stamp(load0)}


def table(cells: dict) -> str:
    rows = {}
    for k, c in cells.items():
        side, model, task, n, t = k.split("|")
        rows.setdefault((model, task, int(n), int(t)), {})[side] = c
    out = ["| model | task | N | T | ppl SMC (s) | genlm-control SMC (s) | genlm / ppl | "
           "genlm tokens per particle | peak RSS ppl / genlm (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    order = list(MODELS)
    for (model, task, n, t), v in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]),) + kv[0][1:]):
        o, g = v.get("ours", {}), v.get("genlm", {})
        so = statistics.median(o["times"]) if o.get("times") else None
        sg = statistics.median(g["times"]) if g.get("times") else None
        gtxt = f"{sg:.2f}" if sg else ("failed: " + g.get("error", "not run").strip().splitlines()[-1][:80]
                                       if g else "—")
        out.append(
            f"| {model} | {task} | {n} | {t} | {so:.3f} | {gtxt} | "
            f"{(f'{sg / so:.1f}x' if so and sg else '—')} | {g.get('lengths', '—')} | "
            f"{o.get('peak_rss_mib', 0):.0f} / {g.get('peak_rss_mib', 0):.0f} |"
            if so else f"| {model} | {task} | {n} | {t} | — | {gtxt} | — | — | — |")
    return "\n".join(out)


def write_docs(data: dict, md: str) -> None:
    cmds = commands_block(data)
    vers = next((c for c in data["cells"].values() if "genlm_control" in c), {})
    body = f"""{SECTION}

genlm-control {vers.get('genlm_control', '?')} (genlm-backend {vers.get('genlm_backend', '?')}),
its HF backend on CPU, in its own virtualenv with torch {TORCH_VERSION} (`benchmarks/vs_genlm.py`).
Task: vs_llamppl.py's `words` task (prompt `{PROMPT!r}`, every word at most {MAX_WORD}
letters, exactly T tokens per particle, SMC with resampling at ESS < 0.5 N), and its `free`
task (no constraint: genlm-control `AWRS(llm, NoEnd)`, ppl the LM masked to "not EOS"). genlm-control
side as its README writes it: `PromptedLLM.from_name(folder, backend="hf")`,
`fsa = BoolFSA.from_regex({WORDS_RE!r}).coerce(llm, f=b"".join)`,
`AWRS(llm, fsa * NoEnd).smc(n_particles=N, ess_threshold=0.5, max_tokens=T)` (AWRS:
exact-weight adaptive rejection sampling of each token under the condition; `NoEnd` is a
4-line boolean `Potential` that accepts every prefix and no complete text, so EOS is never
drawn and every particle runs T tokens, as on the ppl side; its `complete() = -inf` also zeroes
genlm's final posterior weights, which does not change the work done). `llm.model.batch_size =
N` (one batched forward per step). 1 thread on both sides, each cell in its own process, the
two sides of a cell one after the other, median wall time; the same shared 2-core machine as
the LLaMPPL section, with other jobs running on it (load averages around each command are
listed with it and stored with every cell; JSON last written {data['meta'].get('date', '')}).

Commands:

```
{cmds}
```

{md}

{data.get('notes', '')}
"""
    replace_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "gpt2-4l"], choices=list(MODELS))
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--t", type=int, nargs="+", default=[32])
    ap.add_argument("--tasks", nargs="+", default=["words"], choices=["words", "free"])
    ap.add_argument("--sides", nargs="+", default=["ours", "genlm"], choices=["ours", "genlm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per process")
    ap.add_argument("--genlm-repeats", type=int, default=None,
                    help="timed runs per genlm-control process (default: --repeats)")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--docs-only", action="store_true",
                    help="run nothing: print the table and rewrite the docs section from the JSON")
    ap.add_argument("--worker", choices=["ours", "genlm"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        m, task, n, t = args.models[0], args.tasks[0], args.n[0], args.t[0]
        out = (worker_ours(m, task, n, t, args.repeats, "ours") if args.worker == "ours"
               else worker_genlm(m, task, n, t, args.repeats, args.threads))
        print(json.dumps(out))
        return
    if args.docs_only:
        data = json.loads(RESULTS.read_text())
        print(table(data["cells"]))
        write_docs(data, table(data["cells"]))
        return
    ensure_checkpoints(args.models)
    start, load_start = utc_now(), loadavg()
    print(f"[start] {start}, load average {load_start}", file=sys.stderr, flush=True)
    command = ("python benchmarks/vs_genlm.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    fresh = {}
    for model in args.models:
        for t in args.t:
            for n in args.n:
                for task in args.tasks:
                    for side in args.sides:
                        reps = (args.genlm_repeats if side == "genlm" and args.genlm_repeats
                                else args.repeats)
                        c = run_cell(side, model, task, n, t, reps, args.threads, args.timeout)
                        c["command"] = command
                        k = f"{side}|{model}|{task}|{n}|{t}"
                        fresh[k] = c
                        print(f"{k}: " + (f"{statistics.median(c['times']):.3f}s" if c.get("times")
                                          else c.get("error", "")[-800:]), file=sys.stderr, flush=True)
    print(table(fresh))
    print(f"[end] {utc_now()}, load average {loadavg()}", file=sys.stderr, flush=True)
    if args.no_write:
        return
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"cells": {}}
    merge_cells(data["cells"], fresh)  # keyed side|model|task|N|T; earlier cells are kept
    data.setdefault("meta", {}).update(
        {"threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    record_run(data["meta"], command, start, load_start, fresh)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    write_docs(data, table(data["cells"]))


if __name__ == "__main__":
    main()
