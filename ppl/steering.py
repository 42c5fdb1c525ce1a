"""``ppl.steer`` (defined here, in ``ppl.steering``): the common program (LM prior x hard constraints x
potentials) without a class."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from ppl.context import Context
from ppl.program import Program
from ppl.stdlib.base import (KINDS, BoundSampler, Constraint, HostSampler, Potential, TextPredicate,
                             TokenAutomaton)

__all__ = ["SteerProgram", "steer"]


class SteerProgram(Program):
    """The program :func:`steer` builds: LM prior x hard constraints x potentials.

    Target over token sequences ``x`` (ending at EOS, which is not part of the text, or at
    ``max_tokens`` tokens)::

        pi(x) ∝ p_LM(x) * Π_c 1[c(text(x))] * Π_f exp(f(text(x)))

    A sequence ends at any of the model's ``eos_token_ids`` (a checkpoint may list several,
    e.g. an instruct model's end-of-turn token and its end-of-text token).

    Device constraints (token automata) are enforced with the LM masked to the tokens that
    keep the text acceptable as the proposal (several are first combined into one pruned
    product automaton, as ``all_of`` does, so the mask already excludes tokens after which
    their conjunction cannot be completed); the weight increment is the log mass the
    mask kept, ``log Σ_{y allowed} p(y | x_<t)``, which makes the result exact. Python
    predicates and potentials run on the host when a particle finishes. Twist potentials
    ``g`` are applied at every step as ``twist(g(text so far))``.
    """

    def __init__(self, lm, prompt="", constraints: Sequence = (), potentials: Sequence = (),
                 twists: Sequence = (), max_tokens: int = 32, temperature: float | None = None):
        super().__init__(lm=lm, prompt=prompt, max_tokens=max_tokens)
        self.automata: list[TokenAutomaton] = []
        self.predicates: list[TextPredicate] = []
        self.host: list[BoundSampler] = []
        from ppl.stdlib.constraints import AllOf

        flat = []
        for c in constraints:
            # all_of's parts join the one product built below, and a stop string inside it
            # keeps ending the text at the stop string (see halts)
            flat.extend(c.parts if isinstance(c, AllOf) else [c])
        for c in flat:
            if isinstance(c, HostSampler):
                self.host.append(c.bind(lm.vocab))
            elif isinstance(c, TokenAutomaton):
                self.automata.append(c)
            elif isinstance(c, Constraint):
                self.automata.append(c.compile(lm.vocab))
            elif isinstance(c, TextPredicate):
                self.predicates.append(c)
            elif callable(c):
                self.predicates.append(TextPredicate(c))
            else:
                raise TypeError(f"constraint {c!r} is not a kind steer() accepts; give one of: "
                                + "; ".join(KINDS) + ".")
        if len(self.automata) > 1:
            # One co-accessible product instead of separate masks: no particle walks into a
            # token each automaton allows but their conjunction cannot complete.
            from ppl.stdlib._automata import combine

            # Stop strings stay separate: their final state ends the text (no EOS draw).
            halting = [a for a in self.automata if a.halts]
            self.automata = combine([a for a in self.automata if not a.halts], lm.vocab) + halting
        if len(self.host) > 1:
            raise ValueError("steer() supports one grammar constraint at a time; combine the "
                             "grammars into one.")
        self.potentials: list[Potential] = []
        self.twists: list[Potential] = []
        for f in potentials:
            f = f if isinstance(f, Potential) else Potential(f)
            (self.twists if f.when == "twist" else self.potentials).append(f)
        for f in twists:
            self.twists.append(f if isinstance(f, Potential) else Potential(f, when="twist"))
        self.temperature = temperature

    def init(self, ctx: Context):
        return tuple(a.init_state() for a in self.automata)

    def step(self, ctx: Context, state):
        p = ctx.lm.next_token(self.temperature)
        if self.automata:
            mask = jnp.ones((self.lm.vocab_size,), bool)
            # Tokens left after this one; only tokens from which every automaton can still
            # reach acceptance within them survive (exact: nothing acceptable is removed).
            remaining = self.max_tokens - (ctx.length + 1)
            for a, s in zip(self.automata, state):
                mask = mask & a.allowed(s) & a.within_budget(s, remaining)
            tok = self._draw(ctx, p, p.mask(mask))
            state = tuple(a.advance(s, tok) for a, s in zip(self.automata, state))
            for a, s in zip(self.automata, state):
                ctx.condition(a.alive(s), name=a.name)
            for a, s in zip(self.automata, state):
                if a.halts:  # a stop string was completed: the text ends here, no EOS draw
                    ctx.finish_if(a.is_final(s) & ~_is_eos(self.lm, tok))
        else:
            tok = self._draw(ctx, p, None)
        ctx.finish_if(_is_eos(self.lm, tok))
        for pred in self.predicates:
            if pred.incremental:  # prefix-closed: check every prefix
                ctx.condition(ctx.text(pred, dtype=bool), name=pred.name)
        for g in self.twists:
            ctx.twist(ctx.text(g))
        return state

    def _draw(self, ctx: Context, p, q):
        if not self.host:
            return ctx.sample(p, proposal=q)
        # Device masks first (their kept mass is exact), then the host sampler's unbiased
        # estimate of the mass the grammar keeps among what is left.
        base = p if q is None else q
        lz_dev = 0.0 if q is None else q.log_normalizer - p.log_normalizer
        tok, lz_host = self.host[0].sample(ctx, base.logprobs)
        return ctx.extend(p, tok, lz_dev + lz_host)

    def final(self, ctx: Context, state):
        for h in self.host:
            ctx.condition(ctx.text(h.check, dtype=bool), name=h.name)
        for a, s in zip(self.automata, state):
            ctx.condition(a.accepting_state(s), name=a.name)
        for pred in self.predicates:
            ctx.condition(ctx.text(pred, dtype=bool), name=pred.name)
        for f in self.potentials:
            ctx.factor(ctx.text(f))


def _is_eos(lm, tok):
    """True where ``tok`` is one of the model's EOS ids (every one of them ends a sequence)."""
    ids = tuple(getattr(lm, "eos_token_ids", ()) or (lm.eos_token_id,))
    if len(ids) == 1:
        return tok == ids[0]
    return jnp.isin(tok, jnp.asarray(ids, jnp.int32))


