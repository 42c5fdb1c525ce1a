"""Variational proposals: learn a logit bias on the program's proposal, then run IS or SMC.

The learned proposal keeps the program unchanged. Wherever the program draws an LM token from
its proposal ``q`` (``p`` itself when it gives none), the draw is made from::

    q_phi(x_t | x_<t) ∝ q(x_t | x_<t) · exp(b_phi(x_<t)[x_t])

and the weight increment is ``log p(x_t | x_<t) - log q_phi(x_t | x_<t)`` (plus the program's
factors), so every estimate stays exact whatever ``phi`` is (the [Bias][ppl.handlers.Bias] draw handler of
[Context][ppl.Context]). The parameterisations (``proposal=``: ``"auto"``, ``"prev_token"``, ``"position"``,
``"hidden"``) are described in [ppl.inference.proposal][].

Training (``vi_steps`` optax Adam steps, ``vi_particles = K`` sequences per step, each drawn
from ``q_phi`` with importance weight ``w_i = gamma(x_i) / q_phi(x_i)``, ``lw_i = log w_i``,
``w̃_i = w_i / Σ_j w_j``, ``L = log (1/K) Σ_i w_i``). Gradients use the score function
``∇ log q_phi(x_i)`` (tokens are discrete), computed exactly from the recorded proposal
log-probabilities of every step. Objectives (maximised):

* ``"elbo"``: ``E_q[log gamma - log q_phi] <= log Z``; gradient
  ``mean_i (lw_i - b_i) ∇ log q_phi(x_i)`` with the leave-one-out baseline
  ``b_i = mean_{j≠i} lw_j``. A sample the target rules out (``lw = -inf``) makes the ELBO
  ``-inf``; its gradient uses ``lw`` floored at ``min(finite lw) - 10``.
* ``"iwae"``: ``E[L] <= log Z``; gradient ``Σ_i (L - L^{K-1}_{-i} - w̃_i) ∇ log q_phi(x_i)``
  where the control variate ``L^{K-1}_{-i} = log mean_{j≠i} w_j`` (the bound of the other
  ``K - 1`` samples) does not depend on ``x_i``, so the estimate stays unbiased.
* ``"vimco"``: the IWAE bound with VIMCO's per-sample baselines (Mnih & Rezende 2016):
  ``Σ_i (L - L_{-i} - w̃_i) ∇ log q_phi(x_i)``, ``L_{-i}`` = ``L`` with ``lw_i`` replaced by the
  mean of the others.
* ``"rws"``: reweighted wake-sleep's wake-phase proposal update, i.e. minimising the forward
  ``KL(pi || q_phi)`` (mass-covering): gradient ``Σ_i w̃_i ∇ log q_phi(x_i)``.

After training, ``final_method="is"`` (or ``"smc"``) runs with ``particles`` particles and the
learned bias; the Result carries ``extras["vi_params"]`` (a dict of arrays with ``"kind"``, reusable as
``ppl.infer(program, method="is" | "smc", proposal_params=...)`` and storable with
[save_params][ppl.inference.proposal.save_params] / [load_params][ppl.inference.proposal.load_params]), ``extras["vi_objective"]`` (the bound estimate at
each step: ELBO for ``elbo``, ``L`` otherwise), ``extras["vi_log_evidence"]`` (``L`` per step)
and ``extras["vi_ess"]``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.errors import InferenceError
from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import Backend, RunConfig, check_choice, check_count, check_number, option
from ppl.inference.proposal import (HIDDEN_RANK, KINDS, bias, check_params, export, feature,
                                    init_params, load_params, save_params)

__all__ = ["HIDDEN_RANK", "KINDS", "OBJECTIVES", "VIOptions", "check_params", "init_params",
           "train", "make_trainer", "sample_batch", "save_params", "load_params", "BACKEND"]

OBJECTIVES = ("elbo", "iwae", "rws", "vimco")


# ---- training ------------------------------------------------------------------------------

class Batch(NamedTuple):
    """One training sweep of ``K`` sequences drawn from ``q_phi``.

    Attributes:
        logw: ``float32[K]`` ``log gamma(x_i) - log q_phi(x_i)`` (``final`` included).
        feats: the bias's feature at each step: ``int32[T, K]`` table rows, or
            ``float32[T, K, D]`` hidden states.
        tokens: ``int32[T, K]`` the token drawn at each step.
        qlog: ``float32[T, K, V]`` normalised ``log q_phi`` at each step (as drawn).
        live: ``bool[T, K]`` the particle drew a token at that step.
        nan: the LM produced NaN.
    """

    logw: jax.Array
    feats: jax.Array
    tokens: jax.Array
    qlog: jax.Array
    live: jax.Array
    nan: jax.Array


def sample_batch(key, setup: E.Setup, params, kind: str, phi, num: int) -> Batch:
    """``num`` independent sequences from ``q_phi`` (an IS sweep recording every step)."""
    k_init, k_loop, k_fin = jax.random.split(key, 3)
    parts, kv = E.init_population(k_init, setup, params, num)
    v, t_max = setup.lm.vocab_size, setup.max_tokens

    def body(carry, t):
        parts, kv = carry
        feats = jax.vmap(lambda tk, ln, h: feature(kind, tk, ln, h, v, t_max))(
            parts.tokens, parts.length, kv.hidden)
        b = bias(kind, phi, feats)
        new, tok, qlog = E.propose(jax.random.fold_in(k_loop, t), setup, parts, kv.logprobs, t,
                                   bias=b, record=True)
        active = ~new.done
        kv = E.advance_lm(setup, params, kv, tok, parts.length, active)
        return (new, kv), (feats, tok, qlog, ~parts.done)

    (parts, kv), (feats, toks, qlog, live) = jax.lax.scan(body, (parts, kv), jnp.arange(t_max))
    parts = E.apply_final(k_fin, setup, parts)
    return Batch(parts.logw, feats, toks, qlog, live, kv.nan)


def log_q(phi, kind: str, batch: Batch) -> jax.Array:
    """``float32[K]``: ``log q_phi(x_i)`` as a differentiable function of ``phi``.

    The recorded ``qlog`` was computed with the current bias ``b0``; the base proposal is
    ``qlog - b0`` up to normalisation, so ``log q_phi = log_softmax(qlog - sg(b) + b)[x]``.
    """
    b = bias(kind, phi, batch.feats)  # [T, K, V]
    ok = batch.live & jnp.any(jnp.isfinite(batch.qlog), axis=-1)  # steps that drew a token
    live = ok[..., None]
    logits = jnp.where(live, batch.qlog - jax.lax.stop_gradient(b) + b, 0.0)
    lp = jax.nn.log_softmax(logits, axis=-1)
    lx = jnp.take_along_axis(lp, batch.tokens[..., None], axis=-1)[..., 0]
    lx = jnp.where(ok & jnp.isfinite(lx), lx, 0.0)
    return jnp.sum(lx, axis=0)


def surrogate(objective: str, lw: jax.Array, lq: jax.Array):
    """``(surrogate, bound estimate)``: ``∇ surrogate`` is the objective's gradient estimate."""
    k = lw.shape[0]
    finite = jnp.isfinite(lw)
    any_ok = jnp.any(finite)
    low = jnp.min(jnp.where(finite, lw, jnp.inf))
    floor = jnp.where(any_ok, low - 10.0, -1e4)
    lw_f = jnp.where(finite, lw, floor)
    big_l = jax.nn.logsumexp(lw) - math.log(k)
    wt = jnp.exp(R.log_normalize(lw))
    sg = jax.lax.stop_gradient
    if objective == "elbo":
        loo = (jnp.sum(lw_f) - lw_f) / (k - 1)
        s = jnp.mean(sg(lw_f - loo) * lq)
        bound = jnp.mean(lw)
    elif objective == "iwae":
        # Leave-one-out control variate: the (K-1)-sample bound of the others, independent
        # of x_i, so subtracting it keeps the estimator unbiased.
        l_others = jax.nn.logsumexp(jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, lw_f[None, :]),
                                    axis=1) - math.log(k - 1)
        big_lf = jax.nn.logsumexp(lw_f) - math.log(k)
        s = jnp.sum(sg(big_lf - l_others - wt) * lq)
        bound = big_l
    elif objective == "vimco":
        others = (jnp.sum(lw_f) - lw_f) / (k - 1)
        lw_mat = jnp.where(jnp.eye(k, dtype=bool), others[:, None], lw_f[None, :])
        l_minus = jax.nn.logsumexp(lw_mat, axis=1) - math.log(k)
        big_lf = jax.nn.logsumexp(lw_f) - math.log(k)
        s = jnp.sum(sg(big_lf - l_minus - wt) * lq)
        bound = big_l
    elif objective == "rws":
        s = jnp.sum(sg(wt) * lq)
        bound = big_l
    else:
        raise ValueError(f"Unknown objective {objective!r}; choose one of {OBJECTIVES}.")
    s = jnp.where(any_ok, s, 0.0)
    return s, bound


