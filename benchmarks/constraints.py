"""Constraint cost: table-build time and per-step overhead relative to the LM forward.

For each constraint and model: the time to compile it to a token automaton over the model's
vocabulary (host, first build; later builds are cached), its number of token-level states, and
the run time of SMC with the constraint against SMC without it on the same prompt, N and T
(compilation excluded; the difference is the mask lookup, state update, masked renormalisation
and the kept-mass weight, all on device). The Lark row adds the host-side parser through
``pure_callback``.

Usage::

    python benchmarks/constraints.py                     # tiny + GPT-2-small shape (50k vocab)
    python benchmarks/constraints.py --models tiny --no-write
"""

from __future__ import annotations

import argparse
import os

# Decode throughput here is the unrolled layer loop's, as published in docs/benchmarks.md
# (the default above 4 layers is the scanned loop: compile time independent of depth, some
# speed per step on the CPU; docs/performance.md). PPL_LAYER_LOOP=scan measures that one.
os.environ.setdefault("PPL_LAYER_LOOP", "unroll")
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import replace_section  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "constraints.json"
DOCS = ROOT / "docs" / "benchmarks.md"
PROMPT = "The king said unto them,"

ARITH = r"""
start: expr
?expr: expr "+" term | term
?term: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
%ignore " "
"""


def constraints():
    from ppl.stdlib import constraints as C

    return {
        "max_word_length(5)": lambda: C.max_word_length(5),
        "banned_words(3)": lambda: C.banned_words(["the", "and", "of"]),
        "must_contain(2)": lambda: C.must_contain(["king", "lord"]),
        "regex(date)": lambda: C.regex(r" ?[0-9]{4}-[0-9]{2}-[0-9]{2}"),
        "json_schema(small)": lambda: C.json_schema({
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                             "age": {"type": "integer"}},
            "required": ["name", "age"]}),
        "lark(arithmetic)": lambda: C.lark(ARITH),
    }


def load(name):
    import ppl

    if name == "gpt2-small-random":
        from decode import ensure_checkpoint

        return ppl.models.load(str(ensure_checkpoint()))
    return ppl.models.load(name)


def run_time(prog, n, repeats):
    import ppl

    ppl.infer(prog, method="smc", particles=n, seed=0)  # compile
    ts = []
    for r in range(repeats):
        try:
            res = ppl.infer(prog, method="smc", particles=n, seed=r + 1)
            ts.append(res.timings["run"] / max(res.num_steps, 1))
        except ppl.InferenceError:
            pass
    return statistics.median(ts) if ts else float("nan")


def measure(model, n, steps, repeats):
    import ppl

    lm = load(model)
    base = run_time(ppl.steer(lm, PROMPT, max_tokens=steps), n, repeats)
    rows = []
    for name, make in constraints().items():
        if name.startswith("lark") and lm.vocab_size > 8192:
            # With random weights the LM is near-uniform over 50k tokens, so rejection almost
            # never succeeds and the exact fallback checks every token on the host each step.
            print(f"skipping {name} on {model}: host parser over a near-uniform 50k vocabulary")
            continue
        c = make()
        t0 = time.perf_counter()
        states = None
        if hasattr(c, "compile"):
            a = c.compile(lm.vocab)
            states = a.num_states
        build = time.perf_counter() - t0
        step = run_time(ppl.steer(lm, PROMPT, constraints=[c], max_tokens=steps), n, repeats)
        rows.append({"model": model, "vocab": lm.vocab_size, "constraint": name, "states": states,
                     "build_s": build, "step_s": step, "base_step_s": base,
                     "overhead": step / base - 1.0, "N": n, "T": steps})
        print(rows[-1], flush=True)
    return rows


def table(rows):
    out = ["| model (V) | constraint | token states | build (s) | s/step with | s/step without | per-step overhead |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} ({r['vocab']}) | {r['constraint']} | {r['states'] or 'host'} | "
                   f"{r['build_s']:.3f} | {r['step_s'] * 1e3:.1f} ms | {r['base_step_s'] * 1e3:.1f} ms | "
                   f"{100 * r['overhead']:+.0f}% |")
    return "\n".join(out)


def write_docs(md, command, n, steps):
    header = "## Constraint cost"
    body = (f"{header}\n\nCommand: `{command}` ({time.strftime('%Y-%m-%d')}, shared 2-core machine). "
            f"SMC, N={n}, T={steps}, median per-step run time after compilation; build = first "
            f"compilation of the constraint to a token table (cached afterwards).\n\n{md}\n")
    replace_section(header, body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "gpt2-small-random"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = [r for m in args.models for r in measure(m, args.n, args.steps, args.repeats)]
    md = table(rows)
    print(md)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2))
        cmd = "python benchmarks/constraints.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_docs(md, cmd.strip(), args.n, args.steps)


if __name__ == "__main__":
    main()