def steer(lm, prompt: str | Sequence[int] = "", constraints: Sequence = (),
          potentials: Sequence = (), max_tokens: int = 32, twists: Sequence = (),
          temperature: float | None = None, *, messages: Sequence[dict] | None = None
          ) -> SteerProgram:
    """The common program without writing a class.

    Args:
        lm: the language model (prior), e.g. ``ppl.models.load("tiny")``.
        prompt: the text generation continues from (or its token ids).
        constraints: hard rules: ``ppl.stdlib.constraints`` objects (enforced token by token
            on device) and/or Python callables ``str -> bool`` (checked when a particle
            finishes).
        potentials: soft rules ``str -> float`` (log-weights) applied to the finished text, or
            :class:`ppl.stdlib.potentials.Potential` objects (``when="twist"`` ones act as
            twists).
        max_tokens: the token budget; a sequence also ends at EOS.
        twists: ``str -> float`` heuristics applied to every prefix as twists (they guide
            resampling and cancel out of the final target).
        temperature: optional LM temperature (changes the prior itself).
        messages: a chat instead of ``prompt``: ``[{"role": "user", "content": ...}, ...]``,
            formatted with the checkpoint's chat template and the assistant's turn opened
            (see [ppl.chat][ppl.chat]); generation is the assistant's reply.

    Raises:
        ValueError: both ``prompt`` and ``messages``, or ``messages`` for a model without a
            chat template.
    """
    if messages is not None:
        if (isinstance(prompt, str) and prompt) or (not isinstance(prompt, str) and len(prompt)):
            raise ValueError("steer: give prompt= or messages=, not both (messages are turned "
                             "into the prompt by the model's chat template).")
        from ppl.models.chat import chat

        prompt = chat(lm, messages)
    return SteerProgram(lm, prompt, constraints, potentials, twists, max_tokens, temperature)
