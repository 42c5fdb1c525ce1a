"""top-k / top-p / min-p: as a change of the prior, and as a proposal with exact weights.

The oracle is computed here in numpy (float64) from the bigram's tables, independently of
`TokenDist`: the truncated chain's sequence probabilities (prior mode), and each sequence's
``log p(x) - log q(x)`` under the mixture proposal (proposal mode). Statistical comparisons
use `ppl.testing`'s tolerances at false-failure rate 1e-4 per assertion, fixed seeds.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.dists import TokenDist
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import check_is_log_weights

V, EOS, T = 5, 4, 3


def _lm():
    rng = np.random.default_rng(7)
    return ppl.models.NGramLM(rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5,
                              eos_token_id=EOS, token_strings=list("abcd") + [""])


def _np_top_p(lp, p):
    order = np.argsort(-lp, kind="stable")
    probs = np.exp(lp[order])
    before = np.cumsum(probs) - probs
    keep = np.zeros(len(lp), bool)
    keep[order[before < p]] = True
    thr = lp[keep].min()
    return lp >= thr


def _np_min_p(lp, p):
    return lp >= lp.max() + math.log(p)


def _np_top_k(lp, k):
    return lp >= np.sort(lp)[::-1][k - 1]


def _renorm(lp, keep):
    out = np.where(keep, lp, -np.inf)
    return out - np.logaddexp.reduce(out[keep])


def _rows(lm):
    init = np.asarray(lm.params["initial"], np.float64)
    trans = np.asarray(lm.params["transition"], np.float64)
    return lambda last: init if last is None else trans[last]


def _np_sequences():
    """Every complete sequence: ends at EOS, or at the budget T."""
    for n in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < T and seq[-1] != EOS):
                continue
            yield seq


def _keep_fn(kind, value):
    return {"top_p": _np_top_p, "min_p": _np_min_p, "top_k": _np_top_k}[kind], value


def _oracle(lm, kind, value, floor=0.05, predicate=lambda s: True):
    """``{seq: (log prior, log truncated prior, log proposal)}`` for every complete sequence."""
    row = _rows(lm)
    keep_fn, v = _keep_fn(kind, value)
    out = {}
    for seq in _np_sequences():
        lp = lt = lq = 0.0
        last = None
        for tok in seq:
            r = row(last)
            t = _renorm(r, keep_fn(r, v))
            lp += r[tok]
            lt += t[tok]
            lq += np.logaddexp(math.log1p(-floor) + t[tok], math.log(floor) + r[tok])
            last = tok
        text = "".join("abcd"[t] for t in seq if t != EOS)
        if predicate(text):
            out[seq] = (lp, lt, lq)
    return out


@pytest.mark.parametrize("kind,value", [("top_p", 0.6), ("top_p", 0.9), ("min_p", 0.2),
                                        ("top_k", 2)])
def test_token_dist_truncation_matches_numpy(kind, value):
    rng = np.random.default_rng(0)
    for _ in range(20):
        lp = rng.normal(size=11) * 2
        lp[3] = lp[7]  # a tie
        d = TokenDist(jnp.asarray(lp, jnp.float32))
        got = np.asarray(getattr(d, kind)(value).logprobs)
        ref = np.log(np.exp(lp) / np.exp(lp).sum())
        keep_fn, v = _keep_fn(kind, value)
        want = _renorm(ref, keep_fn(ref, v))
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-5)


def test_top_p_one_and_min_p_zero_keep_everything_and_mix_normalises():
    lp = jnp.asarray([0.0, -1.0, -30.0, -jnp.inf])
    d = TokenDist(lp)
    np.testing.assert_allclose(d.top_p(1.0).logprobs, d.logprobs)
    np.testing.assert_allclose(d.min_p(0.0).logprobs, d.logprobs)
    m = d.top_p(0.5).mix(d, 0.1)
    assert float(jnp.exp(m.logprobs).sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool(jnp.isfinite(m.logprobs[2])) and not bool(jnp.isfinite(m.logprobs[3]))
    assert d.top_k(1).top_p(0.3).lm_index is None


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
                                 dict(top_k=0), dict(top_p="0.9"), dict(top_k=2.5),
                                 dict(truncation="both"), dict(truncation="proposal", top_p=0.5,
                                                               truncation_floor=0.0)])
def test_bad_truncation_settings_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        ppl.steer(_lm(), "", max_tokens=T, **bad)


def _no_aa(text):
    return "aa" not in text


@pytest.mark.parametrize("kind,value", [("top_p", 0.7), ("min_p", 0.25), ("top_k", 2)])
def test_prior_mode_targets_the_truncated_lm_exactly(kind, value):
    lm = _lm()
    prog = ppl.steer(lm, "", constraints=[_no_aa], max_tokens=T, **{kind: value})
    exact = enumerate_posterior(prog)
    oracle = _oracle(lm, kind, value, predicate=_no_aa)
    want_z = np.logaddexp.reduce([lt for _, lt, _ in oracle.values()])
    assert exact.log_evidence == pytest.approx(want_z, abs=1e-4)
    for seq, (_, lt, _) in oracle.items():
        if np.isfinite(lt):
            assert exact.sequences[seq] == pytest.approx(math.exp(lt - want_z), abs=1e-5), seq
        else:
            assert exact.sequences.get(seq, 0.0) == 0.0, seq
    # samples from the truncated prior never contain a token outside the truncation
    results = replicate(prog, "smc", 200, range(8))
    assert not posterior_discrepancies(results, exact)
    assert evidence_discrepancy(results, exact) is None


@pytest.mark.parametrize("kind,value", [("top_p", 0.6), ("min_p", 0.3)])
def test_proposal_mode_weights_are_exact_and_target_is_the_untruncated_program(kind, value):
    lm = _lm()
    floor = 0.1
    prog = ppl.steer(lm, "", constraints=[_no_aa], max_tokens=T, truncation="proposal",
                     truncation_floor=floor, **{kind: value})
    plain = enumerate_posterior(ppl.steer(lm, "", constraints=[_no_aa], max_tokens=T))
    exact = enumerate_posterior(prog)
    assert exact.log_evidence == pytest.approx(plain.log_evidence, abs=1e-5)
    oracle = _oracle(lm, kind, value, floor=floor, predicate=_no_aa)
    # every importance weight is log p(x) - log q(x), q the truncated/prior mixture
    res = ppl.infer(prog, method="is", particles=256, seed=0)
    assert check_is_log_weights(res, {s: lp - lq for s, (lp, _, lq) in oracle.items()}) > 100
    results = replicate(prog, "smc", 200, range(8))
    assert not posterior_discrepancies(results, plain)
    assert evidence_discrepancy(results, plain) is None


def test_proposal_mode_with_a_device_constraint_stays_exact():
    from ppl.stdlib import constraints as C

    lm = _lm()
    rule = C.regex(r"[ab]+")
    prog = ppl.steer(lm, "", constraints=[rule], max_tokens=T, top_p=0.5, truncation="proposal")
    plain = enumerate_posterior(ppl.steer(lm, "", constraints=[rule.check], max_tokens=T))
    results = replicate(prog, "smc", 200, range(8))
    assert not posterior_discrepancies(results, plain)
    assert evidence_discrepancy(results, plain) is None
