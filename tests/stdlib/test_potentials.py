"""Potentials, prompt intersection and infilling against exact answers on a bigram LM."""

import itertools
import math

import numpy as np
import pytest

import ppl
from ppl.stdlib.potentials import Potential, infill, keyword_potential, lexicon_potential, prompt_intersection
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import make_bigram


def test_prompt_intersection_matches_enumeration():
    lm = make_bigram(0)
    prog = prompt_intersection(lm, ["a", "b"], max_tokens=3)
    exact = enumerate_posterior(prog)
    # Brute force in numpy: product of the two contexts' next-token probabilities.
    init = np.asarray(lm.params["initial"])
    trans = np.asarray(lm.params["transition"])
    weights = {}
    for n in range(1, 4):
        for seq in itertools.product(range(4), repeat=n):
            if any(t == 3 for t in seq[:-1]) or (n < 3 and seq[-1] != 3):
                continue
            lw, last = 0.0, (0, 1)
            for t in seq:
                lw += trans[last[0], t] + trans[last[1], t]
                last = (t, t)
            weights[seq] = lw
    log_z = math.log(sum(math.exp(w) for w in weights.values()))
    assert exact.log_evidence == pytest.approx(log_z, abs=1e-4)
    results = replicate(prog, "smc", 300, range(16))
    assert not posterior_discrepancies(results, exact)
    assert evidence_discrepancy(results, exact) is None


def test_infill_posterior_matches_brute_force():
    lm = make_bigram(2)
    eos = lm.eos_token_id
    prog = infill(lm, ["a", "cb"], max_gap=2)
    init = np.asarray(lm.params["initial"])
    trans = np.asarray(lm.params["transition"])
    seg = lm.encode("cb")
    post = {}
    for gap_len in (1, 2):
        for gap in itertools.product([t for t in range(4) if t != eos], repeat=gap_len):
            seq = list(gap) + seg
            lw, last = math.log(0.5), lm.encode("a")[-1]
            for t in seq:
                lw += trans[last, t]
                last = t
            text = lm.vocab.decode(seq)
            post[text] = post.get(text, 0.0) + math.exp(lw)
    z = sum(post.values())
    post = {k: v / z for k, v in post.items()}
    results = replicate(prog, "smc", 400, range(16))
    from ppl.testing import Exact

    exact = Exact(math.log(z), {}, post, {})
    assert not posterior_discrepancies(results, exact)
    assert evidence_discrepancy(results, exact) is None
    assert all(t.endswith("cb") for r in results for t in r.texts)


def test_end_potential_and_twist_potential_targets():
    lm = make_bigram(4)
    kw = keyword_potential(["b"], weight=1.5)
    twist = Potential(lambda t: -0.5 * t.count("a"), when="twist")
    prog = ppl.steer(lm, "", potentials=[kw, twist], max_tokens=3)
    exact = enumerate_posterior(prog)
    # The twist cancels: the exact target is the prior times exp(1.5 * #b) (b counted as words).
    plain = enumerate_posterior(ppl.steer(lm, "", potentials=[kw], max_tokens=3))
    assert exact.log_evidence == pytest.approx(plain.log_evidence, abs=1e-5)
    results = replicate(prog, "smc", 300, range(16), ess_threshold=0.9)
    assert not posterior_discrepancies(results, exact)
    assert evidence_discrepancy(results, exact) is None


def test_potential_validation_and_lexicon():
    with pytest.raises(ValueError, match="must be 'end' or 'twist'"):
        Potential(len, when="sometimes")
    lex = lexicon_potential({"good": 2.0, "bad": -1.0}, weight=0.5)
    assert lex("Good, not bad; good!") == pytest.approx(0.5 * (2 + 2 - 1))
    assert keyword_potential(["cat"])("a cat and a Cat, catalog") == 2.0
