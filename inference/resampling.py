"""Resampling: the schemes, and the resampling strategies SMC's kernel takes.

Schemes share one signature: ``(key, log_weights, num_samples) -> indices``.

All take unnormalised log-weights (``-inf`` allowed), never produce NaN, and return
``int32[num_samples]`` ancestor indices whose expected counts are ``num_samples * w_i`` with
``w`` the normalised weights. When every weight is ``-inf`` the particles are returned in
order (the run is then reported as dead by the driver, not silently continued).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Candidates",
    "DEFAULT_ESS_THRESHOLD",
    "DEFAULT_SCHEME",
    "RESAMPLERS",
    "Resampling",
    "adaptive",
    "anneal_beta",
    "tempered_weights",
    "ess",
    "log_mean_exp",
    "log_normalize",
    "iid_multinomial",
    "masked_ancestors",
    "multinomial",
    "optimal",
    "residual",
    "stable_ancestors",
    "stratified",
    "systematic",
    "take_rows",
]


def log_normalize(log_weights: jax.Array) -> jax.Array:
    """Normalised log-weights; uniform when all are ``-inf`` (so downstream math stays finite)."""
    z = jax.nn.logsumexp(log_weights)
    n = log_weights.shape[0]
    return jnp.where(jnp.isfinite(z), log_weights - z, -jnp.log(n) * jnp.ones_like(log_weights))


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size ``(Σw)² / Σw²``; 0 when every weight is ``-inf``."""
    a = jax.nn.logsumexp(log_weights)
    b = jax.nn.logsumexp(2.0 * log_weights)
    return jnp.where(jnp.isfinite(a), jnp.exp(2.0 * a - b), 0.0)


def _from_points(log_weights, points):
    """Indices i with cdf[i-1] <= points < cdf[i], cdf of the normalised weights."""
    w = jnp.exp(log_normalize(log_weights))
    cdf = jnp.cumsum(w)
    cdf = cdf / cdf[-1]
    idx = jnp.searchsorted(cdf, points, side="right")
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def multinomial(key, log_weights, num_samples):
    """Independent draws from the weights (the highest-variance scheme)."""
    u = jnp.sort(jax.random.uniform(key, (num_samples,)))
    return _from_points(log_weights, u)


def iid_multinomial(key, log_weights, num_samples):
    """Independent draws in i.i.d. order (not sorted), so any one slot may be overwritten by
    a conditioning value without changing the law of the others (conditional SMC)."""
    lw = log_normalize(log_weights)
    return jax.random.categorical(key, lw, shape=(num_samples,)).astype(jnp.int32)


def stratified(key, log_weights, num_samples):
    """One uniform draw in each stratum ``[i/n, (i+1)/n)``."""
    u = (jnp.arange(num_samples) + jax.random.uniform(key, (num_samples,))) / num_samples
    return _from_points(log_weights, u)


def systematic(key, log_weights, num_samples):
    """One shared uniform offset for all strata ``[i/n, (i+1)/n)``."""
    u = (jnp.arange(num_samples) + jax.random.uniform(key, ())) / num_samples
    return _from_points(log_weights, u)


def residual(key, log_weights, num_samples):
    """``floor(n w_i)`` deterministic copies, the remainder drawn multinomially from the residuals."""
    return _residual_draws(key, log_weights, num_samples, num_samples)


def _residual_draws(key, log_weights, scale, num_out):
    """Residual resampling of ``scale`` ancestors (``scale`` may be traced) into ``num_out``
    slots: ``floor(scale w_i)`` copies first, then multinomial draws from the residuals."""
    m = log_weights.shape[0]
    w = jnp.exp(log_normalize(log_weights))
    scaled = scale * w
    counts = jnp.floor(scaled).astype(jnp.int32)
    n_det = jnp.sum(counts)
    det = jnp.repeat(jnp.arange(m, dtype=jnp.int32), counts, total_repeat_length=num_out)
    resid = scaled - counts
    resid_log = jnp.where(resid > 0, jnp.log(jnp.maximum(resid, 1e-38)), -jnp.inf)
    # If floor() already used every slot the residual draws are unused; avoid an all -inf cdf.
    resid_log = jnp.where(jnp.any(resid > 0), resid_log, jnp.zeros_like(resid_log))
    # i.i.d. draws in unsorted order: the first num_out - n_det of them are used, and the
    # first k of a *sorted* sample are its k smallest, which would favour low indices.
    extra = _from_points(resid_log, jax.random.uniform(key, (num_out,)))
    slot = jnp.arange(num_out)
    idx = jnp.where(slot < n_det, det, extra[jnp.clip(slot - n_det, 0, num_out - 1)])
    return idx.astype(jnp.int32)


