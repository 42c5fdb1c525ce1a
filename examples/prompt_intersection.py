"""Prompt intersection (the LLaMPPL paper's third task): text likely under two prompts at once.

Run:  python examples/prompt_intersection.py        ppl run examples/prompt_intersection.py --json

Each particle carries one LM context per prompt; every step all contexts of all particles run
in one batched forward pass and are extended by the same token. Target over continuations of
exactly ``max_tokens`` tokens: ``π(x) ∝ Π_t Π_k p(x_t | prompt_k, x_<t)`` (a product of experts).
The proposal is the per-step normalised product ``q_t(v) ∝ Π_k p(v | prompt_k, x_<t)`` over
non-EOS tokens, so each step's weight increment is its normaliser
``log Σ_{v != EOS} Π_k p(v | prompt_k, x_<t)`` (always ``<= 0``, hence ``log Z <= 0``): a prefix
both prompts find plausible keeps a high weight; one that only one prompt likes is penalised
by the other. This subclasses [ppl.stdlib.potentials.PromptIntersection][] only to fix the
length: with EOS allowed, the product of ``<= 1`` factors would make the empty text the mode.
"""

import jax.numpy as jnp

import ppl
from ppl.dists import TokenDist
from ppl.stdlib import potentials

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
PROMPTS = ["And the LORD spake unto Moses, saying,", "The king said unto his servants,"]


class FixedLengthIntersection(potentials.PromptIntersection):
    """The product of experts over continuations of exactly ``max_tokens`` tokens."""

    def step(self, ctx, state):
        logits = sum(view.next_token().logprobs for view in ctx.lms)
        logits = logits.at[self.lm.eos_token_id].set(-jnp.inf)
        q = TokenDist(logits, lm_index=0)
        ctx.sample(q)
        ctx.factor(q.log_normalizer)
        return state


def make_program(lm, max_tokens: int = 12):
    return FixedLengthIntersection(lm, PROMPTS, max_tokens=max_tokens)


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
