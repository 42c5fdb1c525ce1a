"""``ppl.steer`` (defined here, in ``ppl.steering``): the common program (LM prior x hard constraints x
potentials) without a class."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ppl.context import Context
from ppl.program import Program
from ppl.stdlib.base import (KINDS, BoundSampler, Constraint, HostSampler, Potential, TextPredicate,
                             TokenAutomaton)

__all__ = ["SteerProgram", "steer"]


class SteerProgram(Program):
    """The program `steer` builds: LM prior x hard constraints x potentials.

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
    ``g`` are applied as ``twist(g(text so far))`` at every unit boundary (every token by
    default) and held fixed in between; SMC resamples a particle only at its boundaries
    ([Context.boundary][ppl.Context.boundary]). Neither changes the target.

    With a proposal model (``proposal_lm``, ``proposal_prompt`` or ``proposal_temperature``)
    each token is drawn from ``q = (1 - f) r + f b``: ``r`` the proposal model's next-token
    distribution (tempered, masked by the device constraints), ``b`` the proposal the
    program uses without it (the masked, possibly truncated LM) and ``f = proposal_floor``;
    the weight increment is ``log p(x_t | x_<t) - log q(x_t | x_<t)`` (plus the program's
    factors). ``f > 0`` keeps every token ``b`` proposes proposable, so the target and the
    evidence are unchanged (see [ppl.proposal_lm][]). ``self.lm`` is then a
    [PairedLM][ppl.proposal_lm.PairedLM] (the LM with the proposal model's weights riding
    along), and the proposal model's KV cache lives in the particle state (index ``1``;
    index ``0`` is the state without it), so resampling forks it with the particle.
    """

    def __init__(self, lm, prompt="", constraints: Sequence = (), potentials: Sequence = (),
                 twists: Sequence = (), max_tokens: int = 32, temperature: float | None = None,
                 *, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, truncation: str = "prior",
                 truncation_floor: float = 0.05,
                 unit="token", process_reward=None, reward_aggregate: str = "product",
                 reward_as: str = "likelihood", terminate_when=None, proposal_lm=None,
                 proposal_prompt=None, proposal_temperature: float | None = None,
                 proposal_floor: float = 0.05):
        guide, own_context = None, False
        if any(x is not None for x in (proposal_lm, proposal_prompt, proposal_temperature)):
            from ppl.proposal_lm import check_same_vocabulary, paired

            q = lm if proposal_lm is None else proposal_lm
            check_same_vocabulary(lm, q)  # before any device work
            if q is lm and proposal_prompt is None:
                # The same model and context: the proposal is the LM's own distribution at
                # another temperature; nothing to carry.
                guide = _Retempered(proposal_temperature, proposal_floor)
            else:
                lm, own_context = paired(lm, q), True
        super().__init__(lm=lm, prompt=prompt, max_tokens=max_tokens)
        if own_context:
            from ppl.proposal_lm import LMProposal

            guide = LMProposal(self.lm, prompt if proposal_prompt is None else proposal_prompt,
                               max_tokens=self.max_tokens, temperature=proposal_temperature,
                               floor=proposal_floor)
        self.guide = guide
        if terminate_when is not None and not callable(terminate_when):
            raise TypeError(f"steer: terminate_when must be a function text -> bool, got "
                            f"{terminate_when!r}.")
        self.terminate_when = terminate_when
        self.unit = unit
        self._unit_tables = unit_tables(lm, unit)
        if process_reward is not None and not callable(process_reward):
            raise TypeError(f"steer: process_reward must be a function text -> log-score, got "
                            f"{process_reward!r}.")
        if reward_aggregate not in AGGREGATES:
            raise ValueError(f"steer: unknown reward_aggregate {reward_aggregate!r}; choose one "
                             f"of {list(AGGREGATES)}.")
        if reward_as not in ("likelihood", "twist"):
            raise ValueError(f"steer: reward_as must be 'likelihood' or 'twist', got "
                             f"{reward_as!r}.")
        self.process_reward = process_reward
        self.reward_aggregate = reward_aggregate
        self.reward_as = reward_as
        # Units, or a process reward, carry extra state (held twists, the reward aggregate).
        self._rich = unit != "token" or process_reward is not None
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
                _check_automaton(c, lm)
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
        if temperature is not None:
            from ppl.dists import check_temperature

            temperature = check_temperature(temperature)
        self.temperature = temperature
        self.top_k, self.top_p, self.min_p = _check_truncation(
            lm, top_k, top_p, min_p, truncation, truncation_floor)
        self.truncation = truncation
        self.truncation_floor = float(truncation_floor)
        if self.host and truncation == "proposal" and self._truncates:
            raise ValueError("steer(truncation='proposal') does not combine with a grammar "
                             "constraint (its sampler draws from the LM itself); use "
                             "truncation='prior' or drop top_k/top_p/min_p.")
        if self.host and guide is not None:
            raise ValueError("steer(proposal_lm=...) does not combine with a grammar constraint "
                             "(its sampler draws from the LM itself); drop proposal_lm/"
                             "proposal_prompt/proposal_temperature or use device constraints.")

    @property
    def _truncates(self) -> bool:
        return any(x is not None for x in (self.top_k, self.top_p, self.min_p))

    def _truncated(self, p):
        """``(prior, proposal or None)`` after top-k/top-p/min-p (see ``steer``)."""
        if not self._truncates:
            return p, None
        t = p
        if self.top_k is not None:
            t = t.top_k(self.top_k)
        if self.top_p is not None:
            t = t.top_p(self.top_p)
        if self.min_p is not None:
            t = t.min_p(self.min_p)
        if self.truncation == "prior":
            return t, None
        return p, t.mix(p, self.truncation_floor)

    def init(self, ctx: Context):
        states = tuple(a.init_state() for a in self.automata)
        if self._rich:
            # The twists of the last boundary (held in between) and the process reward's
            # aggregate of the units completed so far, with their count.
            states = (states, jnp.zeros((len(self.twists),), jnp.float32),
                      (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                       jnp.zeros((), jnp.int32)))
        if self._carries_guide:
            return states, self.guide.init()
        return states

    @property
    def _carries_guide(self) -> bool:
        """A proposal model with its own context (its cache is part of the state)."""
        from ppl.proposal_lm import LMProposal

        return isinstance(self.guide, LMProposal)

    def step(self, ctx: Context, state):
        g = None
        if self._carries_guide:
            state, g = state
        if self._rich:
            out = self._step(ctx, *state, guide=g)
        else:
            out = self._step(ctx, state, None, guide=g)
        if g is None:
            return out
        # The proposal model reads the token the LM was extended by.
        return out, self.guide.advance(g, ctx.token, ctx.length)

    def _boundary(self, ctx: Context, tok):
        """Whether the text after ``tok`` ends a unit (EOS always does: the particle ends)."""
        u, tabs = self.unit, self._unit_tables
        if u == "token":
            return jnp.ones((), bool)
        if isinstance(u, int):
            return (ctx.length + 1) % u == 0
        if callable(u):
            return ctx.text(lambda t: bool(u(t)), dtype=bool)
        b = jnp.asarray(tabs["ends"])[tok]
        if "starts_nl" in tabs:  # blank line split over two tokens: "...\n" then "\n..."
            prev = ctx.tokens[jnp.maximum(ctx.length - 1, 0)]
            b = b | ((ctx.length > 0) & jnp.asarray(tabs["ends_nl"])[prev]
                     & jnp.asarray(tabs["starts_nl"])[tok])
        return b

    def _step(self, ctx: Context, state, held=None, agg=None, guide=None):
        out = self._step_inner(ctx, state, held, agg, guide)
        if self.terminate_when is not None:
            stop = self.terminate_when
            ctx.finish_if(ctx.text(lambda t: bool(stop(t)), dtype=bool))
        return out

    def _step_inner(self, ctx: Context, state, held=None, agg=None, guide=None):
        p, q = self._truncated(ctx.lm.next_token(self.temperature))
        if self.automata:
            mask = jnp.ones((self.lm.vocab_size,), bool)
            # Tokens left after this one; only tokens from which every automaton can still
            # reach acceptance within them survive (exact: nothing acceptable is removed).
            remaining = self.max_tokens - (ctx.length + 1)
            for a, s in zip(self.automata, state):
                mask = mask & a.allowed(s) & a.within_budget(s, remaining)
            tok = self._draw(ctx, p, (p if q is None else q).mask(mask), mask, guide)
            state = tuple(a.advance(s, tok) for a, s in zip(self.automata, state))
            for a, s in zip(self.automata, state):
                ctx.condition(a.alive(s), name=a.name)
            for a, s in zip(self.automata, state):
                if a.halts:  # a stop string was completed: the text ends here, no EOS draw
                    ctx.finish_if(a.is_final(s) & ~_is_eos(self.lm, tok))
        else:
            tok = self._draw(ctx, p, q, None, guide)
        ctx.finish_if(_is_eos(self.lm, tok))
        for pred in self.predicates:
            if pred.incremental:  # prefix-closed: check every prefix
                ctx.condition(ctx.text(pred, dtype=bool), name=pred.name)
        if held is None:
            for g in self.twists:
                ctx.twist(ctx.text(g), name=f"twist {g.name!r}")
            return state
        at = self._boundary(ctx, tok) | _is_eos(self.lm, tok)
        if self.unit != "token":
            ctx.boundary(at)
        new = []
        for i, g in enumerate(self.twists):
            v = jnp.where(at, ctx.text(g), held[i])
            ctx.twist(v, name=f"twist {g.name!r}")
            new.append(v)
        if self.process_reward is not None:
            # The last token also completes a unit (the text ends there); EOS right after a
            # boundary completes nothing (no text since the last score).
            eos = _is_eos(self.lm, tok)
            fresh = ~eos | (ctx.length > agg[2])
            agg = self._reward(ctx, (at | ctx.is_last) & fresh, agg)
        return state, jnp.asarray(new, jnp.float32).reshape((len(self.twists),)), agg

    def _reward(self, ctx: Context, at, agg):
        """Scores the unit just completed and folds it into the aggregate. As a likelihood the
        aggregate's change enters as a factor (telescoping to ``aggregate(final scores)``, so
        intermediate weights already see it); as a twist it is the current twist."""
        value, count, scored_len = agg
        fn, twist = self.process_reward, self.reward_as == "twist"

        def score(text):
            r = float(fn(text))
            if twist and not np.isfinite(r):
                raise ValueError(f"process_reward returned {r} for {text!r}; as a twist it must "
                                 f"be finite (use reward_as='likelihood' to rule texts out).")
            return r

        r = ctx.text(score)
        how = self.reward_aggregate
        if how == "product":
            new = value + r
        elif how == "last":
            new = r
        else:  # min
            new = jnp.where(count == 0, r, jnp.minimum(value, r))
        new = jnp.where(at, new, value)
        if twist:
            ctx.twist(new)
        else:
            ctx.factor(jnp.where(at, new - value, 0.0))
        return (new.astype(jnp.float32), count + at.astype(jnp.int32),
                jnp.where(at, ctx.length + 1, scored_len).astype(jnp.int32))

    def _draw(self, ctx: Context, p, q, mask=None, guide=None):
        if self.guide is not None:
            # q' = (1 - f) r + f b, b the proposal without the proposal model (masked
            # alike): the weight log p(x) - log q'(x) is exact as f > 0 keeps b's support.
            base = p if q is None else q
            r = (self.guide.next_token(guide) if guide is not None
                 else ctx.lm.next_token(self.guide.temperature))
            if mask is not None:
                r = r.mask(mask)
            return ctx.sample(p, proposal=r.mix(base, self.guide.floor))
        if not self.host:
            return ctx.sample(p, proposal=q)
        # Device masks first (their kept mass is exact), then the host sampler's unbiased
        # estimate of the mass the grammar keeps among what is left.
        base = p if q is None else q
        lz_dev = 0.0 if q is None else q.log_normalizer - p.log_normalizer
        tok, lz_host = self.host[0].sample(ctx, base.logprobs)
        return ctx.extend(p, tok, lz_dev + lz_host)

    def final(self, ctx: Context, state):
        if self._carries_guide:
            state = state[0]
        if self._rich:
            state = state[0]
        for h in self.host:
            ctx.condition(ctx.text(h.check, dtype=bool), name=h.name)
        for a, s in zip(self.automata, state):
            ctx.condition(a.accepting_state(s), name=a.name)
        for pred in self.predicates:
            ctx.condition(ctx.text(pred, dtype=bool), name=pred.name)
        for f in self.potentials:
            ctx.factor(ctx.text(f), name=f"potential {f.name!r}")


class _Retempered:
    """The LM's own next-token distribution at another temperature, as the proposal model
    (``proposal_lm`` the LM itself, no ``proposal_prompt``: no second context to carry)."""

    def __init__(self, temperature, floor):
        from ppl.dists import check_temperature
        from ppl.proposal_lm import check_floor

        self.temperature = None if temperature is None else check_temperature(temperature)
        self.floor = check_floor(floor)


def _check_automaton(a: TokenAutomaton, lm) -> None:
    """A compiled automaton must be the model's: same vocabulary size and EOS id."""
    v = int(a.transitions.shape[-1])
    fix = ("Pass the constraint itself (steer compiles it for the model) or compile it with "
           "`constraint.compile(lm.vocab)` for this model.")
    if v != int(lm.vocab_size):
        raise ValueError(f"constraint {a.name!r} was compiled for a vocabulary of {v} tokens, but "
                         f"{getattr(lm, 'name', 'the model')} has {lm.vocab_size}. {fix}")
    if int(a.eos_token_id) != int(lm.eos_token_id):
        raise ValueError(f"constraint {a.name!r} was compiled for a vocabulary whose EOS id is "
                         f"{a.eos_token_id}, but {getattr(lm, 'name', 'the model')}'s is "
                         f"{lm.eos_token_id}. {fix}")


