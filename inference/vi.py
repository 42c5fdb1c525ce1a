"""Variational proposals: learn a logit bias on the program's proposal, then run IS or SMC.

The learned proposal keeps the program unchanged. Wherever the program draws an LM token from
its proposal ``q`` (``p`` itself when it gives none), the draw is made from::

    q_phi(x_t | x_<t) ∝ q(x_t | x_<t) · exp(b_phi(x_<t)[x_t])

and the weight increment is ``log p(x_t | x_<t) - log q_phi(x_t | x_<t)`` (plus the program's
factors), so every estimate stays exact whatever ``phi`` is (the ``proposal_bias`` hook of
:class:`~ppl.Context`). Three parameterisations (``proposal=``; ``"auto"``, the default,
picks ``hidden`` when the LM exposes hidden states (the transformers), else ``prev_token`` when
its table has at most 50M entries, else ``position``):

* ``"prev_token"``: a table ``b[V + 1, V]`` indexed by the previous generated token
  (row ``V`` at the first step). For a bigram LM this family contains the optimal (locally
  adapted) proposal up to the program's state; cost ``V²`` parameters, for small vocabularies.
* ``"position"``: a table ``b[T, V]`` indexed by the token position (any vocabulary size).
* ``"hidden"``: a small head on the LM's last hidden state ``h_t`` (the input of its own
  head, at the particle's first prompt's row): ``b(h) = (h P) Q + c`` with ``P[D, r]`` a
  fixed random feature map (scale ``1/sqrt(D)``, rank ``r = 16``, stored with the params but
  not trained: training both factors grew the bias multiplicatively and collapsed the
  proposal onto one sequence), and ``Q[r, V]``, ``c[V]`` trained from zero, so training
  starts from ``q_phi = q``. It sees the whole prefix through the transformer, with
  ``(r + 1) V`` trained parameters: the choice for real models.

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
:func:`save_params` / :func:`load_params`), ``extras["vi_objective"]`` (the bound estimate at
each step: ELBO for ``elbo``, ``L`` otherwise), ``extras["vi_log_evidence"]`` (``L`` per step)
and ``extras["vi_ess"]``.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.inference import _engine as E
from ppl.inference import driver, smc
from ppl.inference import resampling as R

__all__ = ["KINDS", "OBJECTIVES", "init_params", "bias_fn", "train", "run", "run_with_proposal",
           "save_params", "load_params"]

KINDS = ("prev_token", "position", "hidden")
OBJECTIVES = ("elbo", "iwae", "rws", "vimco")
HIDDEN_RANK = 16
_MAX_TABLE = 50_000_000


# ---- parameters ----------------------------------------------------------------------------
#
# ``phi`` (what the optimiser updates) is the bias table for the table kinds and the dict
# ``{"proj", "out", "const"}`` for ``hidden``; the user-facing params are ``{"kind": ..., **phi}``
# (tables under the key ``"bias"``).

def resolve_kind(setup: E.Setup, proposal: str) -> str:
    """The proposal family ``proposal="auto"`` stands for on this program (see module doc)."""
    if proposal != "auto":
        if proposal not in KINDS:
            raise ValueError(f"Unknown proposal kind {proposal!r}; choose 'auto' or one of {KINDS}.")
        return proposal
    if E.has_hidden(setup.lm):
        return "hidden"
    v = setup.lm.vocab_size
    return "prev_token" if (v + 1) * v <= _MAX_TABLE else "position"


def _shapes(kind: str, setup: E.Setup) -> dict:
    v, t = setup.lm.vocab_size, setup.max_tokens
    if kind == "prev_token":
        return {"bias": (v + 1, v)}
    if kind == "position":
        return {"bias": (t, v)}
    d = int(getattr(setup.lm, "hidden_size", 0))
    return {"proj": (d, HIDDEN_RANK), "out": (HIDDEN_RANK, v), "const": (v,)}


def init_params(program, kind: str = "auto") -> dict:
    """Parameters with zero bias (``q_phi = q``): ``{"kind": kind, ...float32 arrays}``."""
    setup = E.prepare(program)
    kind = resolve_kind(setup, kind)
    v = setup.lm.vocab_size
    if kind == "prev_token" and (v + 1) * v > _MAX_TABLE:
        raise ValueError(f"proposal='prev_token' needs a {v + 1}x{v} table; use proposal='hidden' "
                         "(transformer LMs) or 'position'.")
    if kind == "hidden" and not E.has_hidden(setup.lm):
        raise ValueError(f"proposal='hidden' needs an LM that exposes its hidden states (the "
                         f"transformers of ppl.models); {type(setup.lm).__name__} has none. Use "
                         "proposal='prev_token' or 'position'.")
    shapes = _shapes(kind, setup)
    out = {k: np.zeros(shp, np.float32) for k, shp in shapes.items()}
    if kind == "hidden":
        d = shapes["proj"][0]
        rng = np.random.default_rng(0)
        out["proj"] = (rng.standard_normal(shapes["proj"]) / math.sqrt(max(d, 1))).astype(np.float32)
    return {"kind": kind, **out}


def _check(params, setup: E.Setup) -> tuple[str, Any]:
    """``(kind, phi)`` from user-facing params, with shapes checked against the program."""
    if not isinstance(params, dict) or "kind" not in params:
        raise TypeError("proposal_params must be the dict that method='vi' returns in "
                        "extras['vi_params'] (or load_params gives), with a 'kind' key.")
    kind = str(params["kind"])
    if kind not in KINDS:
        raise ValueError(f"Unknown proposal kind {kind!r}; choose one of {KINDS}.")
    if kind == "hidden" and not E.has_hidden(setup.lm):
        raise ValueError(f"These proposal_params are a hidden-state head, but "
                         f"{type(setup.lm).__name__} exposes no hidden states.")
    want = _shapes(kind, setup)
    phi = {}
    for name, shp in want.items():
        if name not in params:
            raise ValueError(f"proposal_params of kind {kind!r} need the array {name!r}.")
        arr = jnp.asarray(params[name], jnp.float32)
        if arr.shape != shp:
            raise ValueError(
                f"proposal_params {name!r} has shape {arr.shape}; this program needs {shp} "
                f"(kind {kind!r}, vocabulary {setup.lm.vocab_size}, max_tokens "
                f"{setup.max_tokens}, hidden size {getattr(setup.lm, 'hidden_size', 0)}).")
        phi[name] = arr
    return kind, (phi["bias"] if kind != "hidden" else phi)


def _export(kind: str, phi) -> dict:
    arrays = {"bias": phi} if kind != "hidden" else phi
    return {"kind": kind, **{k: np.asarray(x, np.float32) for k, x in arrays.items()}}


def _feature(kind: str, tokens, length, hidden, v: int, t_max: int):
    """What the bias depends on for one particle: a table row, or the hidden state ``[D]``."""
    if kind == "hidden":
        return hidden[0]
    if kind == "prev_token":
        prev = tokens[jnp.clip(length - 1, 0, tokens.shape[-1] - 1)]
        return jnp.where(length > 0, prev, v)
    return jnp.minimum(length, t_max - 1)


def _bias(kind: str, phi, feat):
    """Logit bias ``[..., V]`` from features of any leading shape."""
    if kind == "hidden":
        # The projection is a fixed random feature map (not trained): a product of two
        # trained factors grew the bias multiplicatively and collapsed the proposal. Features
        # are scaled to unit RMS so that one optimiser step moves the bias by about the same
        # amount whatever the model's hidden-state scale (a trained model's final norm can
        # have large gains).
        f = feat @ jax.lax.stop_gradient(phi["proj"])
        f = f * jax.lax.rsqrt(jnp.mean(f * f, axis=-1, keepdims=True) + 1e-6)
        return f @ phi["out"] + phi["const"]
    return phi[feat]


def bias_fn(kind: str, phi, setup: E.Setup):
    """``fn(tokens[T], length, hidden[K, D]) -> float32[V]``: one particle's logit bias."""
    v, t_max = setup.lm.vocab_size, setup.max_tokens
    return lambda tokens, length, hidden: _bias(kind, phi, _feature(kind, tokens, length, hidden,
                                                                   v, t_max))


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Writes proposal parameters to a NumPy ``.npz`` file (no pickle)."""
    arrays = {k: np.asarray(x, np.float32) for k, x in params.items() if k != "kind"}
    np.savez(path, kind=np.array(str(params["kind"])), **arrays)


def load_params(path: str | os.PathLike) -> dict:
    """Reads what :func:`save_params` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as f:
        return {"kind": str(f["kind"]),
                **{k: np.asarray(f[k], np.float32) for k in f.files if k != "kind"}}


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
    parts, lm = E.init_population(k_init, setup, params, num)
    v, t_max = setup.lm.vocab_size, setup.max_tokens

    def body(carry, t):
        parts, lm = carry
        feats = jax.vmap(lambda tk, ln, h: _feature(kind, tk, ln, h, v, t_max))(
            parts.tokens, parts.length, lm.hidden)
        b = _bias(kind, phi, feats)
        new, tok, qlog = E.propose(jax.random.fold_in(k_loop, t), setup, parts, lm.logprobs, t,
                                   bias=b, record=True)
        active = ~new.done
        lm = E.advance_lm(setup, params, lm, tok, parts.length, active)
        return (new, lm), (feats, tok, qlog, ~parts.done)

    (parts, lm), (feats, toks, qlog, live) = jax.lax.scan(body, (parts, lm), jnp.arange(t_max))
    parts = E.finalize(k_fin, setup, parts)
    return Batch(parts.logw, feats, toks, qlog, live, lm.nan)


