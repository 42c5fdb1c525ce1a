"""SMC's cost over plain batched sampling of the same N x T tokens, on the same model.

Both sides generate ``N`` sequences of exactly ``T`` tokens (EOS excluded) after the same
prompt, prefilled once, in one ``jax.jit`` each:

* plain: ``ppl.inference.baselines.ancestral_sample`` — prefill, then ``lax.scan`` of
  (sample, decode); no weights, no program.
* smc: ``ppl.infer`` on a program whose proposal is the LM without EOS (so every particle has
  a non-trivial weight ``log(1 - p(EOS))``), ``ess_threshold=1.0`` (resampling, and the KV-cache
  gather that comes with it, at every step where the weights are not all equal), the program
  step vmapped over particles, ancestry/ESS/history recording, the while loop.
* is: the same program without resampling.

Reported: median run time over ``--repeats`` (compilation excluded, reported separately) and
the overhead ``smc / plain - 1``. Usage::

    python benchmarks/smc_overhead.py                 # tiny + GPT-2-small shape, N=32, T=32 and 128
    python benchmarks/smc_overhead.py --models tiny --repeats 3 --no-write
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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import replace_section  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "smc_overhead.json"
DOCS = ROOT / "docs" / "benchmarks.md"
PROMPT = "The king said unto them, and the people"


def load_model(name: str):
    import ppl

    if name == "gpt2-small-random":
        from decode import ensure_checkpoint

        return ppl.models.load(str(ensure_checkpoint()))
    return ppl.models.load(name)


def no_eos_program(lm, steps: int):
    import jax.numpy as jnp

    import ppl

    not_eos = jnp.arange(lm.vocab_size) != lm.eos_token_id

    class NoEOS(ppl.Program):
        def step(self, ctx, state):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(not_eos))
            return state

    return NoEOS(lm, prompt=PROMPT, max_tokens=steps)


def measure(model: str, n: int, steps: int, repeats: int) -> dict:
    import ppl
    from ppl.inference.baselines import ancestral_sample

    lm = load_model(model)
    prog = no_eos_program(lm, steps)
    plain_t, smc_t, is_t = [], [], []
    compile_s = {}
    for r in range(repeats + 1):  # round 0 compiles (and warms up)
        toks, tm = ancestral_sample(lm, PROMPT, n, steps, seed=r)
        assert toks.shape == (n, steps)
        res_s = ppl.infer(prog, method="smc", particles=n, seed=r, ess_threshold=1.0)
        res_i = ppl.infer(prog, method="is", particles=n, seed=r)
        assert (res_s.lengths == steps).all() and res_s.num_steps == steps
        if r == 0:
            compile_s = {"plain": tm["compile"], "smc": res_s.timings["compile"], "is": res_i.timings["compile"]}
            continue
        plain_t.append(tm["run"])
        smc_t.append(res_s.timings["run"])
        is_t.append(res_i.timings["run"])
        resampled = int(res_s.resampled.sum())
    plain, smc, imp = (statistics.median(x) for x in (plain_t, smc_t, is_t))
    return {
        "model": model, "N": n, "T": steps, "plain_s": plain, "smc_s": smc, "is_s": imp,
        "smc_overhead": smc / plain - 1.0, "is_overhead": imp / plain - 1.0,
        "resampling_steps": resampled, "compile_s": compile_s,
        "particle_tokens_per_s": {"plain": n * steps / plain, "smc": n * steps / smc},
    }


def table(rows) -> str:
    out = ["| model | N | T | plain (s) | IS (s) | SMC, resample every step (s) | SMC overhead | steps resampled |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['N']} | {r['T']} | {r['plain_s']:.3f} | {r['is_s']:.3f} | "
                   f"{r['smc_s']:.3f} | {100 * r['smc_overhead']:+.1f}% | {r['resampling_steps']}/{r['T']} |")
    return "\n".join(out)


READING = """
Reading (2026-11-22 04:26-04:30 UTC, 1-minute load 1.5-1.7 with this benchmark running; the
three sides alternate in one process, so this is the controlled measurement of SMC's cost):
SMC is within 1.1x of plain sampling on the GPT-2-small shape (-0.3% at T=128, -4.9% at T=32:
noise) and +10-11% on the tiny model. **The "within 1.1x" goal is met on GPT-2 small**, and
on the tiny model at the limit.

What changed: resampling used to gather the whole KV cache at every resampling (12 layers x 2
x 32 particles x 12 heads x ~137 positions x 64 x 4 bytes, ~0.3 GB written per resampling)
although most particles keep their own row. Now ancestors are reordered so that every survivor
keeps its slot (`resampling.stable_ancestors`) and a loop copies rows only into the slots of
particles with no offspring, in place (`engine.copy_rows_in_place`). A/B on the same machine
minutes apart (04:30-04:35 UTC, load 1.0-1.8), the same command with `--no-write` at the
previous commit (e4c3389): plain / IS / SMC = 13.224 / 13.910 / 15.949 s, **SMC +20.6%**, at
GPT-2 small T=128 (T=32: +10.4%); tiny +28.6% (T=32) and +22.6% (T=128). So the in-place copy
took the GPT-2-small T=128 overhead from +21% to -0.3% and halved it on the tiny model. The
remaining tiny-model overhead is the fixed per-step work (vmapped program step, ESS,
history) next to an LM step of only ~6 ms. XLA's temporaries are unchanged (tiny, N=64:
1.28x the KV cache, as before). The SMC / plain pairs of `benchmarks/vs_llamppl.py` run in
separate processes on a busy machine and spread from 0.62 to 1.58 on one cell, so they decide
nothing about this goal.
"""


def write_docs(md: str, command: str) -> None:
    header = "## SMC overhead over plain batched sampling"
    body = (f"{header}\n\nCommand: `{command}` ({platform.processor() or platform.machine()}, "
            f"{time.strftime('%Y-%m-%d')}). Median run time after compilation; overhead = SMC / plain - 1.\n\n{md}\n"
            f"{READING}\n")
    replace_section(header, body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "gpt2-small-random"])
    ap.add_argument("--n", type=int, nargs="+", default=[32])
    ap.add_argument("--steps", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--docs-only", action="store_true", help="rewrite the docs section from the JSON")
    args = ap.parse_args(argv)
    if args.docs_only:
        data = json.loads(RESULTS.read_text())
        write_docs(table(data["rows"]), data["command"])
        return
    rows = [measure(m, n, t, args.repeats) for m in args.models for n in args.n for t in args.steps]
    md = table(rows)
    print(md)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        command = ("python benchmarks/smc_overhead.py "
                   + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        RESULTS.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                       "rows": rows}, indent=2))
        write_docs(md, command)


if __name__ == "__main__":
    main()
