"""The effect context a program's ``init``/``step``/``final`` receive: one particle's view.

Every primitive updates the particle's log-weight by an exact log ratio:

* ``sample(p, proposal=q)``: draws ``x ~ q`` (or ``x ~ p``), adds ``log p(x) - log q(x)``
  (zero without a proposal).
* ``observe(p, x)``: adds ``log p(x)``.
* ``factor(w)``: adds ``w``.
* ``condition(b)``: adds ``0`` if ``b`` else ``-inf`` and finishes the particle.
* ``twist(w)``: adds ``w`` now and subtracts it at the particle's next step (or when it
  finishes), so twists steer intermediate resampling without changing the final target.
* ``finish_if(b)`` / ``finish()``: the particle stops after this step.
* ``boundary(b)``: no weight change; says whether this step ended a *unit* (a word, a line,
  a reasoning step). SMC resamples a particle only at steps where it ended a unit or
  finished; a program that never calls it has a unit boundary after every token.

Backends change *how* an LM token is drawn without touching programs through one mechanism:
the context's [DrawHandler][ppl.handlers.DrawHandler] (a learned proposal's logit bias, a
forced replay, the enumeration oracle), which returns the token and its exact weight.

Everything here is traced: one particle is written, the backend vmaps it over particles.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl._host import host_map
from ppl.dists import TokenDist
from ppl.errors import ProgramError
from ppl.handlers import DrawHandler, Plain

__all__ = ["Context", "LMView", "ProgramError"]


class LMView:
    """One LM context of a particle: its next-token distribution and generated tokens."""

    def __init__(self, ctx: "Context", index: int, logprobs):
        self._ctx = ctx
        self._index = index
        self._logprobs = logprobs

    def next_token(self, temperature: float | None = None) -> TokenDist:
        """The LM's distribution over the next token given everything generated so far."""
        if self._logprobs is None:
            raise ProgramError(
                "ctx.lm.next_token() is only available inside step(); init() and final() "
                "run before the first and after the last token."
            )
        d = TokenDist(self._logprobs, lm_index=self._index)
        return d if temperature is None else d.temper(temperature)

    @property
    def tokens(self) -> jax.Array:
        """``int32[max_tokens]``: generated tokens (entries past ``length`` are padding)."""
        return self._ctx.tokens

    @property
    def length(self) -> jax.Array:
        return self._ctx.length


