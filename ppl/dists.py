"""Distributions over next tokens.

A `TokenDist` is a categorical distribution over the vocabulary held as log-weights.
It follows the numpyro ``Distribution`` calling convention (``sample(key)``,
``log_prob(x)``), so programs can pass either kind to ``ctx.sample``/``ctx.observe``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from ppl.errors import ProgramError

__all__ = ["SAMPLE_BLOCK", "TokenDist", "block_masses", "flat_cdf", "sample_logits"]


#: Entries per block of the two-level sampler: a draw picks a block by the blocks' total
#: masses, then an entry inside it, so no cumulative sum runs over the whole vocabulary.
SAMPLE_BLOCK = 128


def block_masses(logits: jax.Array):
    """``(m, e, sums)``: ``m`` the row maximum (0 for an all-``-inf`` row), ``e = exp(logits -
    m)`` zero-padded to whole blocks, ``[..., nb, SAMPLE_BLOCK]``, and each block's mass
    ``sums = e.sum(-1)``, ``[..., nb]``. The normaliser is ``m + log(sum(sums))``."""
    v = logits.shape[-1]
    m = jnp.max(logits, axis=-1)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(logits - m[..., None])
    nb = -(-v // SAMPLE_BLOCK)
    e = jnp.pad(e, [(0, 0)] * (e.ndim - 1) + [(0, nb * SAMPLE_BLOCK - v)])
    e = e.reshape(e.shape[:-1] + (nb, SAMPLE_BLOCK))
    return m, e, jnp.sum(e, axis=-1)


def flat_cdf(p: jax.Array) -> jax.Array:
    """The cumulative sum of ``p >= 0`` along the last axis, constant across zero entries.

    XLA's cumulative sum is not monotone over entries that add zero (its summation order
    differs from index to index: on a 50k vocabulary with 70% of it masked, ~1e-5 of the mass
    fell on masked entries, enough to kill some of 256 x 64 draws), so a running maximum over
    the positive entries' values makes it flat there and no search can land on one."""
    cdf = jnp.cumsum(p, axis=-1)
    return jax.lax.cummax(jnp.where(p > 0, cdf, 0.0), axis=cdf.ndim - 1)


def _search(cdf: jax.Array, u: jax.Array) -> jax.Array:
    """The first index whose ``cdf`` exceeds ``u`` (a positive entry of a ``flat_cdf``); where
    none does (``u`` rounded up to the total), the last positive entry (0 if there is none)."""
    i = jnp.sum(cdf <= u[..., None], axis=-1)
    last = jnp.sum(cdf < cdf[..., -1:], axis=-1)
    return jnp.where(i >= cdf.shape[-1], last, i)


