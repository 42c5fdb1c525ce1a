"""Hard constraints as token-level automata kept on device.

A constraint is written once against text (``Constraint``) and compiled against a model's
vocabulary into a :class:`TokenAutomaton`: a deterministic automaton whose transition table
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
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ppl.models.base import Vocab

__all__ = ["Constraint", "TokenAutomaton", "DEAD"]

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
    """

    transitions: jax.Array
    accepting: jax.Array
    start: int
    eos_token_id: int
    name: str = "constraint"

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def init_state(self) -> jax.Array:
        return jnp.asarray(self.start, jnp.int32)

    def allowed(self, state: jax.Array) -> jax.Array:
        """``bool[V]``: tokens after which the text can still be accepted (EOS iff accepting)."""
        row = self.transitions[state] != DEAD
        return row.at[self.eos_token_id].set(self.accepting[state])

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:
        """State after ``token``; EOS keeps an accepting state, anything invalid goes DEAD."""
        nxt = self.transitions[state, token]
        keep = (token == self.eos_token_id) & self.accepting[state]
        return jnp.where(keep, state, nxt).astype(jnp.int32)

    def accepting_state(self, state: jax.Array) -> jax.Array:
        return self.accepting[state]

    def alive(self, state: jax.Array) -> jax.Array:
        return state != DEAD


class Constraint(abc.ABC):
    """A hard constraint on the generated text, independent of any vocabulary.

    Subclasses validate their arguments at construction (raising ``ValueError`` with the
    problem and its position) and implement :meth:`compile`.
    """

    name: str = "constraint"

    @abc.abstractmethod
    def compile(self, vocab: Vocab) -> TokenAutomaton:
        """Lifts the constraint to a token automaton over ``vocab`` (host-side, cached)."""

    def check(self, text: str) -> bool:
        """Host-side reference check of a finished text (used by tests and final checks)."""
        raise NotImplementedError
