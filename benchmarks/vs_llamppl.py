"""ppl against LLaMPPL 0.2.3 (and transformers' ``generate``) on the same SMC-steering task.

The task, identical on every side: a fixed prompt, ``N`` particles, each generating exactly
``T`` tokens (EOS is excluded on every side, so no particle stops early), under

* ``words``: every word has at most 5 letters (LLaMPPL: its own ``hard_constraints.py``
  example model, a mask of allowed tokens observed before every token; ppl:
  ``ppl.steer(lm, prompt, constraints=[C.max_word_length(5)], max_tokens=T)`` with EOS
  masked out of the proposal), or
* ``free``: no constraint (the LM without EOS: LLaMPPL observes a "not EOS" mask before every
  token, ppl samples from the LM masked to "not EOS"; both weight by ``log(1 - p(EOS))``).

Inference is SMC with multinomial resampling when ESS < 0.5 N on both sides (LLaMPPL's
``smc_standard(model, N, 0.5)``; ppl's ``method="smc", ess_threshold=0.5,
resampling="multinomial"``). Reference rows on the ``free`` task: ppl's plain batched sampling
(``ppl.inference.baselines.ancestral_sample``, no weights) and transformers' PyTorch
``model.generate(do_sample=True, num_return_sequences=N, min_new_tokens=T, max_new_tokens=T)``.

Sides (``--sides``): ``ours`` (ppl SMC), ``plain`` (ppl ancestral), ``llamppl``, ``generate``.
Every (side, model, task, N, T) cell runs in its own subprocess (LLaMPPL in its own virtualenv
under ``benchmarks/_work/venvs/llamppl``, created on first use: ``pip install torch==2.13.0``
then ``pip install -c <constraints pinning torch==2.13.0> llamppl==0.2.3``; LLaMPPL is never a
dependency of ppl). The child reports the wall time of each run, ppl's compile time
(separately; runs after the first reuse the executable), and its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Sides alternate within each round; the
median over all timed runs is reported.

Threads (``--threads``, default 1): ``torch.set_num_threads`` + OMP/MKL_NUM_THREADS for
PyTorch sides, ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` for JAX with 1 thread
(``=true`` for T > 1). Runs before 2026-11-22 03:00 UTC also appended a bare
``intra_op_parallelism_threads=1``, which is not an XLA flag: XLA stops parsing there, so it
had no effect (nothing followed it) and was removed.

Models (``--models``): ``gpt2-small`` (random weights, GPT-2's tokenizer; decode.py's
checkpoint), ``gpt2-4l`` (4 layers, 256 wide, 4 heads, vocab 50257, random), ``tiny`` (the
embedded Llama-architecture model, vocab 4096). Usage::

    python benchmarks/vs_llamppl.py --quick --no-write
    python benchmarks/vs_llamppl.py --models gpt2-small --n 32 --t 128 --tasks words
    python benchmarks/vs_llamppl.py --models tiny gpt2-4l --n 8 16 32 64 --t 32 128
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
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
WORK = BENCH / "_work"
VENVS = WORK / "venvs"
RESULTS = BENCH / "results" / "vs_llamppl.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Versus LLaMPPL"
PROMPT = "The king said unto them, and the people"
MAX_WORD = 5
MODELS = {
    "gpt2-small": WORK / "gpt2-small-random",
    "gpt2-4l": WORK / "gpt2-4l-256d-random",
    "tiny": ROOT / "models" / "tiny",
}
SIDES = ("ours", "plain", "llamppl", "generate")
TASKS = ("words", "free")
LLAMPPL_VERSION = "0.2.3"
TORCH_VERSION = "2.13.0"



def words_program(lm, t: int):
    """The ``words`` task's ppl program: ``ppl.steer`` with ``max_word_length(MAX_WORD)`` and
    EOS masked out of its automaton, so every particle generates exactly ``t`` tokens.

    (Imports are local: this module also runs as the LLaMPPL worker, in a venv without ppl.)
    """
    import dataclasses

    from ppl.steering import SteerProgram
    from ppl.stdlib import constraints as C
    from ppl.stdlib.base import TokenAutomaton

    @dataclasses.dataclass(frozen=True, eq=False)
    class NoEOS(TokenAutomaton):
        """The compiled constraint with EOS never allowed."""

        def allowed(self, state):
            return super().allowed(state).at[self.eos_token_id].set(False)

    class SteerNoEOS(SteerProgram):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.automata = [NoEOS(**{f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
                             for x in self.automata]

    return SteerNoEOS(lm, PROMPT, constraints=[C.max_word_length(MAX_WORD)], max_tokens=t)

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---- environments and checkpoints (parent process) ----------------------------------------
def ensure_venv(name: str, packages: list[str], log: Path | None = None) -> Path:
    """A separate virtualenv under benchmarks/_work/venvs/NAME with torch pinned (built once)."""
    venv = VENVS / name
    py = venv / "bin" / "python"
    marker = venv / ".ppl-bench-ok"
    if marker.is_file():
        return py
    VENVS.mkdir(parents=True, exist_ok=True)
    cons = VENVS / "torch-constraints.txt"
    cons.write_text(f"torch=={TORCH_VERSION}\n")
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    print(f"[setup] creating {venv} (torch=={TORCH_VERSION}, then {' '.join(packages)})",
          file=sys.stderr)
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run(pip + ["-c", str(cons)] + packages, check=True)
    marker.write_text(" ".join(packages) + "\n")
    return py


def ensure_checkpoints(models) -> None:
    sys.path.insert(0, str(BENCH))
    from decode import ensure_checkpoint

    if "gpt2-small" in models:
        ensure_checkpoint()
    if "gpt2-4l" in models and not (MODELS["gpt2-4l"] / "model.safetensors").is_file():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

        small = ensure_checkpoint()
        tok = GPT2TokenizerFast.from_pretrained(str(small))
        assert len(tok) == 50257, len(tok)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4)).eval()
        out = MODELS["gpt2-4l"]
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    eigen = "false" if threads == 1 else "true"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={eigen}"
                        ).strip()
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = str(ROOT)
    return env


# ---- workers (each cell in its own process) -------------------------------------------------
def worker_ours(model: str, task: str, n: int, t: int, repeats: int, side: str) -> dict:
    import jax.numpy as jnp
    import numpy as np

    import ppl
    from ppl.inference import driver
    from ppl.inference.engine import prepare
    from ppl.inference.baselines import ancestral_sample
    from ppl.stdlib import constraints as C

    lm = ppl.models.load(str(MODELS[model]))

    not_eos = jnp.arange(lm.vocab_size) != lm.eos_token_id

    class Free(ppl.Program):
        def step(self, ctx, state):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(not_eos))
            return state

    times, run_only, compile_s, extra = [], [], None, {}
    if side == "plain":
        import jax
        import numpy as np

        from ppl.inference.baselines import _sampler

        toks, tm = ancestral_sample(lm, PROMPT, n, t, seed=0, exclude_eos=True)
        assert toks.shape == (n, t) and not (toks == lm.eos_token_id).any()
        compile_s = tm["compile"]
        # ancestral_sample lowers and compiles a fresh executable on every call, so each of its
        # timed runs would be the first run of a new executable; time the jitted sampler it
        # wraps instead, after one warm-up call, as ppl.infer's runs reuse their executable.
        ids = jax.numpy.asarray(lm.prompt_ids(PROMPT), jax.numpy.int32)
        fn = _sampler(lm, int(ids.shape[0]), n, t, True)
        jax.block_until_ready(fn(jax.random.key(0), lm.params, ids))
        for r in range(repeats):
            t0 = time.perf_counter()
            toks = np.asarray(jax.block_until_ready(fn(jax.random.key(r + 1), lm.params, ids)))
            times.append(time.perf_counter() - t0)
            run_only.append(times[-1])
            assert toks.shape == (n, t) and not (toks == lm.eos_token_id).any()
    else:
        if task == "words":
            prog = words_program(lm, t)
        else:
            prog = Free(lm, prompt=PROMPT, max_tokens=t)
        extra["estimate_bytes"] = driver.estimate_bytes(prepare(prog), n)
        resampled, dead = [], []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            res = ppl.infer(prog, method="smc", particles=n, seed=r, ess_threshold=0.5,
                            resampling="multinomial")
            wall = time.perf_counter() - t0
            # A particle whose text reaches a dead end of the automaton dies (weight -inf, see
            # stdlib/base.py) and stops there; the batched loop still runs all N rows for all T
            # steps. Every live particle must have exactly T tokens.
            alive = np.isfinite(np.asarray(res.log_weights))
            assert alive.any() and res.num_steps == t, (res.lengths, res.log_weights)
            assert (np.asarray(res.lengths)[alive] == t).all(), res.lengths
            if task == "words":
                assert all(C.max_word_length(MAX_WORD).check(s)
                           for s, a in zip(res.texts, alive) if a)
            if r == 0:
                compile_s = res.timings["compile"]
                continue
            times.append(wall)
            run_only.append(res.timings["run"])
            resampled.append(int(res.resampled.sum()))
            dead.append(int((~alive).sum()))
        extra["resampling_steps"] = resampled
        extra["dead_particles_at_end"] = dead
        extra["causes"] = {str(k): int(v) for k, v in zip(
            *np.unique(np.asarray(res.extras.get("causes", [])), return_counts=True))}
        extra["sample_text"] = res.texts[0][:200]
    return {"times": times, "run_only": run_only, "compile_s": compile_s,
            "peak_rss_mib": peak_rss_mib(), **extra}


def worker_llamppl(model: str, task: str, n: int, t: int, repeats: int, threads: int,
                   budget: float | None = None) -> dict:
    import asyncio
    import copy
    import string

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from llamppl import CachedCausalLM, LMContext, Model, smc_standard

    LLM = CachedCausalLM.from_pretrained(str(MODELS[model]), backend="hf")
    # One batched forward for all particles per step (the default batch is 20): LLaMPPL's
    # best case at every N here.
    LLM.model.batch_size = max(n, 1)
    eos = LLM.tokenizer.eos_token_id

    def make_masks(LLM):  # verbatim from LLaMPPL's examples/hard_constraints.py
        return {
            i: LLM.token_mask(
                j
                for (j, v) in enumerate(LLM.str_vocab)
                if j != LLM.tokenizer.eos_token_id
                and "\n" not in v
                and any(c.isalpha() or c in string.punctuation for c in v)
                and len(v.strip()) <= 5
                and (not v[0].isalpha() or i + len(v) <= 5)
            )
            for i in range(6)
        }

    if not hasattr(LLM, "token_mask"):  # 0.2.x has no helper: a mask is a set of ids
        LLM.token_mask = lambda ids: set(ids)
    masks = make_masks(LLM) if task == "words" else None
    not_eos = set(range(len(LLM.str_vocab))) - {eos}

    class ConstraintModel(Model):  # LLaMPPL's hard_constraints.py example (print removed)
        def __init__(self, LLM, prompt, max_tokens):
            super().__init__()
            self.context = LMContext(LLM, prompt)
            self.max_tokens = max_tokens
            self.masks = masks
            self.eos_token_id = LLM.tokenizer.eos_token_id

        async def start(self):
            mask = self.active_constraint_mask()
            await self.observe(self.context.mask_dist(mask), True)

        async def step(self):
            token = await self.sample(self.context.next_token())
            self.max_tokens -= 1
            PROGRESS[self.context.token_count] = time.perf_counter()
            if token == self.eos_token_id or self.max_tokens == 0:
                self.finish()
                return
            mask = self.active_constraint_mask()
            await self.observe(self.context.mask_dist(mask), True)

        def active_constraint_mask(self):
            string_so_far = str(self.context)
            words = string_so_far.split()
            last_word = words[-1] if len(words) > 0 else ""
            return self.masks[min(5, len(last_word))]

        def immutable_properties(self):
            return ["masks"]

    class FreeModel(Model):  # the LM, EOS excluded by an observed mask (same weight as ours)
        def __init__(self, LLM, prompt, max_tokens):
            super().__init__()
            self.context = LMContext(LLM, prompt)
            self.max_tokens = max_tokens
            self.not_eos = not_eos

        async def start(self):
            await self.observe(self.context.mask_dist(self.not_eos), True)

        async def step(self):
            await self.sample(self.context.next_token())
            self.max_tokens -= 1
            PROGRESS[self.context.token_count] = time.perf_counter()
            if self.max_tokens == 0:
                self.finish()
                return
            await self.observe(self.context.mask_dist(self.not_eos), True)

        def immutable_properties(self):
            return ["not_eos"]

    cls = ConstraintModel if task == "words" else FreeModel
    prompt_ids = LLM.tokenizer.encode(PROMPT)

    def run(seed, n_, t_, budget=None):
        np.random.seed(seed)
        torch.manual_seed(seed)
        LLM.clear_cache()
        LLM.cache_kv(prompt_ids)
        m = cls(LLM, PROMPT, t_)
        return asyncio.run(asyncio.wait_for(smc_standard(m, n_, 0.5), budget))

    PROGRESS = {}
    run(0, 2, 2)  # warm-up (torch kernels, the event loop); not timed
    times = []
    for r in range(repeats):
        PROGRESS.clear()
        t0 = time.perf_counter()
        try:
            parts = run(r + 1, n, t, budget)
        except (asyncio.TimeoutError, TimeoutError):
            # Did not finish within the budget: report how far it got (seconds to reach each
            # token count) so that the caller can state a measured lower bound.
            return {"times": [], "incomplete": True, "budget_s": budget,
                    "progress": {k: v - t0 for k, v in sorted(PROGRESS.items())},
                    "peak_rss_mib": peak_rss_mib(), "prompt_tokens": len(prompt_ids)}
        times.append(time.perf_counter() - t0)
        counts = {p.context.token_count for p in parts}
        assert counts == {t}, counts
    progress = {k: v - t0 for k, v in sorted(PROGRESS.items())}
    texts = [str(p.context) for p in parts]
    ok = None
    if task == "words":
        import re

        ok = sum(all(len(w) <= MAX_WORD for w in re.findall(r"[A-Za-z]+", s)) for s in texts)
    return {"times": times, "compile_s": None, "peak_rss_mib": peak_rss_mib(),
            "sample_text": texts[0][:200], "texts_all_words_ok": ok,
            "prompt_tokens": len(prompt_ids), "progress": progress}


def worker_generate(model: str, task: str, n: int, t: int, repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(MODELS[model]))
    lm = AutoModelForCausalLM.from_pretrained(str(MODELS[model]), dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(PROMPT, add_special_tokens=False)])
    eos = lm.config.eos_token_id

    @torch.inference_mode()
    def run(seed, n_, t_):
        torch.manual_seed(seed)
        return lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                           num_return_sequences=n_, min_new_tokens=t_, max_new_tokens=t_,
                           pad_token_id=eos)

    run(0, 2, 2)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = run(r + 1, n, t)
        times.append(time.perf_counter() - t0)
        assert tuple(out.shape) == (n, ids.shape[1] + t), out.shape
    return {"times": times, "compile_s": None, "peak_rss_mib": peak_rss_mib()}


# ---- parent ---------------------------------------------------------------------------------
def run_cell(side, model, task, n, t, repeats, threads, timeout, budget=None) -> dict:
    if side == "llamppl":
        py = ensure_venv("llamppl", [f"llamppl=={LLAMPPL_VERSION}"])
    else:
        py = Path(sys.executable)
    cmd = [str(py), str(Path(__file__).resolve()), "--worker", side, "--models", model,
           "--tasks", task, "--n", str(n), "--t", str(t), "--repeats", str(repeats),
           "--threads", str(threads)]
    if side == "llamppl" and budget:
        cmd += ["--llamppl-budget", str(budget)]
    t0 = time.perf_counter()
    load0 = loadavg()
    try:
        res = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True,
                             cwd=str(ROOT), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if res.returncode != 0:
        return {"error": res.stderr[-3000:]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    out.update(stamp(load0))
    return out


def loadavg() -> list[float]:
    """1-, 5- and 15-minute load averages (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def stamp(load_before: list[float]) -> dict:
    """When a cell was measured and the machine's load around it (other jobs share it)."""
    return {"measured_at": utc_now(), "loadavg_before": load_before, "loadavg_after": loadavg()}


def merge_cells(cells: dict, fresh: dict) -> None:
    """Merges this invocation's cells into the stored ones, keyed by side|model|task|N|T: a new
    measurement replaces the old one, except that a run that failed, or a LLaMPPL run stopped
    at its budget, never replaces a completed measurement of the same cell."""
    for k, v in fresh.items():
        if v.get("times") or k not in cells or not cells[k].get("times"):
            cells[k] = v


def record_run(meta: dict, command: str, start: str, load_before: list[float],
               keys) -> None:
    """Appends one invocation (command, start/end time, load averages before/after, the cells
    it wrote) to ``meta["runs"]``, which the docs section lists next to the table."""
    meta.setdefault("runs", []).append(
        {"command": command, "start": start, "end": utc_now(), "loadavg_before": load_before,
         "loadavg_after": loadavg(), "git_head": git_head(), "cells": sorted(keys)})


def git_head() -> str | None:
    """The checked-out commit when the run ended (the work tree is shared: it may also have had
    uncommitted edits, and each cell's process imports ppl from the tree as it was then)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT),
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def commands_block(data: dict) -> str:
    """Every command recorded (and those of earlier sessions whose cells are in the table),
    each with when it ran, the load averages (1/5/15 min) before and after it, and whether
    its cells are still in the table or were measured again by a later command."""
    cells = data["cells"]
    used = {c.get("command") for c in cells.values()} - {None, ""}
    runs = data.get("meta", {}).get("runs", [])
    lines = [c + "   # earlier session, before load was recorded per run: see the notes"
             for c in sorted(used - {r["command"] for r in runs})]
    for r in runs:
        fmt3 = lambda x: "/".join(f"{v:.2f}" for v in x)  # noqa: E731
        kept = [k for k in r.get("cells", []) if cells.get(k, {}).get("command") == r["command"]
                and r["start"] <= cells[k].get("measured_at", r["start"]) <= r["end"]]
        gone = "" if kept else "; all its cells measured again later"
        lines.append(f"{r['command']}   # {r['start'][:-7]}-{r['end'][11:-7]} UTC, load "
                     f"{fmt3(r['loadavg_before'])} before, {fmt3(r['loadavg_after'])} after"
                     + (f", ppl at {r['git_head']}" if r.get("git_head") else "") + gone)
    return "\n".join(lines)


def cell_key(side, model, task, n, t) -> str:
    return f"{side}|{model}|{task}|{n}|{t}"


def load_results() -> dict:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"cells": {}, "meta": {}}


def extrapolate(progress: dict, t: int) -> float | None:
    """Total seconds for ``t`` tokens from the seconds to reach each token count so far: the
    per-token step time is fitted as a + b k on the last half of the steps (LLaMPPL re-encodes
    every generated token at every step, so its step time grows linearly with k)."""
    import numpy as np

    ks = sorted(int(k) for k in progress)
    if len(ks) < 4:
        return None
    at = [progress[str(k)] if str(k) in progress else progress[k] for k in ks]
    d = np.diff(at)
    x = np.asarray(ks[1:], float)
    h = len(d) // 2
    b, a = np.polyfit(x[h:], d[h:], 1)
    rest = np.arange(ks[-1] + 1, t + 1, dtype=float)
    return float(at[-1] + np.sum(np.maximum(a + b * rest, d[-1])))


def summarize(cells: dict) -> list[dict]:
    """One row per (model, task, N, T) with every side's median wall time."""
    rows = {}
    for key, c in cells.items():
        side, model, task, n, t = key.split("|")
        if c.get("incomplete"):
            prog = c.get("progress", {})
            reached = max((int(k) for k in prog), default=0)
            rows.setdefault((model, task, int(n), int(t)), {})[side] = {
                "s": None, "lower_bound_s": c["budget_s"], "reached": reached,
                "extrapolated_s": extrapolate(prog, int(t)), "rss": c.get("peak_rss_mib"),
                "compile_s": None, "runs": 0}
            continue
        if "times" not in c or not c["times"]:
            continue
        row = rows.setdefault((model, task, int(n), int(t)), {})
        med = statistics.median(c["times"])
        row[side] = {"s": med, "tok_s": int(n) * int(t) / med, "rss": c.get("peak_rss_mib"),
                     "compile_s": c.get("compile_s"), "runs": len(c["times"])}
    order = {m: i for i, m in enumerate(MODELS)}
    return [{"model": k[0], "task": k[1], "n": k[2], "t": k[3], **v}
            for k, v in sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1] != "words",
                                                             kv[0][2], kv[0][3]))]


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    out = ["| model | task | N | T | ppl SMC (s) | compile (s) | LLaMPPL (s) | speed-up | "
           "ppl plain (s) | SMC / plain | generate (s) | ppl SMC tok/s | LLaMPPL tok/s | "
           "peak RSS ppl / LLaMPPL (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, l, p, g = (r.get(s) for s in ("ours", "llamppl", "plain", "generate"))
        sp = f"{l['s'] / o['s']:.1f}x" if o and l and l["s"] else "—"
        if l and l["s"] is None:  # stopped at its budget: a measured lower bound
            ex = l.get("extrapolated_s")
            sp = f">= {l['lower_bound_s'] / o['s']:.0f}x" if o else "—"
            if o and ex:
                sp += f" (~{ex / o['s']:.0f}x extrap.)"
            l = dict(l, s=None, tok_s=None)
            lcell = (f"> {l['lower_bound_s']:.0f} (stopped at {l['reached']}/{r['t']} tokens"
                     + (f"; ~{ex:.0f} extrap.)" if ex else ")"))
        else:
            lcell = fmt(l and l["s"], ".2f")
        rp = f"{o['s'] / p['s']:.2f}" if o and p else "—"
        out.append(
            f"| {r['model']} | {r['task']} | {r['n']} | {r['t']} | {fmt(o and o['s'], '.3f')} | "
            f"{fmt(o and o['compile_s'], '.1f')} | {lcell} | {sp} | "
            f"{fmt(p and p['s'], '.3f')} | {rp} | {fmt(g and g['s'], '.3f')} | "
            f"{fmt(o and o['tok_s'], '.0f')} | {fmt(l and l['tok_s'], '.1f')} | "
            f"{fmt(o and o['rss'], '.0f')} / {fmt(l and l['rss'], '.0f')} |")
    return "\n".join(out)


def replace_section(header: str, body: str) -> None:
    """Replaces the section starting at ``header`` (up to the next ``## ``) in docs/benchmarks.md."""
    text = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    if header in text:
        start = text.index(header)
        nxt = text.find("\n## ", start + len(header))
        text = text[:start] + body.rstrip("\n") + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def write_docs(data: dict, md: str) -> None:
    meta = data["meta"]
    cmds = commands_block(data)
    notes = data.get("notes", "")
    body = f"""{SECTION}

Same SMC-steering task on both sides (written by `benchmarks/vs_llamppl.py`, which says every
detail): prompt `{PROMPT!r}`, N particles each generating exactly T tokens (EOS excluded on
every side), task `words` = every word has at most {MAX_WORD} letters (LLaMPPL: its own
`hard_constraints.py` example model; ppl: `ppl.steer(lm, prompt,
constraints=[C.max_word_length({MAX_WORD})], max_tokens=T)` with EOS masked out) or `free` = no
constraint. SMC with multinomial resampling when ESS < 0.5 N on both sides (LLaMPPL
`smc_standard(model, N, 0.5)`, its HF backend with `LLM.model.batch_size = N`, i.e. one batched
forward per step; ppl `method="smc", ess_threshold=0.5, resampling="multinomial"`). Reference
rows: ppl's plain batched sampling (`ancestral_sample`'s jitted sampler, no program, no
weights, timed after a warm-up call like ppl's SMC) and
transformers' PyTorch `generate(do_sample=True, num_return_sequences=N, min_new_tokens=T)`.
Random weights for the GPT-2 shapes (GPT-2's real tokenizer), the trained embedded model for
`tiny`; float32; {meta.get('threads', 1)} thread(s) for every side (`torch.set_num_threads`;
`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`). Each cell
runs in its own process (LLaMPPL {LLAMPPL_VERSION} in its own virtualenv with torch
{TORCH_VERSION}); times are medians of wall time per run (ppl: the whole `ppl.infer` call with
the executable already compiled; its compile time is the separate column), peak RSS is the
child's `ru_maxrss`. All sides ran on the same shared 2-core machine ({meta.get('machine', '')}),
the sides of a cell one after the other in the same invocation; other jobs were running on it
(the load averages around each command are listed with it, and stored with every cell), so
expect noise of tens of percent on absolute times: read the ratios of adjacent runs. Every
timing is in `benchmarks/results/vs_llamppl.json` (last written {meta.get('date', '')}).

Speed-up = LLaMPPL / ppl SMC; SMC / plain = ppl SMC / ppl plain batched sampling of the same
N x T tokens (`free` rows: the same task without weights; `words` rows: plain sampling has no
constraint, so the ratio includes the constraint's cost).

Commands (each row's cells come from one of these; `--llamppl-budget B` stops a LLaMPPL run
after B seconds and records how far it got: such cells show "> B" and a lower bound on the
speed-up, plus an extrapolation of its remaining steps):

```
{cmds}
```

{md}

{notes}
"""
    replace_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gpt2-small"], choices=list(MODELS))
    ap.add_argument("--n", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--t", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    ap.add_argument("--llamppl-repeats", type=int, default=None,
                    help="timed runs per LLaMPPL process (default: --repeats)")
    ap.add_argument("--llamppl-budget", type=float, default=None,
                    help="seconds: stop a LLaMPPL run after this long and report how many "
                         "tokens it reached (a lower bound on its time)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of processes")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    ap.add_argument("--quick", action="store_true",
                    help="preset: --models tiny gpt2-4l --n 32 --t 32 --repeats 1")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--docs-only", action="store_true",
                    help="run nothing: print the table and rewrite the docs section from the JSON")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.n, args.t, args.repeats = ["tiny", "gpt2-4l"], [32], [32], 1

    if args.worker:
        m, task, n, t = args.models[0], args.tasks[0], args.n[0], args.t[0]
        if args.worker in ("ours", "plain"):
            out = worker_ours(m, task, n, t, args.repeats, args.worker)
        elif args.worker == "llamppl":
            out = worker_llamppl(m, task, n, t, args.repeats, args.threads, args.llamppl_budget)
        else:
            out = worker_generate(m, task, n, t, args.repeats, args.threads)
        print(json.dumps(out))
        return

    if args.docs_only:
        data = load_results()
        md = table(summarize(data["cells"]))
        print(md)
        write_docs(data, md)
        return

    ensure_checkpoints(args.models)
    command = "python benchmarks/vs_llamppl.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    start, load_start = utc_now(), loadavg()
    print(f"[start] {start}, load average {load_start}", file=sys.stderr, flush=True)
    data = load_results()
    fresh = {}
    for rnd in range(args.rounds):
        for model in args.models:
            for t in args.t:
                for n in args.n:
                    for task in args.tasks:
                        for side in args.sides:
                            if side in ("plain", "generate") and task != "free":
                                continue  # raw-decode references: the unconstrained task only
                            reps = args.llamppl_repeats if side == "llamppl" and args.llamppl_repeats else args.repeats
                            c = run_cell(side, model, task, n, t, reps, args.threads, args.timeout,
                                         args.llamppl_budget)
                            k = cell_key(side, model, task, n, t)
                            msg = (f"{statistics.median(c['times']):.3f}s" if c.get("times")
                                   else "incomplete: " + json.dumps(c.get("progress"))[-300:]
                                   if c.get("incomplete") else c.get("error", "")[-600:])
                            print(f"[round {rnd + 1}] {k}: {msg}", file=sys.stderr, flush=True)
                            if "error" in c:
                                fresh.setdefault(k, {"error": c["error"]})
                                continue
                            if c.get("incomplete"):
                                c["command"] = command.strip()
                                fresh.setdefault(k, c)
                                continue
                            prev = fresh.get(k)
                            if prev and "times" in prev:
                                prev["times"] += c["times"]
                                prev.setdefault("rounds", []).append(c)
                            else:
                                c["command"] = command.strip()
                                fresh[k] = c
    rows = summarize({k: v for k, v in fresh.items() if "times" in v or v.get("incomplete")})
    print(table(rows))
    print(f"[end] {utc_now()}, load average {loadavg()}", file=sys.stderr, flush=True)
    if args.no_write:
        return
    data = load_results()  # re-read: keep whatever another invocation wrote meanwhile
    merge_cells(data["cells"], fresh)
    data.setdefault("meta", {}).update(
        {"threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "prompt": PROMPT})
    record_run(data["meta"], command.strip(), start, load_start, fresh)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    md = table(summarize(data["cells"]))
    write_docs(data, md)


if __name__ == "__main__":
    main()