class TrainState(NamedTuple):
    phi: Any
    opt_state: Any


def make_trainer(setup: E.Setup, kind: str, *, objective: str, vi_steps: int, vi_particles: int,
                 learning_rate: float):
    """``train(key, lm_params, bias0) -> (bias, history)``, one ``lax.scan`` over steps."""
    opt = optax.adam(learning_rate)

    def train(key, params, phi0):
        def step(st: TrainState, k):
            batch = sample_batch(k, setup, params, kind, st.phi, vi_particles)

            def loss(phi):
                s, bound = surrogate(objective, batch.logw, log_q(phi, kind, batch))
                return -s, bound

            (_, bound), g = jax.value_and_grad(loss, has_aux=True)(st.phi)
            g = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            upd, opt_state = opt.update(g, st.opt_state, st.phi)
            phi = jax.tree.map(lambda x: jnp.clip(x, -30.0, 30.0), optax.apply_updates(st.phi, upd))
            big_l = jax.nn.logsumexp(batch.logw) - math.log(vi_particles)
            hist = (bound, big_l, R.ess(batch.logw), batch.nan)
            return TrainState(phi, opt_state), hist

        st0 = TrainState(phi0, opt.init(phi0))
        st, hist = jax.lax.scan(step, st0, jax.random.split(key, vi_steps))
        return st.phi, hist

    return train


