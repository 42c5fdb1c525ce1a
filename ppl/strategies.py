"""Hypothesis strategies for testing programs and backends (``pip install hypothesis``).

Shapes are fixed by the arguments and only values vary, so one compiled program serves
every example: draw `toy_params` and assign them to ``program.lm.params`` of a
[ppl.testing.toy_program][] (the cached executable takes ``lm.params`` as an argument).

    from hypothesis import given
    from ppl import strategies as pst, testing as pt

    lm = pt.TrigramLM(pt.TrigramLM.make_params(...), eos_token_id=4)
    prog = pt.toy_program(lm, max_tokens=4)

    @given(pst.toy_params(vocab_size=5, num_states=4, eos_token_id=4))
    def test_mine(params):
        prog.lm.params = params
        ...
"""

from __future__ import annotations

import dataclasses

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as e:  # pragma: no cover - hypothesis is a test extra
    raise ImportError("ppl.strategies needs hypothesis: pip install 'steerppl[test]'") from e

from ppl import testing as pt

__all__ = [
    "logit_tables",
    "token_automata",
    "toy_params",
    "trigram_params",
    "bigram_tables",
    "text_predicates",
    "text_potentials",
    "log_weight_vectors",
    "smc_options",
    "TextPredicate",
    "TextPotential",
]


