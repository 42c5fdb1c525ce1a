"""SMC under device constraints targets the exact constrained posterior (NGramLM + enumeration).

The budget-aware mask (tokens from which acceptance is unreachable within the remaining
tokens are removed) must not change the target: compared with the same program whose
constraint is a host-side predicate, enumerated exactly.
"""

import numpy as np
import pytest

import ppl
from ppl.stdlib import constraints as C
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate


def _lm(seed):
    rng = np.random.default_rng(seed)
    strings = ["a", "b", "ab", " ", "1", ""]
    return ppl.models.NGramLM(rng.normal(size=6), rng.normal(size=(6, 6)), eos_token_id=5,
                              token_strings=strings)


@pytest.mark.parametrize("constraint", [
    C.regex(r"(ab|b)+ 1"),
    C.must_contain(["ab"]),
    C.max_word_length(2),
    C.banned_words(["b"]),
], ids=["regex", "must_contain", "max_word_length", "banned_words"])
def test_device_constraint_matches_enumerated_posterior(constraint):
    lm = _lm(11)
    prog = ppl.steer(lm, "", constraints=[constraint], max_tokens=4)
    oracle = enumerate_posterior(ppl.steer(lm, "", constraints=[constraint.check], max_tokens=4))
    device_oracle = enumerate_posterior(prog)
    assert device_oracle.log_evidence == pytest.approx(oracle.log_evidence, abs=1e-4)
    results = replicate(prog, "smc", 300, range(12))
    for r in results:
        assert all(constraint.check(t) for t, w in zip(r.texts, r.weights) if w > 0)
    assert not posterior_discrepancies(results, oracle)
    assert evidence_discrepancy(results, oracle) is None


def test_min_steps_table():
    lm = _lm(0)
    a = C.regex(r"ab ab 1").compile(lm.vocab)
    # "ab"," ","ab"," ","1": five tokens at least from the start.
    assert int(a.min_steps[a.start]) == 5
    assert int(a.min_steps[0]) > 10**6  # DEAD never reaches acceptance


def test_incremental_python_predicate_is_exact_and_kills_early():
    lm = _lm(3)
    calls = []

    def no_double_a(text):
        calls.append(text)
        return "aa" not in text  # prefix-closed: once "aa" appears it stays

    inc = C.predicate(no_double_a, incremental=True)
    prog = ppl.steer(lm, "", constraints=[inc], max_tokens=4)
    oracle = enumerate_posterior(ppl.steer(lm, "", constraints=[no_double_a], max_tokens=4))
    calls.clear()
    results = replicate(prog, "smc", 300, range(12))
    for r in results:
        assert all("aa" not in t for t, w in zip(r.texts, r.weights) if w > 0)
    assert not posterior_discrepancies(results, oracle)
    assert evidence_discrepancy(results, oracle) is None
    # Checked after every step, not only on the 12 x 300 finished texts.
    assert len(calls) > 2 * 12 * 300
