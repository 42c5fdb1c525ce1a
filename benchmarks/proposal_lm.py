"""A proposal LM vs the prior proposal: IS on a soft theme reward with the embedded model.

Program: ``ppl.steer(tiny, "And it came to pass, that", potentials=[theme], max_tokens=12)``,
``theme(text) = 2 * (number of occurrences of " LORD", " God", " king", ...)``: a reward the
prior rarely collects (the same lexicon as ``benchmarks/vi_proposal.py``). Proposals compared,
each with the same particle count, over independent IS runs: the prior; the same model in a
themed prompt (``proposal_prompt``, its own KV cache in the particle state); the same model at
temperature 1.5 (``proposal_temperature``). All keep the target (weights ``log p - log q``), so
their mean ``log Z_hat`` must agree up to Monte Carlo error; the spread and ESS show which
proposal helps. Timings are per run after compilation.

Run from the repository root::

    python benchmarks/proposal_lm.py                 # 16 runs x 256 particles
    python benchmarks/proposal_lm.py --runs 4 --particles 64

Writes ``benchmarks/results/proposal_lm.json`` and the "Proposal LM" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ppl  # noqa: E402

THEME = (" LORD", " God", " king", " lord", " heaven", " holy", " Israel", " people")
PROMPT = "And it came to pass, that"
THEMED = "And the LORD God of Israel spake unto the king and the people of the holy heaven"
RESULTS = Path(__file__).resolve().parent / "results" / "proposal_lm.json"


def theme(text: str) -> float:
    return 2.0 * sum(text.count(w) for w in THEME)


def measure(prog, runs, particles, seed):
    ess, lz, secs = [], [], []
    ppl.infer(prog, method="is", particles=particles, seed=seed - 1)  # compile
    for s in range(seed, seed + runs):
        t0 = time.perf_counter()
        r = ppl.infer(prog, method="is", particles=particles, seed=s)
        secs.append(time.perf_counter() - t0)
        ess.append(float(r.final_ess))
        lz.append(float(r.log_evidence))
    return dict(mean_ess=float(np.mean(ess)), sd_log_z=float(np.std(lz, ddof=1)),
                mean_log_z=float(np.mean(lz)),
                se_mean_log_z=float(np.std(lz, ddof=1) / np.sqrt(runs)),
                seconds_per_run=float(np.median(secs)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--particles", type=int, default=256)
    ap.add_argument("--floors", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    lm = ppl.models.load("tiny")
    base = dict(potentials=[theme], max_tokens=12)
    configs = {"prior proposal": {}}
    for f in args.floors:
        configs[f"proposal_prompt (themed), floor {f}"] = dict(
            proposal_lm=lm, proposal_prompt=THEMED, proposal_floor=f)
        configs[f"proposal_temperature 1.5, floor {f}"] = dict(
            proposal_temperature=1.5, proposal_floor=f)
    rows = {}
    for name, kw in configs.items():
        rows[name] = measure(ppl.steer(lm, PROMPT, **base, **kw), args.runs, args.particles,
                             args.seed)
        print(name, rows[name], flush=True)
    out = dict(runs=args.runs, particles=args.particles, prompt=PROMPT, proposal_prompt=THEMED,
               machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
               jax_backend=__import__("jax").default_backend(), rows=rows)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    lines = ["## Proposal LM (`steer(proposal_lm=...)`)", "",
             f"The embedded `tiny` model, 12 tokens after {PROMPT!r}, weight `e^2` per "
             f"occurrence of a theme word; {args.runs} independent IS runs of {args.particles} "
             f"particles per proposal ({out['jax_backend']}, {out['machine']}, "
             f"{time.strftime('%Y-%m-%d')}). Reproduce: "
             f"`python benchmarks/proposal_lm.py --runs {args.runs} --particles "
             f"{args.particles}`.", "",
             "| proposal | mean ESS | sd of log Z_hat | mean log Z_hat (± s.e.) | s / run |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_ess']:.1f} | {r['sd_log_z']:.3f} | "
                     f"{r['mean_log_z']:.3f} ± {r['se_mean_log_z']:.3f} | "
                     f"{r['seconds_per_run']:.2f} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_docs:
        from benchmarks._docs import replace_section

        replace_section("## Proposal LM (`steer(proposal_lm=...)`)", body)


if __name__ == "__main__":
    main()
