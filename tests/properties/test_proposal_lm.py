"""A proposal LM (a second model proposing the tokens) against the exact (numpy) target.

Program: [ppl.testing.toy_program][] with ``proposal_lm``: a second `TrigramLM` (its KV cache,
the previous token, matters) whose tables give some tokens probability 0, mixed with the
program's own masked proposal at share ``PROPOSAL_FLOOR``
([ppl.proposal_lm.LMProposal][]). ``toy_exact`` computes the target and every sequence's
proposal probability in numpy, independently of the engine. Shapes are fixed, so one
compilation per method row serves every example.

False-failure rate ALPHA = 1e-4 per assertion (t quantiles, Bonferroni over features). The
replicated statistical properties (R = 48 runs per example) are in the slow tier; the exact
weights, the enumeration and the forking check run in every tier.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ppl import strategies as pst
from ppl import testing as pt
from ppl.inference import engine as E
from tests.properties import _harness as H
from tests.properties._harness import ALPHA, ALPHABET, T
from tests.properties.test_inference import _features, check_log_ratio_weights
from tests.properties.test_oracle import _check

examples = st.tuples(
    H.params_strategy(),
    pst.trigram_params(H.V),
    st.one_of(st.none(), pst.text_predicates(ALPHABET, T)),
    st.one_of(st.none(), pst.text_potentials(ALPHABET)),
)

# IS; SMC resampling at every step (each resampling must fork the proposal cache); SMC with
# resample-move (the moves replay tokens through the proposal model).
ROWS = [pytest.param(m, id=m.id) for m in (
    H.Method("is"),
    H.Method("smc", (("resampling", "multinomial"), ("ess_threshold", 1.0))),
    H.Method("smc", (("ess_threshold", 1.0), ("rejuvenate", 1))),
)]


def _load(example):
    params, qparams, pred, pot = example
    prog, exact = H.load_proposal(params, qparams, pred, pot)
    assume(np.isfinite(exact.log_evidence))
    return prog, exact


@settings(max_examples=12)
@given(example=examples)
def test_importance_weights_are_log_p_minus_log_q_of_the_mixture(example):
    """Every IS particle's log-weight is log pi~(x) - log q(x), q the mixture of the proposal
    LM and the program's proposal (numpy); zero-target sequences have weight -inf."""
    _, exact = _load(example)
    res = H.run_proposal(H.Method("is"), 0)
    assert res is not None
    check_log_ratio_weights(res, exact)


@pytest.mark.slow  # 20-50 s per row on 2 shared cores
@pytest.mark.parametrize("method", ROWS)
@settings(max_examples=3)
@given(example=examples)
def test_evidence_is_unbiased_with_a_proposal_lm(method, example):
    """E[Z_hat] = Z (the program's evidence, not the proposal's): the mean of Z_hat / Z over
    R runs is within the t bound of 1."""
    _, exact = _load(example)
    ratios = []
    for seed in range(H.R):
        res = H.run_proposal(method, seed)
        ratios.append(0.0 if res is None else math.exp(res.log_evidence - exact.log_evidence))
    err = pt.mean_discrepancy(ratios, 1.0, ALPHA, float_tol=1e-5, what="Z_hat / Z")
    assert err is None, err


@pytest.mark.slow  # 20-50 s per row on 2 shared cores
@pytest.mark.parametrize("method", ROWS[1:2])
@settings(max_examples=3)
@given(example=examples)
def test_weighted_expectations_are_unbiased_with_a_proposal_lm(method, example):
    """E[mean_i w_i f(x_i)] = Z E_pi[f] for 5 features (Bonferroni)."""
    _, exact = _load(example)
    results = [H.run_proposal(method, seed) for seed in range(H.R)]
    bad = pt.gamma_discrepancies(results, exact.log_weights, _features(exact), ALPHA)
    assert not bad, bad


@settings(max_examples=2)
@given(example=examples)
def test_enumerated_target_is_the_program_without_the_proposal(example):
    """The engine's enumeration of the program with a proposal LM equals the numpy target,
    which does not depend on the proposal."""
    params, qparams, pred, pot = example
    prog, exact = H.load_proposal(params, qparams, pred, pot)
    _check(pt.enumerate_posterior(prog), exact.log_weights)


@settings(max_examples=3)
@given(example=examples, seed=st.integers(0, 2**31 - 1))
def test_resampling_forks_the_proposal_cache(example, seed):
    """After a gather along ancestors, each particle's proposal-LM state (its cache, the last
    token fed, and its next-token row) is the one of its *own* (copied) tokens: the state
    pytree carries the proposal cache, so resampling forks it with the particle."""
    params, qparams, pred, pot = example
    prog, _ = H.load_proposal(params, qparams, pred, pot)
    setup = E.prepare(prog)
    lm_params = prog.lm.params
    n = 6
    k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
    parts, kv = E.init_population(k0, setup, lm_params, n)
    for t, (key, anc) in enumerate(((k1, [5, 5, 0, 2, 2, 1]), (k2, [1, 0, 0, 4, 3, 3]))):
        old = parts
        parts, tok = E.propose(key, setup, parts, kv.logprobs, t)
        kv = E.advance_lm(setup, lm_params, kv, tok, old.length, ~parts.done)
        parts, kv = E.gather(setup, parts, kv, jnp.asarray(anc, jnp.int32))
    qlm = prog.lm.proposal
    (_, (qcache, qrow)) = parts.state
    for i in range(n):
        length = int(parts.length[i])
        seq = tuple(int(x) for x in np.asarray(parts.tokens[i])[:length])
        if parts.done[i]:
            continue  # a finished particle's proposal state is never read again
        assert int(qcache["prev"][i, 0]) == seq[-1], (i, seq)
        want = qlm.logprob_row(seq)
        got = np.asarray(qrow[i], np.float64)
        assert np.array_equal(np.isfinite(got), np.isfinite(want)), (i, seq)
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=1e-5)
