"""The backends' toolkit: particles, the batched LM, one vmapped program step.

Every backend module (and ``ppl.testing``'s oracles) builds on these pieces; they are public.

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

from ppl import handlers
from ppl.context import Context
from ppl.errors import ProgramError
from ppl.inference.resampling import log_mean_exp
from ppl.models.base import broadcast_cache, join_cache, split_cache

__all__ = ["Particles", "KVState", "Prompts", "Setup", "prepare", "prompt_bucket",
           "encode_prompts", "context", "init_population", "propose",
           "apply_step", "advance_lm", "advance_live", "cache_rows", "select_rows", "gather",
           "copy_rows_in_place", "apply_final", "log_mean_exp"]


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
        boundary: ``bool[N]`` or None: the particle ended a unit at the step just proposed
            ([Context.boundary][ppl.Context.boundary]); only ``propose(..., boundaries=True)``
            returns it (never carried between steps), None when the program marks no units.
    """

    state: Any
    tokens: jax.Array
    length: jax.Array
    logw: jax.Array
    twist: jax.Array
    done: jax.Array
    cause: jax.Array
    boundary: Any = None


class KVState(NamedTuple):
    """The batched LM's state: ``N * K`` KV-cache rows (row ``n * K + k`` is particle n,
    context k), the contexts' shared prompt cache and each particle's next-token
    distributions.

    ``cache`` holds only what each row owns (its generated tokens' keys and values: what
    resampling gathers); ``prefix`` is the LM's shared part (every context's prompt once,
    context axis first; None for LMs without one), passed to ``decode_step`` unchanged and
    never gathered."""

    cache: Any
    logprobs: jax.Array  # float32[N, K, V]
    nan: jax.Array  # bool: a live row's log-probabilities contained NaN
    # float32[N, K, D]: the LM's final hidden state (input of its head) at each row's last
    # token, the feature of learned proposals; D = 0 for LMs without one (NGramLM).
    hidden: Any = None
    prefix: Any = None


class Prompts(NamedTuple):
    """The prompts of one problem, as data: a compiled run takes them as an input, so every
    prompt whose length falls in the same bucket reuses one executable.

    Attributes:
        ids: ``int32[K, P]``: each LM context's prompt ids, padded after ``lens[k]``.
        lens: ``int32[K]``: the real lengths.
    """

    ids: Any
    lens: Any