class Context:
    """Per-particle effect handler.

    Attributes:
        t: the step index (0 for the first generated token).
        tokens: ``int32[max_tokens]`` tokens generated so far, padded.
        length: number of tokens generated so far.
        max_tokens: the program's static token budget.
        is_last: True at the step whose token is the last one the budget allows.
    """

    def __init__(
        self,
        key: jax.Array,
        *,
        logprobs=None,
        tokens=None,
        length=None,
        max_tokens: int = 0,
        t=None,
        condition_names: Sequence[str] | list[str] = (),
        decode_fn: Callable[[np.ndarray], str] | None = None,
        handler: DrawHandler | None = None,
        active=True,
    ):
        self._key = key
        self.active = jnp.asarray(active, bool)  # False: the particle finished earlier (step is masked)
        self.logw = jnp.zeros((), jnp.float32)
        self.twist_amount = jnp.zeros((), jnp.float32)
        self.done = jnp.zeros((), bool)
        self.cause = jnp.full((), -1, jnp.int32)
        self.token = None
        self.at_boundary = None  # None: the program does not mark units (every token is one)
        self.tokens = tokens
        self.length = length
        self.max_tokens = max_tokens
        self.t = t
        # A tuple: the program's condition names, collected before compiling (see
        # ppl.inference.engine.prepare); a list: the collecting pass itself appends to it.
        self._condition_names = condition_names
        self._decode_fn = decode_fn
        self._handler = handler if handler is not None else Plain()
        self.proposal_logits = None  # normalised log q'(.) of this step's LM token draw
        self._empty_code = None  # cause code of an empty draw this step, if one was possible
        if logprobs is None:
            self.lms: Sequence[LMView] = [LMView(self, 0, None)]
        else:
            self.lms = [LMView(self, k, logprobs[k]) for k in range(logprobs.shape[0])]

    # ---- LM access ---------------------------------------------------------------------
    @property
    def lm(self) -> LMView:
        """The particle's (first) LM context."""
        return self.lms[0]

    @property
    def is_last(self) -> jax.Array:
        return self.length + 1 >= self.max_tokens

    def key(self) -> jax.Array:
        """A fresh PRNG key for the program's own randomness."""
        self._key, k = jax.random.split(self._key)
        return k

    # ---- primitives --------------------------------------------------------------------
    def sample(self, dist, proposal=None):
        """Draws from ``proposal`` (default ``dist``); weight += log dist(x) - log proposal(x).

        LM tokens are drawn by the backend's [DrawHandler][ppl.handlers.DrawHandler] (a
        learned proposal's bias, a forced replay), which returns the weight of the token it
        used, always the exact ``log dist(x) - log q'(x)`` of the proposal ``q'`` it drew from.
        """
        q = dist if proposal is None else proposal
        is_token = getattr(dist, "lm_index", None) is not None or getattr(proposal, "lm_index", None) is not None
        if is_token:
            d = self._handler.draw(self.key(), dist, q, proposal is not None)
            x = d.token
            if d.proposal_logprobs is not None:
                self.proposal_logits = d.proposal_logprobs
            if d.log_weight is not None:
                self.logw = self.logw + d.log_weight
            if d.dead is not None:
                self.done = self.done | d.dead
                # A condition failing in the same step names the cause better (a constraint
                # whose mask left nothing): it replaces this one (see condition()).
                self._empty_code = self._record_cause(d.dead, EMPTY_CAUSE)
        else:
            if self._handler.token_only:
                raise ProgramError(self._handler.refusal(dist))
            x = q.sample(self.key())
            if proposal is not None:
                lq = q.log_prob(x)
                lp = dist.log_prob(x)
                self.logw = self.logw + jnp.where(lq > -jnp.inf, lp - lq, -jnp.inf)
                self.done = self.done | (lq == -jnp.inf)
        self._record_token(dist, proposal, x)
        return x

    def observe(self, dist, value):
        """Conditions on ``value`` having been drawn from ``dist``: weight += log dist(value)."""
        if getattr(dist, "lm_index", None) is not None:
            _check_token_id("ctx.observe()", value, dist.logits.shape[-1])
        value = jnp.asarray(value)
        lp = dist.log_prob(value)
        _check_scalar("ctx.observe()", lp, "the value observed (one value per particle)")
        self.logw = self.logw + self._guard("ctx.observe()", lp, None)
        self._record_token(dist, None, value)
        return value

    def factor(self, log_weight, name: str | None = None):
        """Multiplies the particle's weight by ``exp(log_weight)``.

        ``log_weight`` must be a number or ``-inf`` (which removes the particle); NaN and
        ``+inf`` remove it too and are reported as an error naming this factor (``name``, or
        the line that called it) when the run ends.
        """
        w = jnp.asarray(log_weight, jnp.float32)
        _check_scalar("ctx.factor()", w, "the log-weight (reduce a vector first, e.g. jnp.sum(w))")
        self.logw = self.logw + self._guard("ctx.factor()", w, name)

    def condition(self, predicate, name: str = "condition"):
        """Kills the particle (weight -inf, finished) unless ``predicate`` holds."""
        ok = jnp.asarray(predicate, bool)
        _check_scalar("ctx.condition()", ok, "the predicate (reduce a vector first, e.g. jnp.all(b))")
        self.logw = jnp.where(ok, self.logw, -jnp.inf)
        code = self._cause_code(name)
        free = self.cause < 0
        if self._empty_code is not None:
            free = free | (self.cause == self._empty_code)
        self.cause = jnp.where((~ok) & free, code, self.cause)
        self.done = self.done | ~ok

    def twist(self, log_weight, name: str | None = None):
        """Adds ``log_weight`` now; it is removed at this particle's next step or finish.

        NaN and ``+inf`` are errors, as for [factor][ppl.Context.factor].
        """
        w = jnp.asarray(log_weight, jnp.float32)
        _check_scalar("ctx.twist()", w, "the log-weight (reduce a vector first, e.g. jnp.sum(w))")
        self.twist_amount = self.twist_amount + self._guard("ctx.twist()", w, name)

    def finish_if(self, predicate):
        """Ends the particle after this step when ``predicate`` holds."""
        b = jnp.asarray(predicate, bool)
        _check_scalar("ctx.finish_if()", b, "the predicate (reduce a vector first, e.g. jnp.any(b))")
        self.done = self.done | b

    def finish(self):
        self.done = jnp.ones((), bool)

    def boundary(self, predicate=True):
        """Marks whether the text after this step ends a *unit* (no weight change).

        SMC ([ppl.infer][] with ``method="smc"``) resamples a particle only at steps where it
        ended a unit (or finished): at step ``t`` the particles at a boundary are resampled
        among themselves, the others keep their weights (exact: see docs/backends.md, "Units").
        Several calls in one step combine with *and*. A program that never calls it has a
        boundary after every token. Backends other than SMC ignore it.
        """
        b = jnp.asarray(predicate, bool)
        self.at_boundary = b if self.at_boundary is None else (self.at_boundary & b)

    def extend(self, dist, token, log_weight):
        """Extends the LM context by ``token`` chosen by other means (e.g. a host-side
        sampler) and adds ``log_weight``, which the caller guarantees is the correct
        (possibly random but unbiased) importance weight of that choice."""
        self.logw = self.logw + jnp.asarray(log_weight, jnp.float32)
        self.done = self.done | (jnp.asarray(log_weight) == -jnp.inf)
        self._record_token(dist, None, token)
        return token

    # ---- host-side escape hatch ----------------------------------------------------------
    def text(self, fn: Callable[[str], Any], dtype=jnp.float32):
        """Runs ``fn(text)`` on the host on the particle's decoded text (no EOS).

        The text includes the token drawn earlier in the same step, if any.

        Under the backend's vmap all particles are decoded and evaluated in one host call per
        step (`ppl._host.host_map`); an exception ``fn`` raises reaches the caller of
        ``ppl.infer`` as itself.
        """
        if self.tokens is None or self._decode_fn is None:
            raise ProgramError("ctx.text() needs the particle's tokens; use it in step() or final().")
        decode = self._decode_fn
        kind = np.dtype(dtype)

        def row(tokens, length):
            text = decode(tokens[: int(length)])
            return _check_host_value(fn, fn(text), kind, text)

        tokens, length = self.tokens, self.length
        if self.token is not None:  # include the token this step drew
            tokens = tokens.at[length].set(self.token, mode="drop")
            length = jnp.minimum(length + 1, tokens.shape[-1])
        return host_map(row, jax.ShapeDtypeStruct((), np.dtype(dtype)), tokens, length)

    # ---- internals -----------------------------------------------------------------------
    def _record_cause(self, bad, name: str) -> int:
        code = self._cause_code(name)
        self.cause = jnp.where(bad & (self.cause < 0), code, self.cause)
        return code

    def _guard(self, what: str, w, name: str | None):
        """``w`` with NaN/+inf turned into a dead particle whose cause names the culprit."""
        bad = jnp.isnan(w) | (w == jnp.inf)
        label = name if name else what + _caller_line()
        self._record_cause(bad, NAN_CAUSE + label)
        self.done = self.done | bad
        return jnp.where(bad, -jnp.inf, w)

    def _cause_code(self, name: str) -> int:
        names = self._condition_names
        if isinstance(names, list) and name not in names:  # the collecting pass
            names.append(name)
        # A name the collecting pass did not see (it cannot happen for the same program) is
        # reported as an unnamed cause rather than failing the run.
        return names.index(name) if name in names else len(names)

    def _record_token(self, dist, proposal, x):
        lm_index = getattr(dist, "lm_index", None)
        if lm_index is None and proposal is not None:
            lm_index = getattr(proposal, "lm_index", None)
        if lm_index is None:
            return
        if self.token is not None:
            raise ProgramError(
                "step() sampled or observed more than one token from the LM; a step extends "
                "the text by exactly one token. Split the work over several steps."
            )
        if self.tokens is None:
            raise ProgramError("LM tokens can only be sampled in step().")
        self.token = jnp.asarray(x, jnp.int32)


