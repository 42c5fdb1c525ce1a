"""The token sampler never draws a zero-probability entry.

XLA's cumulative sum over a 50k vocabulary is not monotone across entries that add zero (its
summation order differs between indices), so a plain inverse-CDF search landed on masked
tokens with probability ~1e-5 per draw: with EOS masked, a particle of the GPT-2-small
N=256 T=64 scaling run drew EOS and ended early ("every particle has T tokens" failed).
"""

import jax
import jax.numpy as jnp
import numpy as np

from scipy import stats

from ppl.dists import SAMPLE_BLOCK, block_masses, flat_cdf, sample_logits

V = 50257


def _masked_logits(seed, rows=64):
    k1, k2 = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(k1, (rows, V)) * 3
    allowed = (jax.random.uniform(k2, (rows, V)) < 0.3).at[:, V - 1].set(False)
    return jnp.where(allowed, logits, -jnp.inf), allowed


def test_cdf_is_flat_over_masked_entries():
    logits, allowed = _masked_logits(0)
    masses = jax.jit(block_masses)(logits)
    cdf = np.asarray(jax.jit(flat_cdf)(masses[1].reshape(logits.shape[0], -1)))[:, :V]
    prev = np.concatenate([np.zeros((cdf.shape[0], 1)), cdf[:, :-1]], axis=1)
    assert (cdf >= prev).all()
    assert (cdf[~np.asarray(allowed)] == prev[~np.asarray(allowed)]).all()
    # The total is the sum of the allowed probabilities.
    p = np.exp(np.asarray(logits, np.float64) - np.asarray(logits).max(-1, keepdims=True))
    np.testing.assert_allclose(cdf[:, -1], p.sum(-1), rtol=1e-4)


def test_draws_are_allowed_tokens():
    logits, allowed = _masked_logits(1, rows=8)
    keys = jax.random.split(jax.random.key(2), 512)
    draws = jax.jit(jax.vmap(lambda k: sample_logits(k, logits)))(keys)  # [512, 8]
    assert np.asarray(allowed)[np.arange(8)[None, :], np.asarray(draws)].all()
    # A row with one allowed entry always gives it; an all-masked row gives a valid index.
    one = jnp.full((V,), -jnp.inf).at[17].set(0.0)
    assert int(sample_logits(jax.random.key(0), one)) == 17
    assert 0 <= int(sample_logits(jax.random.key(0), jnp.full((V,), -jnp.inf))) < V


def test_two_level_draws_have_the_exact_distribution():
    """Draws match ``exp(logits)`` normalised, by a chi-square test (false-failure rate 1e-3)
    on a vocabulary of 3.5 blocks with masked entries, a masked block and a dominant entry."""
    v = int(3.5 * SAMPLE_BLOCK)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(v) * 2
    logits[rng.random(v) < 0.4] = -np.inf
    logits[SAMPLE_BLOCK:2 * SAMPLE_BLOCK] = -np.inf  # a block with no mass
    logits[5] = 6.0
    p = np.exp(logits - logits.max())
    p /= p.sum()
    n = 200_000
    keys = jax.random.split(jax.random.key(3), n)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_logits(k, jnp.asarray(logits, jnp.float32))))(keys))
    counts = np.bincount(draws, minlength=v)
    assert counts[p == 0].sum() == 0
    # Pool the rare entries so every cell expects at least 5 draws.
    live = p > 0
    big = live & (n * p >= 5)
    obs = np.append(counts[big], counts[live & ~big].sum())
    exp = np.append(n * p[big], n * p[live & ~big].sum())
    keep = exp > 0
    chi2 = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-3, keep.sum() - 1), chi2


def test_a_dist_used_inside_jit_is_still_usable_outside():
    """Nothing traced is cached on a TokenDist: the same object gives its exact log-probs and
    draws in a jitted function and then eagerly (a per-object cache of the block masses leaked
    the first trace's values: UnexpectedTracerError)."""
    from ppl.dists import TokenDist

    d = TokenDist(jnp.log(jnp.array([0.2, 0.3, 0.5])))
    assert abs(float(jax.jit(d.log_prob)(1)) - np.log(0.3)) < 1e-6
    assert abs(float(d.log_prob(2)) - np.log(0.5)) < 1e-6
    assert abs(float(d.log_normalizer)) < 1e-6
    x = jax.jit(d.sample)(jax.random.key(0))
    assert 0 <= int(d.sample(jax.random.key(0))) < 3 and int(x) == int(d.sample(jax.random.key(0)))
