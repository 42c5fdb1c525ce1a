"""PIMH against the exact posterior and evidence of a bigram program.

Tolerances: posterior by batch means over independent vmapped chains
(``tests/inference/programs.py`` derives it); evidence: the sweeps are independent and each
``Z_hat`` is unbiased, so the mean of ``Z_hat / Z`` over all ``M`` sweeps lies within
``z * sd / sqrt(M)`` of 1; false-failure rate 1e-4 per check.
"""

import math

import numpy as np
import pytest

import ppl
from ppl.testing import _z
from tests.inference.programs import chain_discrepancies


@pytest.fixture(scope="module")
def chain_result(twisted):
    # Few particles per sweep so that proposals are rejected often and MH matters.
    return ppl.infer(twisted, method="pimh", particles=4, seed=0, steps=60, burn_in=10, chains=128,
                     ess_threshold=1.0)


def test_pimh_chain_matches_exact_posterior(chain_result, exact):
    r = chain_result
    assert r.tokens.shape[0] == 128 * 50 and np.allclose(r.weights, 1 / r.tokens.shape[0])
    assert 0.05 < r.extras["acceptance_rate"] < 1.0
    bad = chain_discrepancies(r, exact, alpha=1e-4)
    assert not bad, bad
    assert all(t.count("a") <= 1 for t in r.texts)


def test_pimh_evidence_is_unbiased(chain_result, exact):
    lz = chain_result.extras["chain_log_evidence"]
    assert lz.shape == (128, 61)
    ratios = np.exp(lz.reshape(-1) - exact.log_evidence)
    tol = _z(1e-4) * ratios.std(ddof=1) / math.sqrt(ratios.size)
    assert abs(ratios.mean() - 1.0) < tol
    assert chain_result.log_evidence == pytest.approx(math.log(ratios.mean()) + exact.log_evidence,
                                                      abs=1e-6)


def test_pimh_same_seed_same_chain(twisted, chain_result):
    # Same configuration as chain_result: the cached executable is reused, nothing recompiles.
    again = ppl.infer(twisted, method="pimh", particles=4, seed=0, steps=60, burn_in=10,
                      chains=128, ess_threshold=1.0)
    assert np.array_equal(again.tokens, chain_result.tokens)
    assert again.log_evidence == chain_result.log_evidence
    assert again.timings["compile"] == 0.0
    assert chain_result.extras["accepted"].shape == (128, 60)


def test_pimh_rejects_bad_options(twisted):
    with pytest.raises(ValueError, match="burn_in"):
        ppl.infer(twisted, method="pimh", particles=4, steps=5, burn_in=5)
    with pytest.raises(ValueError, match="Unknown option"):
        ppl.infer(twisted, method="pimh", particles=4, nonsense=1)
