"""The kinds of rules ``ppl.steer`` accepts, and the token automata device constraints become.

Four kinds, each a declared type (``steer`` dispatches on them with ``isinstance``):

* `Constraint` (device): a rule on the text compiled against the model's vocabulary
  into a `TokenAutomaton` (regex, JSON schema, word rules, ...), enforced token by
  token as a mask on the proposal.
* `HostSampler` (host): a rule that is not regular (a context-free grammar), enforced
  while each token is drawn by a sampler running on the host (`BoundSampler`).
* `TextPredicate` (host): ``fn(text) -> bool`` checked on the finished text (and on
  every prefix when the user promises it is prefix-closed).
* `Potential` (host): ``fn(text) -> float``, a log-weight on the finished text, or on
  every prefix as a twist.

Device constraints as token automata:

A constraint is written once against text (``Constraint``) and compiled against a model's
vocabulary into a `TokenAutomaton`: a deterministic automaton whose transition table
is indexed by (state, token id). During inference every particle carries an ``int32`` state;
the mask of allowed next tokens is a row lookup and the state update a gather, both
vectorised over particles by ``vmap``.

Exactness contract (what makes the posterior exact rather than merely "masked"):

* ``allowed(s)[t]`` is False only when no continuation of the text after token ``t`` can be
  accepted (the automaton is *co-accessible pruned*). Tokens that are allowed may still lead
  to a dead end; the particle then dies (weight -inf) and importance weights stay correct.
* ``allowed(s)[eos]`` is True iff ``accepting(s)``.
* Dead state is ``0`` by convention; ``transitions[0, :] == 0``.
"""

from __future__ import annotations

import abc
import math
import numbers
import dataclasses
import hashlib
import weakref
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.models.base import Vocab

__all__ = ["BoundSampler", "Constraint", "DEAD", "HostSampler", "KINDS", "Potential",
           "TextPredicate", "TokenAutomaton"]

DEAD = 0


