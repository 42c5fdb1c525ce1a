"""The exact oracle ``ppl.testing.enumerate_posterior`` against brute force written here,
independently, in numpy (no engine code): for ``ppl.steer`` programs over a bigram LM with a
random token automaton, a host predicate and a potential, and for the toy program (second-order
LM with a KV cache, proposals, twists). Deterministic: tolerances are float32 rounding only.
Each example compiles the oracle's enumeration anew, so few examples run."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ppl
from ppl import strategies as pst
from ppl import testing as pt
from ppl.stdlib.base import TokenAutomaton
from tests.properties import _harness as H

V, EOS, S, T = 5, 4, 4, 3
LETTERS = "abcd"


def brute_force_steer(init, trans, tr, acc, predicate, potential, max_tokens):
    """``{token tuple: log weight}`` of ``steer(lm, "", [automaton, predicate], [potential])``:
    every sequence of <= max_tokens tokens that ends at EOS or at the budget, weighted by
    ``p_LM(x) exp(potential(text))`` if the automaton (start 1, dead 0) accepts the text and
    the predicate holds."""
    li = np.asarray(init, np.float64) - np.logaddexp.reduce(np.asarray(init, np.float64))
    lt = np.asarray(trans, np.float64)
    lt = lt - np.logaddexp.reduce(lt, axis=1, keepdims=True)
    out = {}
    for n in range(1, max_tokens + 1):
        for seq in itertools.product(range(V), repeat=n):
            body = seq[:-1] if seq[-1] == EOS else seq
            if EOS in body or (seq[-1] != EOS and n < max_tokens):
                continue
            s = 1
            for x in body:
                s = tr[s][x]
                if s == 0:
                    break
            if s == 0 or not acc[s]:
                continue
            text = "".join(LETTERS[x] for x in body)
            if not predicate(text):
                continue
            lp = li[seq[0]] + sum(lt[a, b] for a, b in zip(seq, seq[1:]))
            out[seq] = lp + potential(text)
    return out


def _check(oracle, brute):
    brute = {s: w for s, w in brute.items() if np.isfinite(w)}
    got = {s: w for s, w in oracle.log_weights.items() if np.isfinite(w)}
    assert set(got) == set(brute)
    for s in brute:
        assert got[s] == pytest.approx(brute[s], abs=1e-4 * (1 + abs(brute[s])))
    if brute:
        lw = np.array(list(brute.values()))
        log_z = lw.max() + math.log(np.exp(lw - lw.max()).sum())
        assert oracle.log_evidence == pytest.approx(log_z, abs=1e-4 * (1 + abs(log_z)))
    else:
        assert oracle.log_evidence == -math.inf


@settings(max_examples=3)
@given(tables=pst.bigram_tables(V), automaton=pst.token_automata(S, V, EOS),
       predicate=pst.text_predicates(LETTERS, T), potential=pst.text_potentials(LETTERS))
def test_enumeration_matches_numpy_brute_force_for_steer(tables, automaton, predicate, potential):
    init, trans = tables
    tab = pt.toy_program_tables(S, V, EOS, transitions=automaton[0], accepting=automaton[1])
    lm = ppl.models.NGramLM(init, trans, eos_token_id=EOS, token_strings=list(LETTERS) + [""])
    auto = TokenAutomaton(jnp.asarray(tab["transitions"]), jnp.asarray(tab["accepting"]), 1, EOS,
                          "random automaton")
    prog = ppl.steer(lm, "", constraints=[auto, predicate], potentials=[potential], max_tokens=T)
    brute = brute_force_steer(init, trans, tab["transitions"], tab["accepting"], predicate,
                              potential, T)
    _check(pt.enumerate_posterior(prog), brute)


@settings(max_examples=2)
@given(params=H.params_strategy(), predicate=pst.text_predicates(H.ALPHABET, H.T),
       potential=pst.text_potentials(H.ALPHABET))
def test_enumeration_matches_numpy_for_toy_program(params, predicate, potential):
    """Engine-replay enumeration (KV cache, twists, masked proposals) = pure numpy target."""
    lm = pt.TrigramLM(params, H.EOS, token_strings=list(H.ALPHABET) + [""])
    prog = pt.toy_program(lm, H.T, predicate=predicate, potential=potential)
    exact = pt.toy_exact(prog)
    _check(pt.enumerate_posterior(prog), exact.log_weights)
