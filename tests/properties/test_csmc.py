"""Conditional SMC (``method="csmc"``) leaves the exact posterior invariant.

If the retained sequence is drawn from the exact posterior ``pi``, the particle the sweep
samples (``extras["sample"]``, drawn ``∝`` the final weights) is distributed as ``pi`` too, for
any particle count. Each of R replicates draws a fresh retained sequence from ``pi`` (numpy)
and runs one sweep with few particles (N = 3, where a wrong kernel shows most; R = 250); the sampled
sequences' frequencies are compared with ``pi`` (binomial bound per sequence of probability
>= 0.03, Bonferroni over them, ALPHA = 1e-4 per assertion).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings

import ppl
from ppl import testing as pt
from tests.properties import _harness as H
from tests.properties._harness import ALPHA

R_CSMC = 250


def sweep_samples(prog, exact, num, seed0=0, particles=3, **opts):
    """``num`` sampled sequences, each from one sweep around a retained ``x' ~ pi``."""
    post = exact.posterior
    seqs = list(post)
    probs = np.array([post[s] for s in seqs])
    rng = np.random.default_rng(seed0)
    out = []
    for r in range(num):
        ref = seqs[rng.choice(len(seqs), p=probs / probs.sum())]
        res = ppl.infer(prog, method="csmc", particles=particles, seed=seed0 + r,
                        retained=list(ref), **opts)
        out.append(tuple(int(t) for t in res.extras["sample"]["tokens"]))
    return out


def frequency_discrepancies(samples, post, alpha=ALPHA, min_prob=0.03):
    n = len(samples)
    texts = [s for s, p in post.items() if p >= min_prob]
    bad = []
    for s in texts:
        f = sum(x == s for x in samples) / n
        tol = pt.binomial_tolerance(post[s], n, alpha / max(len(texts), 1))
        if abs(f - post[s]) > tol:
            bad.append(f"{s}: frequency {f:.3f} vs exact {post[s]:.3f} (tol {tol:.3f})")
    return bad


@pytest.mark.slow  # about 1.5 min on 2 shared cores (hundreds of compiled runs)
@pytest.mark.parametrize("ancestor_sampling,threshold", [(True, 1.0), (False, 0.0)])
@settings(max_examples=2)
@given(params=H.params_strategy())
def test_conditional_sweep_leaves_the_posterior_invariant(ancestor_sampling, threshold, params):
    prog, exact = H.load(params)
    assume(np.isfinite(exact.log_evidence) and max(exact.posterior.values()) < 0.97)
    samples = sweep_samples(prog, exact, R_CSMC, ess_threshold=threshold,
                            ancestor_sampling=ancestor_sampling)
    bad = frequency_discrepancies(samples, exact.posterior)
    assert not bad, bad


def test_retained_errors():
    prog, _ = H.load(_fixed())
    with pytest.raises(ppl.errors.OptionError, match="needs retained"):
        ppl.infer(prog, method="csmc", particles=3)
    with pytest.raises(ppl.errors.OptionError, match="max_tokens"):
        ppl.infer(prog, method="csmc", particles=3, retained=[0] * (H.T + 1))
    with pytest.raises(ppl.errors.OptionError, match="token ids"):
        ppl.infer(prog, method="csmc", particles=3, retained=[[0]])


def _fixed():
    from tests.properties.test_inference import _fixed_params

    return _fixed_params()


def test_incomplete_retained_sequence_is_refused():
    prog, exact = H.load(_fixed())
    full = max(exact.posterior, key=lambda s: (len(s) > 1, exact.posterior[s]))
    with pytest.raises(ppl.errors.OptionError, match="not a complete sequence"):
        ppl.infer(prog, method="csmc", particles=3, retained=list(full[:-1]))
