"""Inference correctness of every particle backend against the exact (numpy) target.

Programs: [ppl.testing.toy_program][] over a second-order LM whose KV cache matters, with
a random token automaton (masked proposal), a random tempered + logit-biased proposal, random
per-token factors, random twists, random host predicates and potentials; shapes fixed, so one
compilation per method row serves every example (values are swapped into ``lm.params``).

Every statistical assertion has false-failure probability <= ALPHA = 1e-4 (t quantiles from
the R replicates, Bonferroni over the quantities one assertion compares).
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ppl
from ppl import strategies as pst
from ppl import testing as pt
from tests.properties import _harness as H
from tests.properties._harness import ALPHA, ALPHABET, EOS, N, T

PARTICLE = H.method_params("particle")

examples = st.tuples(
    H.params_strategy(),
    st.one_of(st.none(), pst.text_predicates(ALPHABET, T)),
    st.one_of(st.none(), pst.text_potentials(ALPHABET)),
)


def _load(example):
    params, pred, pot = example
    prog, exact = H.load(params, pred, pot)
    assume(np.isfinite(exact.log_evidence))
    return prog, exact


@pytest.mark.parametrize("method", PARTICLE)
@settings(max_examples=6)
@given(example=examples)
def test_evidence_is_unbiased_in_Z(method, example):
    """E[Z_hat] = Z: the mean of Z_hat / Z over R independent runs is within the t bound of 1
    (a run whose particles all died counts as Z_hat = 0)."""
    _, exact = _load(example)
    ratios = []
    for res in H.replicates(method):
        ratios.append(0.0 if res is None else math.exp(res.log_evidence - exact.log_evidence))
    err = pt.mean_discrepancy(ratios, 1.0, ALPHA, float_tol=1e-5, what="Z_hat / Z")
    assert err is None, err


def _features(exact):
    mode = max(exact.log_weights, key=exact.log_weights.get)
    return {
        "length / T": lambda s: len(s) / T,
        "ends with EOS": lambda s: float(s[-1] == EOS),
        "first token is 'a'": lambda s: float(s[0] == 0),
        "contains 'b'": lambda s: float(1 in s),
        f"is the mode {mode}": lambda s: float(s == mode),
    }


@pytest.mark.parametrize("method", PARTICLE)
@settings(max_examples=6)
@given(example=examples)
def test_weighted_expectations_are_unbiased(method, example):
    """For features f in [0, 1]: E[mean_i w_i f(x_i)] = Z E_pi[f] (Bonferroni over 5 features)."""
    _, exact = _load(example)
    bad = pt.gamma_discrepancies(H.replicates(method), exact.log_weights, _features(exact), ALPHA)
    assert not bad, bad


@pytest.mark.parametrize("method", PARTICLE)
@settings(max_examples=6)
@given(example=examples)
def test_samples_are_in_the_support_and_nothing_is_nan(method, example):
    """log-evidence and weights are never NaN; every sample with positive weight has positive
    exact target weight (satisfies the automaton, the predicate, the LM's zeros)."""
    _, exact = _load(example)
    for seed in range(4):
        res = H.run(method, seed)
        if res is None:
            continue
        assert not math.isnan(res.log_evidence)
        assert not np.isnan(res.log_weights).any() and np.isfinite(res.weights).all()
        assert not np.isnan(res.ess).any()
        assert abs(res.weights.sum() - 1.0) < 1e-6
        for s, w in zip(pt.sequences(res), res.weights):
            if w > 0:
                assert s in exact.log_weights, f"sample {s} has weight {w} but zero target"


@pytest.mark.parametrize("method", PARTICLE)
def test_unsatisfiable_program_raises_and_never_nans(method):
    """A predicate nothing satisfies: every run reports InferenceError naming it, no NaN."""
    prog, _ = H.load(_fixed_params(),
                     pst.TextPredicate("contains", "z"))
    with pytest.raises(ppl.InferenceError, match="predicate"):
        ppl.infer(prog, method=method.name, particles=N, seed=0, **method.opts)


def _fixed_params():
    rng = np.random.default_rng(0)
    tab = pt.toy_program_tables(H.S, H.V, EOS, temperature=1.3, bias=rng.normal(size=(H.S, H.V)))
    return pt.TrigramLM.make_params(rng.normal(size=H.V), rng.normal(size=(H.V + 1, H.V, H.V)), tab)


# float32: about 6 roundings per token of quantities of magnitude <= |log w| + 10.
def _float_tol(x):
    return float(6 * T * np.finfo(np.float32).eps * (abs(x) + 10.0))


def check_log_ratio_weights(res, exact):
    """Every particle's log-weight is ``log pi~(x) - log q(x)`` from ``exact`` (float32
    rounding), and a sequence of zero target weight has log-weight -inf."""
    for s, lw in zip(pt.sequences(res), res.log_weights):
        if s in exact.log_weights:
            target = exact.log_weights[s] - exact.log_proposal[s]
            assert lw == pytest.approx(target, abs=_float_tol(target)), s
        else:
            assert lw == -np.inf, f"{s} has zero target weight but log-weight {lw}"


@settings(max_examples=12)
@given(example=examples)
def test_importance_weights_are_the_exact_log_ratio(example):
    """Every IS particle's final log-weight equals log pi~(x) - log q(x), computed in numpy."""
    _, exact = _load(example)
    res = H.run(H.Method("is"), 0)
    assert res is not None
    check_log_ratio_weights(res, exact)


@settings(max_examples=6)
@given(example=examples, seed=st.integers(0, 2**31 - 1),
       row=st.sampled_from([m for m in H.METHODS if m.name == "smc"][:2]))
def test_smc_with_one_particle_is_importance_sampling_bit_for_bit(example, seed, row):
    """One particle never resamples (ESS = 1 is never below threshold * 1): SMC = IS exactly."""
    _load(example)
    a = H.run(row, seed, particles=1)
    b = H.run(H.Method("is"), seed, particles=1)
    assert (a is None) == (b is None)
    if a is not None:
        assert np.array_equal(a.tokens, b.tokens)
        assert np.array_equal(a.log_weights, b.log_weights)
        assert a.log_evidence == b.log_evidence and not a.resampled.any()


@settings(max_examples=6)
@given(example=examples, seed=st.integers(0, 2**31 - 1))
def test_smc_without_resampling_is_importance_sampling_bit_for_bit(example, seed):
    """ess_threshold = 0 never resamples: SMC with N particles equals IS bit for bit."""
    _load(example)
    a = H.run(H.Method("smc", (("resampling", "systematic"), ("ess_threshold", 0.0))), seed)
    b = H.run(H.Method("is"), seed)
    assert (a is None) == (b is None)
    if a is not None:
        assert np.array_equal(a.tokens, b.tokens)
        assert np.array_equal(a.log_weights, b.log_weights)


@settings(max_examples=6)
@given(example=examples, seed=st.integers(0, 2**31 - 1))
def test_smc_steer_with_one_beam_keeps_every_particle(example, seed):
    """One child per particle gives N candidates for N slots: optimal resampling must keep all
    of them with their own weights, so each step's ancestry is a permutation of the particles
    and the evidence estimate is the IS one of those particles."""
    _load(example)
    res = H.run(H.Method("smc_steer", (("num_beams", 1),)), seed)
    if res is not None:
        for row in res.ancestors:
            assert sorted(row.tolist()) == list(range(N)), row
        assert not math.isnan(res.log_evidence)


#: Runs per particle count in the TV test: at 16, examples whose TV fell 8x (0.18 -> 0.022)
#: still missed the critical value (t = 4.48 against 4.84) from the N = 16 runs' spread.
R_TV = 32


@pytest.mark.parametrize("method", H.method_params("particle", names=("is", "smc_steer"))
                         + [H.method_params("particle", names=("smc",))[0]])
@settings(max_examples=2)
@given(example=examples)
def test_total_variation_shrinks_as_particles_grow(method, example):
    """E[TV(pi_hat_N, pi)] is smaller at N = 256 than at N = 16 (one-sided Welch test of
    "no decrease" at ALPHA, R = R_TV runs each). Under a correct sampler E[TV] ~ c / sqrt(N), a
    4x decrease. Under the null of no decrease, the test's false-failure rate is at most ALPHA
    for a correct sampler in that regime; its power depends on the N = 16 runs' spread (with
    R = 16, an 8x decrease once gave t = 4.48 against a critical value of 4.84, hence R_TV).

    That regime needs a posterior without a dominant sequence: with mode mass ``m``, a small
    population often holds only the mode, whose estimate has TV exactly ``1 - m``, lower than
    a spread-out noisy estimate, so E[TV] is not decreasing from N = 16. Seen on a
    derandomized example with ``m = 0.857``: mean TV over 8 runs at N = 16 / 256 / 2048 was
    0.210 / 0.185 / 0.109 for IS and 0.201 / 0.163 / 0.101 for SMC (stratified, threshold
    0.5), most N = 16 runs exactly 0.143; both samplers alike, so it is the estimator's
    small-N behaviour, not a bug. Hence ``m < 0.8``."""
    _, exact = _load(example)
    post = exact.posterior
    assume(max(post.values()) < 0.8)  # a dominant mode: E[TV] is not monotone from N = 16

    def tvs(n):
        out = []
        for res in H.replicates(method, particles=n, num=R_TV):
            if res is None:
                out.append(1.0)
                continue
            est = {}
            for s, w in zip(pt.sequences(res), res.weights):
                est[s] = est.get(s, 0.0) + float(w)
            out.append(pt.total_variation(est, post))
        return out

    err = pt.decrease_discrepancy(tvs(16), tvs(N), ALPHA, what="TV distance")
    assert err is None, err