def log_q(phi, kind: str, batch: Batch) -> jax.Array:
    """``float32[K]``: ``log q_phi(x_i)`` as a differentiable function of ``phi``.

    The recorded ``qlog`` was computed with the current bias ``b0``; the base proposal is
    ``qlog - b0`` up to normalisation, so ``log q_phi = log_softmax(qlog - sg(b) + b)[x]``.
    """
    b = _bias(kind, phi, batch.feats)  # [T, K, V]
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
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; choose one of {OBJECTIVES}.")
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


def train(program, *, seed=0, vi_steps: int = 200, learning_rate: float = 0.05,
          objective: str = "vimco", vi_particles: int = 32, proposal: str = "auto",
          initial_params: dict | None = None) -> tuple[dict, dict]:
    """Trains the proposal bias; returns ``(params, history)`` (history: numpy arrays
    ``objective``, ``log_evidence``, ``ess`` per step)."""
    if int(vi_particles) < 2:
        raise ValueError(f"vi_particles must be >= 2, got {vi_particles}.")
    if int(vi_steps) < 1:
        raise ValueError(f"vi_steps must be >= 1, got {vi_steps}.")
    setup = E.prepare(program)
    p0 = initial_params if initial_params is not None else init_params(program, proposal)
    kind, phi0 = _check(p0, setup)
    driver.check_memory(setup, int(vi_particles))
    key = driver.as_key(seed)
    fn = make_trainer(setup, kind, objective=objective, vi_steps=int(vi_steps),
                      vi_particles=int(vi_particles), learning_rate=float(learning_rate))
    lm_params = setup.lm.params
    exe, _ = driver.compiled(
        setup, ("vi-train", kind, objective, int(vi_steps), int(vi_particles), float(learning_rate),
                setup.progress_fn is not None),
        lambda: (lambda k, p: fn(k, p[0], p[1])), key, (lm_params, phi0))
    phi, (bound, big_l, ess, nan) = exe(key, (lm_params, phi0))
    if bool(np.any(np.asarray(nan))):
        from ppl.result import InferenceError

        raise InferenceError("The language model produced NaN log-probabilities during VI training.")
    hist = {"objective": np.asarray(bound), "log_evidence": np.asarray(big_l), "ess": np.asarray(ess)}
    return _export(kind, phi), hist


