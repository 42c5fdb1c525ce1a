"""Rejuvenation moves (resample-move after SMC) against the exact posterior.

* invariance: ``M`` i.i.d. exact posterior draws, each moved twice by the independent-suffix
  MH kernel, must remain i.i.d. posterior draws (binomial CLT per sequence, Bonferroni);
* ``ppl.infer(method="smc", rejuvenate=2)`` (moves after every resampling and at the end, and
  ``rejuvenate_at="end"``): replicated runs compared with the exact posterior
  and evidence by ``ppl.testing``'s bounds (the moves keep the weights, so ``Z_hat`` stays
  unbiased). False-failure rate 1e-4 per check.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.inference import engine as E
from ppl.inference import rejuvenation
from ppl.inference.base import RunConfig
from ppl.testing import evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import make_bigram
from tests.inference.programs import (WithLatent, histogram_discrepancies, sample_exact)


def test_moves_leave_exact_posterior_invariant(twisted, exact):
    m = 6000
    tokens, lengths = sample_exact(exact, m, seed=2)
    setup = E.prepare(twisted)
    tokens = np.pad(tokens, ((0, 0), (0, setup.max_tokens - tokens.shape[1])))

    @jax.jit
    def moved(key, tokens, lengths, params):
        k0, k1 = jax.random.split(key)
        config = RunConfig(tokens.shape[0])
        parts, _ = rejuvenation.replay(k0, setup, config, params, tokens, lengths)  # own weights
        move = rejuvenation.build_move(setup, config, params)
        (parts, own), info = jax.lax.scan(move, (parts, parts.logw), jax.random.split(k1, 2))
        return parts, own, info

    parts, own, info = moved(jax.random.key(0), jnp.asarray(tokens), jnp.asarray(lengths),
                             setup.lm.params)
    assert 0.1 < float(np.mean(info.accepted)) < 1.0
    assert np.all(np.isfinite(np.asarray(own)))
    bad = histogram_discrepancies(parts.tokens, parts.length, exact, alpha=1e-4)
    assert not bad, bad


@pytest.mark.parametrize("at", ["resample", "end"])
def test_smc_with_rejuvenation_matches_exact(twisted, exact, at):
    results = replicate(twisted, "smc", 300, range(16), rejuvenate=2, rejuvenate_at=at)
    bad = posterior_discrepancies(results, exact, alpha=1e-4)
    assert not bad, bad
    err = evidence_discrepancy(results, exact, alpha=1e-4)
    assert err is None, err
    acc = results[0].extras["rejuvenation_acceptance"]
    assert acc.shape == (2,) and np.all((acc > 0) & (acc <= 1))
    step_acc = results[0].extras["rejuvenation_step_acceptance"]
    moved = step_acc[np.isfinite(step_acc)]
    if at == "resample":  # moves ran after the intermediate resamplings, and moved particles
        assert moved.size >= 1 and np.all((moved > 0) & (moved <= 1)), step_acc
    else:
        assert moved.size == 0
    for r in results:
        assert all(t.count("a") <= 1 for t, w in zip(r.texts, r.weights) if w > 0)


def test_rejuvenation_refuses_latent_programs():
    with pytest.raises(ppl.ProgramError, match="only sample LM tokens"):
        ppl.infer(WithLatent(make_bigram(0), prompt=""), method="smc", particles=4, rejuvenate=1)