@dataclasses.dataclass(frozen=True)
class VIOptions(smc.ResamplingOptions):
    """Options of ``method="vi"`` (``resampling``/``ess_threshold`` apply to the final SMC run).

    Attributes:
        vi_steps: optimiser steps.
        learning_rate: Adam's step size.
        objective: ``"elbo"``, ``"iwae"``, ``"rws"`` or ``"vimco"`` (see the module doc).
        vi_particles: sequences drawn per training step (``K >= 2``).
        final_method: ``"is"`` or ``"smc"``, run with the learned proposal.
        proposal: the family: ``"auto"``, ``"prev_token"``, ``"position"`` or ``"hidden"``.
        initial_params: start from these parameters (a previous run's ``vi_params``).
    """

    vi_steps: int = option(200, check_count, 1)
    learning_rate: float = option(0.05, check_number, 0.0, math.inf, True)
    objective: str = option("vimco", check_choice, OBJECTIVES)
    vi_particles: int = option(32, check_count, 2)
    final_method: str = option("is", check_choice, ("is", "smc"))
    proposal: str = option("auto", check_choice, ("auto",) + KINDS)
    initial_params: Any = None


def train(program, *, seed=0, **options) -> tuple[dict, dict]:
    """Trains a proposal for ``program`` without the final run.

    Args:
        seed: an int or a PRNG key.
        **options: [VIOptions][ppl.inference.vi.VIOptions] fields (``vi_steps``,
            ``objective``, ...).

    Returns:
        ``(params, history)``: the parameters (as ``extras["vi_params"]``) and numpy arrays
        ``objective``, ``log_evidence``, ``ess`` per training step.
    """
    from ppl.inference import driver

    opts = VIOptions.build("vi", options)
    setup = E.prepare(program)
    return _train(setup, RunConfig(opts.vi_particles), opts, driver.as_key(seed))


def _train(setup: E.Setup, config: RunConfig, options: VIOptions, key) -> tuple[dict, dict]:
    from ppl.inference import driver

    p0 = options.initial_params if options.initial_params is not None else init_params(
        setup, options.proposal)
    kind, phi0 = check_params(p0, setup)
    def make(traced_setup):
        fn = make_trainer(traced_setup, kind, objective=options.objective,
                          vi_steps=options.vi_steps, vi_particles=options.vi_particles,
                          learning_rate=options.learning_rate)
        return lambda k, p: fn(k, p[0], p[1])

    params = (setup.lm.params, phi0)
    phi, (bound, big_l, ess, nan) = driver.compile_and_run(
        setup, ("vi-train", kind, options.cache_key(), config.cache_key()), make, key, params,
        rows=options.vi_particles)
    if bool(np.any(np.asarray(nan))):
        raise InferenceError("The language model produced NaN log-probabilities during VI training.")
    hist = {"objective": np.asarray(bound), "log_evidence": np.asarray(big_l), "ess": np.asarray(ess)}
    return export(kind, phi), hist


def run(setup: E.Setup, config: RunConfig, options: VIOptions, key):
    """``method="vi"``: trains the proposal, then runs ``final_method`` with it."""
    from ppl.inference import driver, importance

    t0 = time.perf_counter()
    k_train, k_run = jax.random.split(key)
    params, hist = _train(setup, config, options, k_train)
    if options.final_method == "is":
        backend, final = importance.BACKEND, smc.ISOptions(proposal_params=params)
    else:
        backend = smc.BACKEND
        final = smc.SMCOptions(resampling=options.resampling,
                               ess_threshold=options.ess_threshold, proposal_params=params)
    res = driver.execute(backend, setup, config, final, k_run)
    res.method = "vi"
    t_total = time.perf_counter() - t0
    # Training (compilation and optimisation) is part of the method's cost.
    res.timings = dict(res.timings, train=t_total - res.timings.get("total", 0.0), total=t_total)
    res.extras.update(vi_params=params, vi_objective=hist["objective"],
                      vi_log_evidence=hist["log_evidence"], vi_ess=hist["ess"],
                      vi_final_method=options.final_method)
    return res


BACKEND = Backend(
    name="vi",
    family="vi",
    options=VIOptions,
    run=run,
    rows=lambda config, options: max(config.num_particles, options.vi_particles),
    summary="a variationally learned proposal (ELBO, IWAE, RWS, VIMCO), then IS or SMC with it",
)