# ---- running with a (learned) proposal ------------------------------------------------------

def run_with_proposal(method: str, program, seed, particles: int, proposal_params: dict | None, *,
                      resampling: str = "stratified", ess_threshold: float = 0.5, islands: int = 1,
                      exchange_every: int = 0, rejuvenate: int = 0, rejuvenate_at: str = "resample"):
    """IS (``method="is"``) or SMC with the proposal ``q_phi`` and optional rejuvenation
    (:mod:`.rejuvenation`: after every resampling and at the end, or ``rejuvenate_at="end"``).

    ``proposal_params=None`` uses the program's own proposal. Weights are
    ``log p - log q_phi + factors`` at every step, so results are exact for any bias.
    """
    from ppl.inference import rejuvenation

    if rejuvenate_at not in ("resample", "end"):
        raise ValueError(f"rejuvenate_at must be 'resample' or 'end', got {rejuvenate_at!r}.")
    setup = E.prepare(program)
    if method == "is":
        ess_threshold = 0.0
    if rejuvenate:
        from ppl.inference._chain import require_token_only

        require_token_only(setup)
    lm_params = setup.lm.params
    if proposal_params is None:
        kind, params, key_extra = None, lm_params, ()
    else:
        kind, phi = _check(proposal_params, setup)
        params, key_extra = (lm_params, phi), ("proposal", kind)
    if resampling not in R.RESAMPLERS:
        raise ValueError(f"Unknown resampling scheme {resampling!r}; choose one of {sorted(R.RESAMPLERS)}.")
    if particles % int(islands):
        raise ValueError(f"particles ({particles}) must be a multiple of islands ({islands}).")

    def make(setup, n):
        def runner(key, p):
            lm_p, bfn = (p, None) if kind is None else (p[0], bias_fn(kind, p[1], setup))
            k_smc, k_rej = jax.random.split(key)
            move_fn = None
            if rejuvenate and rejuvenate_at == "resample" and ess_threshold > 0:
                move_fn = rejuvenation.build_intermediate_move(setup, lm_p, rejuvenate, bfn)
            kernel = smc.build_kernel(setup, lm_p, resampling=resampling, ess_threshold=ess_threshold,
                                      islands=islands, exchange_every=exchange_every, bias_fn=bfn,
                                      move_fn=move_fn)
            state = smc.run_loop(k_smc, setup, lm_p, n, kernel)
            if not rejuvenate:
                return state
            parts, info = rejuvenation.rejuvenate(
                k_rej, setup, lm_p, state.particles, rejuvenate, resampling=resampling,
                ess_threshold=ess_threshold, bias_fn=bfn)
            acc = jnp.mean(info.accepted.astype(jnp.float32), axis=1)
            return state._replace(particles=parts), {"rejuvenation_acceptance": acc,
                                                     "rejuvenation_step_acceptance": state.move_acc}

        return runner

    return driver.run_population(
        method, program, seed, particles, make,
        (resampling, float(ess_threshold), int(islands), int(exchange_every), int(rejuvenate),
         rejuvenate_at) + key_extra,
        params=params)