def _floats(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def logit_tables(draw, shape, scale: float = 2.0, impossible: float = 0.15):
    """``float32[shape]`` log-weights in ``[-scale, scale]``; each entry is ``-inf`` (an
    impossible token) where a drawn uniform falls below ``impossible``, never a whole row of
    the last axis (the row's largest entry is kept)."""
    x = draw(hnp.arrays(np.float32, shape, elements=_floats(-scale, scale)))
    if impossible > 0:
        u = draw(hnp.arrays(np.float32, shape, elements=_floats(0, 1)))
        rows = np.where(u < impossible, -np.inf, x).reshape(-1, shape[-1])
        flat = x.reshape(-1, shape[-1])
        for r, orig in zip(rows, flat):
            if not np.isfinite(r).any():
                r[int(np.argmax(orig))] = orig.max()
        x = rows.reshape(shape).astype(np.float32)
    return x


@st.composite
def token_automata(draw, num_states: int, vocab_size: int, eos_token_id: int,
                   dead_rate: float = 0.1, accept_rate: float = 0.7):
    """``(transitions int32[S, V], accepting bool[S])`` of a random token automaton (state 0
    dead, start 1; [ppl.testing.toy_program_tables][] enforces the conventions). Each
    transition is dead where a drawn uniform falls below ``dead_rate``, else goes to a drawn
    live state; a state accepts where a drawn uniform falls below ``accept_rate`` (at least one
    live state does)."""
    live = draw(hnp.arrays(np.int32, (num_states, vocab_size),
                           elements=st.integers(1, num_states - 1)))
    u = draw(hnp.arrays(np.float32, (num_states, vocab_size), elements=_floats(0, 1)))
    tr = np.where(u < dead_rate, 0, live).astype(np.int32)
    acc = draw(hnp.arrays(np.float32, (num_states,), elements=_floats(0, 1))) < accept_rate
    acc[0] = False
    if not acc[1:].any():
        acc[draw(st.integers(1, num_states - 1))] = True
    return tr, acc


@st.composite
def toy_params(draw, vocab_size: int, num_states: int, eos_token_id: int, *, automaton: bool = True,
               proposal: bool = True, factors: bool = True, twists: bool = True,
               impossible: float = 0.15):
    """Parameters for a [ppl.testing.TrigramLM][] and [ppl.testing.toy_program][]
    (same shapes for every example): LM tables, an automaton, a proposal differing from the
    prior (temperature in [0.6, 1.6] and a per-state logit bias in [-1, 1]), per-token
    factors and per-state twists in [-1, 1]. Disabled parts take their neutral values."""
    v, s = vocab_size, num_states
    first = draw(logit_tables((v,), impossible=impossible))
    trans = draw(logit_tables((v + 1, v, v), impossible=impossible))
    kw = {}
    if automaton:
        kw["transitions"], kw["accepting"] = draw(token_automata(s, v, eos_token_id))
    if proposal:
        kw["temperature"] = draw(_floats(0.6, 1.6))
        kw["bias"] = draw(hnp.arrays(np.float32, (s, v), elements=_floats(-1, 1)))
    if factors:
        kw["token_factor"] = draw(hnp.arrays(np.float32, (v,), elements=_floats(-1, 1)))
    if twists:
        kw["twist"] = draw(hnp.arrays(np.float32, (s,), elements=_floats(-1, 1)))
    tables = pt.toy_program_tables(s, v, eos_token_id, **kw)
    return pt.TrigramLM.make_params(first, trans, tables)


@st.composite
def trigram_params(draw, vocab_size: int, impossible: float = 0.3):
    """Parameters of a plain [ppl.testing.TrigramLM][] (no program tables), e.g. a proposal
    LM for [ppl.testing.toy_program][]; ``impossible`` is the rate of zero-probability
    entries (a proposal that misses tokens of the target)."""
    v = vocab_size
    first = draw(logit_tables((v,), impossible=impossible))
    trans = draw(logit_tables((v + 1, v, v), impossible=impossible))
    return pt.TrigramLM.make_params(first, trans)


@st.composite
def bigram_tables(draw, vocab_size: int, scale: float = 2.0, impossible: float = 0.0):
    """``(initial [V], transition [V, V])`` log-weights for [ppl.models.NGramLM][]."""
    return (draw(logit_tables((vocab_size,), scale, impossible)),
            draw(logit_tables((vocab_size, vocab_size), scale, impossible)))


@dataclasses.dataclass(frozen=True)
class TextPredicate:
    """A readable random predicate on text: ``kind`` in contains/excludes/max_len/even_count."""

    kind: str
    arg: object

    def __call__(self, text: str) -> bool:
        if self.kind == "contains":
            return self.arg in text
        if self.kind == "excludes":
            return self.arg not in text
        if self.kind == "max_len":
            return len(text) <= self.arg
        if self.kind == "even_count":
            return text.count(self.arg) % 2 == 0
        raise ValueError(self.kind)


@dataclasses.dataclass(frozen=True)
class TextPotential:
    """A readable random log-potential on text: ``coef * count(arg)`` or ``coef * len``."""

    kind: str
    coef: float
    arg: str = ""

    def __call__(self, text: str) -> float:
        if self.kind == "count":
            return self.coef * text.count(self.arg)
        return self.coef * len(text)


def text_predicates(alphabet: str, max_len: int):
    """Random `TextPredicate` over an alphabet of one-character tokens."""
    ch = st.sampled_from(list(alphabet))
    return st.one_of(
        st.builds(TextPredicate, st.just("contains"), ch),
        st.builds(TextPredicate, st.just("excludes"), ch),
        st.builds(TextPredicate, st.just("max_len"), st.integers(0, max_len)),
        st.builds(TextPredicate, st.just("even_count"), ch),
    )


def text_potentials(alphabet: str):
    """Random `TextPotential` with coefficients in [-1, 1]."""
    coef = st.floats(-1, 1, allow_nan=False).map(lambda c: round(c, 3))
    return st.one_of(
        st.builds(TextPotential, st.just("count"), coef, st.sampled_from(list(alphabet))),
        st.builds(TextPotential, st.just("len"), coef),
    )


@st.composite
def log_weight_vectors(draw, size: int, scale: float = 4.0, allow_neg_inf: bool = True,
                       all_neg_inf: bool = False):
    """``float32[size]`` unnormalised log-weights; some may be ``-inf`` (never all, unless
    ``all_neg_inf``)."""
    if all_neg_inf:
        return np.full(size, -np.inf, np.float32)
    x = draw(hnp.arrays(np.float32, (size,), elements=_floats(-scale, scale)))
    if allow_neg_inf:
        dead = draw(hnp.arrays(np.bool_, (size,), elements=st.booleans()))
        dead[draw(st.integers(0, size - 1))] = False
        x = np.where(dead, -np.inf, x).astype(np.float32)
    return x


def smc_options(schemes=("multinomial", "stratified", "systematic", "residual"),
                thresholds=(0.0, 0.5, 1.0)):
    """``{"resampling": ..., "ess_threshold": ...}`` for ``ppl.infer(method="smc")`` (each
    distinct pair compiles once)."""
    return st.fixed_dictionaries({"resampling": st.sampled_from(list(schemes)),
                                  "ess_threshold": st.sampled_from(list(thresholds))})
