"""Lark grammars as exact constraints: a host-side incremental LALR checker + weighted rejection.

Each step, for every particle (one batched ``jax.pure_callback``), the next token is drawn
from the LM's distribution ``p`` by rejection: candidates are drawn from ``p`` with
replacement and checked with Lark's interactive LALR parser (is ``text + token`` still a
prefix of some sentence of the grammar? EOS: is ``text`` a complete sentence?). The first
accepted candidate ``x`` is distributed exactly as ``p`` restricted to the valid tokens. The
weight must be ``Z = Σ_{v valid} p(v)``; we use an unbiased estimate independent of ``x``:

* drawing until the second acceptance (``N`` draws, at most ``M``), ``Ẑ = 1 / (N - 1)`` — the
  inverse negative-binomial estimator, ``E[1/(N-1)] = Z`` for ``r = 2`` successes;
* if fewer than two acceptances occur in ``M`` draws, every token is checked, ``Z`` is then
  known exactly, and the weight ``Ẑ = Z / ((1 - Z) + M Z)`` makes the truncated estimator
  exactly unbiased: ``E[Ẑ] = Z (1 - (1-Z)^(M-1)) + P(N > M) · Z / ((1-Z) + M Z) = Z``.

A random but unbiased weight independent of the draw keeps IS/SMC exact (a random-weight /
pseudo-marginal argument), while the parser checks only a handful of tokens per step
(expected ``2 / Z`` draws, memoised).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from ppl.stdlib.base import BoundSampler, HostSampler

__all__ = ["LarkChecker", "rejection_step"]


class LarkChecker:
    """Prefix and sentence checks for a Lark grammar (LALR, contextual lexer).

    Raises:
        ValueError: the grammar does not parse or is not LALR(1), naming the problem and its
            line/column.
    """

    def __init__(self, grammar: str, start: str = "start"):
        import lark
        import regex

        self._regex = regex
        try:
            self.parser = lark.Lark(grammar, parser="lalr", start=start, lexer="contextual")
        except lark.exceptions.GrammarError as e:
            raise ValueError(f"Invalid Lark grammar: {e}") from None
        except lark.exceptions.UnexpectedInput as e:
            raise ValueError(
                f"Invalid Lark grammar at line {getattr(e, 'line', '?')}, column "
                f"{getattr(e, 'column', '?')}: {str(e).strip().splitlines()[0]}"
            ) from None
        except Exception as e:  # lark raises several types for grammar problems
            raise ValueError(f"Invalid Lark grammar: {type(e).__name__}: {e}") from None
        self._patterns = {
            t.name: regex.compile(t.pattern.to_regexp()) for t in self.parser.terminals
        }
        self.valid_prefix = functools.lru_cache(maxsize=200_000)(self._valid_prefix)
        self.complete = functools.lru_cache(maxsize=50_000)(self._complete)

    def _partial_ok(self, rest: str, names) -> bool:
        return any(
            name in self._patterns and self._patterns[name].fullmatch(rest, partial=True)
            for name in names
        )

    def _valid_prefix(self, text: str) -> bool:
        import lark

        ip = self.parser.parse_interactive(text)
        history = []  # (start position, parser state before the token)
        try:
            for tok in ip.iter_parse():
                history.append((tok.start_pos, ip.copy()))
        except lark.exceptions.UnexpectedCharacters as e:
            pos = e.pos_in_stream
            if self._partial_ok(text[pos:], ip.accepts()):
                return True
            # The last complete token may be the start of a longer terminal ("1e" of "1e5").
            if history:
                start, before = history[-1]
                return self._partial_ok(text[start:], before.accepts())
            return False
        except lark.exceptions.UnexpectedToken as e:
            # Only the final token may still become a different terminal (a keyword prefix).
            start = getattr(e.token, "start_pos", None)
            if start is not None and self._partial_ok(text[start:], ip.accepts()):
                return True
            if history:
                start, before = history[-1]
                return self._partial_ok(text[start:], before.accepts())
            return False
        except lark.exceptions.UnexpectedInput:
            return False
        return True

    def _complete(self, text: str) -> bool:
        import lark

        try:
            self.parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False


def rejection_step(checker: LarkChecker, token_strings: Sequence[str], eos: int, special: np.ndarray,
                   prefix: str, logprobs: np.ndarray, rng: np.random.Generator, max_draws: int):
    """One exact weighted-rejection draw. Returns ``(token, log Ẑ)``; ``log Ẑ = -inf`` when no
    token is valid."""
    p = np.exp(logprobs.astype(np.float64) - np.max(logprobs))
    p /= p.sum()
    cdf = np.cumsum(p)

    def valid(t: int) -> bool:
        if t == eos:
            return checker.complete(prefix)
        if special[t]:
            return False
        return checker.valid_prefix(prefix + token_strings[t])

    first, draws = None, 0
    for draws in range(1, max_draws + 1):
        t = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))
        if p[t] <= 0 or not valid(t):
            continue
        if first is None:
            first = t
        else:
            return first, -float(np.log(draws - 1))
    # Fewer than two acceptances in max_draws: check every token with positive mass.
    mask = np.zeros(len(p), bool)
    for t in np.nonzero(p > 0)[0]:
        mask[t] = valid(int(t))
    z = float(p[mask].sum())
    if z <= 0:
        return eos, -np.inf
    if first is None:
        q = np.where(mask, p, 0.0)
        first = int(min(np.searchsorted(np.cumsum(q), rng.random() * z, side="right"), len(p) - 1))
    m = max_draws
    return first, float(np.log(z) - np.log((1.0 - z) + m * z))


class LarkConstraint(HostSampler):
    """``lark(grammar)``: the final text is a sentence of the Lark grammar (exact).

    Enforced token by token by `rejection_step` on the host (one batched
    ``pure_callback`` per step), and checked again on the finished text.

    Args:
        grammar: Lark grammar text (LALR(1)-compatible).
        start: the start rule.
        max_draws: rejection draws per particle per step before checking every token.
    """

    def __init__(self, grammar: str, start: str = "start", max_draws: int = 64):
        self.checker = LarkChecker(grammar, start)
        self.grammar = grammar
        self.name = f"lark({start})"
        self.max_draws = int(max_draws)

    def check(self, text: str) -> bool:
        return self.checker.complete(text)

    def bind(self, vocab):
        """Host tables for a vocabulary (token strings, special ids)."""
        special = ~vocab.text_mask()
        special[vocab.eos_token_id] = False
        return _BoundLark(self, list(vocab.token_strings), vocab.eos_token_id, special)


class _BoundLark(BoundSampler):
    def __init__(self, c: LarkConstraint, strings, eos, special):
        self.c, self.strings, self.eos, self.special = c, strings, eos, special
        self.name = c.name

    def check(self, text: str) -> bool:
        return self.c.check(text)

    def sample(self, ctx, logprobs):
        """Draws the next token for this particle; returns ``(token, log Ẑ)`` (traced)."""
        import jax
        import jax.numpy as jnp

        from ppl._host import host_map

        seed = jax.random.bits(ctx.key(), dtype=jnp.uint32)
        strings, eos, special, c = self.strings, self.eos, self.special, self.c

        def row(tokens, length, lps, seed, active):
            if not active:
                return eos, 0.0
            prefix = "".join(strings[int(t)] for t in tokens[: int(length)])
            return rejection_step(c.checker, strings, eos, special, prefix, lps,
                                  np.random.default_rng(int(seed)), c.max_draws)

        return host_map(row, (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32)),
                        ctx.tokens, ctx.length, logprobs, seed, ctx.active)