def optimal(key, log_weights, num_samples):
    """Fearnhead–Clifford optimal resampling of M >= n candidates down to n, without replacement.

    Finds ``kappa`` with ``Σ min(1, w_i / kappa) = n``: candidates with ``w_i >= kappa`` are kept
    with their own weight, the others are selected by systematic sampling with probability
    ``w_i / kappa`` (each at most once) and given weight ``kappa``. The total weight is preserved
    exactly, and every candidate's expected new weight equals its old one, so evidence
    estimates stay unbiased. This is the resampling step of LLaMPPL's ``smc_steer``.

    Returns:
        ``(indices[n], new_log_weights[n])`` in the scale of ``log_weights``.
    """
    m = log_weights.shape[0]
    n = num_samples
    lz = jax.nn.logsumexp(log_weights)
    lw = log_normalize(log_weights)
    order = jnp.argsort(-lw)
    ws = jnp.exp(lw[order])
    tail = jnp.cumsum(ws[::-1])[::-1]  # tail[a] = sum_{i >= a} ws[i]
    a_range = jnp.arange(n)
    kappa_a = tail[a_range] / (n - a_range)
    valid = ws[a_range] < kappa_a
    num_kept = jnp.where(jnp.any(valid), jnp.argmax(valid), n)
    kappa = jnp.where(num_kept < n, kappa_a[jnp.clip(num_kept, 0, n - 1)], 1.0)
    pos = jnp.arange(m)
    rest = jnp.where(pos >= num_kept, ws / kappa, 0.0)
    cum = jnp.cumsum(rest)
    u = jax.random.uniform(key, ())
    slots = jnp.arange(n)
    picked = jnp.searchsorted(cum, u + (slots - num_kept), side="right")
    sorted_pos = jnp.where(slots < num_kept, slots, jnp.clip(picked, 0, m - 1))
    idx = order[sorted_pos].astype(jnp.int32)
    new_lw = jnp.where(slots < num_kept, lw[idx], jnp.log(kappa))
    new_lw = jnp.where(jnp.isfinite(lz), new_lw + lz, -jnp.inf)
    return idx, new_lw


RESAMPLERS = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def stable_ancestors(ancestors: jax.Array) -> jax.Array:
    """The same multiset of ancestors, reordered so that every surviving particle keeps its slot.

    Slot ``i`` gets ancestor ``i`` whenever particle ``i`` has at least one offspring; the
    extra offspring fill the slots of the particles that have none, in index order. After a
    resampling the particles carry equal weights, so their order does not change what the
    population represents; this order lets the KV cache be updated in place by copying only
    the rows of slots that changed, whose sources (survivors) are never overwritten.
    """
    n = ancestors.shape[0]
    counts = jnp.zeros((n,), jnp.int32).at[ancestors].add(1)
    extras = jnp.repeat(jnp.arange(n, dtype=jnp.int32), jnp.maximum(counts - 1, 0),
                        total_repeat_length=n)
    (dead,) = jnp.nonzero(counts == 0, size=n, fill_value=n)
    own = jnp.arange(n, dtype=jnp.int32)
    return own.at[dead].set(extras, mode="drop")


#: The default scheme and threshold of every resampling backend (``ppl.infer`` options
#: ``resampling=`` and ``ess_threshold=``).
DEFAULT_SCHEME = "stratified"
DEFAULT_ESS_THRESHOLD = 0.5


def log_mean_exp(logw) -> jax.Array:
    """``log mean_i exp(logw_i)`` (``-inf`` when every weight is ``-inf``)."""
    return jax.nn.logsumexp(logw) - math.log(logw.shape[0])


class Candidates(NamedTuple):
    """What a resampling strategy may look at after step ``t``'s proposal.

    Attributes:
        particles: the population after the proposal (``logw`` includes step ``t``).
        kv: the LM state before step ``t``'s tokens are fed.
        tokens: ``int32[N]`` step ``t``'s tokens.
        old_length: ``int32[N]`` the lengths before step ``t``.
        eligible: ``bool[N]`` or None: the particles at a unit boundary (or finished), the
            only ones a unit-aware strategy may resample; None: all of them.
    """

    particles: Any
    kv: Any
    tokens: jax.Array
    old_length: jax.Array
    eligible: Any = None


