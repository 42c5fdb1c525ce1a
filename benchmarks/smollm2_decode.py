"""Batched decoding on a real model: SmolLM2-135M-Instruct in ppl (JAX) vs transformers (PyTorch).

The task, identical for both sides: prefill a 64-token prompt (real text) once, broadcast its
KV cache to N particles, then 32 decode steps, each sampling one token per particle from the
current next-token distribution and feeding it back. Reported: particle-tokens per second,
``N * 32 / seconds`` (prefill and broadcast included), and the first call's time (JAX:
compilation of the 30-layer model plus one run).

Weights: the same converted folder for both (``ppl models get smollm2-135m-instruct``: the
GGUF's dequantized float32 tensors), loaded by ``ppl.models.load`` and by
``AutoModelForCausalLM.from_pretrained``. ppl also runs with ``dtype=bfloat16`` (weights and KV
cache; log-probabilities stay float32) to document its CPU speed.

* JAX: prefill, broadcast and 32 x (sample + decode) in one ``jax.jit`` with a ``lax.scan``
  over steps; sampling by inverse CDF (as ``benchmarks/decode.py``).
* PyTorch: ``torch.inference_mode`` loop with ``past_key_values`` (a ``DynamicCache``
  expanded to N rows) and ``torch.multinomial``.

Each side runs in its own subprocess with the same threads (``--threads``: PyTorch's
``set_num_threads``/``OMP_NUM_THREADS`` with ``OMP_WAIT_POLICY=PASSIVE``; XLA's
``--xla_cpu_multi_thread_eigen=true``), sides alternate over ``--rounds``, each timing is
repeated ``--repeats`` times after the first call, and the median is reported.

Usage::

    python benchmarks/smollm2_decode.py                 # N in 1 8 16 32 64, writes results + docs
    python benchmarks/smollm2_decode.py --n 8 --repeats 1 --no-write   # a quick look
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "smollm2_decode.json"
NAME = "smollm2-135m-instruct"
PROMPT, STEPS = 64, 32
TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes "
        "Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from "
        "those used to make wine. Within fifty years printing shops had opened in more than two "
        "hundred cities across Europe, and the price of books fell so far that ordinary merchants, "
        "students and craftsmen could afford to own them for the first time.")


def prompt_ids(lm) -> list[int]:
    ids = lm.encode(TEXT)
    assert len(ids) >= PROMPT, len(ids)
    return ids[:PROMPT]


# ---- workers (each in its own process) -----------------------------------------------------
def worker_jax(ns: list[int], repeats: int, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp

    import ppl.models as M

    lm = M.load(NAME, dtype=dtype)
    prompt = jnp.asarray(prompt_ids(lm), jnp.int32)
    max_len = PROMPT + STEPS

    def sample(key, lp):
        cdf = jnp.cumsum(jnp.exp(lp), axis=-1)
        u = jax.random.uniform(key, (lp.shape[0], 1)) * cdf[:, -1:]
        return jnp.minimum(jnp.sum(cdf < u, axis=-1), lp.shape[-1] - 1).astype(jnp.int32)

    def generate(params, prompt, key, n):
        cache, lp0 = lm.prefill(params, prompt, max_len)
        cache = M.broadcast_cache(cache, n)
        lp = jnp.broadcast_to(lp0, (n, lp0.shape[-1]))

        def body(carry, t):
            cache, lp, key = carry
            key, sub = jax.random.split(key)
            tok = sample(sub, lp)
            cache, lp = lm.decode_step(params, cache, tok, jnp.full((n,), PROMPT + t, jnp.int32))
            return (cache, lp, key), tok

        _, toks = jax.lax.scan(body, (cache, lp, key), jnp.arange(STEPS, dtype=jnp.int32))
        return toks.T

    fn = jax.jit(generate, static_argnums=3)
    out = {}
    for n in ns:
        t0 = time.perf_counter()
        fn(lm.params, prompt, jax.random.key(0), n).block_until_ready()
        first = time.perf_counter() - t0
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            toks = fn(lm.params, prompt, jax.random.key(r + 1), n)
            toks.block_until_ready()
            times.append(time.perf_counter() - t0)
        assert toks.shape == (n, STEPS)
        out[n] = {"times": times, "first_call_s": first}
    return out


def worker_torch(ns: list[int], repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import ppl.models as M

    torch.set_num_threads(threads)
    lm = M.load(NAME)  # the folder and the prompt's token ids (the tokenizer is shared)
    model = AutoModelForCausalLM.from_pretrained(lm.path, dtype=torch.float32).eval()
    prompt = torch.tensor([prompt_ids(lm)])
    del lm

    @torch.inference_mode()
    def generate(n, seed):
        g = torch.Generator().manual_seed(seed)
        out = model(prompt, use_cache=True)
        past = out.past_key_values
        past.batch_repeat_interleave(n)
        logits = out.logits[:, -1].expand(n, -1)
        toks = []
        for _ in range(STEPS):
            tok = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
            toks.append(tok)
            out = model(tok, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        return torch.cat(toks, 1)

    out = {}
    for n in ns:
        t0 = time.perf_counter()
        generate(n, 0)
        first = time.perf_counter() - t0
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            toks = generate(n, r + 1)
            times.append(time.perf_counter() - t0)
        assert tuple(toks.shape) == (n, STEPS)
        out[n] = {"times": times, "first_call_s": first}
    return out


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true").strip()
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/decode.py
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PPL_CACHE_DIR"] = ""  # time compilation, not the persistent cache
    return env


def run_worker(kind: str, ns: list[int], repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--repeats", str(repeats),
           "--threads", str(threads), "--n", *map(str, ns)]
    res = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{res.stderr[-4000:]}")
    return {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


# ---- report ----------------------------------------------------------------------------------
SIDES = {"jax": "ppl JAX float32", "jax_bf16": "ppl JAX bfloat16", "torch": "PyTorch float32"}


def table(rows: list[dict], sides: list[str]) -> str:
    head = "| N | " + " | ".join(f"{SIDES[s]} (particle-tok/s)" for s in sides)
    head += " | JAX f32 / PyTorch |" if {"jax", "torch"} <= set(sides) else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r[s + '_tok_s']:.0f}" for s in sides]
        ratio = [f"{r['torch_s'] / r['jax_s']:.2f}x"] if {"jax", "torch"} <= set(sides) else []
        lines.append(f"| {r['n']} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(lines)


def first_call_table(first: dict, rows: list[dict], sides: list[str]) -> str:
    lines = ["| N | " + " | ".join(f"{SIDES[s]}: first call, s (compile ≈ first - run)" for s in sides) + " |",
             "|" + "---|" * (len(sides) + 1)]
    for r in rows:
        n = r["n"]
        lines.append(f"| {n} | " + " | ".join(
            f"{first[s][n]:.1f} ({max(first[s][n] - r[s + '_s'], 0):.1f})" for s in sides) + " |")
    return "\n".join(lines)


def write_docs(md: str, md_first: str, command: str, meta: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _docs import replace_section

    body = (
        "## Real model: SmolLM2-135M decoding\n\n"
        "Batched decoding throughput on a real checkpoint, SmolLM2-135M-Instruct (Llama "
        "architecture, 30 layers, 576 wide, vocab 49152; the GGUF's weights dequantized to "
        "float32, `ppl models get smollm2-135m-instruct`), ppl's JAX model against "
        "transformers' PyTorch `LlamaForCausalLM` loaded from the same folder. Task: prefill a "
        "64-token prompt (real text) once, broadcast the KV cache to N particles, then 32 steps "
        "of (sample one token per particle, decode). JAX: one `jax.jit` with `lax.scan`; "
        "PyTorch: a `torch.inference_mode` loop with `past_key_values` and `torch.multinomial`. "
        f"Threads: {meta['threads']} for both. Median of {meta['samples']} timed runs per cell "
        "after a first call, sides in separate processes. Particle-tokens/s = N x 32 / wall "
        "time (prefill included). ppl's bfloat16 column is `ppl.models.load(name, "
        "dtype=\"bfloat16\")` (weights and KV cache; log-probabilities float32).\n\n"
        f"Command:\n\n```\n{command}\n```\n\n"
        f"Machine: {meta['machine']}, CPU; jax {meta['jax']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}; {meta['date']}. The machine is shared (1-minute "
        f"load average {meta['load_average_1min'][0]} before, {meta['load_average_1min'][1]} "
        "after the run); every timing is in `benchmarks/results/smollm2_decode.json`.\n\n"
        + (f"**Measured under heavy load** (more runnable processes than the {os.cpu_count()} cores): "
           "single timings varied by up to 2x between rounds, so read the ratios as indicative; "
           "PyTorch's OpenMP threads lose more than XLA's under contention (see the Decoding "
           "section), which flatters JAX.\n\n"
           if max(meta["load_average_1min"]) > (os.cpu_count() or 1) else "")
        + f"{md}\n\n"
        "First call (JAX: tracing and XLA compilation of the unrolled 30-layer prefill and "
        "decode step, plus one run; PyTorch: one run with its warm-up):\n\n"
        f"{md_first}\n"
    )
    replace_section("## Real model: SmolLM2-135M decoding", body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per worker and N")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the sides")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker in ("jax", "jax_bf16"):
        print(json.dumps(worker_jax(args.n, args.repeats, "bfloat16" if args.worker == "jax_bf16" else "float32")))
        return
    if args.worker == "torch":
        print(json.dumps(worker_torch(args.n, args.repeats, args.threads)))
        return

    from ppl.models import registry

    if registry.find(NAME) == (None, None):
        raise SystemExit(f"{NAME} is not on this machine: run `ppl models get {NAME}` first.")
    registry.resolve_named(NAME)  # convert once, outside the timings
    load_before = os.getloadavg()[0]
    times = {s: {n: [] for n in args.n} for s in args.sides}
    first = {s: {} for s in args.sides}
    for rnd in range(args.rounds):
        for side in args.sides:
            res = run_worker(side, args.n, args.repeats, args.threads)
            for n, v in res.items():
                times[side][n].extend(v["times"])
                first[side].setdefault(n, v["first_call_s"])
            print(f"round {rnd + 1}/{args.rounds} {side}: "
                  + ", ".join(f"N={n} {statistics.median(v['times']):.2f}s" for n, v in res.items()),
                  file=sys.stderr)
    rows = []
    for n in args.n:
        row = {"n": n}
        for s in args.sides:
            t = statistics.median(times[s][n])
            row[s + "_s"], row[s + "_tok_s"] = t, n * STEPS / t
        rows.append(row)
    md, md_first = table(rows, args.sides), first_call_table(first, rows, args.sides)
    print(md + "\n\n" + md_first)
    if args.no_write:
        return
    import jax
    import torch
    import transformers

    meta = {
        "threads": args.threads, "samples": args.repeats * args.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    command = ("python benchmarks/smollm2_decode.py " + " ".join(
        argv if argv is not None else sys.argv[1:])).strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "task": {"prompt_tokens": PROMPT, "decode_steps": STEPS, "model": NAME,
                 "weights": "real (GGUF Q4_1 dequantized to float32)"},
        "meta": meta, "command": command, "rows": rows,
        "times_s": {k: {str(n): v for n, v in d.items()} for k, d in times.items()},
        "first_call_s": {k: {str(n): v for n, v in d.items()} for k, d in first.items()},
    }, indent=2) + "\n")
    write_docs(md, md_first, command, meta)


if __name__ == "__main__":
    main()