_TRUNCATIONS = ("prior", "proposal")


def _check_truncation(lm, top_k, top_p, min_p, truncation, floor):
    import numbers

    if truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {truncation!r}.")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise TypeError(f"top_k must be an int >= 1, got {top_k!r}.")
        if not 1 <= int(top_k):
            raise ValueError(f"top_k must be >= 1, got {top_k}; top_k=None keeps every token.")
        top_k = min(int(top_k), lm.vocab_size)
    for name, v, lo_open in (("top_p", top_p, True), ("min_p", min_p, False)):
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a number, got {v!r}.")
            if not (0 < float(v) <= 1 if lo_open else 0 <= float(v) <= 1):
                raise ValueError(f"{name} must be in {'(0, 1]' if lo_open else '[0, 1]'}, got {v}.")
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 < float(floor) <= 1:
        raise ValueError(f"truncation_floor must be in (0, 1] (the prior's share of the "
                         f"proposal, which keeps every token proposable), got {floor!r}.")
    return (top_k, None if top_p is None else float(top_p),
            None if min_p is None else float(min_p))


#: How ``steer(process_reward=...)`` combines the log-scores of the completed units: their
#: sum (a product of scores), the last one, or the smallest.
AGGREGATES = ("product", "last", "min")

#: The text units ``steer(unit=...)`` names (besides ``"token"``, an int and a predicate).
UNITS = ("token", "word", "line", "sentence", "blank_line")


