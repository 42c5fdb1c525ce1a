"""Lark grammar constraints: errors, prefix checks, and the exact posterior on a bigram LM."""

import numpy as np
import pytest

import ppl
from ppl.stdlib._lark import LarkChecker, LarkConstraint, rejection_step
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate

ARITH = r"""
start: expr
?expr: expr "+" term | term
?term: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""


def test_invalid_grammar_names_position():
    with pytest.raises(ValueError, match="Invalid Lark grammar"):
        LarkChecker("start: (")
    with pytest.raises(ValueError, match="Invalid Lark grammar"):
        LarkChecker("start: undefined_rule")


def test_prefix_checks():
    c = LarkChecker(ARITH)
    for ok in ["", "1", "12", "1+", "(1", "(1+2", "((", "1+(2)"]:
        assert c.valid_prefix(ok), ok
    for bad in ["+", "1++", ")", "1)", "()", "a"]:
        assert not c.valid_prefix(bad), bad
    assert c.complete("1+(2+3)") and not c.complete("1+") and not c.complete("")
    kw = LarkChecker('start: "select" NAME\nNAME: /[a-z]+/\n%ignore " "')
    assert kw.valid_prefix("sel") and kw.valid_prefix("select ab") and not kw.valid_prefix("selx")
    num = LarkChecker('start: NUM "x"\nNUM: /[0-9]+(e[0-9]+)?/')
    assert num.valid_prefix("1e") and num.valid_prefix("1e5x") and not num.valid_prefix("1ex")


def test_truncated_rejection_weight_is_unbiased():
    """E[Ẑ] = Z for the two-success estimator with the exact fallback (analytically and by MC)."""
    c = LarkChecker(ARITH)
    strings = ["1", "+", "(", ")", "x", ""]
    special = np.array([False] * 5 + [True])
    lp = np.log(np.array([0.05, 0.3, 0.05, 0.3, 0.29, 0.01]))
    z = 0.05 + 0.05  # after "" only "1" and "(" are valid (EOS is not: "" is incomplete)
    rng = np.random.default_rng(0)
    draws = [rejection_step(c, strings, 5, special, "", lp, rng, 8) for _ in range(20000)]
    w = np.exp([d[1] for d in draws])
    toks = np.array([d[0] for d in draws])
    assert set(toks) <= {0, 2}
    # 20000 draws: CLT bound at false-failure rate 1e-4 (z = 3.89).
    assert abs(w.mean() - z) < 3.89 * w.std() / np.sqrt(len(w))
    assert abs((toks == 0).mean() - 0.5) < 3.89 * 0.5 / np.sqrt(len(w))


def test_lark_posterior_matches_enumeration():
    rng = np.random.default_rng(5)
    v = 5
    strings = ["1", "+", "(", ")", ""]
    lm = ppl.models.NGramLM(rng.normal(size=v), rng.normal(size=(v, v)), eos_token_id=4,
                            token_strings=strings)
    lark_prog = ppl.steer(lm, "", constraints=[LarkConstraint(ARITH, max_draws=6)], max_tokens=4)
    checker = LarkChecker(ARITH)
    oracle = enumerate_posterior(ppl.steer(lm, "", constraints=[checker.complete], max_tokens=4))
    results = replicate(lark_prog, "smc", 200, range(12))
    for r in results:
        assert all(checker.complete(t) for t, w in zip(r.texts, r.weights) if w > 0)
    assert not posterior_discrepancies(results, oracle)
    assert evidence_discrepancy(results, oracle) is None