def run(program, *, particles: int, seed, vi_steps: int = 200, learning_rate: float = 0.05,
        objective: str = "vimco", vi_particles: int = 32, final_method: str = "is",
        proposal: str = "auto", initial_params: dict | None = None,
        resampling: str = "stratified", ess_threshold: float = 0.5):
    """``method="vi"``: trains the proposal, then runs ``final_method`` with it."""
    if final_method not in ("is", "smc"):
        raise ValueError(f"final_method must be 'is' or 'smc', got {final_method!r}.")
    import time

    t0 = time.perf_counter()
    key = driver.as_key(seed)
    k_train, k_run = jax.random.split(key)
    params, hist = train(program, seed=k_train, vi_steps=vi_steps, learning_rate=learning_rate,
                         objective=objective, vi_particles=vi_particles, proposal=proposal,
                         initial_params=initial_params)
    res = run_with_proposal(final_method, program, k_run, particles, params,
                            resampling=resampling, ess_threshold=ess_threshold)
    res.method = "vi"
    t_total = time.perf_counter() - t0
    # Training (compilation and optimisation) is part of the method's cost.
    res.timings = dict(res.timings, train=t_total - res.timings.get("total", 0.0), total=t_total)
    res.extras.update(vi_params=params, vi_objective=hist["objective"],
                      vi_log_evidence=hist["log_evidence"], vi_ess=hist["ess"],
                      vi_final_method=final_method)
    return res
