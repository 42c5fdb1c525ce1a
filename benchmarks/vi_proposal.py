"""Learned (variational) proposals vs the prior proposal.

Two experiments (``--experiments``), each comparing independent IS runs with the same particle
count under the prior proposal and under the learned one: mean ESS, standard deviation of
``log Z_hat`` and its mean (against the exact ``log Z`` where enumeration can compute it).

* ``bigram``: a bigram LM (4 tokens, random tables) asked for at most 6 tokens containing at
  least three 'c': about 1% of the prior's mass, so importance sampling with the prior wastes
  ~99% of its particles. ``method="vi"`` learns a previous-token logit bias table.
* ``tiny``: the embedded transformer (``ppl.models.load("tiny")``), 12 tokens after a prompt,
  every token that contains a letter of a small theme lexicon (" LORD", " God", " king", ...)
  multiplies the weight by ``e^2``: a soft reward the prior rarely collects. ``method="vi"``
  learns the hidden-state head (``proposal="hidden"``: a logit bias from the transformer's last
  hidden state through a fixed random projection and a trained ``[16, V]`` matrix).

Run from the repository root::

    python benchmarks/vi_proposal.py            # both experiments, prints Markdown tables
    python benchmarks/vi_proposal.py --experiments tiny --runs 16 --particles 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import ppl
from ppl.testing import enumerate_posterior

# The rare-constraint program and its bigram LM are the ones tests/inference/test_vi.py uses.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import make_bigram  # noqa: E402
from tests.inference.programs import Rare  # noqa: E402


def measure(prog, params, runs, particles, seed):
    ess, lz, dead = [], [], 0
    for s in range(seed, seed + runs):
        try:
            r = ppl.infer(prog, method="is", particles=particles, seed=s, proposal_params=params)
        except ppl.InferenceError:  # every particle violated the constraint
            dead += 1
            ess.append(0.0)
            continue
        ess.append(r.final_ess)
        lz.append(r.log_evidence)
    return np.mean(ess), np.std(lz, ddof=1), np.mean(lz), dead


THEME = (" LORD", " God", " king", " lord", " heaven", " holy", " Israel", " people")


class Themed(ppl.Program):
    """The tiny model's text, weighted by ``e^2`` per token of a theme lexicon."""

    max_tokens = 12

    def __init__(self, lm):
        super().__init__(lm, prompt="And it came to pass, that")
        strings = lm.vocab.token_strings
        self.theme = np.array([any(s == w for w in THEME) for s in strings], bool)

    def step(self, ctx, s):
        tok = ctx.sample(ctx.lm.next_token())
        ctx.factor(2.0 * jnp.asarray(self.theme)[tok])
        ctx.finish_if(tok == self.lm.eos_token_id)
        return s


def experiment(name, args):
    if name == "bigram":
        prog = Rare(make_bigram(3), prompt="")
        exact = enumerate_posterior(prog).log_evidence
        opts = dict(vi_particles=32, learning_rate=0.1, proposal="prev_token")
    else:
        prog = Themed(ppl.models.load("tiny"))
        exact = None
        opts = dict(vi_particles=16, learning_rate=0.01, proposal="hidden")
    t0 = time.perf_counter()
    res = ppl.infer(prog, method="vi", particles=args.particles, seed=args.seed,
                    vi_steps=args.vi_steps, objective=args.objective, **opts)
    t_train = time.perf_counter() - t0
    params = res.extras["vi_params"]
    rows = [("prior proposal", *measure(prog, None, args.runs, args.particles, 1000)),
            (f"learned {params['kind']} ({args.objective}, {args.vi_steps} steps)",
             *measure(prog, params, args.runs, args.particles, 1000))]
    head = (f"### {name}\n\n" + (f"exact log Z = {exact:.4f}; " if exact is not None else "")
            + f"{args.runs} IS runs x {args.particles} particles each; VI training "
            f"{t_train:.1f}s (compile included)\n")
    lines = [head, "| proposal | mean ESS | sd of log Z_hat | mean log Z_hat | runs with no valid particle |",
             "|---|---|---|---|---|"]
    for row_name, ess, sd, mean, dead in rows:
        lines.append(f"| {row_name} | {ess:.1f} | {sd:.3f} | {mean:.3f} | {dead} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=["bigram", "tiny"], choices=["bigram", "tiny"])
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--particles", type=int, default=1024)
    ap.add_argument("--vi-steps", type=int, default=150)
    ap.add_argument("--objective", default="vimco")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in args.experiments:
        print(experiment(name, args) + "\n", flush=True)


if __name__ == "__main__":
    main()
