"""A second language model as the proposal of LM tokens (``steer(..., proposal_lm=...)``).

Tokens are drawn from a mixture of the proposal model ``r`` and the program's own proposal
``b`` (the LM ``p`` itself, or what constraints and truncation make of it)::

    q(x) = (1 - floor) * r(x | ...) + floor * b(x | ...)        (both masked alike)

and weighted by the exact ``log p(x) - log q(x)``. Support rule: ``floor > 0`` keeps every
token ``b`` proposes proposable, and ``b`` covers the target's support, so the target (and
the evidence) are those of the program without the proposal; per-token importance weights
relative to ``b`` are at most ``1 / floor``. The proposal model only changes the variance.

The proposal model's KV cache and next-token log-probabilities live in the particle's state
(a pytree with the particle axis first, like everything else in the state), so resampling,
which gathers the state along ancestors, forks them together with the LM's own cache. Its
parameters reach compiled runs as an input, not as constants: the program's model is a
[PairedLM][ppl.proposal_lm.PairedLM] whose ``params`` hold both models' parameters.

Hand-written programs use the same two pieces (``paired(lm, small)`` returns the
[PairedLM][ppl.proposal_lm.PairedLM] of the two models)::

    from ppl.proposal_lm import LMProposal, paired

    class Guided(ppl.Program):
        def __init__(self, lm, small):
            super().__init__(lm=paired(lm, small), max_tokens=16)
            self.guide = LMProposal(self.lm, prompt="Story:", max_tokens=16)

        def init(self, ctx):
            return self.guide.init()

        def step(self, ctx, g):
            p = ctx.lm.next_token()
            tok = ctx.sample(p, proposal=self.guide.proposal(g, p))
            ctx.finish_if(tok == self.lm.eos_token_id)
            return self.guide.advance(g, tok, ctx.length)
"""

from __future__ import annotations

import numbers
import weakref
from typing import Any, Sequence

import jax.numpy as jnp

from ppl.dists import TokenDist, check_temperature
from ppl.models.base import LanguageModel

__all__ = ["LMProposal", "PairedLM", "check_floor", "check_same_vocabulary", "paired"]


def _name(lm) -> str:
    return str(getattr(lm, "name", None) or type(lm).__name__)


def check_same_vocabulary(lm, proposal_lm) -> None:
    """Refuses a proposal model whose token ids do not mean what the LM's mean.

    Compares the vocabulary sizes and, when both models have vocabulary tables, every
    token's bytes (the first difference is named).

    Raises:
        ValueError: naming both models and the fix.
    """
    fix = ("A proposal model must share the LM's tokenizer (e.g. a smaller model of the same "
           "family), or pass proposal_lm=lm with another proposal_prompt/proposal_temperature.")
    if not isinstance(proposal_lm, LanguageModel):
        raise TypeError(f"proposal_lm must be a language model (e.g. ppl.models.load(...)), got "
                        f"{proposal_lm!r} ({type(proposal_lm).__name__}).")
    a, b = int(lm.vocab_size), int(proposal_lm.vocab_size)
    if a != b:
        raise ValueError(f"proposal_lm {_name(proposal_lm)!r} has a vocabulary of {b} tokens but "
                         f"the LM {_name(lm)!r} has {a}: token ids of one model are not tokens "
                         f"of the other. {fix}")
    va, vb = getattr(lm, "vocab", None), getattr(proposal_lm, "vocab", None)
    ta, tb = getattr(va, "token_bytes", None), getattr(vb, "token_bytes", None)
    if ta is not None and tb is not None and tuple(ta) != tuple(tb):
        i = next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)
        raise ValueError(f"proposal_lm {_name(proposal_lm)!r} and the LM {_name(lm)!r} have "
                         f"different tokenizers: token {i} is {tb[i]!r} in the proposal model and "
                         f"{ta[i]!r} in the LM. {fix}")


def check_floor(floor) -> float:
    """``floor`` as a float in ``(0, 1]``.

    Raises:
        ValueError: anything else (0 would let the proposal model miss tokens of the target).
    """
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 < float(floor) <= 1:
        raise ValueError(f"proposal_floor must be in (0, 1] (the program's own proposal's share "
                         f"of the mixture, which keeps every token of the target proposable), "
                         f"got {floor!r}.")
    return float(floor)


