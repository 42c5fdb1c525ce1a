"""Learned proposal families: a logit bias on the program's own proposal.

Wherever the program draws an LM token from its proposal ``q`` (``p`` itself when it gives
none), a learned proposal draws from::

    q_phi(x_t | x_<t) ∝ q(x_t | x_<t) · exp(b_phi(x_<t)[x_t])

and the weight increment is ``log p(x_t | x_<t) - log q_phi(x_t | x_<t)`` (plus the
program's factors), so every estimate stays exact whatever ``phi`` is
([Bias][ppl.handlers.Bias]). The parameters are trained by [ppl.inference.vi][] and reused by
``ppl.infer(program, method="is" | "smc", proposal_params=...)``.

Three parameterisations (``proposal=``; ``"auto"``, the default,
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
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import OptionError
from ppl.inference import engine as E

__all__ = ["KINDS", "HIDDEN_RANK", "resolve_kind", "init_params", "check_params", "bias_fn",
           "feature", "bias", "export", "save_params", "load_params"]

KINDS = ("prev_token", "position", "hidden")
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
            raise OptionError(f"Unknown proposal kind {proposal!r}; choose 'auto' or one of {KINDS}.")
        return proposal
    if setup.lm.supports_hidden:
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
    """Parameters with zero bias (``q_phi = q``): ``{"kind": kind, ...float32 arrays}``.

    Args:
        program: a [Program][ppl.Program], or the [Setup][ppl.inference.engine.Setup] of one.
    """
    setup = program if isinstance(program, E.Setup) else E.prepare(program)
    kind = resolve_kind(setup, kind)
    v = setup.lm.vocab_size
    if kind == "prev_token" and (v + 1) * v > _MAX_TABLE:
        raise OptionError(f"proposal='prev_token' needs a {v + 1}x{v} table; use proposal='hidden' "
                         "(transformer LMs) or 'position'.")
    if kind == "hidden" and not setup.lm.supports_hidden:
        raise OptionError(f"proposal='hidden' needs an LM that exposes its hidden states (the "
                         f"transformers of ppl.models); {type(setup.lm).__name__} has none. Use "
                         "proposal='prev_token' or 'position'.")
    shapes = _shapes(kind, setup)
    out = {k: np.zeros(shp, np.float32) for k, shp in shapes.items()}
    if kind == "hidden":
        d = shapes["proj"][0]
        rng = np.random.default_rng(0)
        out["proj"] = (rng.standard_normal(shapes["proj"]) / math.sqrt(max(d, 1))).astype(np.float32)
    return {"kind": kind, **out}


def check_params(params, setup: E.Setup) -> tuple[str, Any]:
    """``(kind, phi)`` from user-facing params, with shapes checked against the program."""
    if not isinstance(params, dict) or "kind" not in params:
        raise OptionError("proposal_params must be the dict that method='vi' returns in "
                        "extras['vi_params'] (or load_params gives), with a 'kind' key.")
    kind = str(params["kind"])
    if kind not in KINDS:
        raise OptionError(f"Unknown proposal kind {kind!r}; choose one of {KINDS}.")
    if kind == "hidden" and not setup.lm.supports_hidden:
        raise OptionError(f"These proposal_params are a hidden-state head, but "
                         f"{type(setup.lm).__name__} exposes no hidden states.")
    want = _shapes(kind, setup)
    phi = {}
    for name, shp in want.items():
        if name not in params:
            raise OptionError(f"proposal_params of kind {kind!r} need the array {name!r}.")
        arr = jnp.asarray(params[name], jnp.float32)
        if arr.shape != shp:
            raise OptionError(
                f"proposal_params {name!r} has shape {arr.shape}; this program needs {shp} "
                f"(kind {kind!r}, vocabulary {setup.lm.vocab_size}, max_tokens "
                f"{setup.max_tokens}, hidden size {getattr(setup.lm, 'hidden_size', 0)}).")
        phi[name] = arr
    return kind, (phi["bias"] if kind != "hidden" else phi)


def export(kind: str, phi) -> dict:
    """User-facing parameters ``{"kind": kind, ...numpy float32 arrays}`` from ``phi``."""
    arrays = {"bias": phi} if kind != "hidden" else phi
    return {"kind": kind, **{k: np.asarray(x, np.float32) for k, x in arrays.items()}}


def feature(kind: str, tokens, length, hidden, v: int, t_max: int):
    """What the bias depends on for one particle: a table row, or the hidden state ``[D]``."""
    if kind == "hidden":
        return hidden[0]
    if kind == "prev_token":
        prev = tokens[jnp.clip(length - 1, 0, tokens.shape[-1] - 1)]
        return jnp.where(length > 0, prev, v)
    return jnp.minimum(length, t_max - 1)


def bias(kind: str, phi, feat):
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
    return lambda tokens, length, hidden: bias(kind, phi, feature(kind, tokens, length, hidden,
                                                                   v, t_max))


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Writes proposal parameters to a NumPy ``.npz`` file (no pickle)."""
    arrays = {k: np.asarray(x, np.float32) for k, x in params.items() if k != "kind"}
    np.savez(path, kind=np.array(str(params["kind"])), **arrays)


def load_params(path: str | os.PathLike) -> dict:
    """Reads what `save_params` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as f:
        return {"kind": str(f["kind"]),
                **{k: np.asarray(f[k], np.float32) for k in f.files if k != "kind"}}
