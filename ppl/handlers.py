"""How ``ctx.sample`` draws an LM token: the one place a backend changes a token draw.

A program draws its tokens with ``ctx.sample(p, proposal=q)``; backends sometimes need that
draw done differently without touching the program: a learned proposal biases it, a replay
forces a retained token, the enumeration oracle visits every token. Each of these is a
[DrawHandler][ppl.handlers.DrawHandler] given to the [Context][ppl.Context]; ``Context.sample``
delegates every LM-token draw to it. A handler returns the token and the exact log-weight
increment of the draw:

* [Plain][ppl.handlers.Plain]: ``x ~ q``, weight ``log p(x) - log q(x)`` (0 when ``q = p``).
* [Bias][ppl.handlers.Bias]: ``x ~ q'`` with ``q'(x) ∝ q(x) exp(b[x])``, weight
  ``log p(x) - log q'(x)`` (learned proposals).
* [Force][ppl.handlers.Force]: where ``flag`` holds, ``x`` is the given token instead of a
  draw, weighted as the wrapped handler's proposal would weight it,
  ``log p(x) - log q'(x)`` (conditional SMC, rejuvenation replays).
* [Enumerate][ppl.handlers.Enumerate]: ``x`` is the given token, weight ``log p(x)`` (the
  target alone: the proposal plays no part in an exact enumeration).

Handlers that can only reproduce LM tokens (``token_only``: forcing, enumerating) refuse a
program that samples any other latent, with the fix in the message.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Bias", "Draw", "DrawHandler", "Enumerate", "Force", "Plain", "TokenOnly", "for_step"]


class Draw(NamedTuple):
    """One LM-token draw.

    Attributes:
        token: the token (``int32``).
        log_weight: the log-weight increment (``-inf`` when the proposal had no mass there
            or was empty; 0 for a token drawn from ``p`` itself; ``None``: no change).
        dead: the proposal's support was empty (the particle dies, never NaN), or ``None``.
        proposal_logprobs: normalised ``log q'`` the token was drawn from (``None`` when the
            token was not drawn from a proposal).
    """

    token: jax.Array
    log_weight: jax.Array
    dead: jax.Array
    proposal_logprobs: Any


def _weighted(p, q, x, needs_weight: bool) -> Draw:
    if not needs_weight:
        # A draw from an empty distribution (every logit -inf, e.g. a mask that allows
        # nothing) kills the particle instead of returning the sampler's fallback token.
        empty = ~(jnp.max(q.logits, axis=-1) > -jnp.inf)
        return Draw(x, jnp.where(empty, -jnp.inf, 0.0), empty, q.logprobs)
    lq = q.log_prob(x)
    lp = p.log_prob(x)
    # A draw the proposal gives no mass to only happens when its support is empty: the
    # particle is dead, never NaN.
    return Draw(x, jnp.where(lq > -jnp.inf, lp - lq, -jnp.inf), lq == -jnp.inf, q.logprobs)


class DrawHandler:
    """Draws LM tokens for ``ctx.sample``; subclasses change how.

    Attributes:
        token_only: the backend replays token sequences, so the program may sample nothing but
            LM tokens (``ctx.sample`` of another distribution raises ``ProgramError``).
    """

    token_only: bool = False

    def refusal(self, dist) -> str:
        """The message of the ``ProgramError`` a token-only handler raises for ``dist``."""
        return ("This backend replays retained token sequences (particle Gibbs, "
                "rejuvenation), so a program may only sample LM tokens; it sampled "
                f"{type(dist).__name__}. Use method='smc', 'is' or 'pimh' instead.")

    def draw(self, key, p, q, has_proposal: bool) -> Draw:
        """Draws from ``q`` (``p`` itself when the program gave no proposal)."""
        return _weighted(p, q, q.sample(key), has_proposal)


class Plain(DrawHandler):
    """``x ~ q``: what a program asks for, unchanged."""


class TokenOnly(DrawHandler):
    """Plain draws, but only LM tokens may be sampled (vets programs for replaying backends)."""

    token_only = True


class Bias(DrawHandler):
    """``x ~ q'(x) ∝ q(x) exp(bias[x])`` with weight ``log p(x) - log q'(x)``.

    Args:
        bias: ``float32[V]`` logit bias for this particle.
    """

    def __init__(self, bias):
        self.bias = bias

    def draw(self, key, p, q, has_proposal: bool) -> Draw:
        q = q.add(self.bias)
        return _weighted(p, q, q.sample(key), True)


class Force(DrawHandler):
    """Where ``flag`` holds, the token is ``token`` instead of the wrapped handler's draw.

    The key is consumed and the draw made either way (static shapes), then replaced; the
    weight is the wrapped proposal's ``log p(x) - log q'(x)`` of the token actually used.

    Args:
        flag: ``bool``: replay this particle's token.
        token: ``int32``: the token to replay.
        inner: the handler whose proposal weights the token (default [Plain][ppl.handlers.Plain]).
    """

    token_only = True

    def __init__(self, flag, token, inner: DrawHandler | None = None):
        self.flag = flag
        self.token = token
        self.inner = inner if inner is not None else Plain()

    def draw(self, key, p, q, has_proposal: bool) -> Draw:
        if isinstance(self.inner, Bias):
            q = q.add(self.inner.bias)
            has_proposal = True
        x = q.sample(key)
        x = jnp.where(self.flag, jnp.asarray(self.token, x.dtype), x)
        return _weighted(p, q, x, has_proposal)


class Enumerate(DrawHandler):
    """The token is ``token``; weight ``log p(token)`` (the target only, for exact oracles)."""

    token_only = True

    def refusal(self, dist) -> str:
        return ("The enumeration oracle can only enumerate LM tokens; this program samples a "
                f"non-token variable ({type(dist).__name__}; use simulation-based calibration "
                "for continuous latents).")

    def __init__(self, token):
        self.token = token

    def draw(self, key, p, q, has_proposal: bool) -> Draw:
        x = jnp.asarray(self.token, jnp.int32)
        return Draw(x, p.log_prob(x), None, None)


def for_step(bias=None, force=None) -> DrawHandler:
    """The handler of one particle's step from a backend's per-particle inputs.

    Args:
        bias: optional ``float32[V]`` logit bias ([Bias][ppl.handlers.Bias]).
        force: optional ``(flag, token)`` ([Force][ppl.handlers.Force], around the bias).
    """
    inner = Plain() if bias is None else Bias(bias)
    if force is None:
        return inner
    flag, token = force
    return Force(flag, token, inner)