#: Cause-name prefix of a particle removed by a NaN or +inf log-weight from user code (the
#: driver reports any such particle as an error naming the culprit).
NAN_CAUSE = "NaN or +inf log-weight from "
#: Cause name of a particle whose token was drawn from an empty distribution.
EMPTY_CAUSE = "an empty next-token distribution (every token masked out or -inf)"


def _caller_line() -> str:
    """`` at file:line`` of the user code that called a primitive (empty when steerppl's own
    code called it)."""
    import sys

    from ppl._tracing import _is_user, _library_dirs

    f = sys._getframe(3)  # _caller_line <- _guard <- the primitive <- its caller
    if f is not None and _is_user(f.f_code.co_filename, _library_dirs()):
        return f" at {f.f_code.co_filename}:{f.f_lineno}"
    return ""


def _user_line() -> str:
    import traceback

    from ppl._tracing import user_location

    loc = user_location(traceback.extract_stack())
    return "" if loc is None else f" at {loc[0]}:{loc[1]}"


def _check_scalar(what: str, value, meaning: str) -> None:
    """Primitives take one value per particle (the program is written for one particle)."""
    if jnp.shape(value) != ():
        raise ProgramError(
            f"{what}{_user_line()} got an array of shape {tuple(jnp.shape(value))}; it takes "
            f"one scalar per particle: {meaning}. A program describes one particle, so its "
            "values are scalars (the backend vmaps it over particles)."
        )