def unit_tables(lm, unit) -> dict:
    """Per-token tables (numpy ``bool[V]``) that detect the end of a text ``unit``.

    ``"word"``: the token contains whitespace (in space-prefixed vocabularies a word has
    ended when the next one starts); ``"line"``: it contains a newline; ``"sentence"``: it
    contains ``.``, ``!`` or ``?``; ``"blank_line"``: the text now ends a paragraph (the token
    contains a blank line, or the previous token ends with a newline and this one
    starts with one).

    Raises:
        ValueError: an unknown unit (naming the choices), or an int below 1.
    """
    if unit == "token" or callable(unit):
        return {}
    if isinstance(unit, bool) or not isinstance(unit, (int, str)):
        raise ValueError(f"steer: unit={unit!r} is not a unit; give one of {list(UNITS)}, an "
                         f"int k (every k tokens) or a function text -> bool.")
    if isinstance(unit, int):
        if unit < 1:
            raise ValueError(f"steer: unit={unit} tokens must be >= 1.")
        return {}
    if unit not in UNITS:
        raise ValueError(f"steer: unknown unit {unit!r}; choose one of {list(UNITS)}, an int k "
                         f"(every k tokens) or a function text -> bool.")
    strings = list(lm.vocab.token_strings)

    def table(f):
        return np.array([bool(f(t)) for t in strings], bool)

    if unit == "word":
        return {"ends": table(lambda t: any(c.isspace() for c in t))}
    if unit == "line":
        return {"ends": table(lambda t: "\n" in t)}
    if unit == "sentence":
        return {"ends": table(lambda t: any(c in t for c in ".!?"))}
    return {"ends": table(lambda t: "\n\n" in t), "ends_nl": table(lambda t: t.endswith("\n")),
            "starts_nl": table(lambda t: t.startswith("\n"))}