def sample_logits(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Draws an index with probability proportional to ``exp(logits)`` by a two-level inverse CDF.

    With ``u ~ U[0, 1)`` and ``Z`` the total mass, the block is the first whose cumulative
    mass exceeds ``u Z``, and the entry the first inside it whose cumulative mass exceeds what
    is left of ``u Z``: the inverse CDF of the whole vocabulary, with cumulative sums over
    ``V / SAMPLE_BLOCK`` block masses and one block's ``SAMPLE_BLOCK`` entries instead of
    all ``V`` (on a 2-core x86 CPU, 64 rows of 50,257: the full-vocabulary cumulative sum and
    running maximum were 20 ms of a 255 ms SMC step; Gumbel-max costs more still). Zero-mass
    entries and blocks are never drawn (``flat_cdf``); a draw that rounds past the total
    falls back to the last positive entry (of the row, then of the block).

    Args:
        key: a PRNG key.
        logits: ``float32[..., V]`` unnormalised log-weights.
    """
    _, e, sums = block_masses(logits)
    u = jax.random.uniform(key, logits.shape[:-1])
    bcdf = flat_cdf(sums)
    target = u * bcdf[..., -1]
    j = _search(bcdf, target)
    before = jnp.where(j > 0, jnp.take_along_axis(bcdf, jnp.maximum(j - 1, 0)[..., None],
                                                  axis=-1)[..., 0], 0.0)
    block = jnp.take_along_axis(e, j[..., None, None], axis=-2)[..., 0, :]
    i = _search(flat_cdf(block), target - before)
    return (j * SAMPLE_BLOCK + i).astype(jnp.int32)


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
        """``log sum_x exp(logits[x])`` (``-inf`` for an empty support).

        The same [block_masses][ppl.dists.block_masses] as a draw's, so inside one compiled
        step XLA computes the ``exp`` pass once for the draw and its weight (merged as a
        common subexpression; nothing is cached on the object, which would leak tracers from
        one trace into the next)."""
        m, _, sums = block_masses(self.logits)
        total = jnp.sum(sums, axis=-1)
        return jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)

    @property
    def logprobs(self) -> jax.Array:
        """``float32[V]``: normalised log-probabilities (all ``-inf`` if nothing is allowed)."""
        z = self.log_normalizer
        return jnp.where(jnp.isfinite(z), self.logits - z, -jnp.inf)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log p(x)``; ``-inf`` when ``x`` is masked out, outside the vocabulary, or the
        support is empty."""
        z = self.log_normalizer
        lp = self.logits[x] - z
        # An id outside the vocabulary has probability 0 (indexing would clamp it).
        inside = (x >= 0) & (x < self.logits.shape[-1])
        return jnp.where(jnp.isfinite(z) & inside, lp, -jnp.inf)

    def sample(self, key: jax.Array, sample_shape=()) -> jax.Array:
        if sample_shape:
            keys = jax.random.split(key, int(jnp.prod(jnp.array(sample_shape))))
            return jax.vmap(lambda k: sample_logits(k, self.logits))(keys).reshape(sample_shape)
        return sample_logits(key, self.logits)

    def mask(self, allowed: jax.Array) -> "TokenDist":
        """The distribution restricted to ``allowed`` (``bool[V]``) and renormalised."""
        return TokenDist(jnp.where(allowed, self.logits, -jnp.inf), self.lm_index)

    def temper(self, temperature) -> "TokenDist":
        """``p(x) ∝ exp(logits[x] / temperature)``.

        ``temperature=0`` is the limit ``temperature -> 0``: greedy decoding, all the mass
        on the most likely token (shared uniformly among ties). A traced temperature must be
        > 0 (it is not checked).

        Raises:
            ValueError: a negative or non-finite temperature.
            TypeError: a temperature that is not a number.
        """
        if isinstance(temperature, jax.core.Tracer):
            return TokenDist(self.logits / temperature, self.lm_index)
        t = check_temperature(temperature)
        if t == 0.0:
            best = jnp.max(self.logits, axis=-1, keepdims=True)
            return TokenDist(jnp.where((self.logits == best) & (best > -jnp.inf), 0.0, -jnp.inf),
                             self.lm_index)
        return TokenDist(self.logits / t, self.lm_index)

    def add(self, bias: jax.Array) -> "TokenDist":
        """``p(x) ∝ exp(logits[x] + bias[x])``: a logit bias, e.g. a learned proposal."""
        return TokenDist(self.logits + bias, self.lm_index)

    def top_k(self, k: int) -> "TokenDist":
        """The ``k`` most likely tokens, renormalised (``1 <= k <= V``; ties with the k-th are kept).

        Sampling from it changes the distribution itself: as the ``dist`` of ``ctx.sample``
        it is the prior; as a ``proposal`` it never proposes the other tokens (see
        [mix][ppl.TokenDist.mix] for a proposal that keeps the target exact).
        """
        v = self.logits.shape[-1]
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= v:
            raise ProgramError(f"top_k(k) needs an integer k in 1..{v} (the vocabulary size), "
                               f"got {k!r}.")
        k = int(k)
        kth = jax.lax.top_k(self.logits, k)[0][..., -1]
        return TokenDist(jnp.where(self.logits >= kth, self.logits, -jnp.inf), self.lm_index)

    def top_p(self, p: float) -> "TokenDist":
        """Nucleus truncation: the most likely tokens whose probabilities first sum to ``p`` or
        more (at least one token; ties with the last kept token are kept), renormalised.

        Like [top_k][ppl.TokenDist.top_k], this is a *different distribution*: sampling it as
        the ``dist`` of ``ctx.sample`` changes the prior (the target becomes the truncated LM).
        To keep the untruncated LM as the prior and use the nucleus only to guide the draws,
        pass ``dist.top_p(p).mix(dist, floor)`` as the ``proposal``: the weight
        ``log p(x) - log q(x)`` is exact and the mixture covers every token.

        Args:
            p: the kept probability mass, ``0 < p <= 1`` (1 keeps every possible token).
        """
        _check_fraction("top_p", p, low_open=True)
        if isinstance(p, (int, float)) and p >= 1:  # float rounding must not drop a tail token
            return self
        lp = self.logprobs
        srt = jnp.sort(lp, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(jnp.exp(srt), axis=-1) - jnp.exp(srt)
        # The smallest kept log-probability: the last sorted entry whose preceding mass is
        # still below p (the first entry always qualifies).
        kept = mass_before < p
        threshold = jnp.min(jnp.where(kept, srt, jnp.inf), axis=-1, keepdims=True)
        return TokenDist(jnp.where(lp >= threshold, self.logits, -jnp.inf), self.lm_index)

    def min_p(self, p: float) -> "TokenDist":
        """The tokens at least ``p`` times as likely as the most likely one, renormalised.

        A change of the distribution as [top_p][ppl.TokenDist.top_p] is (the same notes on
        prior and proposal apply).

        Args:
            p: the relative threshold, ``0 <= p <= 1`` (0 keeps every possible token, 1 only
                the most likely ones).
        """
        _check_fraction("min_p", p, low_open=False)
        top = jnp.max(self.logits, axis=-1, keepdims=True)
        return TokenDist(jnp.where(self.logits >= top + jnp.log(p), self.logits, -jnp.inf),
                         self.lm_index)

    def mix(self, other: "TokenDist", weight: float) -> "TokenDist":
        """The mixture ``(1 - weight) * self + weight * other`` of the two normalised
        distributions (a *defensive* proposal: with ``other`` the prior and ``weight > 0`` it
        proposes every token the prior allows, so importance weights stay bounded by
        ``1 / weight`` and the target is unchanged).

        Args:
            other: a distribution over the same vocabulary.
            weight: the mixture weight of ``other``, ``0 <= weight <= 1``.
        """
        _check_fraction("weight", weight, low_open=False)
        logits = jnp.logaddexp(jnp.log1p(-weight) + self.logprobs, jnp.log(weight) + other.logprobs)
        return TokenDist(logits, self.lm_index if self.lm_index is not None else other.lm_index)


def check_temperature(temperature) -> float:
    """``temperature`` as a float ``>= 0`` (0 means greedy, see [TokenDist.temper][ppl.TokenDist.temper]).

    Raises:
        TypeError: not a number (a string, a bool, None).
        ValueError: negative, NaN or infinite.
    """
    import math

    if hasattr(temperature, "shape") and temperature.shape == () and not isinstance(
            temperature, jax.core.Tracer):
        temperature = temperature.item()  # a concrete 0-d array
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number >= 0, got {temperature!r} "
                        f"({type(temperature).__name__}); e.g. temperature=0.7 (0 = greedy).")
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}.")
    return t


def _check_fraction(name: str, value, low_open: bool) -> None:
    """Refuses Python numbers outside the range (traced values are the caller's business)."""
    import numbers

    if isinstance(value, bool) or isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, "
                        f"got {value!r}.")
    if isinstance(value, numbers.Real):
        v = float(value)
        if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got "
                             f"{value!r}" + ("; top_p=1 keeps every token." if low_open else "."))
