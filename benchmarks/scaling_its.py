"""Inference-time scaling: final-answer accuracy against particle budget, five methods.

Task: ``examples/process_reward_steps.py`` (add numbers writing the running totals; exact
checker ``correct``), on the embedded model (``tiny``, the example's prompt) or on a real
checkpoint (``--model``). ``--shots K`` asks the problem as a chat (the checkpoint's template)
with ``K`` worked problems of the same family before it, so that an instruct model knows the
answer format; the reply then has no leading space, and the pattern drops it. Other problems
of the family: ``--addends``.
Methods at ``N`` particles (each run: one answer, drawn ``∝`` the final weights, so the
accuracy of a run is its posterior mass on correct answers; best-of-N picks the sample with
the best PRM score instead):

* ``best-of-N``: ``N`` samples of the format-constrained LM (``method="is"`` on the program
  without the PRM), the one with the fewest wrong steps (first on ties);
* ``beam``: ``smc_steer`` (``num_beams=2``) on the PRM program (per token);
* ``IS``: importance sampling on the PRM program;
* ``SMC/unit``: SMC resampling only after completed steps (``steer(unit=...)``), the PRM's
  score of the solution so far as likelihood;
* ``annealed SMC``: the same with ``anneal="entropy"``.

Writes ``benchmarks/results/scaling_its.json``, ``docs/img/scaling_its.png`` and the
"Inference-time scaling" section of docs/benchmarks.md. Usage::

    python benchmarks/scaling_its.py                      # tiny, N = 1 .. 64, 6 seeds
    python benchmarks/scaling_its.py --n 1 4 16 --seeds 2 --no-write
    python benchmarks/scaling_its.py --model smollm2-135m-instruct --addends 2 1 1 --shots 6 \
        --n 1 2 4 8 16 --seeds 6 --time-budget 1800

Results are kept per model in the JSON (a run replaces its model's entry only), and the docs
section shows one subsection per model, real checkpoints first; the plot is the first one's.
Cells are run budget-major (every method at ``N`` before any at ``2N``) and the JSON is
rewritten after each cell, so a run stopped by ``--time-budget`` (or killed) publishes the
cells it finished and lists the ones it did not (``--docs-only`` renders what is there).
A seed whose inference raises [ppl.InferenceError][ppl.InferenceError] counts as a wrong
answer and is counted in the cell's ``failures``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import ppl

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scaling_its.json"
PLOT = ROOT / "docs" / "img" / "scaling_its.png"
HEADER = "## Inference-time scaling"


def _task():
    spec = importlib.util.spec_from_file_location("_prs", ROOT / "examples" / "process_reward_steps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mass(res, correct) -> float:
    return float(sum(w for t, w in zip(res.texts, res.weights) if correct(t)))


# Worked problems for --shots (each row's first len(addends) numbers; one equal to the asked
# problem is skipped).
EXAMPLES = ((2, 3, 1, 4, 2, 1), (4, 1, 5, 2, 3, 1), (1, 6, 2, 3, 1, 2), (5, 2, 3, 1, 4, 2),
            (2, 2, 4, 1, 3, 2), (6, 1, 1, 2, 2, 3), (3, 3, 2, 1, 1, 4), (1, 4, 4, 2, 1, 3))


def _question(addends) -> str:
    return "Add " + " + ".join(map(str, addends)) + ", writing each running total."


def _answer(addends) -> str:
    return ", ".join(str(sum(addends[: k + 1])) for k in range(len(addends))) + "."


def chat_messages(addends, shots: int) -> list[dict]:
    """The problem as a chat, after ``shots`` worked problems of the same length."""
    if shots > len(EXAMPLES) or len(addends) > len(EXAMPLES[0]):
        raise ValueError(f"--shots: at most {len(EXAMPLES)} worked problems of at most "
                         f"{len(EXAMPLES[0])} addends; got shots={shots}, {len(addends)} addends")
    msgs = [{"role": "system", "content": "You are a careful calculator. Reply with the running "
             "totals only."}]
    exs = [row[: len(addends)] for row in EXAMPLES if row[: len(addends)] != tuple(addends)]
    for ex in exs[:shots]:
        msgs += [{"role": "user", "content": _question(ex)},
                 {"role": "assistant", "content": _answer(ex)}]
    return msgs + [{"role": "user", "content": _question(addends)}]


def _setup(model: str, addends, shots):
    """The task module (with its problem set) and the three programs."""
    task = _task()
    if addends:  # another problem of the same family (the example reads these at call time)
        task.ADDENDS = tuple(addends)
        task.PROMPT = "Add " + " + ".join(map(str, addends)) + ", writing each running total:"
    space = " " if shots is None else ""  # a chat reply starts the line: no leading space
    task.PATTERN = space + r"\d{1,2}(, \d{1,2}){%d}\." % (len(task.ADDENDS) - 1)
    messages = None if shots is None else chat_messages(task.ADDENDS, shots)
    lm = ppl.models.load(model)
    src = {"prompt": task.PROMPT} if messages is None else {"messages": messages}
    prm_prog = task.make_program(lm, messages=messages)
    per_token = ppl.steer(lm, **src, constraints=prm_prog.automata, max_tokens=16,
                          potentials=[lambda t: -task.LAMBDA * task.wrong_steps(t)])
    plain = ppl.steer(lm, **src, constraints=prm_prog.automata, max_tokens=16)
    return task, messages, prm_prog, per_token, plain


def _base_rate(task, plain, samples: int, seeds: int = 4) -> dict | None:
    """The model alone: how often one format-constrained sample is right (the expected N=1
    accuracy of best-of-N and IS, ``sample_rate``, pooled over ``seeds`` runs of
    ``samples // seeds`` particles, seeds 10000..; ``hits`` per run shows the spread), and the
    format-conditioned LM's probability of the right answer (``posterior_mass``, each run's
    self-normalised estimate, averaged)."""
    if not samples:
        return None
    per = max(1, samples // seeds)
    hits, masses = [], []
    for k in range(seeds):
        res = ppl.infer(plain, method="is", particles=per, seed=10_000 + k)
        hits.append(int(sum(task.correct(t) for t in res.texts)))
        masses.append(_mass(res, task.correct))
    total = per * seeds
    p = sum(hits) / total
    return {"samples": total, "runs": seeds, "hits": hits, "sample_rate": p,
            "sample_rate_stderr": float(np.sqrt(p * (1 - p) / total)),
            "posterior_mass": float(np.mean(masses))}


def measure(model: str, ns, seeds: int, addends=None, shots=None, time_budget=None,
            on_cell=None, base_samples: int = 256) -> dict:
    task, messages, prm_prog, per_token, plain = _setup(model, addends, shots)
    methods = {
        "best-of-N": lambda n, s: _best_of(task, ppl.infer(plain, method="is", particles=n, seed=s)),
        "beam": lambda n, s: _mass(ppl.infer(per_token, method="smc_steer", particles=n, seed=s,
                                             num_beams=2), task.correct),
        "IS": lambda n, s: _mass(ppl.infer(prm_prog, method="is", particles=n, seed=s), task.correct),
        "SMC/unit": lambda n, s: _mass(ppl.infer(prm_prog, method="smc", particles=n, seed=s,
                                                 ess_threshold=0.5), task.correct),
        "annealed SMC": lambda n, s: _mass(ppl.infer(prm_prog, method="smc", particles=n, seed=s,
                                                     ess_threshold=0.5, anneal="entropy"),
                                           task.correct),
    }
    prompt = task.PROMPT if messages is None else (
        f"chat ({shots} worked problems, then the question: {_question(task.ADDENDS)!r})")
    data = {"model": model,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (2 shared cores, loaded)",
            "task": f"process_reward_steps (running totals of {'+'.join(map(str, task.ADDENDS))})",
            "prompt": prompt, "answer": _answer(task.ADDENDS), "pattern": task.PATTERN,
            "methods": list(methods), "ns": list(ns), "seeds": seeds,
            "load_before": os.getloadavg()[0], "rows": [], "not_run": []}
    t_start = time.perf_counter()
    data["base_rate"] = _base_rate(task, plain, base_samples)
    print("base rate", data["base_rate"], flush=True)
    for n in ns:  # budget-major: a stopped run still has every method's small budgets
        for name, fn in methods.items():
            if time_budget is not None and time.perf_counter() - t_start > time_budget:
                data["not_run"].append({"method": name, "particles": n})
                continue
            t0 = time.perf_counter()
            accs, failures = [], 0
            for s in range(seeds):
                try:
                    accs.append(fn(n, s))
                except ppl.InferenceError:
                    accs.append(0.0)
                    failures += 1
            data["rows"].append({
                "method": name, "particles": n, "accuracy": float(np.mean(accs)),
                "stderr": float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else None,
                "seeds": seeds, "failures": failures, "seconds": time.perf_counter() - t0})
            print(data["rows"][-1], flush=True)
            if on_cell is not None:
                on_cell(data)
    data["load_after"] = os.getloadavg()[0]
    data["seconds"] = time.perf_counter() - t_start
    return data


def _best_of(task, res) -> float:
    scores = [-task.wrong_steps(t) for t in res.texts]
    return float(task.correct(res.texts[int(np.argmax(scores))]))


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = list(dict.fromkeys(r["method"] for r in data["rows"]))
    for k, name in enumerate(names):
        rs = [r for r in data["rows"] if r["method"] == name]
        shift = 2 ** (0.04 * (k - (len(names) - 1) / 2))  # best-of-N and IS overlap otherwise
        ax.errorbar([r["particles"] * shift for r in rs], [r["accuracy"] for r in rs],
                    yerr=[r["stderr"] or 0 for r in rs], marker="o", capsize=2, label=name,
                    linestyle="--" if name == "best-of-N" else "-")
    if data.get("base_rate"):
        p = data["base_rate"]["sample_rate"]
        ns = sorted({r["particles"] for r in data["rows"]})
        ax.plot(ns, [1 - (1 - p) ** n for n in ns], "k:", label=f"1-(1-p)^N, p={p:.3f} (model alone)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("particles (budget)")
    ax.set_ylabel("final-answer accuracy")
    ax.set_title(f"{data['task']}\n{data['model']}, {data.get('seeds', '?')} seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def _runs() -> dict:
    """The stored runs by model (an older single-run file counts as one run)."""
    if not RESULTS.exists():
        return {}
    stored = json.loads(RESULTS.read_text())
    return stored["runs"] if "runs" in stored else {stored["model"]: stored}


def _ordered(runs: dict) -> list[dict]:
    """Real checkpoints first (the embedded model's table is the negative result)."""
    return sorted(runs.values(), key=lambda d: d["model"] == "tiny")


def _table(data: dict) -> list[str]:
    ns = sorted({r["particles"] for r in data["rows"]} | {r["particles"] for r in data.get("not_run", [])})
    names = list(data.get("methods") or dict.fromkeys(r["method"] for r in data["rows"]))
    acc = {(r["method"], r["particles"]): r for r in data["rows"]}
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for name in names:
        cells = []
        for n in ns:
            r = acc.get((name, n))
            cell = "not run" if r is None else f"{r['accuracy']:.2f} ± {r['stderr'] or 0:.2f}"
            if r is not None and r.get("failures"):
                cell += f" ({r['failures']} failed)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _section(data: dict, figure: bool) -> list[str]:
    seeds = data.get("seeds") or data["rows"][0]["seeds"]
    lines = [f"### {data['model']}", "",
             f"Final-answer accuracy against particle budget on {data['task']} "
             f"(`examples/process_reward_steps.py`, exact checker), model `{data['model']}`, "
             f"measured on {data['machine']}; mean over {seeds} seeds (± standard error)."]
    if "prompt" in data:
        lines[-1] += (f" Prompt: {data['prompt']}; answer format `{data['pattern']}` (regex "
                      f"constraint), the correct answer `{data['answer']}`.")
    if "load_before" in data:
        lines[-1] += (f" 1-minute load average {data['load_before']:.1f} before the run"
                      + (f", {data['load_after']:.1f} after; {data['seconds'] / 60:.0f} min in all."
                         if "load_after" in data else "."))
    lines += ["", "Command: `" + " ".join(["python benchmarks/scaling_its.py",
                                           data.get("args", "")]).strip() + "`", ""]
    if figure:
        lines += ["![accuracy vs particles](img/scaling_its.png)", ""]
    lines += _table(data)
    if data.get("base_rate"):
        b = data["base_rate"]
        runs = (f"{b['runs']} runs of {b['samples'] // b['runs']}, right per run: "
                f"{', '.join(map(str, b['hits']))}" if "runs" in b else "one run")
        lines += ["", f"The model alone ({b['samples']} format-constrained samples, {runs}): "
                  f"{b['sample_rate']:.3f} ± {b['sample_rate_stderr']:.3f} of single samples are "
                  "right (the expected N=1 accuracy of best-of-N and IS, more precise than the "
                  f"N=1 column); the format-conditioned model puts {b['posterior_mass']:.3f} of "
                  "its mass on the right answer."
                  + (f" Measured by `python benchmarks/scaling_its.py {data['base_rate_args']}`."
                     if data.get("base_rate_args") else "")]
    if data.get("not_run"):
        lines += ["", f"{len(data['not_run'])} cells were not run (the run's `--time-budget` "
                  "was spent first): marked `not run` above."]
    if data.get("reading"):
        lines += ["", data["reading"]]
    elif all(r["accuracy"] == 0 for r in data["rows"]):
        lines += ["", "No method produced a correct chain in any seed at these budgets: the "
                  "embedded model must propose the right two-digit number token at every step, "
                  "and a step-level scorer can only choose among the numbers some particle "
                  "proposed. `examples/reasoning_steps.py` adds a twist *inside* each number "
                  "(a per-digit prefix check) and does reach correct chains at 64 particles; a "
                  "per-unit PRM cannot look inside a unit. So this table is a negative result for "
                  "the embedded model."]
    return lines


def docs(runs: dict) -> None:
    try:  # run as a script (benchmarks/ on the path) or imported as benchmarks.scaling_its
        from _docs import replace_section
    except ImportError:
        from benchmarks._docs import replace_section

    lines = [HEADER, "",
             "Final-answer accuracy against particle budget, five methods on the same step-level "
             "scorer. A particle run's accuracy is its posterior mass on correct answers (the "
             "chance that an answer drawn from it is right); best-of-N picks its best-scored "
             "sample. The PRM is an exact step verifier (`-λ · #wrong steps`, λ = 8), so this "
             "measures how well each method uses a step-level scorer on top of the model's own "
             "proposals: a method can only keep a right step that some particle proposed.", ""]
    for k, data in enumerate(_ordered(runs)):
        lines += _section(data, figure=k == 0) + [""]
    replace_section(HEADER, "\n".join(lines).rstrip() + "\n\n")



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--addends", type=int, nargs="+", default=None,
                    help="the numbers to add (default: the example's 7 5 9 3)")
    ap.add_argument("--shots", type=int, default=None,
                    help="ask as a chat with this many worked problems first (instruct models)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; cells not started by then are listed as not run")
    ap.add_argument("--reading", default=None,
                    help="a file whose text is the docs' reading of this model's curve "
                         "(kept from the stored run when omitted with --docs-only)")
    ap.add_argument("--base-samples", type=int, default=512,
                    help="samples for the model-alone accuracy (0: skip)")
    ap.add_argument("--base-only", action="store_true",
                    help="re-measure only the model-alone accuracy of the stored run of --model")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--docs-only", action="store_true")
    args = ap.parse_args(argv)
    runs = _runs()
    if args.base_only:
        if args.model not in runs:
            raise SystemExit(f"--base-only: no stored run of {args.model!r} in {RESULTS}; run the "
                             "grid first")
        task, _, _, _, plain = _setup(args.model, args.addends, args.shots)
        runs[args.model]["base_rate"] = _base_rate(task, plain, args.base_samples)
        runs[args.model]["base_rate_args"] = " ".join(sys.argv[1:] if argv is None else argv)
        print("base rate", runs[args.model]["base_rate"], flush=True)
        RESULTS.write_text(json.dumps({"runs": runs}, indent=1))
    elif not args.docs_only:
        cmd = " ".join(sys.argv[1:] if argv is None else argv)

        def save(data):
            if not args.no_write:
                data["args"] = cmd
                RESULTS.write_text(json.dumps({"runs": {**runs, data["model"]: data}}, indent=1))

        data = measure(args.model, args.n, args.seeds, args.addends, args.shots,
                       args.time_budget, on_cell=save, base_samples=args.base_samples)
        save(data)
        if args.no_write:
            return
        runs = _runs()
    if args.reading:
        runs[args.model]["reading"] = Path(args.reading).read_text().strip()
        RESULTS.write_text(json.dumps({"runs": runs}, indent=1))
    first = _ordered(runs)[0]
    plot(first)
    docs(runs)


if __name__ == "__main__":
    main()
