"""The program abstraction: one particle's generative story, one token per step."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

from ppl import _identity

_identity.check()  # a foreign top-level 'ppl' (another distribution) is named, not puzzled over

from ppl.context import Context  # noqa: E402

__all__ = ["Program"]


class Program:
    """A probabilistic program over text: the LM is the prior, the program adds the rest.

    Subclass it and write one particle::

        class ShortWords(ppl.Program):
            def step(self, ctx, s):
                p = ctx.lm.next_token()
                tok = ctx.sample(p, proposal=p.mask(allowed))
                ctx.finish_if(tok == self.lm.eos_token_id)
                return s

    ``init(ctx)`` returns the particle's state (a pytree of fixed shape; it may ``sample``
    latents from numpyro distributions and ``factor``/``condition``). ``step(ctx, state)``
    must sample or observe exactly one token from ``ctx.lm.next_token()`` and returns the new
    state. ``final(ctx, state)`` runs once per particle after generation (host predicates
    and end-of-text potentials go there). A particle ends when it calls ``finish``/
    ``finish_if``, is conditioned away, or has generated ``max_tokens`` tokens.

    The target distribution is ``prior(tokens) * exp(sum of factors)`` restricted to the
    conditions; the normalising constant of that target is the evidence ``Z``.

    Args:
        lm: the language model (prior). Defaults to the class attribute ``lm``.
        prompt: the prompt string (or token ids), or a list of prompts: the particle then
            carries one LM context per prompt, all extended by the same tokens
            (``ctx.lms[k]``); used for prompt intersection.
        max_tokens: the largest number of tokens a particle generates.
    """

    lm: Any = None
    prompt: str | Sequence = ""
    max_tokens: int = 32

    def __init__(self, lm=None, prompt=None, max_tokens: int | None = None):
        if lm is not None:
            self.lm = lm
        if prompt is not None:
            self.prompt = prompt
        if max_tokens is not None:
            self.max_tokens = max_tokens
        if self.lm is None:
            raise ValueError(f"{type(self).__name__}: no language model; pass lm=...")
        mt = self.max_tokens
        if isinstance(mt, bool) or not isinstance(mt, numbers.Integral):
            raise TypeError(f"{type(self).__name__}: max_tokens must be an integer >= 1, got "
                            f"{mt!r} ({type(mt).__name__}).")
        if int(mt) < 1:
            raise ValueError(f"{type(self).__name__}: max_tokens must be >= 1, got {mt}.")
        self.max_tokens = int(mt)

    @property
    def prompts(self) -> list:
        """The prompts, one per LM context."""
        p = self.prompt
        if isinstance(p, (list, tuple)) and p and not isinstance(p[0], int):
            return list(p)
        return [p]

    def init(self, ctx: Context) -> Any:
        return ()

    def step(self, ctx: Context, state: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define step(self, ctx, state).")

    def final(self, ctx: Context, state: Any) -> None:
        return None