def _check_token_id(what: str, value, vocab_size: int) -> None:
    """A concrete token id must lie in the vocabulary (a traced one is clamped by XLA)."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if arr.shape != ():
        raise ProgramError(f"{what}{_user_line()} needs one token id, got an array of shape "
                           f"{arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer) or isinstance(value, (bool, np.bool_)):
        raise ProgramError(f"{what}{_user_line()} needs an integer token id, got {value!r}.")
    if not 0 <= int(arr) < vocab_size:
        raise ProgramError(f"{what}{_user_line()}: token id {int(arr)} is outside the "
                           f"vocabulary (valid ids are 0..{vocab_size - 1}).")


def _fn_name(fn) -> str:
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or repr(fn))


def _check_host_value(fn, value, kind: np.dtype, text: str):
    """The value a host function returned, refused when it is not a number of ``kind``.

    The rule for user numbers: a log-weight is a finite number or ``-inf`` (which removes the
    particle, like a failed condition); NaN and ``+inf`` are errors naming the function,
    never a silent loss of particles.
    """
    name = _fn_name(fn)
    shown = text if len(text) <= 60 else text[:57] + "..."
    if kind == np.bool_:
        if getattr(value, "shape", None) == () and getattr(value, "dtype", None) == np.bool_:
            value = bool(np.asarray(value))  # a 0-d NumPy or JAX bool
        ok = isinstance(value, (bool, np.bool_)) or (
            isinstance(value, numbers.Integral) and value in (0, 1))
        if not ok:
            raise TypeError(f"{name!r} returned {value!r} ({type(value).__name__}) for the text "
                            f"{shown!r}; a predicate must return True or False.")
        return bool(value)
    if getattr(value, "shape", None) == () and hasattr(value, "dtype") and np.issubdtype(
            np.dtype(value.dtype), np.number):  # a 0-d NumPy or JAX array
        value = np.asarray(value)[()]
    if isinstance(value, (str, bytes)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name!r} returned {value!r} ({type(value).__name__}) for the text "
                        f"{shown!r}; it must return a number (a Python or NumPy scalar). "
                        + ("Convert it with float(...)." if isinstance(value, str) else ""))
    if np.issubdtype(kind, np.floating):
        v = float(value)
        if math.isnan(v) or v == math.inf:
            raise ProgramError(
                f"{name!r} returned {v} for the text {shown!r}. Rule: a potential, twist or "
                "ctx.text log-weight must be a finite number or -inf (-inf removes the "
                "particle, like a failed condition); NaN and +inf are errors, never a silent "
                "loss of particles. Fix the function (e.g. guard a log of 0 or a division).")
    return value
