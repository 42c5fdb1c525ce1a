"""Machinery every backend shares: particles, the batched LM, one vmapped program step.

The particle population is a struct of arrays with the particle axis first. A step is:

1. ``propose``: the program's ``step`` runs for every particle (vmapped), drawing one token
   each and returning the log-weight increment ``log p - log q + factors + twist changes``;
2. the backend resamples (or not) and gathers particles and KV cache along ancestors;
3. ``advance_lm``: one batched forward pass feeds every live particle's new token (all of
   a particle's LM contexts at once), giving the next-token log-probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl.context import Context, ProgramError
from ppl.models.base import broadcast_cache

__all__ = ["Particles", "LMState", "Setup", "prepare", "init_population", "propose",
           "advance_lm", "advance_live", "gather", "finalize"]


class Particles(NamedTuple):
    """The population (every leaf has the particle axis first).

    Attributes:
        state: the program's state pytree.
        tokens: ``int32[N, T]`` generated tokens (EOS included when drawn), padded.
        length: ``int32[N]`` number of generated tokens.
        logw: ``float32[N]`` log importance weights (unnormalised, cumulative).
        twist: ``float32[N]`` the twist currently included in ``logw``.
        done: ``bool[N]`` finished (ended, conditioned away or out of budget).
        cause: ``int32[N]`` index of the first condition that killed the particle, or -1.
    """

    state: Any
    tokens: jax.Array
    length: jax.Array
    logw: jax.Array
    twist: jax.Array
    done: jax.Array
    cause: jax.Array


class LMState(NamedTuple):
    """The batched LM: ``N * K`` cache rows (row ``n * K + k`` is particle n, context k)."""

    cache: Any
    logprobs: jax.Array  # float32[N, K, V]
    nan: jax.Array  # bool: a live row's log-probabilities contained NaN
    # float32[N, K, D]: the LM's final hidden state (input of its head) at each row's last
    # token, the feature of learned proposals; D = 0 for LMs without one (NGramLM).
    hidden: Any = None


@dataclasses.dataclass(eq=False)
class Setup:
    """Static (host-side) facts about one program, fixed for a compilation."""

    program: Any
    lm: Any
    prompt_ids: list[list[int]]
    max_tokens: int
    max_len: int
    condition_names: list[str]
    progress_fn: Any = None  # host callback (t, live particles, ess) per step, or None
    mesh: Any = None  # jax.sharding.Mesh with a "particles" axis, or None (one device)

    def report(self, t, live, ess):
        if self.progress_fn is not None:
            self.progress_fn(int(t), int(live), float(ess))

    @property
    def num_contexts(self) -> int:
        return len(self.prompt_ids)

    @property
    def prompt_lens(self) -> np.ndarray:
        return np.array([len(p) for p in self.prompt_ids], np.int32)

    def decode(self, ids) -> str:
        return self.lm.vocab.decode(ids)


def prepare(program) -> Setup:
    """Encodes the prompts and checks the static budget before any device work.

    Raises:
        ValueError: the prompt plus ``max_tokens`` exceeds the model's context.
    """
    cached = getattr(program, "_ppl_setup", None)
    if cached is not None:
        return cached
    lm = program.lm
    ids = [lm.prompt_ids(p) for p in program.prompts]
    longest = max(len(p) for p in ids)
    max_len = longest + program.max_tokens
    if max_len > lm.max_context:
        raise ValueError(
            f"The prompt ({longest} tokens) plus max_tokens ({program.max_tokens}) needs "
            f"{max_len} positions, but {getattr(lm, 'name', 'the model')} has a context of "
            f"{lm.max_context}. Shorten the prompt or lower max_tokens to at most "
            f"{max(lm.max_context - longest, 0)}."
        )
    setup = Setup(program, lm, ids, program.max_tokens, max_len, [])
    program._ppl_setup = setup
    return setup


def _context(setup: Setup, key, cls=Context, **kw) -> Context:
    return cls(
        key,
        max_tokens=setup.max_tokens,
        condition_names=setup.condition_names,
        decode_fn=setup.decode,
        **kw,
    )


def init_population(key, setup: Setup, params, num_particles: int):
    """Prefills every prompt once, broadcasts it to the particles, runs ``init``."""
    lm = setup.lm
    n, k_ctx, t_max = num_particles, setup.num_contexts, setup.max_tokens
    caches, lps, hs = [], [], []
    for ids in setup.prompt_ids:
        ids = jnp.asarray(ids, jnp.int32)
        if has_hidden(lm):
            c, lp, h = lm.prefill(params, ids, setup.max_len, return_hidden=True)
        else:
            (c, lp), h = lm.prefill(params, ids, setup.max_len), jnp.zeros((0,), jnp.float32)
        caches.append(broadcast_cache(c, n))
        lps.append(lp)
        hs.append(h.astype(jnp.float32))
    # Interleave contexts so that row n*K + k is particle n's context k.
    cache = jax.tree.map(lambda *xs: jnp.stack(xs, 1).reshape((n * k_ctx,) + xs[0].shape[1:]), *caches)
    logprobs = jnp.broadcast_to(jnp.stack(lps)[None], (n, k_ctx, lps[0].shape[-1]))
    tokens = jnp.zeros((n, t_max), jnp.int32)
    length = jnp.zeros((n,), jnp.int32)

    def one(key):
        ctx = _context(setup, key, tokens=tokens[0], length=length[0])
        state = setup.program.init(ctx)
        if ctx.token is not None:
            raise ProgramError("init() may not sample LM tokens; do that in step().")
        return state, ctx.logw, ctx.done, ctx.cause

    state, logw, done, cause = jax.vmap(one)(jax.random.split(key, n))
    parts = Particles(
        state=state,
        tokens=tokens,
        length=length,
        logw=jnp.where(jnp.isnan(logw), -jnp.inf, logw).astype(jnp.float32),
        twist=jnp.zeros((n,), jnp.float32),
        done=done,
        cause=cause,
    )
    nan = jnp.any(jnp.isnan(logprobs))
    hidden = jnp.broadcast_to(jnp.stack(hs)[None], (n, k_ctx, hs[0].shape[-1]))
    return parts, LMState(cache, logprobs.astype(jnp.float32), nan, hidden)


def has_hidden(lm) -> bool:
    """Whether the LM exposes its final hidden state (transformers do, NGramLM does not)."""
    return bool(getattr(lm, "supports_hidden", False))


def _step_one(setup: Setup, key, state, tokens, length, logw, twist, done, cause, logprobs, t,
              bias=None, force=None, record=False):
    ctx = _context(setup, key, logprobs=logprobs, tokens=tokens, length=length, t=t,
                   proposal_bias=bias, force=force, active=~done)
    out = apply_step(setup, ctx, state, tokens, length, logw, twist, done, cause)
    if record:  # -inf everywhere when the step observed its token instead of drawing it
        q = ctx.proposal_logits
        return out + (jnp.full(logprobs.shape[-1:], -jnp.inf) if q is None else q,)
    return out


def apply_step(setup: Setup, ctx: Context, state, tokens, length, logw, twist, done, cause):
    """Runs ``program.step`` in ``ctx`` for one particle and folds the effects into it."""
    new_state = setup.program.step(ctx, state)
    if ctx.token is None:
        raise ProgramError(
            "step() must sample or observe exactly one token from ctx.lm.next_token() "
            "(for example `ctx.sample(ctx.lm.next_token())`)."
        )
    tok = ctx.token
    new_tokens = tokens.at[length].set(tok, mode="drop")
    new_length = length + 1
    fin = ctx.done | (new_length >= setup.max_tokens)
    # The twist added last step is removed now; a finishing particle keeps no twist, so the
    # final weights target the untwisted posterior.
    new_twist = jnp.where(fin, 0.0, ctx.twist_amount)
    new_logw = logw + ctx.logw - twist + new_twist
    new_logw = jnp.where(jnp.isnan(new_logw), -jnp.inf, new_logw)
    new_cause = jnp.where(cause >= 0, cause, ctx.cause)

    def keep(old, new):
        return jax.tree.map(lambda o, nw: jnp.where(done, o, nw), old, new)

    out = Particles(
        keep(state, new_state),
        jnp.where(done, tokens, new_tokens),
        jnp.where(done, length, new_length),
        jnp.where(done, logw, new_logw).astype(jnp.float32),
        jnp.where(done, twist, new_twist).astype(jnp.float32),
        done | fin,
        jnp.where(done, cause, new_cause),
    )
    return out, jnp.where(done, setup.lm.eos_token_id, tok)


def propose(key, setup: Setup, parts: Particles, logprobs, t, *, bias=None, force=None,
            record: bool = False):
    """Runs the program's ``step`` for every particle (vmapped).

    Args:
        bias: optional ``float32[N, V]`` proposal logit bias per particle: LM tokens are drawn
            from ``q'(x) ∝ q(x) exp(bias[x])`` (see :class:`~ppl.Context`).
        force: optional ``(bool[N], int32[N])``: particles whose flag is set get the given
            token instead of a draw, weighted as the (biased) proposal would weight it.
        record: also return the normalised proposal log-probabilities ``float32[N, V]`` of
            each particle's token draw (for variational gradients).

    Returns:
        ``(particles, tokens[N])`` (plus the proposal log-probabilities when ``record``). A
        particle that was already finished is returned unchanged. Weight increment for a
        live particle::

            log p(x) - log q'(x) + Σ factors + twist_t - twist_{t-1}

        with ``twist_t = 0`` when the particle finishes at this step and ``q' = q`` without
        a bias.
    """
    n = parts.logw.shape[0]
    keys = jax.random.split(key, n)
    def fn(*a, bias=None, force=None):
        return _step_one(setup, *a, t, bias=bias, force=force, record=record)

    return jax.vmap(lambda *a: fn(*a[:-2], bias=a[-2], force=a[-1]))(
        keys, parts.state, parts.tokens, parts.length, parts.logw, parts.twist, parts.done,
        parts.cause, logprobs, bias, force)


def advance_lm(setup: Setup, params, lm_state: LMState, tokens, old_length, active):
    """Feeds each particle's new token to all its contexts in one batched forward pass.

    ``tokens[n]`` is written at position ``prompt_len_k + old_length[n]``. Rows of finished
    particles are computed (static shapes) but ignored; their positions are clamped.
    """
    k_ctx = setup.num_contexts
    n = tokens.shape[0]
    pos = (jnp.asarray(setup.prompt_lens)[None, :] + old_length[:, None]).reshape(-1)
    pos = jnp.minimum(pos, setup.max_len - 1)
    rows = jnp.repeat(tokens, k_ctx)
    if has_hidden(setup.lm):
        cache, lp, h = setup.lm.decode_step(params, lm_state.cache, rows, pos, return_hidden=True)
        h = h.reshape(n, k_ctx, -1).astype(jnp.float32)
    else:
        cache, lp = setup.lm.decode_step(params, lm_state.cache, rows, pos)
        h = jnp.zeros((n, k_ctx, 0), jnp.float32)
    lp = lp.reshape(n, k_ctx, -1).astype(jnp.float32)
    nan = lm_state.nan | jnp.any(jnp.isnan(lp) & active[:, None, None])
    return LMState(cache, lp, nan, h)


def advance_live(setup: Setup, params, lm_state: LMState, tokens, old_length, active):
    """``advance_lm``, skipped (``lax.cond``) when no particle is live, on one device.

    Sharded, the forward pass runs unconditionally (at most one wasted forward, at the step
    where the last particles finish). The reason is XLA:CPU's runtime: it orders thunks by
    buffer dependencies, and a collective nested in a conditional (the decode's all-gathers
    for the KV-cache write) was observed to run, on one device, before an independent
    top-level collective (the ESS all-reduce) that the other device ran first: both waited
    at different rendezvous until XLA aborted the process (sharded ``method="is"``, 2 forced
    host devices; ``tests/inference/test_sharding.py``). No conditional in the sharded step
    then contains a collective that another collective of the step does not depend on.
    """
    if setup.mesh is not None:
        return advance_lm(setup, params, lm_state, tokens, old_length, active)
    return jax.lax.cond(
        jnp.any(active),
        lambda s: advance_lm(setup, params, s, tokens, old_length, active),
        lambda s: s,
        lm_state,
    )


def cache_rows(setup: Setup, ancestors):
    """LM rows of the given particles: particle ``a`` owns rows ``a * K .. a * K + K - 1``."""
    k_ctx = setup.num_contexts
    return (ancestors[:, None] * k_ctx + jnp.arange(k_ctx)[None, :]).reshape(-1)


def select_rows(setup: Setup, mask, if_true: LMState, if_false: LMState) -> LMState:
    """Per particle, ``if_true``'s LM rows where ``mask[n]``, else ``if_false``'s."""
    rows = jnp.repeat(mask, setup.num_contexts)

    def pick(m, a, b):
        return jax.tree.map(lambda x, y: jnp.where(m.reshape((-1,) + (1,) * (x.ndim - 1)), x, y),
                            a, b)

    return LMState(pick(rows, if_true.cache, if_false.cache),
                   pick(mask, if_true.logprobs, if_false.logprobs),
                   if_true.nan | if_false.nan,
                   pick(mask, if_true.hidden, if_false.hidden))


def gather(setup: Setup, parts: Particles, lm_state: LMState, ancestors, take=None):
    """Particle ``i`` becomes a copy of particle ``ancestors[i]``: state, tokens and KV cache.

    ``take(x, indices)`` (default ``jnp.take`` along axis 0) does every row gather; SMC's
    island resampling passes one that keeps the gather inside each island.
    """
    if take is None:
        def take(x, i):
            return jnp.take(x, i, axis=0)
    parts = jax.tree.map(lambda x: take(x, ancestors), parts)
    rows = cache_rows(setup, ancestors)
    lm_state = LMState(
        jax.tree.map(lambda x: take(x, rows), lm_state.cache),
        take(lm_state.logprobs, ancestors),
        lm_state.nan,
        take(lm_state.hidden, ancestors),
    )
    return parts, lm_state


def copy_rows_in_place(setup: Setup, cache, ancestors):
    """``gather`` of the KV cache for ancestors whose every source keeps its own slot.

    Requires ``ancestors[ancestors[i]] == ancestors[i]`` for every ``i`` (what
    :func:`.resampling.stable_ancestors` returns): then only the slots with
    ``ancestors[i] != i`` change, and each is one row copy that reads a slot no copy writes.
    A loop of ``dynamic_update_slice`` over those slots lets XLA update the loop-carried
    cache in place, where a gather writes a whole new cache (every layer, every particle)
    even when most particles keep their row. The trip count is 0 when nothing moved.
    """
    n = ancestors.shape[0]
    k_ctx = setup.num_contexts
    moved = ancestors != jnp.arange(n, dtype=ancestors.dtype)
    (dest,) = jnp.nonzero(moved, size=n, fill_value=0)

    def body(j, c):
        d = dest[j]
        s = ancestors[d]
        return jax.tree.map(
            lambda x: jax.lax.dynamic_update_slice_in_dim(
                x, jax.lax.dynamic_slice_in_dim(x, s * k_ctx, k_ctx, 0), d * k_ctx, 0), c)

    return jax.lax.fori_loop(0, jnp.sum(moved), body, cache)


def finalize(key, setup: Setup, parts: Particles) -> Particles:
    """Runs ``final`` once per particle; its factors and conditions enter the weights."""
    n = parts.logw.shape[0]

    def one(key, state, tokens, length, logw, cause):
        ctx = _context(setup, key, tokens=tokens, length=length)
        setup.program.final(ctx, state)
        if ctx.token is not None:
            raise ProgramError("final() may not sample LM tokens.")
        new = logw + ctx.logw
        new = jnp.where(jnp.isnan(new), -jnp.inf, new)
        return new.astype(jnp.float32), jnp.where(cause >= 0, cause, ctx.cause)

    logw, cause = jax.vmap(one)(jax.random.split(key, n), parts.state, parts.tokens,
                                parts.length, parts.logw, parts.cause)
    return parts._replace(logw=logw, cause=cause)


def log_mean_exp(logw) -> jax.Array:
    return jax.nn.logsumexp(logw) - math.log(logw.shape[0])
