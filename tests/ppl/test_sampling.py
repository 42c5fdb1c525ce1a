"""The token sampler never draws a zero-probability entry.

XLA's cumulative sum over a 50k vocabulary is not monotone across entries that add zero (its
summation order differs between indices), so a plain inverse-CDF search landed on masked
tokens with probability ~1e-5 per draw: with EOS masked, a particle of the GPT-2-small
N=256 T=64 scaling run drew EOS and ended early ("every particle has T tokens" failed).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ppl.dists import masked_cdf, sample_logits

V = 50257


def _masked_logits(seed, rows=64):
    k1, k2 = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(k1, (rows, V)) * 3
    allowed = (jax.random.uniform(k2, (rows, V)) < 0.3).at[:, V - 1].set(False)
    return jnp.where(allowed, logits, -jnp.inf), allowed


def test_cdf_is_flat_over_masked_entries():
    logits, allowed = _masked_logits(0)
    cdf = np.asarray(jax.jit(masked_cdf)(logits))
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