class Resampling(NamedTuple):
    """The resampling step ``R_t`` of SMC's Feynman–Kac model, as one strategy argument.

    The kernel resamples when ``ESS < ess_threshold * N`` (never after the last step, never
    with a threshold of 0). Then ``select`` draws the ancestors and the new log-weights, and
    ``take`` copies arrays along those ancestors.

    Attributes:
        ess_threshold: the adaptive trigger, in ``[0, 1]``.
        select: ``(k_res, k_anc, t, candidates) -> (ancestors int32[N], log_weights
            float32[N])``; the new weights keep the (group) mean weight, so evidence
            estimates stay unbiased.
        take: ``(x, rows, t) -> x[rows]`` along axis 0 (an island strategy keeps it local).
        stable: ``select``'s ancestors keep every survivor in its own slot
            ([stable_ancestors][ppl.inference.resampling.stable_ancestors]), so the KV cache
            can be updated in place, copying only the slots that changed.
        units: ``select`` honours ``Candidates.eligible`` (resamples only the particles at a
            unit boundary, among themselves); a strategy without it refuses programs and
            options that declare units.
    """

    ess_threshold: float
    select: Callable
    take: Callable
    stable: bool
    units: bool = False


def take_rows(x, rows, t=None):
    """``jnp.take(x, rows, axis=0)``: the row gather of a global strategy."""
    return jnp.take(x, rows, axis=0)


def anneal_beta(anneal, log_weights, t, horizon: int):
    """The selection exponent ``beta`` in ``(0, 1]`` of annealed resampling at step ``t``.

    ``anneal``: a number (a fixed ``beta``) or ``"entropy"``: the schedule of entropic
    annealing (Giannone et al. 2025, "Mitigating Premature Exploitation in Particle-based
    Monte Carlo for Inference-Time Scaling"), ``1 / beta = N / ESS * (1 - t / T)`` clipped to
    ``beta <= 1``: the more the weights have collapsed (low ESS, an order-2 entropy of the
    weights), the flatter the selection, relaxing to plain resampling near the horizon ``T``.
    """
    if not isinstance(anneal, str):
        return jnp.float32(anneal)
    n = log_weights.shape[0]
    frac = jnp.maximum(ess(log_weights), 1.0) / n
    left = jnp.maximum(1.0 - (t + 1) / horizon, 1e-6)
    return jnp.clip(frac / left, 1.0 / n, 1.0).astype(jnp.float32)


def tempered_weights(log_weights, ancestors, beta, lz_beta, m):
    """New log-weights after selecting ``ancestors`` with probabilities ``∝ w^beta``.

    Slot ``i`` with ancestor ``a`` gets ``w_a / (m pi_a) = w_a^(1 - beta) Σ_j w_j^beta / m``
    (``lz_beta = log Σ_j w_j^beta`` over the ``m`` candidates): an importance correction for
    having selected with ``pi`` instead of ``w``, so the resampled population stays properly
    weighted and the evidence estimate unbiased. ``beta = 1`` is the usual mean weight.
    """
    lw_a = log_weights[ancestors]
    kept = jnp.where(jnp.isfinite(lw_a), (1.0 - beta) * lw_a, -jnp.inf)
    return (kept + lz_beta - jnp.log(jnp.maximum(m, 1).astype(jnp.float32))).astype(
        log_weights.dtype)


def adaptive(scheme: str = DEFAULT_SCHEME, ess_threshold: float = DEFAULT_ESS_THRESHOLD,
             anneal=None, horizon: int = 1) -> Resampling:
    """Global adaptive resampling with ``scheme``: ancestors drawn from all ``N`` weights,
    every new weight set to the mean weight (survivors keep their slots).

    With units (``Candidates.eligible``) only the eligible particles are resampled, among
    themselves, and their new weight is *their* mean weight; the others keep slot and weight
    ([masked_ancestors][ppl.inference.resampling.masked_ancestors]).

    With ``anneal`` (a number in ``(0, 1]`` or ``"entropy"``, see
    [anneal_beta][ppl.inference.resampling.anneal_beta]; ``horizon``: the token budget) the
    ancestors are selected with probabilities ``∝ w^beta`` and each keeps the correction
    ``w^(1 - beta)`` ([tempered_weights][ppl.inference.resampling.tempered_weights]):
    selection is flatter (more diversity), the population stays properly weighted."""
    resample_fn = RESAMPLERS[scheme]

    def select(k_res, k_anc, t, cand: Candidates):
        lw = cand.particles.logw
        if anneal is not None:
            return _annealed(scheme, k_res, lw, cand.eligible, t, anneal, horizon)
        if cand.eligible is not None:
            return masked_ancestors(scheme, k_res, lw, cand.eligible)
        idx = stable_ancestors(resample_fn(k_res, lw, lw.shape[0]))
        return idx, jnp.full_like(lw, log_mean_exp(lw))

    return Resampling(float(ess_threshold), select, take_rows, True, units=True)