@dataclasses.dataclass(frozen=True, eq=False)
class TokenAutomaton:
    """A compiled token-level DFA.

    Attributes:
        transitions: ``int32[S, V]``; ``transitions[s, t]`` is the state after emitting token
            ``t`` from state ``s`` (``DEAD`` = 0 when the text can no longer be accepted).
            EOS and special tokens map to ``DEAD``; EOS acceptance is read from ``accepting``.
        accepting: ``bool[S]``; True where the text so far is a complete, accepted text.
        start: the initial state.
        eos_token_id: the vocabulary's EOS id (allowed exactly in accepting states).
        name: for error messages (which constraint killed particles).
        eos_token_ids: every id that ends a sequence (``eos_token_id`` first); each is
            treated as EOS. Defaults to ``(eos_token_id,)``; ``Constraint.compile``
            sets the vocabulary's.
        halts: reaching a ``final`` state *ends the text* without an EOS draw (a stop
            string: the target is the LM's probability of the text as a prefix, not of
            the text followed by EOS). ``steer`` finishes such particles at once.
    """

    transitions: jax.Array
    accepting: jax.Array
    start: int
    eos_token_id: int
    name: str = "constraint"
    final: jax.Array | None = None
    min_steps: jax.Array | None = None
    eos_token_ids: tuple[int, ...] = ()
    digest: bytes | None = None
    halts: bool = False

    def __post_init__(self):
        object.__setattr__(self, "eos_token_ids", tuple(dict.fromkeys(
            [int(self.eos_token_id), *(int(i) for i in self.eos_token_ids)])))
        # ``final`` marks accepting states from which no text token is allowed (e.g. a stop
        # string was just completed). Backends may finish such particles without sampling EOS,
        # which gives "truncate at the stop string" semantics instead of multiplying the weight
        # by p(EOS). Derived once here so that it is a lookup inside jit.
        traced = isinstance(self.transitions, jax.core.Tracer) or isinstance(self.accepting, jax.core.Tracer)
        if self.final is None:
            if traced:  # built inside jit (e.g. random automata in property tests)
                live = jnp.any(self.transitions != DEAD, axis=1)
                object.__setattr__(self, "final", self.accepting & ~live)
            else:
                # numpy on the host: a jnp expression here would compile once per table shape.
                live = np.any(np.asarray(self.transitions) != DEAD, axis=1)
                object.__setattr__(self, "final", jnp.asarray(np.asarray(self.accepting) & ~live))
        if self.min_steps is None:
            if traced:  # no host pass possible: no budget pruning (still exact)
                object.__setattr__(self, "min_steps", jnp.zeros(self.transitions.shape[0], jnp.int32))
            else:
                object.__setattr__(self, "min_steps", jnp.asarray(_min_steps(
                    np.asarray(self.transitions), np.asarray(self.accepting))))
        if self.digest is None and not traced:
            # Content, not identity, decides whether two automata are the same constraint: a
            # compiled run is shared by programs whose automata have equal tables.
            h = hashlib.blake2b(digest_size=16)
            for a in (self.transitions, self.accepting, self.min_steps):
                arr = np.ascontiguousarray(np.asarray(a))
                h.update(str((arr.shape, arr.dtype)).encode())
                h.update(arr.view(np.uint8).reshape(-1))
            object.__setattr__(self, "digest", h.digest())

    def __fingerprint__(self):
        """What a compiled run that uses this automaton depends on (None: use identity)."""
        if self.digest is None:
            return None
        return (self.digest, int(self.start), self.eos_token_ids, self.name, self.halts)

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def init_state(self) -> jax.Array:
        return jnp.asarray(self.start, jnp.int32)

    def _eos_tuple(self) -> tuple[int, ...]:
        # An instance assembled without __post_init__ (traced tables) may leave the tuple
        # empty; EOS must still be EOS there.
        return self.eos_token_ids or (int(self.eos_token_id),)

    def _eos_ids(self) -> jax.Array:
        return jnp.asarray(self._eos_tuple(), jnp.int32)

    def is_eos(self, token: jax.Array) -> jax.Array:
        """True where ``token`` is one of ``eos_token_ids``."""
        if len(self._eos_tuple()) == 1:
            return token == self.eos_token_id
        return jnp.isin(token, self._eos_ids())

    def allowed(self, state: jax.Array) -> jax.Array:
        """``bool[V]``: tokens after which the text can still be accepted (every EOS id iff
        accepting)."""
        row = self.transitions[state] != DEAD
        return row.at[self._eos_ids()].set(self.accepting[state])

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:
        """State after ``token``; an EOS id keeps an accepting state, anything invalid goes DEAD."""
        nxt = self.transitions[state, token]
        keep = self.is_eos(token) & self.accepting[state]
        return jnp.where(keep, state, nxt).astype(jnp.int32)

    def accepting_state(self, state: jax.Array) -> jax.Array:
        return self.accepting[state]

    def alive(self, state: jax.Array) -> jax.Array:
        return state != DEAD

    def within_budget(self, state: jax.Array, remaining: jax.Array) -> jax.Array:
        """``bool[V]``: tokens after which an accepting state is reachable with at most
        ``remaining`` further tokens (EOS: iff accepting now). Removing only tokens that cannot
        lead to an accepted text within the budget keeps masked proposals exact."""
        ok = self.min_steps[self.transitions[state]] <= remaining
        return ok.at[self._eos_ids()].set(self.accepting[state])

    def is_final(self, state: jax.Array) -> jax.Array:
        """True when the text is accepted and no further text token is allowed (only EOS)."""
        return self.final[state]


_UNREACHABLE = np.iinfo(np.int32).max // 2


