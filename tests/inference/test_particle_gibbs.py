"""Particle Gibbs (conditional SMC) against the exact posterior of a bigram program.

Checks, false-failure rate 1e-4 each:

* invariance, with and without ancestor sampling: ``M`` references drawn i.i.d. from the
  exact posterior, one CSMC step each (vmapped, independent keys) must again be ``M`` i.i.d.
  posterior draws: per-sequence frequencies within the binomial CLT bound (Bonferroni over
  sequences). This isolates the kernel from burn-in;
* ancestor sampling does its job: the reference's *first* token changes in significantly more
  steps with it than without (two-proportion z-test);
* a run through ``ppl.infer`` with ``chains`` independent chains, compared by batch means
  (``tests/inference/programs.py``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.inference import _chain as C
from ppl.inference import engine as E
from ppl.inference import particle_gibbs
from ppl.inference.base import RunConfig
from tests.conftest import make_bigram
from tests.inference.programs import (WithLatent, chain_discrepancies, histogram_discrepancies,
                                      sample_exact)


def _one_csmc_step(program, exact, m, n, ancestor_sampling, seed=0):
    tokens, lengths = sample_exact(exact, m, seed=1)
    setup = E.prepare(program)
    t_max = setup.max_tokens
    tokens = np.pad(tokens, ((0, 0), (0, t_max - tokens.shape[1])))

    @jax.jit
    def one_step(keys, tokens, lengths, params):
        kernel = particle_gibbs.build_kernel(setup, RunConfig(n), params, ess_threshold=1.0,
                                             ancestor_sampling=ancestor_sampling)
        states = C.ChainState(tokens, lengths, jnp.zeros(tokens.shape[0]))
        return jax.vmap(kernel)(keys, states)

    new, info = one_step(jax.random.split(jax.random.key(seed), m), jnp.asarray(tokens),
                         jnp.asarray(lengths), setup.lm.params)
    return tokens, new, info


@pytest.mark.parametrize("ancestor_sampling", [True, False])
def test_csmc_step_leaves_exact_posterior_invariant(twisted, exact, ancestor_sampling):
    _, new, info = _one_csmc_step(twisted, exact, 6000, 3, ancestor_sampling)
    assert 0.1 < float(np.mean(info.accepted)) < 1.0  # the kernel moves
    bad = histogram_discrepancies(new.tokens, new.length, exact, alpha=1e-4)
    assert not bad, bad


def test_ancestor_sampling_changes_early_tokens_more_often(twisted, exact):
    m = 3000
    rates = {}
    for a_s in (True, False):
        old, new, _ = _one_csmc_step(twisted, exact, m, 2, a_s, seed=5)
        rates[a_s] = float(np.mean(np.asarray(new.tokens)[:, 0] != old[:, 0]))
    p = (rates[True] + rates[False]) / 2
    se = np.sqrt(2 * p * (1 - p) / m)
    z = 3.72  # one-sided normal quantile at 1e-4
    assert rates[True] - rates[False] > z * se, rates


@pytest.mark.parametrize("ancestor_sampling", [True, False])
def test_particle_gibbs_chains_match_exact_posterior(twisted, exact, ancestor_sampling):
    r = ppl.infer(twisted, method="particle_gibbs", particles=4, seed=0, steps=60, burn_in=10,
                  chains=128, ancestor_sampling=ancestor_sampling)
    assert r.tokens.shape[0] == 128 * 50 and r.extras["accepted"].shape == (128, 60)
    assert 0.05 < r.extras["acceptance_rate"] <= 1.0
    bad = chain_discrepancies(r, exact, alpha=1e-4)
    assert not bad, bad
    assert all(t.count("a") <= 1 for t in r.texts)


def test_particle_gibbs_refuses_latent_programs():
    with pytest.raises(ppl.ProgramError, match="only sample LM tokens"):
        ppl.infer(WithLatent(make_bigram(0), prompt=""), method="particle_gibbs", particles=4,
                  steps=2)


def test_particle_gibbs_needs_two_particles(twisted):
    with pytest.raises(ValueError, match="particles >= 2"):
        ppl.infer(twisted, method="particle_gibbs", particles=1, steps=2)
