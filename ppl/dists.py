"""Distributions over next tokens.

A :class:`TokenDist` is a categorical distribution over the vocabulary held as log-weights.
It follows the numpyro ``Distribution`` calling convention (``sample(key)``,
``log_prob(x)``), so programs can pass either kind to ``ctx.sample``/``ctx.observe``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["TokenDist", "sample_logits"]


def sample_logits(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Draws an index with probability proportional to ``exp(logits)`` by inverse CDF.

    A cumulative sum and one binary search cost a fraction of ``jax.random.categorical``'s
    Gumbel-max over a 50k vocabulary on CPU (~5x cheaper, measured on a 2-core x86 CPU when the
    sampler was chosen). Zero-probability entries are never drawn: XLA's cumulative sum is
    not monotone over entries that add zero (its summation order differs from index to
    index: on a 50k vocabulary with 70% of it masked, ~1e-5 of the mass fell on masked
    entries, enough to kill some of 256 x 64 draws), so the CDF is made flat over them
    (``masked_cdf``), and a uniform draw that rounds up to the total mass falls back to the
    most likely entry.
    """
    cdf = masked_cdf(logits)
    u = jax.random.uniform(key, cdf.shape[:-1]) * cdf[..., -1]
    idx = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(
        cdf.reshape(-1, cdf.shape[-1]), u.reshape(-1)
    ).reshape(u.shape)
    idx = jnp.clip(idx, 0, logits.shape[-1] - 1)
    ok = jnp.take_along_axis(logits, idx[..., None], axis=-1)[..., 0] > -jnp.inf
    return jnp.where(ok, idx, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def masked_cdf(logits: jax.Array) -> jax.Array:
    """The unnormalised CDF of ``exp(logits)`` along the last axis, constant across entries
    of zero probability (so no binary search can land on one)."""
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m)
    cdf = jnp.cumsum(p, axis=-1)
    return jax.lax.cummax(jnp.where(p > 0, cdf, 0.0), axis=cdf.ndim - 1)


class TokenDist:
    """Categorical distribution over token ids, ``p(x) ∝ exp(logits[x])``.

    Args:
        logits: ``float32[V]`` unnormalised log-weights (``-inf`` = impossible).
        lm_index: set when the distribution is (derived from) the LM's next-token
            distribution; sampling or observing it then extends the particle's LM context.
    """

    def __init__(self, logits: jax.Array, lm_index: int | None = None):
        self.logits = logits
        self.lm_index = lm_index

    @property
    def log_normalizer(self) -> jax.Array:
        return jax.nn.logsumexp(self.logits, axis=-1)

    @property
    def logprobs(self) -> jax.Array:
        """``float32[V]``: normalised log-probabilities (all ``-inf`` if nothing is allowed)."""
        z = self.log_normalizer
        return jnp.where(jnp.isfinite(z), self.logits - z, -jnp.inf)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log p(x)``; ``-inf`` when ``x`` is masked out or the support is empty."""
        z = self.log_normalizer
        lp = self.logits[x] - z
        return jnp.where(jnp.isfinite(z), lp, -jnp.inf)

    def sample(self, key: jax.Array, sample_shape=()) -> jax.Array:
        if sample_shape:
            keys = jax.random.split(key, int(jnp.prod(jnp.array(sample_shape))))
            return jax.vmap(lambda k: sample_logits(k, self.logits))(keys).reshape(sample_shape)
        return sample_logits(key, self.logits)

    def mask(self, allowed: jax.Array) -> "TokenDist":
        """The distribution restricted to ``allowed`` (``bool[V]``) and renormalised."""
        return TokenDist(jnp.where(allowed, self.logits, -jnp.inf), self.lm_index)

    def temper(self, temperature) -> "TokenDist":
        """``p(x) ∝ exp(logits[x] / temperature)`` (temperature > 0)."""
        return TokenDist(self.logits / temperature, self.lm_index)

    def add(self, bias: jax.Array) -> "TokenDist":
        """``p(x) ∝ exp(logits[x] + bias[x])``: a logit bias, e.g. a learned proposal."""
        return TokenDist(self.logits + bias, self.lm_index)

    def top_k(self, k: int) -> "TokenDist":
        """The ``k`` most likely tokens, renormalised."""
        kth = jax.lax.top_k(self.logits, k)[0][..., -1]
        return TokenDist(jnp.where(self.logits >= kth, self.logits, -jnp.inf), self.lm_index)