def _annealed(scheme, key, lw, eligible, t, anneal, horizon):
    """Annealed selection over all particles, or over the eligible ones (units)."""
    n = lw.shape[0]
    elig = jnp.ones((n,), bool) if eligible is None else eligible
    lw_e = jnp.where(elig, lw, -jnp.inf)
    beta = anneal_beta(anneal, lw_e, t, horizon)
    sel = beta * lw_e
    m = jnp.sum(elig.astype(jnp.int32))
    lz = jax.nn.logsumexp(sel)
    ok = jnp.isfinite(lz)
    if eligible is None:
        anc = RESAMPLERS[scheme](key, sel, n)
    else:
        rank = jnp.clip(jnp.cumsum(elig.astype(jnp.int32)) - 1, 0, n - 1)
        anc = jnp.where(elig, _masked_draws(scheme, key, sel, m)[rank], jnp.arange(n, dtype=jnp.int32))
    own = jnp.arange(n, dtype=jnp.int32)
    anc = stable_ancestors(jnp.where(elig & ok, anc, own))
    new_lw = jnp.where(elig & ok, tempered_weights(lw, anc, beta, lz, m), lw[anc])
    return anc, new_lw


def _masked_draws(scheme: str, key, log_weights, m):
    """``int32[N]`` whose first ``m`` entries (``m`` traced, ``<= N``) are ``scheme``'s draws of
    ``m`` ancestors from ``log_weights`` (the rest is unused)."""
    n = log_weights.shape[0]
    j = jnp.arange(n)
    mf = jnp.maximum(m, 1).astype(jnp.float32)
    if scheme == "stratified":
        return _from_points(log_weights, (j + jax.random.uniform(key, (n,))) / mf)
    if scheme == "systematic":
        return _from_points(log_weights, (j + jax.random.uniform(key, ())) / mf)
    if scheme == "multinomial":  # i.i.d., so any m of them are m independent draws
        return _from_points(log_weights, jax.random.uniform(key, (n,)))
    if scheme == "residual":
        return _residual_draws(key, log_weights, mf, n)
    raise ValueError(f"unknown resampling scheme {scheme!r}")


def masked_ancestors(scheme: str, key, log_weights, eligible):
    """Resamples only the ``eligible`` particles, among themselves (units).

    The ``m`` eligible slots get ``m`` ancestors drawn by ``scheme`` from the eligible
    particles' weights, and each the eligible particles' mean weight; every other slot keeps
    its particle and weight. This is resampling within a group chosen as a function of the
    current population (the particles that ended a unit): given the population, the new
    weighted population has the old one's expectation for every test function and the same
    total weight, so the final weights stay proper and ``log mean exp`` stays an unbiased
    evidence estimate (the argument of island resampling, with data-dependent groups).
    When the eligible weights are all ``-inf`` nothing moves.

    Returns:
        ``(ancestors int32[N], log_weights float32[N])``, survivors in their own slots.
    """
    n = log_weights.shape[0]
    lw_e = jnp.where(eligible, log_weights, -jnp.inf)
    m = jnp.sum(eligible.astype(jnp.int32))
    lz = jax.nn.logsumexp(lw_e)
    ok = jnp.isfinite(lz)
    draws = _masked_draws(scheme, key, lw_e, m)
    rank = jnp.clip(jnp.cumsum(eligible.astype(jnp.int32)) - 1, 0, n - 1)
    own = jnp.arange(n, dtype=jnp.int32)
    anc = jnp.where(eligible & ok, draws[rank], own)
    mean = lz - jnp.log(jnp.maximum(m, 1).astype(jnp.float32))
    new_lw = jnp.where(eligible & ok, mean, log_weights)
    return stable_ancestors(anc), new_lw.astype(log_weights.dtype)
