"""Soft rules (potentials) and the LLaMPPL paper's multi-context tasks.

* `Potential`: a Python function of the text returning a log-weight, run on the host
  through ``jax.pure_callback`` for all particles in one call; applied to the finished text
  (``when="end"``) or to every prefix as a twist (``when="twist"``).
* `keyword_potential` and `lexicon_potential`: ready-made scorers.
* `PromptIntersection`: the product of the LM's next-token distributions under several
  prompts; each particle carries one LM context per prompt, all batched in one forward pass.
* `Infill`: text between fixed segments, the segments *observed* (their probability
  under the LM enters the weight) instead of blindly appended.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl.context import Context
from ppl.dists import TokenDist
from ppl.program import Program
from ppl.stdlib.base import Potential

__all__ = [
    "Potential",
    "keyword_potential",
    "lexicon_potential",
    "PromptIntersection",
    "Infill",
    "prompt_intersection",
    "infill",
]


_WORD = re.compile(r"[A-Za-z']+")


def keyword_potential(words: Iterable[str], weight: float = 1.0, when: str = "end") -> Potential:
    """``weight * (number of whole-word occurrences of any of words)`` (case-insensitive)."""
    vocab = {w.lower() for w in words}

    def score(text: str) -> float:
        return float(sum(1 for w in _WORD.findall(text) if w.lower() in vocab))

    return Potential(score, when=when, scale=weight, name="keywords")


def lexicon_potential(lexicon: Mapping[str, float], weight: float = 1.0, when: str = "end") -> Potential:
    """``weight * Σ lexicon[word]`` over the text's words (a sentiment-lexicon score)."""
    table = {k.lower(): float(v) for k, v in lexicon.items()}

    def score(text: str) -> float:
        return float(sum(table.get(w.lower(), 0.0) for w in _WORD.findall(text)))

    return Potential(score, when=when, scale=weight, name="lexicon")


class PromptIntersection(Program):
    """Text that is likely under several prompts at once (LLaMPPL's prompt intersection).

    Target: ``pi(x) ∝ Π_t Π_k p(x_t | prompt_k, x_<t)``, generation ending at EOS or after
    ``max_tokens`` tokens. The proposal is the per-step normalised product of experts
    ``q_t(v) ∝ Π_k p(v | prompt_k, x_<t)``, so the weight increment is its normaliser
    ``log Σ_v Π_k p(v | prompt_k, x_<t)``. All ``K`` contexts of all particles run in one
    batched forward pass each step.
    """

    def __init__(self, lm, prompts: Sequence[str], max_tokens: int = 32):
        if len(prompts) < 2:
            raise ValueError("PromptIntersection needs at least two prompts.")
        super().__init__(lm=lm, prompt=list(prompts), max_tokens=max_tokens)

    def step(self, ctx: Context, state):
        logits = sum(view.next_token().logprobs for view in ctx.lms)
        q = TokenDist(logits, lm_index=0)
        tok = ctx.sample(q)
        ctx.factor(q.log_normalizer)
        ctx.finish_if(tok == self.lm.eos_token_id)
        return state


def prompt_intersection(lm, prompts: Sequence[str], max_tokens: int = 32) -> PromptIntersection:
    """See `PromptIntersection`."""
    return PromptIntersection(lm, prompts, max_tokens)


class Infill(Program):
    """Fills the gaps between fixed text segments (LLaMPPL's infilling task).

    The text is ``segments[0] + gap_1 + segments[1] + ... + gap_m + segments[m]``; the first
    segment is the prompt. Each gap's length ``L`` (in tokens) has a uniform prior on
    ``1..max_gap``; gap tokens are drawn from the LM (EOS excluded: the masked LM is the
    proposal and the kept mass enters the weight, so the prior is the LM conditioned on not
    ending inside a gap) and every token of the next segment is *observed*: its LM
    probability multiplies the weight. The posterior therefore prefers gaps after which the
    fixed text is likely. Generation ends after the last segment.

    Target: ``pi(gaps, L) ∝ Π_gaps U(L) p(gap tokens, segment tokens | everything before, no EOS)``.
    """

    def __init__(self, lm, segments: Sequence[str], max_gap: int = 8):
        if len(segments) < 2:
            raise ValueError("Infill needs at least two segments (text before and after a gap).")
        seg_ids = [lm.encode(s) for s in segments[1:]]
        if any(len(s) == 0 for s in seg_ids):
            raise ValueError("Infill: every segment after the first must be non-empty text.")
        self.num_gaps = len(seg_ids)
        self.max_gap = int(max_gap)
        width = max(len(s) for s in seg_ids)
        table = np.zeros((self.num_gaps, width), np.int32)
        for i, s in enumerate(seg_ids):
            table[i, : len(s)] = s
        self.segment_table = table
        self.segment_lengths = np.array([len(s) for s in seg_ids], np.int32)
        max_tokens = self.num_gaps * self.max_gap + int(self.segment_lengths.sum())
        super().__init__(lm=lm, prompt=segments[0], max_tokens=max_tokens)

    def init(self, ctx: Context):
        import numpyro.distributions as dist

        gap = ctx.sample(dist.Categorical(logits=jnp.zeros(self.max_gap))) + 1
        # (segment index, tokens of gap left, position inside the segment)
        return jnp.int32(0), gap.astype(jnp.int32), jnp.int32(0)

    def step(self, ctx: Context, state):
        import numpyro.distributions as dist

        seg, gap_left, pos = state
        p = ctx.lm.next_token()
        in_gap = gap_left > 0
        table = jnp.asarray(self.segment_table)
        fixed = table[jnp.minimum(seg, self.num_gaps - 1), pos]
        not_eos = jnp.arange(self.lm.vocab_size) != self.lm.eos_token_id
        # In a gap: draw from the LM without EOS (weight: kept mass); in a segment: the
        # proposal puts all mass on the fixed token, so the weight is log p(fixed token).
        forced = jnp.arange(self.lm.vocab_size) == fixed
        q = p.mask(jnp.where(in_gap, not_eos, forced))
        tok = ctx.sample(p, proposal=q)
        seg_len = jnp.asarray(self.segment_lengths)[jnp.minimum(seg, self.num_gaps - 1)]
        new_pos = jnp.where(in_gap, pos, pos + 1)
        seg_done = (~in_gap) & (new_pos >= seg_len)
        next_gap = ctx.sample(dist.Categorical(logits=jnp.zeros(self.max_gap))) + 1
        new_seg = jnp.where(seg_done, seg + 1, seg)
        new_gap = jnp.where(in_gap, gap_left - 1, jnp.where(seg_done, next_gap, 0))
        new_pos = jnp.where(seg_done, 0, new_pos)
        ctx.finish_if(new_seg >= self.num_gaps)
        return new_seg.astype(jnp.int32), new_gap.astype(jnp.int32), new_pos.astype(jnp.int32)


def infill(lm, segments: Sequence[str], max_gap: int = 8) -> Infill:
    """See `Infill`."""
    return Infill(lm, segments, max_gap)