class PairedLM(LanguageModel):
    """The LM ``target`` with a proposal model riding along: the program's model when tokens
    are proposed by another LM.

    Everything (vocabulary, tokenizer, prompts, ``prefill``/``decode_step``) is the target's;
    only ``params`` differ: ``{"lm": target.params, "proposal": proposal.params}``, so that a
    compiled run takes both models' weights as its input (assigning new arrays to either
    model's ``params`` reruns the cached executable with them). Program code reading
    ``self.lm.params`` while a run is traced reads that pair.

    Args:
        target: the LM (the prior).
        proposal: the proposal model (same tokenizer; checked by
            [check_same_vocabulary][ppl.proposal_lm.check_same_vocabulary]); may be ``target``
            itself (another prompt or temperature).
    """

    def __init__(self, target: LanguageModel, proposal: LanguageModel):
        check_same_vocabulary(target, proposal)
        if isinstance(target, PairedLM):
            raise ValueError("PairedLM: the target already has a proposal model; give the "
                             "plain LM.")
        self.__dict__["target"] = target
        self.__dict__["proposal"] = proposal
        self.__dict__["_pair"] = None

    # ---- what differs: the parameters ----------------------------------------------------
    @property
    def params(self):
        from ppl.models import base

        table = getattr(base._BOUND, "table", None)
        if table:
            bound = table.get(id(self), base._MISSING)
            if bound is not base._MISSING:
                return bound
        a, b = self.target.params, self.proposal.params
        pair = self.__dict__["_pair"]
        # The same object while neither model's params change: backends find the LM's part
        # of a runner's arguments by identity.
        if pair is None or pair[0] is not a or pair[1] is not b:
            pair = (a, b, {"lm": a, "proposal": b})
            self.__dict__["_pair"] = pair
        return pair[2]

    @params.setter
    def params(self, value) -> None:
        if not isinstance(value, dict) or set(value) != {"lm", "proposal"}:
            raise TypeError("PairedLM.params is {'lm': ..., 'proposal': ...}; assign each "
                            "model's params to that model instead.")
        self.target.params = value["lm"]
        self.proposal.params = value["proposal"]

    # ---- the target's, delegated ---------------------------------------------------------
    def __getattr__(self, name):  # only called for attributes not found normally
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            target = self.__dict__["target"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(target, name)

    @property
    def vocab_size(self):
        return self.target.vocab_size

    @property
    def eos_token_id(self):
        return self.target.eos_token_id

    @property
    def eos_token_ids(self):
        return self.target.eos_token_ids

    @property
    def bos_token_id(self):
        return self.target.bos_token_id

    @property
    def max_context(self):
        return self.target.max_context

    @property
    def vocab(self):
        return self.target.vocab

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def name(self):
        return self.target.name

    @property
    def supports_hidden(self):
        return self.target.supports_hidden

    @property
    def add_bos_token(self):
        return self.target.add_bos_token

    @property
    def chat_template(self):
        return self.target.chat_template

    def prefill(self, params, prompt_ids, max_len, length=None, **kw):
        return self.target.prefill(params["lm"], prompt_ids, max_len, length=length, **kw)

    def decode_step(self, params, cache, tokens, positions, **kw):
        return self.target.decode_step(params["lm"], cache, tokens, positions, **kw)

    def init_cache_bytes(self, max_len: int) -> int:
        return self.target.init_cache_bytes(max_len)

    def cache_layout_bytes(self, prompt_len: int, max_tokens: int) -> tuple[int, int]:
        """The target's layout, plus, per row, what the proposal model's state holds for
        each particle: its prompt's keys and values (estimated at ``prompt_len`` positions),
        its generated rows and its next-token row (``4 V`` bytes)."""
        shared, rows = self.target.cache_layout_bytes(prompt_len, max_tokens)
        q_shared, q_rows = self.proposal.cache_layout_bytes(prompt_len, max_tokens)
        return shared, rows + int(q_shared) + int(q_rows) + 4 * int(self.vocab_size)

    def is_eos(self, tokens):
        return self.target.is_eos(tokens)

    def encode(self, text: str) -> list[int]:
        return self.target.encode(text)

    def decode_text(self, ids) -> str:
        return self.target.decode_text(ids)

    def prompt_ids(self, prompt):
        return self.target.prompt_ids(prompt)

    def next_token_logprobs(self, token_ids):
        return self.target.next_token_logprobs(token_ids)

    def __repr__(self) -> str:
        return f"PairedLM({self.target!r}, proposal={self.proposal!r})"


# target -> {id(proposal): weakref to their PairedLM}: weak both ways, so the cache keeps no
# model alive and a PairedLM lives exactly as long as some program holds it.
_PAIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def paired(target: LanguageModel, proposal: LanguageModel) -> PairedLM:
    """The [PairedLM][ppl.proposal_lm.PairedLM] of two models, one object per live pair (so
    that programs built alike share compiled runs: a run is keyed by its model's identity)."""
    table = _PAIRS.setdefault(target, {})
    ref = table.get(id(proposal))
    pair = ref() if ref is not None else None
    if pair is None or pair.proposal is not proposal:
        pair = PairedLM(target, proposal)
        table[id(proposal)] = weakref.ref(pair)
    return pair


class LMProposal:
    """The proposal model's side of a particle: prefilled prompt, per-token advance, mixture.

    Its state (``init``/``advance``) is ``(cache, logprobs)``: the proposal model's KV cache
    for one particle (batch of one) and its next-token log-probabilities ``float32[V]``. A
    program keeps it in its own state, so SMC's resampling forks it with the particle.

    Args:
        paired: the program's [PairedLM][ppl.proposal_lm.PairedLM] (its ``params`` are read
            while the run is traced, so both models' weights are inputs of the run).
        prompt: the proposal model's prompt (text or ids; its own, not the LM's: e.g. an
            instruction the LM is not given).
        max_tokens: the program's token budget (the cache has room for the prompt plus it).
        temperature: the proposal model's temperature (``None``: 1; ``0``: greedy, kept exact
            by the floor).
        floor: the share of the program's own proposal in the mixture, in ``(0, 1]``.

    Raises:
        ValueError: the prompt plus ``max_tokens`` does not fit the proposal model, or a bad
            floor.
    """

    def __init__(self, paired: PairedLM, prompt: str | Sequence[int] = "", *, max_tokens: int,
                 temperature: float | None = None, floor: float = 0.05):
        if not isinstance(paired, PairedLM):
            raise TypeError(f"LMProposal needs the program's PairedLM(lm, proposal_lm), got "
                            f"{type(paired).__name__}.")
        self.floor = check_floor(floor)
        self.paired = paired
        q = paired.proposal
        self.prompt_ids = tuple(int(i) for i in q.prompt_ids(prompt))
        self.max_len = len(self.prompt_ids) + int(max_tokens)
        if self.max_len > q.max_context:
            raise ValueError(
                f"The proposal prompt ({len(self.prompt_ids)} tokens) plus max_tokens "
                f"({max_tokens}) needs {self.max_len} positions, but proposal_lm {_name(q)!r} "
                f"has a context of {q.max_context}. Shorten the proposal prompt or lower "
                f"max_tokens.")
        self.temperature = None if temperature is None else check_temperature(temperature)

    def _params(self):
        return self.paired.params["proposal"]

    def init(self) -> Any:
        """The state after the proposal prompt (computed once, not per particle, under the
        backend's vmap: it depends on no particle's values)."""
        q = self.paired.proposal
        ids = jnp.asarray(self.prompt_ids, jnp.int32)
        cache, lp = q.prefill(self._params(), ids, self.max_len)
        return cache, jnp.asarray(lp, jnp.float32).reshape(-1)

    def next_token(self, state) -> TokenDist:
        """The proposal model's next-token distribution ``r`` (tempered)."""
        d = TokenDist(state[1])
        return d if self.temperature is None else d.temper(self.temperature)

    def proposal(self, state, base: TokenDist, mask=None) -> TokenDist:
        """``(1 - floor) r + floor b`` with ``b = base`` (the program's own proposal, or the
        LM's distribution), both restricted to ``mask`` first when one is given."""
        r = self.next_token(state)
        if mask is not None:
            r, base = r.mask(mask), base.mask(mask)
        return r.mix(base, self.floor)

    def advance(self, state, token, length) -> Any:
        """The state after feeding ``token``, the particle's ``length``-th generated token
        (0-based: ``ctx.length`` in the step that drew it)."""
        q = self.paired.proposal
        cache, _ = state
        pos = jnp.minimum(len(self.prompt_ids) + jnp.asarray(length, jnp.int32), self.max_len - 1)
        cache, lp = q.decode_step(self._params(), cache, jnp.asarray(token, jnp.int32).reshape(1),
                                  pos.reshape(1))
        return cache, jnp.asarray(lp, jnp.float32).reshape(-1)

    def __fingerprint__(self):
        from ppl.inference.executables import _Id

        return (_Id(self.paired), self.prompt_ids, self.max_len, self.temperature, self.floor)
