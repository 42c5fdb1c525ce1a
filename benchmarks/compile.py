"""Compile once, run many: compile time against depth, a data set of prompts, the CLI twice.

Three measurements, each in fresh processes (compile times depend on what a process has
already compiled):

* ``depth``: trace + compile time of ``ppl.infer`` (SMC, 8 particles, 16 tokens) on random
  Llama-architecture models of width 64 and 2, 4, 8, 16 and 30 layers (the embedded model's
  tokenizer and vocabulary), persistent cache off, with each layer loop (``scan`` and
  ``unroll``), and the run time after the compile.
* ``prompts``: 64 different prompts of 5 to 60 tokens, N = 16, T = 32, on the embedded model,
  three ways in three fresh processes: one ``ppl.infer_many`` call; 64 sequential
  ``ppl.infer`` calls (after the first, nothing compiles); and the old behaviour, every prompt
  compiled (emulated in the current code by clearing every in-process and persistent cache
  before each call, which is what happened when the prompt was a constant of the run).
* ``cli``: ``ppl run examples/short_words.py`` (progress bar on) several times in fresh
  processes sharing a fresh persistent cache: the first compiles, the others load.

Writes benchmarks/results/compile.json and the "Compile once" section of docs/benchmarks.md.

    python benchmarks/compile.py            # all three (~10 minutes on a quiet 2-core CPU)
    python benchmarks/compile.py depth      # one of them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "compile.json"
DEPTHS = (2, 4, 8, 16, 30)
LOOPS = ("scan", "unroll")
WORDS = ("the king said unto them and all the people of the land went up to the city "
         "of david where the lord had set his name for ever and ever amen and it came to "
         "pass in those days that there went out a decree from the house of the lord").split()


def _env(cache: str = "") -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PPL_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
    return env


def _child(code: str, *args, cache: str = "", timeout: int = 1800) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, env=_env(cache), timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


DEPTH_CHILD = r'''
import json, sys, time
import numpy as np
import ppl
from ppl.models.llama import LlamaLM
layers, loop = int(sys.argv[1]), sys.argv[2]
tiny = ppl.models.load("tiny")
v, d, inter, heads = tiny.vocab_size, 64, 128, 4
rng = np.random.default_rng(0)
r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
cfg = dict(vocab_size=v, num_hidden_layers=layers, hidden_size=d, intermediate_size=inter,
           num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
           rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tiny.eos_token_id,
           bos_token_id=tiny.bos_token_id, hidden_act="silu", rope_theta=10000.0)
state = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d)}
for i in range(layers):
    p = f"model.layers.{i}."
    state.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight": r(d, d),
                  p + "self_attn.v_proj.weight": r(d, d), p + "self_attn.o_proj.weight": r(d, d),
                  p + "mlp.gate_proj.weight": r(inter, d), p + "mlp.up_proj.weight": r(inter, d),
                  p + "mlp.down_proj.weight": r(d, inter)})
lm = LlamaLM(cfg, LlamaLM.convert_state_dict(state, cfg), tokenizer=tiny.tokenizer,
             vocab=tiny.vocab, name=f"random-{layers}", layer_loop=loop)
prog = ppl.steer(lm, "Once upon a time", max_tokens=16)
t0 = time.perf_counter()
res = ppl.infer(prog, method="smc", particles=8, seed=0)
tm = res.timings
first = time.perf_counter() - t0
runs = sorted(ppl.infer(prog, method="smc", particles=8, seed=s).timings["run"] for s in (1, 2, 3))
print(json.dumps({"layers": layers, "layer_loop": loop, "trace_s": tm["trace"],
                  "compile_s": tm["compile"], "first_call_s": first, "run_s": runs[1]}))
'''

PROMPTS_CHILD = r'''
import json, sys, time
import numpy as np
mode = sys.argv[1]
prompts = json.loads(sys.argv[2])
t_import = time.perf_counter()
import jax
import ppl
from ppl.inference import executables
from ppl.stdlib import constraints as C
lm = ppl.models.load("tiny")
short = C.max_word_length(5)
base = ppl.steer(lm, "x", constraints=[short], max_tokens=32)
compiles = 0
t0 = time.perf_counter()
if mode == "batched":
    res = ppl.infer_many(base, prompts=prompts, particles=16, seed=0)
    compiles = 1 if res[0].timings["compile"] + res[0].timings["cache_load"] > 0 else 0
    texts = [r.texts[0] for r in res]
else:
    texts = []
    for i, p in enumerate(prompts):
        if mode == "every_prompt_compiled":
            executables.clear()
            jax.clear_caches()
        r = ppl.infer(ppl.steer(lm, p, constraints=[short], max_tokens=32), particles=16, seed=i)
        compiles += r.timings["trace"] > 0
        texts.append(r.texts[0])
wall = time.perf_counter() - t0
print(json.dumps({"mode": mode, "problems": len(prompts), "wall_s": wall,
                  "compiled_runs": int(compiles), "distinct_first_texts": len(set(texts))}))
'''


def make_prompts(n: int = 64, lo: int = 5, hi: int = 60, seed: int = 0) -> list[str]:
    """``n`` prompts of ``lo..hi`` tokens on the embedded model (checked after encoding)."""
    import random

    import ppl

    lm = ppl.models.load("tiny")
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        target = rng.randint(lo, hi)
        words = []
        while len(lm.encode(" ".join(words))) < target:
            words.append(rng.choice(WORDS))
        text = " ".join(words).capitalize()
        if lo <= len(lm.encode(text)) <= hi:
            out.append(text)
    return out


def bench_depth() -> list[dict]:
    rows = []
    for layers in DEPTHS:
        for loop in LOOPS:
            row = _child(DEPTH_CHILD, layers, loop)
            print(row, flush=True)
            rows.append(row)
    return rows


def bench_prompts() -> list[dict]:
    prompts = make_prompts()
    rows = []
    for mode in ("batched", "sequential", "every_prompt_compiled"):
        row = _child(PROMPTS_CHILD, mode, json.dumps(prompts), timeout=3600)
        print(row, flush=True)
        rows.append(row)
    return rows


def bench_cli(repeats: int = 5) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        cmd = [str(Path(sys.executable).with_name("ppl")), "run", "examples/short_words.py"]
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=_env(cache), cwd=ROOT,
                                 timeout=900)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            line = [x for x in out.stdout.splitlines() if "compile" in x][-1]
            rows.append({"run": i, "wall_s": wall, "summary": line.strip()})
            print(rows[-1], flush=True)
    return rows


def write_docs(data: dict) -> None:
    sys.path.insert(0, str(HERE))
    from _docs import replace_section

    lines = ["## Compile once, run many", "",
             f"`python benchmarks/compile.py` ({data['machine']}; {data['date']}). Every "
             "figure comes from fresh processes; the machine may have been shared, so compare "
             "rows of one run, not across runs.", ""]
    if "depth" in data:
        d = data["depth"]
        lines += ["### Compile time against depth", "",
                  "Random Llama-architecture weights, width 64, the embedded model's vocabulary; "
                  "`ppl.infer`, SMC, 8 particles, 16 tokens, persistent cache off. `scan` is "
                  "`layer_loop=\"scan\"` (one `lax.scan` over stacked layers: the default "
                  "above 4 layers), `unroll` the Python loop XLA unrolls (the default at 4 "
                  "layers or fewer on the CPU). Run s: median of three runs after the compile.",
                  "", "| layers | loop | trace s | compile s | trace + compile vs 2 layers "
                  "(same loop) | run s |", "|---|---|---|---|---|---|"]
        for r in d:
            loop = r.get("layer_loop", "unroll")
            base = next(b for b in d if b["layers"] == 2 and b.get("layer_loop", "unroll") == loop)
            tot = r["trace_s"] + r["compile_s"]
            lines.append(f"| {r['layers']} | {loop} | {r['trace_s']:.2f} | {r['compile_s']:.2f} | "
                         f"{tot / (base['trace_s'] + base['compile_s']):.2f}x | {r['run_s']:.3f} |")
        lines.append("")
    if "prompts" in data:
        lines += ["### 64 prompts", "",
                  "64 different prompts of 5-60 tokens, `max_word_length(5)`, SMC, N = 16, "
                  "T = 32, the embedded model, persistent cache off; wall time of the whole loop "
                  "after loading the model.", "",
                  "| how | wall s | runs that compiled |", "|---|---|---|"]
        names = {"batched": "one `ppl.infer_many` call",
                 "sequential": "64 sequential `ppl.infer` calls",
                 "every_prompt_compiled": "old behaviour: every prompt compiled"}
        for r in data["prompts"]:
            lines.append(f"| {names[r['mode']]} | {r['wall_s']:.1f} | {r['compiled_runs']} |")
        old = next(r for r in data["prompts"] if r["mode"] == "every_prompt_compiled")["wall_s"]
        bat = next(r for r in data["prompts"] if r["mode"] == "batched")["wall_s"]
        lines += ["", f"The batched call is {old / bat:.1f}x faster than compiling every prompt.",
                  ""]
    if "cli" in data:
        walls = [r["wall_s"] for r in data["cli"][1:]]
        lines += ["### `ppl run examples/short_words.py` in fresh processes", "",
                  "One shared, initially empty persistent cache; progress bar on. The first run "
                  "compiles; the others load every executable from the cache.", "",
                  "| run | wall s | summary line |", "|---|---|---|"]
        for r in data["cli"]:
            lines.append(f"| {r['run']} | {r['wall_s']:.2f} | {r['summary']} |")
        lines += ["", f"Median wall time of the runs after the first: "
                      f"{statistics.median(walls):.2f} s.", ""]
    replace_section("## Compile once, run many", "\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["depth", "prompts", "cli"],
                    choices=["depth", "prompts", "cli"])
    args = ap.parse_args(argv)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.update(machine=f"{platform.machine()}, {os.cpu_count()} cores",
                date=time.strftime("%Y-%m-%d"))
    for part in args.parts:
        data[part] = {"depth": bench_depth, "prompts": bench_prompts, "cli": bench_cli}[part]()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1))
    write_docs(data)


if __name__ == "__main__":
    main()
