"""Rejuvenation (resample-move, Gilks & Berzuini 2001) of finished SMC particles.

``ppl.infer(program, method="smc", rejuvenate=k)`` runs SMC to the end, then (if the final ESS
is below ``ess_threshold * N``) resamples once, then applies ``k`` Metropolis–Hastings moves to
every particle independently (vmapped). Each move targets the full posterior
``pi(x) ∝ gamma(x) = p(x) exp(factors(x))·1[conditions]``:

1. draw a position ``j`` uniformly in ``{0, ..., L(x) - 1}`` (``L`` = number of tokens);
2. regenerate the suffix: keep ``x_<j``, draw ``x'_j, x'_{j+1}, ...`` from the program's own
   proposal ``q`` until the program finishes (``final`` included);
3. accept ``x'`` with probability ``min(1, [W(x') / W(x)] · [L(x) / L(x')])`` where
   ``W(x) = gamma(x) / q(x)`` is the sequence's own importance weight.

Why this is exact: with the position as an auxiliary variable of law ``u(j | x) = 1/L(x)``,
the MH ratio on ``(x, j)`` for the independent-suffix proposal ``q(x'_{>=j} | x_<j)`` is::

    gamma(x') u(j|x') q(x_{>=j} | x_<j)       W(x')   L(x)
    ------------------------------------  =  ----- · -----
    gamma(x)  u(j|x)  q(x'_{>=j} | x_<j)      W(x)    L(x')

because ``q(x) = q(x_<j) q(x_{>=j} | x_<j)`` and the prefix factor cancels (twists cancel as
well: finished particles carry none). Redrawing ``j`` each move is a Gibbs step on the
auxiliary variable, so every move leaves ``pi`` invariant. Applying a ``pi``-invariant kernel
to each particle of a properly weighted population keeps it properly weighted, so the weights
(and ``log Z_hat``) are unchanged by the moves: the evidence estimate stays unbiased.

How the move is computed (static shapes, exact KV cache): the program's state at ``j`` is not
stored, so a move *replays* the sequence from the start: one IS sweep of ``N`` rows in which
row ``i``'s first ``j_i`` tokens are forced (the ``forced`` option of the SMC kernel) and the
rest drawn. The sweep recomputes every KV-cache slot it attends to, so the cache is consistent
by construction. ``W(x)`` of the current particles comes from one fully forced replay before
the first move and is carried along. Cost: ``k + 1`` extra sweeps of ``N`` rows.

Scope: moves are applied to the *finished* population (the final target), not after every
intermediate resampling: an intermediate move at step ``t`` would need a replay of ``t``
tokens per move, ``O(k T^2)`` LM work per sweep. Requirements as for particle Gibbs: only LM
tokens are random, weights are deterministic in the tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl.inference import _engine as E
from ppl.inference import resampling as R
from ppl.inference import smc

__all__ = ["MoveInfo", "replay", "build_move", "rejuvenate"]


class MoveInfo(NamedTuple):
    accepted: jax.Array  # bool[N]
    position: jax.Array  # int32[N]


def replay(key, setup: E.Setup, params, tokens, upto, bias_fn=None) -> tuple[E.Particles, jax.Array]:
    """One importance sweep where row ``i`` keeps ``tokens[i, :upto[i]]`` and draws the rest.

    Returns the finished particles (``logw`` = own weight ``log gamma(x) - log q(x)``) and the
    LM NaN flag.
    """
    n = tokens.shape[0]
    kernel = smc.build_kernel(setup, params, ess_threshold=0.0, forced=(tokens, upto),
                              bias_fn=bias_fn)
    st = smc.run_loop(key, setup, params, n, kernel)
    return st.particles, st.lm.nan


def build_move(setup: E.Setup, params, bias_fn=None):
    """``move((parts, own_logw), key) -> ((parts, own_logw), info)``: one MH move per particle
    (the argument order of ``lax.scan``).

    ``own_logw`` is each particle's own ``log W(x)``; ``parts.logw`` (the SMC weight) is
    carried unchanged.
    """

    def move(carry, key):
        parts, own = carry
        k_j, k_sweep, k_u = jax.random.split(key, 3)
        n = parts.length.shape[0]
        length = jnp.maximum(parts.length, 1)
        j = jnp.floor(jax.random.uniform(k_j, (n,)) * length).astype(jnp.int32)
        j = jnp.minimum(j, length - 1)
        new, _ = replay(k_sweep, setup, params, parts.tokens, j, bias_fn)
        new_len = jnp.maximum(new.length, 1)
        log_alpha = (new.logw - own) + jnp.log(length.astype(jnp.float32)) - jnp.log(
            new_len.astype(jnp.float32))
        log_alpha = jnp.where(jnp.isfinite(own), log_alpha, jnp.inf)
        accept = jnp.isfinite(new.logw) & (jnp.log(jax.random.uniform(k_u, (n,))) < log_alpha)
        pick = lambda a, b: jax.tree.map(  # noqa: E731
            lambda x, y: jnp.where(accept.reshape((n,) + (1,) * (x.ndim - 1)), x, y), a, b)
        moved = pick(new._replace(logw=parts.logw, twist=parts.twist), parts)
        return (moved, jnp.where(accept, new.logw, own)), MoveInfo(accept, j)

    return move


def rejuvenate(key, setup: E.Setup, params, parts: E.Particles, num_moves: int, *,
               resampling: str = "stratified", ess_threshold: float = 0.5, bias_fn=None):
    """Resamples the finished population if its ESS is low, then ``num_moves`` MH moves.

    Returns ``(particles, info)`` with ``info.accepted`` of shape ``bool[num_moves, N]``.
    The log mean weight (the evidence estimate) is preserved exactly.
    """
    k_res, k_own, k_moves = jax.random.split(key, 3)
    n = parts.logw.shape[0]
    resample_fn = R.RESAMPLERS[resampling]
    do_res = (R.ess(parts.logw) < ess_threshold * n) & (ess_threshold > 0)

    def resample(p):
        idx = resample_fn(k_res, p.logw, n)
        mean = E.log_mean_exp(p.logw)
        p = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), p)
        return p._replace(logw=jnp.full_like(p.logw, mean))

    parts = jax.lax.cond(do_res, resample, lambda p: p, parts)
    full, _ = replay(k_own, setup, params, parts.tokens, parts.length, bias_fn)
    move = build_move(setup, params, bias_fn)
    (parts, _), info = jax.lax.scan(move, (parts, full.logw), jax.random.split(k_moves, num_moves))
    return parts, info
