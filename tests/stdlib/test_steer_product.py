"""Several device constraints given to ``steer`` become one pruned product automaton.

Language L1 = {ab, ba}, L2 = {aa, ba, bb}: each allows a first "a" on its own, but no text
starting with "a" is in both. Masked one by one, particles that draw "a" die; the product
masks "a" away, and the posterior stays the exact constrained one.
"""

import numpy as np
import pytest

import ppl
from ppl.stdlib import _automata, constraints as C
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate

C1, C2 = C.regex("ab|ba"), C.regex("aa|ba|bb")


def _lm():
    rng = np.random.default_rng(5)
    # strings: "a", "b", " ", EOS; "a" is likely first, so separate masks lose many particles
    return ppl.models.NGramLM(np.array([2.0, 0.0, 0.0, 0.0]), rng.normal(size=(4, 4)),
                              eos_token_id=3, token_strings=["a", "b", " ", ""])


def test_product_masks_the_dead_end():
    lm = _lm()
    prog = ppl.steer(lm, "", constraints=[C1, C2], max_tokens=3)
    assert len(prog.automata) == 1
    allowed = np.asarray(prog.automata[0].allowed(prog.automata[0].init_state()))
    assert not allowed[0] and allowed[1]  # "a" can never complete both


def test_no_particle_dies_and_posterior_exact(monkeypatch):
    lm = _lm()
    prog = ppl.steer(lm, "", constraints=[C1, C2], max_tokens=3)
    oracle = enumerate_posterior(ppl.steer(lm, "", constraints=[C1.check, C2.check], max_tokens=3))
    results = replicate(prog, "is", 200, range(6))
    for r in results:
        assert np.all(np.isfinite(r.log_weights)), "a particle died under the product mask"
        assert all(C1.check(t) and C2.check(t) for t in r.texts)
    assert not posterior_discrepancies(results, oracle)
    assert evidence_discrepancy(results, oracle) is None
    # The old behaviour (separate masks) loses the particles that drew "a" first.
    monkeypatch.setattr(_automata, "combine", lambda auts, vocab, max_states=0: list(auts))
    sep = ppl.steer(lm, "", constraints=[C1, C2], max_tokens=3)
    assert len(sep.automata) == 2
    dead = np.mean([np.mean(~np.isfinite(r.log_weights)) for r in replicate(sep, "is", 200, range(2))])
    assert dead > 0.3