def prompt_bucket(length: int, max_tokens: int, max_context: int) -> int:
    """The padded prompt length a prompt of ``length`` tokens is compiled for.

    64, 128, 256, then multiples of 256 (so every prompt of up to 64 tokens shares one
    executable, and a long prompt wastes at most 255 positions), never more than the model's
    context leaves after ``max_tokens``.
    """
    if length <= 256:
        b = max(64, 1 << (max(length, 1) - 1).bit_length())
    else:
        b = -(-length // 256) * 256
    return max(length, min(b, max_context - max_tokens))


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """Static (host-side) facts about one program: what a compiled run is specialised on,
    plus the prompts of this problem, which are data (an input of the run).

    Built by [prepare][ppl.inference.engine.prepare] for every run, never stored on the
    program; everything about one run (particle count, devices, progress) is in
    [RunConfig][ppl.inference.base.RunConfig] instead.

    Attributes:
        program: the user's program.
        lm: its language model.
        prompt_len: the padded prompt length ``P`` (the bucket of the longest prompt).
        max_tokens: the token budget.
        max_len: KV-cache positions per row (``P + max_tokens``).
        condition_names: every name the program passes to ``ctx.condition``, in the order of
            their cause codes (collected by one abstract trace before compiling).
        prompts: this problem's [Prompts][ppl.inference.engine.Prompts] (numpy arrays on the
            host; traced inside a compiled run).
    """

    program: Any
    lm: Any
    prompt_len: int
    max_tokens: int
    max_len: int
    condition_names: tuple[str, ...]
    prompts: Prompts

    @property
    def num_contexts(self) -> int:
        return int(self.prompts.ids.shape[0])

    def static_key(self) -> tuple:
        """What of the setup a compiled run is specialised on (the prompts' values are not)."""
        return (self.num_contexts, self.prompt_len, self.max_tokens, self.max_len)

    def with_prompts(self, prompts: Prompts) -> "Setup":
        """The same setup with other (e.g. traced) prompts of the same shape."""
        return dataclasses.replace(self, prompts=prompts)

    def decode_text(self, ids) -> str:
        return self.lm.vocab.decode(ids)


def encode_prompts(program, prompt_len: int | None = None) -> tuple[Prompts, int]:
    """The program's prompts as padded ids, and the length of the longest."""
    lm = program.lm
    ids = [[int(i) for i in lm.prompt_ids(p)] for p in program.prompts]
    longest = max(len(p) for p in ids)
    width = longest if prompt_len is None else prompt_len
    out = np.zeros((len(ids), width), np.int32)
    for k, p in enumerate(ids):
        out[k, : len(p)] = p
    return Prompts(out, np.array([len(p) for p in ids], np.int32)), longest


def prepare(program, prompt_len: int | None = None,
            condition_names: tuple[str, ...] | None = None) -> Setup:
    """Encodes the prompts, checks the static budget and collects the condition names.

    Runs before any device work (the names come from one ``jax.eval_shape`` of the program's
    ``init``, ``step`` and ``final`` for one particle, which compiles nothing).

    Args:
        prompt_len: the padded prompt length; default: the bucket of the longest prompt
            ([prompt_bucket][ppl.inference.engine.prompt_bucket]).
        condition_names: the names, when known (another problem of the same program shape),
            which skips the abstract trace.

    Raises:
        ValueError: the prompt plus ``max_tokens`` exceeds the model's context, or is longer
            than the given ``prompt_len``.
    """
    lm = program.lm
    max_tokens = int(program.max_tokens)
    _, longest = encode_prompts(program, None)
    if longest + max_tokens > lm.max_context:
        raise ValueError(
            f"The prompt ({longest} tokens) plus max_tokens ({max_tokens}) needs "
            f"{longest + max_tokens} positions, but {getattr(lm, 'name', 'the model')} has a "
            f"context of {lm.max_context}. Shorten the prompt or lower max_tokens to at most "
            f"{max(lm.max_context - longest, 0)}."
        )
    if prompt_len is None:
        prompt_len = prompt_bucket(longest, max_tokens, lm.max_context)
    elif longest > prompt_len:
        raise ValueError(f"A prompt of {longest} tokens does not fit the prompt bucket of "
                         f"{prompt_len} tokens it was compiled for; use a bucket of at least "
                         f"{longest} (or let ppl choose: prompt_len=None).")
    if prompt_len + max_tokens > lm.max_context:
        raise ValueError(
            f"A prompt bucket of {prompt_len} tokens plus max_tokens ({max_tokens}) exceeds the "
            f"context of {getattr(lm, 'name', 'the model')} ({lm.max_context}).")
    prompts, _ = encode_prompts(program, prompt_len)
    names = condition_names if condition_names is not None else _condition_names(
        program, lm, prompts.ids.shape[0], max_tokens)
    return Setup(program, lm, int(prompt_len), max_tokens, int(prompt_len) + max_tokens, names,
                 prompts)


def _condition_names(program, lm, num_contexts: int, max_tokens: int) -> tuple[str, ...]:
    """The names ``ctx.condition`` is called with, from an abstract trace of one particle
    (which also names tracer and state-shape mistakes: [ppl._tracing.check_program][])."""
    from ppl._tracing import check_program

    return check_program(program, lm, num_contexts, max_tokens)


def context(setup: Setup, key, **kw) -> Context:
    """A particle's [Context][ppl.Context] for this program (``kw``: the step's inputs and,
    optionally, the backend's ``handler``)."""
    return Context(
        key,
        max_tokens=setup.max_tokens,
        condition_names=setup.condition_names,
        decode_fn=setup.decode_text,
        **kw,
    )


def init_population(key, setup: Setup, params, num_particles: int):
    """Prefills every prompt once, broadcasts its rows to the particles, runs ``init``.

    The prompt's shared cache part (a [SharedCache][ppl.models.SharedCache]'s ``shared``) is
    kept once per context in ``KVState.prefix``, not copied to the particles.

    Returns:
        ``(particles, kv)``.
    """
    lm = setup.lm
    n, k_ctx, t_max = num_particles, setup.num_contexts, setup.max_tokens
    caches, shared, lps, hs = [], [], [], []
    for k in range(k_ctx):
        ids = jnp.asarray(setup.prompts.ids[k], jnp.int32)
        length = jnp.asarray(setup.prompts.lens[k], jnp.int32)
        if lm.supports_hidden:
            c, lp, h = lm.prefill(params, ids, setup.max_len, length=length, return_hidden=True)
        else:
            c, lp = lm.prefill(params, ids, setup.max_len, length=length)
            h = jnp.zeros((0,), jnp.float32)
        rows, sh = split_cache(c)
        caches.append(broadcast_cache(rows, n))
        shared.append(sh)
        lps.append(lp)
        hs.append(h.astype(jnp.float32))
    # Interleave contexts so that row n*K + k is particle n's context k.
    cache = jax.tree.map(lambda *xs: jnp.stack(xs, 1).reshape((n * k_ctx,) + xs[0].shape[1:]), *caches)
    # Context k's prompt is entry k of the shared part (row n*K + k reads entry k).
    prefix = None if shared[0] is None else jax.tree.map(
        lambda *xs: jnp.concatenate(xs, 0), *shared)
    if prefix is not None:
        # Materialised as they are, so a run compiled whole computes what a run compiled in
        # pieces (the driver's chunks) does: without it XLA fused the prefill's outputs into
        # the first decode steps' attention and the log-weights differed in the last bits.
        prefix, cache = jax.lax.optimization_barrier((prefix, cache))
    logprobs = jnp.broadcast_to(jnp.stack(lps)[None], (n, k_ctx, lps[0].shape[-1]))
    tokens = jnp.zeros((n, t_max), jnp.int32)
    length = jnp.zeros((n,), jnp.int32)

    def one(key):
        ctx = context(setup, key, tokens=tokens[0], length=length[0])
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
    return parts, KVState(cache, logprobs.astype(jnp.float32), nan, hidden, prefix)


def _step_one(setup: Setup, key, state, tokens, length, logw, twist, done, cause, logprobs, t,
              bias=None, force=None, record=False):
    ctx = context(setup, key, logprobs=logprobs, tokens=tokens, length=length, t=t,
                  handler=handlers.for_step(bias, force), active=~done)
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

    # A finished particle is complete: always at a boundary.
    boundary = None if ctx.at_boundary is None else (done | fin | ctx.at_boundary)

    out = Particles(
        keep(state, new_state),
        jnp.where(done, tokens, new_tokens),
        jnp.where(done, length, new_length),
        jnp.where(done, logw, new_logw).astype(jnp.float32),
        jnp.where(done, twist, new_twist).astype(jnp.float32),
        done | fin,
        jnp.where(done, cause, new_cause),
        boundary,
    )
    return out, jnp.where(done, setup.lm.eos_token_id, tok)


def propose(key, setup: Setup, parts: Particles, logprobs, t, *, bias=None, force=None,
            record: bool = False, boundaries: bool = False):
    """Runs the program's ``step`` for every particle (vmapped).

    Args:
        bias: optional ``float32[N, V]`` proposal logit bias per particle: LM tokens are drawn
            from ``q'(x) ∝ q(x) exp(bias[x])`` ([Bias][ppl.handlers.Bias]).
        force: optional ``(bool[N], int32[N])``: particles whose flag is set get the given
            token instead of a draw, weighted as the (biased) proposal would weight it
            ([Force][ppl.handlers.Force]).
        record: also return the normalised proposal log-probabilities ``float32[N, V]`` of
            each particle's token draw (for variational gradients).
        boundaries: keep ``Particles.boundary`` (the units the program marked this step);
            otherwise it is dropped (None), so a backend that ignores units carries the
            same state structure whether or not the program marks them.

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

    out = jax.vmap(lambda *a: fn(*a[:-2], bias=a[-2], force=a[-1]))(
        keys, parts.state, parts.tokens, parts.length, parts.logw, parts.twist, parts.done,
        parts.cause, logprobs, bias, force)
    if not boundaries:
        out = (out[0]._replace(boundary=None),) + tuple(out[1:])
    return out


def advance_lm(setup: Setup, params, kv: KVState, tokens, old_length, active) -> KVState:
    """Feeds each particle's new token to all its contexts in one batched forward pass.

    ``tokens[n]`` is written at position ``prompt_len_k + old_length[n]``. Rows of finished
    particles are computed (static shapes) but ignored; their positions are clamped.
    """
    k_ctx = setup.num_contexts
    n = tokens.shape[0]
    pos = (jnp.asarray(setup.prompts.lens)[None, :] + old_length[:, None]).reshape(-1)
    pos = jnp.minimum(pos, setup.max_len - 1)
    rows = jnp.repeat(tokens, k_ctx)
    lm = setup.lm
    full = join_cache(kv.cache, kv.prefix)
    if lm.supports_hidden:
        cache, lp, h = lm.decode_step(params, full, rows, pos, return_hidden=True)
        h = h.reshape(n, k_ctx, -1).astype(jnp.float32)
    else:
        cache, lp = lm.decode_step(params, full, rows, pos)
        h = jnp.zeros((n, k_ctx, 0), jnp.float32)
    cache, _ = split_cache(cache)
    lp = lp.reshape(n, k_ctx, -1).astype(jnp.float32)
    nan = kv.nan | jnp.any(jnp.isnan(lp) & active[:, None, None])
    return KVState(cache, lp, nan, h, kv.prefix)


def advance_live(setup: Setup, params, kv: KVState, tokens, old_length, active,
                 sharded: bool = False) -> KVState:
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
    if sharded:
        return advance_lm(setup, params, kv, tokens, old_length, active)
    return jax.lax.cond(
        jnp.any(active),
        lambda s: advance_lm(setup, params, s, tokens, old_length, active),
        lambda s: s,
        kv,
    )


def cache_rows(setup: Setup, ancestors):
    """LM rows of the given particles: particle ``a`` owns rows ``a * K .. a * K + K - 1``."""
    k_ctx = setup.num_contexts
    return (ancestors[:, None] * k_ctx + jnp.arange(k_ctx)[None, :]).reshape(-1)


def select_rows(setup: Setup, mask, if_true: KVState, if_false: KVState) -> KVState:
    """Per particle, ``if_true``'s LM rows where ``mask[n]``, else ``if_false``'s."""
    rows = jnp.repeat(mask, setup.num_contexts)

    def pick(m, a, b):
        return jax.tree.map(lambda x, y: jnp.where(m.reshape((-1,) + (1,) * (x.ndim - 1)), x, y),
                            a, b)

    return KVState(pick(rows, if_true.cache, if_false.cache),
                   pick(mask, if_true.logprobs, if_false.logprobs),
                   if_true.nan | if_false.nan,
                   pick(mask, if_true.hidden, if_false.hidden),
                   if_true.prefix)


def gather(setup: Setup, parts: Particles, kv: KVState, ancestors, take=None):
    """Particle ``i`` becomes a copy of particle ``ancestors[i]``: state, tokens and KV cache
    rows (the shared prompt part is the same for every particle and is not copied).

    ``take(x, indices)`` (default ``jnp.take`` along axis 0) does every row gather; SMC's
    island resampling passes one that keeps the gather inside each island (the
    ``take`` of its [Resampling][ppl.inference.resampling.Resampling] strategy).
    """
    if take is None:
        def take(x, i):
            return jnp.take(x, i, axis=0)
    parts = jax.tree.map(lambda x: take(x, ancestors), parts)
    rows = cache_rows(setup, ancestors)
    kv = kv._replace(
        cache=jax.tree.map(lambda x: take(x, rows), kv.cache),
        logprobs=take(kv.logprobs, ancestors),
        hidden=take(kv.hidden, ancestors),
    )
    return parts, kv


def copy_rows_in_place(setup: Setup, cache, ancestors):
    """``gather`` of the KV cache for ancestors whose every source keeps its own slot.

    Requires ``ancestors[ancestors[i]] == ancestors[i]`` for every ``i`` (what
    `resampling.stable_ancestors` returns): then only the slots with
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


def apply_final(key, setup: Setup, parts: Particles) -> Particles:
    """Runs ``final`` once per particle; its factors and conditions enter the weights."""
    n = parts.logw.shape[0]

    def one(key, state, tokens, length, logw, cause):
        ctx = context(setup, key, tokens=tokens, length=length)
        setup.program.final(ctx, state)
        if ctx.token is not None:
            raise ProgramError("final() may not sample LM tokens.")
        new = logw + ctx.logw
        new = jnp.where(jnp.isnan(new), -jnp.inf, new)
        return new.astype(jnp.float32), jnp.where(cause >= 0, cause, ctx.cause)

    logw, cause = jax.vmap(one)(jax.random.split(key, n), parts.state, parts.tokens,
                                parts.length, parts.logw, parts.cause)
    return parts._replace(logw=logw, cause=cause)
