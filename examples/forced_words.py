"""Forced vocabulary: the continuation must use given words, within a token budget.

Run:  python examples/forced_words.py        ppl run examples/forced_words.py --particles 64

``C.must_contain`` is a token automaton whose state records which of the words have appeared
as whole words. A mask that only asks "can an accepting state still be reached?" is myopic:
with a budget of ``T`` tokens the particle must also reach it *in time*. This program is
written by hand to show how: on the host we compute, for every automaton state, the fewest
tokens to an accepting state (a shortest-path sweep over the table), and at each step we allow
only tokens whose next state is at most that far from acceptance with the tokens left.
Proposal: the LM masked to those tokens; weight increment: the kept mass
``log Σ_{v allowed} p(v | x_<t)``. Every excluded token leads to a text that cannot be accepted
within the budget, so the target is exactly ``π(x) ∝ p_LM(x) 1[every word occurs, len(x) <= T]``.
Early on the mask removes nothing; the weights then favour particles that used the words where
the LM found them likely.
"""

import re

import jax.numpy as jnp
import numpy as np

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
WORDS = ["lamb", "light"]


def distance_to_accept(automaton) -> np.ndarray:
    """``int32[S]``: fewest tokens from each state to an accepting state (large if never)."""
    table = np.asarray(automaton.transitions)
    acc = np.asarray(automaton.accepting)
    big = np.int32(1 << 20)
    dist = np.where(acc, 0, big).astype(np.int32)
    dist[0] = big  # the dead state
    for _ in range(table.shape[0]):
        new = np.minimum(dist, 1 + dist[table].min(axis=1))
        new[0] = big
        if np.array_equal(new, dist):
            break
        dist = new
    return dist


class ForcedWords(ppl.Program):
    """LM prior x ``must_contain(words)``, masked with the budget in mind."""

    def __init__(self, lm, words, prompt: str, max_tokens: int):
        super().__init__(lm=lm, prompt=prompt, max_tokens=max_tokens)
        self.automaton = C.must_contain(words).compile(lm.vocab)
        self.dist = jnp.asarray(distance_to_accept(self.automaton))

    def init(self, ctx):
        return self.automaton.init_state()

    def step(self, ctx, s):
        a = self.automaton
        p = ctx.lm.next_token()
        tokens_left = self.max_tokens - (ctx.length + 1)  # after this step's token
        in_time = self.dist[a.transitions[s]] <= tokens_left
        ok = a.allowed(s) & in_time.at[self.lm.eos_token_id].set(True)
        tok = ctx.sample(p, proposal=p.mask(ok))
        s = a.advance(s, tok)
        ctx.condition(a.alive(s), name=a.name)
        ctx.finish_if(tok == self.lm.eos_token_id)
        return s

    def final(self, ctx, s):
        ctx.condition(self.automaton.accepting_state(s), name=self.automaton.name)


def make_program(lm, max_tokens: int = 20):
    return ForcedWords(lm, WORDS, "And he said unto them,", max_tokens)


def check(text: str) -> bool:
    found = set(re.findall(r"[A-Za-z]+", text))
    return all(w in found for w in WORDS)


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