def _is_eos(lm, tok):
    """True where ``tok`` is one of the model's EOS ids (every one of them ends a sequence)."""
    ids = tuple(getattr(lm, "eos_token_ids", ()) or (lm.eos_token_id,))
    if len(ids) == 1:
        return tok == ids[0]
    return jnp.isin(tok, jnp.asarray(ids, jnp.int32))


def steer(lm, prompt: str | Sequence[int] = "", constraints: Sequence = (),
          potentials: Sequence = (), max_tokens: int = 32, twists: Sequence = (),
          temperature: float | None = None, *, messages: Sequence[dict] | None = None,
          top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
          truncation: str = "prior", truncation_floor: float = 0.05,
          unit="token", process_reward=None, reward_aggregate: str = "product",
          reward_as: str = "likelihood", terminate_when=None, proposal_lm=None,
          proposal_prompt: str | Sequence[int] | None = None,
          proposal_temperature: float | None = None,
          proposal_floor: float = 0.05) -> SteerProgram:
    """The common program without writing a class.

    Args:
        lm: the language model (prior), e.g. ``ppl.models.load("tiny")``.
        prompt: the text generation continues from (or its token ids).
        constraints: hard rules: ``ppl.stdlib.constraints`` objects (enforced token by token
            on device) and/or Python callables ``str -> bool`` (checked when a particle
            finishes).
        potentials: soft rules ``str -> float`` (log-weights) applied to the finished text, or
            [ppl.stdlib.potentials.Potential][] objects (``when="twist"`` ones act as
            twists).
        max_tokens: the token budget; a sequence also ends at EOS.
        twists: ``str -> float`` heuristics applied to every prefix as twists (they guide
            resampling and cancel out of the final target).
        temperature: optional LM temperature (changes the prior itself); ``0`` is greedy
            decoding (the limit: the prior puts all its mass on the most likely token at each
            step, ties shared), negative values are refused.
        top_k: keep the ``k`` most likely next tokens (applied after ``temperature``).
        top_p: keep the most likely next tokens whose probabilities first sum to ``top_p``
            (nucleus sampling, ``0 < top_p <= 1``).
        min_p: keep the next tokens at least ``min_p`` times as likely as the most likely one.
        truncation: what ``top_k``/``top_p``/``min_p`` change. ``"prior"`` (default, what
            other samplers do): the truncated, renormalised LM *is* the prior, so the
            posterior and the evidence are those of the truncated model. ``"proposal"``: the
            prior stays the untruncated LM and the truncated LM guides the draws, mixed with
            the LM (share ``truncation_floor``) so that every token stays proposable; each
            draw is weighted by the exact ``log p(x) - log q(x)``, so the posterior is that
            of the untruncated program and only the variance changes.
        truncation_floor: the LM's share of the ``"proposal"`` mixture, in ``(0, 1]``
            (importance weights per token are at most ``1 / truncation_floor``).
        messages: a chat instead of ``prompt``: ``[{"role": "user", "content": ...}, ...]``,
            formatted with the checkpoint's chat template and the assistant's turn opened
            (see [ppl.chat][ppl.chat]); generation is the assistant's reply.
        unit: the granularity at which twists are applied and SMC resamples: ``"token"``
            (every token), ``"word"``, ``"line"``, ``"sentence"``, ``"blank_line"``
            (reasoning steps separated by blank lines), an int ``k`` (every ``k`` tokens) or
            a function ``text -> bool`` (host-side, called on every prefix). Particles
            between boundaries keep their weights; the target is the same for every unit.
        process_reward: a process reward model: ``text -> log-score`` called on the host at
            every unit boundary (and on the final text), scoring the units completed so far.
        reward_aggregate: how the scores of a text's units combine: ``"product"`` (sum of
            log-scores), ``"last"`` or ``"min"`` (the inference-time scaling paper's choices).
        reward_as: ``"likelihood"`` (the target becomes ``p_LM(x) exp(aggregate)``; each
            boundary adds the aggregate's change as a factor, so intermediate weights see it)
            or ``"twist"`` (guides resampling only; the target stays the LM's, times the
            other potentials).
        terminate_when: a stop predicate ``text -> bool`` (host): a particle ends right after
            the first token at which it holds (as at EOS; the text keeps that token), e.g.
            ``lambda t: t.endswith("\\n\\n")``. Part of the program: the target is over
            texts that stop there.
        proposal_lm: a model that proposes the tokens instead of the LM: a smaller model with
            the same tokenizer (cheaper, and close to the LM), or ``lm`` itself with another
            ``proposal_prompt`` (e.g. an instruction the target does not see). Each token is
            drawn from ``q = (1 - proposal_floor) r + proposal_floor b``, ``r`` the proposal
            model's next-token distribution (at ``proposal_temperature``, masked by the
            device constraints) and ``b`` what the program proposes without it (the masked,
            possibly truncated LM), and weighted by the exact
            ``log p(x_t | x_<t) - log q(x_t | x_<t)``: the posterior and the evidence stay
            those of the program, only their variance changes. Its KV cache is part of the
            particle state (forked on resampling); its weights are an input of the run.
        proposal_prompt: the proposal model's prompt (default: ``prompt``); given without
            ``proposal_lm``, the proposal model is ``lm`` itself in this other context.
        proposal_temperature: the proposal model's temperature (default 1); given alone, the
            proposal is the LM's own distribution at this temperature (no second context).
        proposal_floor: ``b``'s share of the proposal mixture, in ``(0, 1]``. The support
            rule: ``proposal_floor > 0`` makes every token the target allows proposable
            (whatever ``r`` does, e.g. at temperature 0), and bounds each token's importance
            weight relative to ``b`` by ``1 / proposal_floor``.

    Raises:
        ValueError: both ``prompt`` and ``messages``, or ``messages`` for a model without a
            chat template; a ``proposal_lm`` whose vocabulary (size or token strings) differs
            from the LM's, or a proposal prompt that does not fit its context; a
            ``proposal_floor`` outside ``(0, 1]``; a proposal model with a grammar constraint.
    """
    if messages is not None:
        if (isinstance(prompt, str) and prompt) or (not isinstance(prompt, str) and len(prompt)):
            raise ValueError("steer: give prompt= or messages=, not both (messages are turned "
                             "into the prompt by the model's chat template).")
        from ppl.models.chat import chat

        prompt = chat(lm, messages)
    return SteerProgram(lm, prompt, constraints, potentials, twists, max_tokens, temperature,
                        top_k=top_k, top_p=top_p, min_p=min_p, truncation=truncation,
                        truncation_floor=truncation_floor,
                        unit=unit, process_reward=process_reward,
                        reward_aggregate=reward_aggregate, reward_as=reward_as,
                        terminate_when=terminate_when, proposal_lm=proposal_lm,
                        proposal_prompt=proposal_prompt,
                        proposal_temperature=proposal_temperature,
                        proposal_floor=proposal_floor)