def _min_steps(transitions: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """``int32[S]``: fewest tokens from each state to an accepting state (a large number if
    none), by a backward breadth-first search over the state graph (an S x S successor
    matrix, filled block by block, so the cost does not grow with the vocabulary after one
    pass over the table; O(S^2) after that)."""
    t = np.asarray(transitions)
    s = t.shape[0]
    succ = np.zeros((s, s), bool)
    rows = max(1, (1 << 22) // max(t.shape[1], 1))
    for i in range(0, s, rows):
        blk = t[i : i + rows]
        succ[np.arange(i, i + len(blk))[:, None], blk] = True
    succ[:, DEAD] = False
    dist = np.full(s, _UNREACHABLE, np.int64)
    frontier = np.flatnonzero(np.asarray(accepting))
    dist[frontier] = 0
    k = 0
    while frontier.size:
        k += 1
        frontier = np.flatnonzero(succ[:, frontier].any(axis=1) & (dist == _UNREACHABLE))
        dist[frontier] = k
    dist[DEAD] = _UNREACHABLE
    return dist.astype(np.int32)


class Constraint(abc.ABC):
    """A hard constraint on the generated text, independent of any vocabulary.

    Subclasses validate their arguments at construction (raising ``ValueError`` with the
    problem and its position) and implement either `_compile` (and get a per-vocabulary
    cache from `compile`) or `compile` itself.

    Host-side reference checks come in three entry points: `check` (a ``str``),
    `check_bytes` (the exact UTF-8 bytes, which is what the automata read) and
    `check_ids` (token ids of a vocabulary). Subclasses override ``check_bytes`` (text
    rules) or ``check_ids`` (token rules such as a token budget).
    """

    name: str = "constraint"

    def compile(self, vocab: Vocab) -> TokenAutomaton:
        """Lifts the constraint to a token automaton over ``vocab`` (host-side, cached).

        The cache is keyed on the vocabulary object (weakly, so dropping the vocabulary frees
        the tables) and lives on the constraint instance.
        """
        cache = self.__dict__.get("_compiled")
        if cache is None:
            cache = weakref.WeakKeyDictionary()
            self.__dict__["_compiled"] = cache
        out = cache.get(vocab)
        if out is None:
            out = self._compile(vocab)
            # Every EOS id of the vocabulary ends an accepted text (the automaton is built
            # for this vocabulary only, so setting them here is safe).
            ids = tuple(getattr(vocab, "eos_token_ids", ()) or (vocab.eos_token_id,))
            if ids != out.eos_token_ids:
                object.__setattr__(out, "eos_token_ids", ids)
            cache[vocab] = out
        return out

    def _compile(self, vocab: Vocab) -> TokenAutomaton:
        raise NotImplementedError(f"{type(self).__name__} does not implement compile().")

    def accepts(self, text: str) -> bool:
        """Whether a finished ``text`` satisfies the constraint, without running inference.

        Constraints built on a byte automaton answer with that automaton (exactly what
        inference enforces); others with their reference check.
        """
        return self.check(text)

    def check(self, text: str) -> bool:
        """Host-side reference check of a finished text (used by tests and final checks)."""
        return self.check_bytes(text.encode("utf-8"))

    def check_bytes(self, data: bytes) -> bool:
        """Reference check of the finished text given as its exact UTF-8 bytes."""
        raise NotImplementedError(f"{type(self).__name__} has no host-side check.")

    def check_ids(self, ids, vocab: Vocab) -> bool:
        """Reference check of a finished token sequence (EOS excluded) over ``vocab``.

        Special or empty tokens never occur inside accepted text, so they make it False.
        """
        text = vocab.text_mask()
        ids = [int(i) for i in ids]
        if not all(0 <= i < vocab.size and text[i] for i in ids):
            return False
        return self.check_bytes(b"".join(vocab.token_bytes[i] for i in ids))


class BoundSampler(abc.ABC):
    """A `HostSampler` bound to one vocabulary: what a program step calls."""

    name: str = "host sampler"

    @abc.abstractmethod
    def sample(self, ctx, logprobs) -> tuple[jax.Array, jax.Array]:
        """Draws the particle's next token on the host (traced as one batched callback).

        Args:
            ctx: the particle's [Context][ppl.Context] (tokens so far, length, budget, key).
            logprobs: ``float32[V]`` the distribution the token is drawn against (the LM's,
                or the LM's already masked by device constraints).

        Returns:
            ``(token, log_weight)``: ``exp(log_weight)`` is an unbiased estimate of the mass
            of ``logprobs`` that the rule keeps, so the particle's weight stays exact.
        """

    @abc.abstractmethod
    def check(self, text: str) -> bool:
        """Whether a finished text satisfies the rule (applied once more at the end)."""


class HostSampler(abc.ABC):
    """A hard rule that is not regular (e.g. a Lark grammar), enforced on the host."""

    name: str = "host sampler"

    @abc.abstractmethod
    def bind(self, vocab: Vocab) -> BoundSampler:
        """Prepares the host tables of ``vocab`` (token strings, special ids)."""

    @abc.abstractmethod
    def check(self, text: str) -> bool:
        """Host-side reference check of a finished text."""


class TextPredicate:
    """A Python rule on the text, ``fn(text) -> bool``, checked on the host.

    Args:
        fn: the rule.
        incremental: the user's promise that the rule is *prefix-closed*: once it fails on a
            prefix it fails on every continuation. Then it is checked after every token (one
            batched ``pure_callback`` per step) and failing particles die early, which saves
            work and keeps the posterior exact. Without the promise it is checked only on the
            finished text (always exact).
        name: for the error raised when every particle fails.
    """

    def __init__(self, fn: Callable[[str], bool], incremental: bool = False, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"predicate needs a callable str -> bool, got {fn!r}.")
        self.fn = fn
        self.incremental = bool(incremental)
        self.name = name or getattr(fn, "__name__", "predicate")

    def __call__(self, text: str) -> bool:
        return bool(self.fn(text))

    def check(self, text: str) -> bool:
        return self(text)


class Potential:
    """A log-weight ``fn(text) -> float`` on the generated text.

    Args:
        fn: the scorer (any Python: a reward model, a classifier, a regex count...).
        when: ``"end"`` multiplies the finished text's weight by ``exp(fn(text))`` (changes the
            target); ``"twist"`` applies ``fn`` to every prefix as a twist (guides resampling
            towards prefixes that score well; cancels out of the final target).
        scale: multiplies ``fn``'s value (an inverse temperature).
        name: for reports.
    """

    def __init__(self, fn: Callable[[str], float], when: str = "end", scale: float = 1.0,
                 name: str | None = None):
        if when not in ("end", "twist"):
            raise ValueError(f"Potential(when=...) must be 'end' or 'twist', got {when!r}.")
        if not callable(fn):
            raise TypeError(f"Potential needs a callable str -> float, got {fn!r}.")
        self.fn = fn
        self.when = when
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise TypeError(f"Potential(scale=...) must be a finite number, got {scale!r}.")
        self.scale = float(scale)
        self.name = name or getattr(fn, "__name__", "potential")

    def __call__(self, text: str) -> float:
        value = self.fn(text)
        if getattr(value, "shape", None) == () and hasattr(value, "dtype") and np.issubdtype(
                np.dtype(value.dtype), np.number):  # a 0-d NumPy or JAX array
            value = np.asarray(value)[()]
        if isinstance(value, (str, bytes)) or not isinstance(value, numbers.Real):
            raise TypeError(f"potential {self.name!r} returned {value!r} "
                            f"({type(value).__name__}) for the text {text[:60]!r}; it must "
                            "return a number (a Python or NumPy scalar).")
        return self.scale * float(value)


#: What ``steer(constraints=...)`` accepts, for error messages.
KINDS = ("a ppl.stdlib constraint (regex, json_schema, max_word_length, ...: compiled to a "
         "token automaton)", "a compiled TokenAutomaton", "a host sampler (constraints.lark)",
         "a TextPredicate (constraints.predicate) or a plain callable str -> bool")
