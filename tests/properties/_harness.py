"""Shared pieces of the property tests: fixed shapes, one compiled toy program, the method table.

Shapes are fixed for the whole suite (vocabulary of 5 with EOS = 4, automata of 4 states,
4 tokens, 256 particles for the statistical properties), so each (method, options, particle
count) compiles once and hypothesis varies only *values*: each example assigns new arrays to
``PROGRAM.lm.params`` (the compiled executable takes them as an argument, see
``ppl.inference.driver.compiled``) and new host functions to ``PROGRAM.predicate`` /
``PROGRAM.potential``.

False-failure rate: ALPHA = 1e-4 per assertion (Bonferroni-divided where one assertion
combines several comparisons).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

import ppl
from ppl import strategies as pst
from ppl import testing as pt

ALPHA = 1e-4
V, EOS, S, T = 5, 4, 4, 4
ALPHABET = "abcd"
N = 256  # particles of the statistical properties
R = 48  # replicates (independent seeds) per example


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the method table: a name ``ppl.infer`` accepts, its options, its family.

    ``family``: ``"particle"`` (IS/SMC kind: unbiased evidence in Z, weighted final particles),
    ``"mcmc"`` (a chain: consistent posterior, no unbiased evidence) or ``"vi"``.
    A row whose method is not in ``ppl.methods()`` is skipped, so adding a backend to the
    suite is one line here.
    """

    name: str
    options: tuple = ()
    family: str = "particle"

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def id(self) -> str:
        return self.name + "".join(f"-{v}" for _, v in self.options)


METHODS = [
    Method("is"),
    Method("smc", (("resampling", "stratified"), ("ess_threshold", 0.5))),
    Method("smc", (("resampling", "multinomial"), ("ess_threshold", 1.0))),
    Method("smc", (("resampling", "systematic"), ("ess_threshold", 0.8))),
    Method("smc", (("resampling", "residual"), ("ess_threshold", 0.8))),
    Method("smc_steer", (("num_beams", 2),)),
    # islands (each resamples within itself, every 2nd resampling global): still unbiased.
    Method("smc", (("ess_threshold", 1.0), ("islands", 4), ("exchange_every", 2))),
    # resample-move: MH moves after every resampling keep the weights (still unbiased).
    Method("smc", (("ess_threshold", 1.0), ("rejuvenate", 1))),
    # units: resampling only at unit boundaries (every 2 tokens; after tokens 'a' or 'c', so
    # particles reach boundaries at different steps and are resampled among themselves).
    Method("smc", (("ess_threshold", 1.0), ("unit", 2))),
    Method("smc", (("resampling", "residual"), ("ess_threshold", 1.0), ("unit", (0, 2)))),
    # annealed resampling: selection with w^beta, the selected keep w^(1 - beta) (exact);
    # the entropic (ESS-driven) schedule, and a fixed beta combined with units.
    Method("smc", (("ess_threshold", 1.0), ("anneal", "entropy"))),
    Method("smc", (("resampling", "multinomial"), ("ess_threshold", 1.0), ("unit", (0, 2)),
                   ("anneal", 0.5))),
    # MCMC / VI: skipped unless ppl.methods() lists them.
    Method("pimh", (("steps", 10),), "mcmc"),
    Method("particle_gibbs", (("steps", 10),), "mcmc"),
    Method("particle_gibbs", (("steps", 10), ("ancestor_sampling", False)), "mcmc"),
    Method("vi", (("vi_steps", 10),), "vi"),
]


@functools.lru_cache(maxsize=None)
def available() -> frozenset:
    return frozenset(ppl.methods())


def method_params(*families, names=None):
    """``pytest.param`` rows of METHODS in the given families (skipped when not registered)."""
    rows = []
    for m in METHODS:
        if m.family not in families or (names is not None and m.name not in names):
            continue
        rows.append(pytest.param(m, id=m.id, marks=pytest.mark.skipif(
            m.name not in available(), reason=f"method {m.name!r} is not registered yet")))
    return rows


def params_strategy(**kw):
    return pst.toy_params(V, S, EOS, **kw)


_TRUE = pst.TextPredicate("max_len", 10**6)
_ZERO = pst.TextPotential("len", 0.0)


@functools.lru_cache(maxsize=None)
def program():
    """The one toy program the suite compiles (host predicate and potential included)."""
    import hypothesis

    del hypothesis  # strategies need it; fail early with a clear import error
    lm = pt.TrigramLM(pt.TrigramLM.make_params(np.zeros(V), np.zeros((V + 1, V, V)),
                                               pt.toy_program_tables(S, V, EOS)), EOS,
                      token_strings=list(ALPHABET) + [""])
    return pt.toy_program(lm, T, predicate=_TRUE, potential=_ZERO)


@functools.lru_cache(maxsize=None)
def proposal_program():
    """The toy program with a proposal LM (a second `TrigramLM`; see
    [ppl.testing.toy_program][]), compiled once like `program`."""
    def trigram():
        return pt.TrigramLM(pt.TrigramLM.make_params(np.zeros(V), np.zeros((V + 1, V, V)),
                                                     pt.toy_program_tables(S, V, EOS)), EOS,
                            token_strings=list(ALPHABET) + [""])

    return pt.toy_program(trigram(), T, predicate=_TRUE, potential=_ZERO,
                          proposal_lm=trigram(), proposal_floor=PROPOSAL_FLOOR)


#: The program's own proposal's share of the proposal-LM mixture (small, so that the
#: proposal LM, which gives some tokens probability 0, does most of the proposing).
PROPOSAL_FLOOR = 0.2


def load_proposal(params, proposal_params, predicate=None, potential=None):
    """`load` for `proposal_program`: the LM's and the proposal LM's parameters."""
    prog = proposal_program()
    prog.lm.params = {"lm": params, "proposal": proposal_params}
    prog.predicate = predicate if predicate is not None else _TRUE
    prog.potential = potential if potential is not None else _ZERO
    return prog, pt.toy_exact(prog)


def run_proposal(method: Method, seed, particles: int = N, **extra):
    opts = {**method.opts, **extra}
    return pt.run_or_none(proposal_program(), method.name, particles, seed, **opts)


def load(params, predicate=None, potential=None):
    """Loads an example into the shared program; returns it and its exact (numpy) target."""
    prog = program()
    prog.lm.params = params
    prog.predicate = predicate if predicate is not None else _TRUE
    prog.potential = potential if potential is not None else _ZERO
    return prog, pt.toy_exact(prog)


def run(method: Method, seed, particles: int = N, **extra):
    opts = {**method.opts, **extra}
    return pt.run_or_none(program(), method.name, particles, seed, **opts)


def replicates(method: Method, particles: int = N, num: int = R):
    return [run(method, s, particles) for s in range(num)]
