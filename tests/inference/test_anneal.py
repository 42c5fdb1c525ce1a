"""Annealed resampling (``anneal=``): flatter selection, exact weights."""

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.inference import resampling as R
from tests.inference.test_exact import Twisted
from tests.conftest import make_bigram


@pytest.fixture(scope="module")
def twisted():
    return Twisted(make_bigram(3), prompt="")


def test_beta_one_is_plain_resampling(twisted):
    a = ppl.infer(twisted, method="smc", particles=32, seed=3, ess_threshold=1.0)
    b = ppl.infer(twisted, method="smc", particles=32, seed=3, ess_threshold=1.0, anneal=1.0)
    assert np.array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.log_weights, b.log_weights, rtol=0, atol=1e-5)


def test_tempered_resampling_preserves_total_weight_in_expectation():
    """E[Σ new w] = Σ w and E[Σ_i new w_i 1[anc_i = a]] = w_a, over many keys."""
    import jax

    lw = jnp.log(jnp.array([0.05, 0.6, 0.05, 0.3], jnp.float32)) + 2.0
    cand = R.Candidates(ppl.inference.engine.Particles(None, None, None, lw, None, None, None),
                        None, None, None)
    sel = R.adaptive("multinomial", 1.0, anneal=0.3).select

    def one(k):
        anc, new = sel(k, k, 0, cand)
        return jnp.zeros(4).at[anc].add(jnp.exp(new))

    keys = jax.random.split(jax.random.key(0), 20000)
    per = np.asarray(jax.vmap(one)(keys))
    mean, se = per.mean(0), per.std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(mean - np.exp(np.asarray(lw))) < 4.5 * se + 1e-6), (mean, np.exp(lw))


def test_entropy_schedule():
    n = 8
    equal = jnp.zeros((n,))
    assert float(R.anneal_beta("entropy", equal, 0, 10)) == 1.0
    collapsed = jnp.array([0.0] + [-50.0] * (n - 1))
    b = float(R.anneal_beta("entropy", collapsed, 0, 10))
    assert b == pytest.approx((1 / n) / 0.9, rel=1e-5)  # ESS = 1: beta = ESS / (N (1 - t/T))
    assert float(R.anneal_beta("entropy", collapsed, 9, 10)) == 1.0  # near the horizon


@pytest.mark.parametrize("bad", [0.0, 1.5, "ess", True])
def test_anneal_option_errors(twisted, bad):
    with pytest.raises(ppl.errors.OptionError):
        ppl.infer(twisted, method="smc", particles=4, anneal=bad)


def test_anneal_refuses_islands(twisted):
    with pytest.raises(ppl.errors.OptionError, match="islands"):
        ppl.infer(twisted, method="smc", particles=4, anneal="entropy", islands=2)
