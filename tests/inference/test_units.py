"""Units: resampling (and steer's twists) only at unit boundaries, still exact.

Tolerances: ``ppl.testing`` bounds at a false-failure rate of 1e-4 per assertion over R
independent replicates (Bonferroni over the texts compared).
"""

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import make_bigram

EOS = 3


class Marked(ppl.Program):
    """A twisted program whose units end after token 'a' (id 0)."""

    max_tokens = 4

    def step(self, ctx, s):
        p = ctx.lm.next_token()
        tok = ctx.sample(p, proposal=p.temper(2.0))
        ctx.factor(0.7 * (tok == 1))
        ctx.twist(-0.8 * (tok == 2))
        ctx.boundary(tok == 0)
        ctx.finish_if(tok == EOS)
        return s


@pytest.fixture(scope="module")
def marked():
    return Marked(make_bigram(3), prompt="")


def _moved_slots_were_at_boundaries(res):
    """Every slot that got a new ancestor at step t holds a copy of a particle whose token at
    t ended a unit ('a') or that had finished (EOS now, or -1: earlier)."""
    hist = res.extras["history"]["tokens"]
    for t, anc in enumerate(res.ancestors):
        moved = anc != np.arange(len(anc))
        assert set(hist[t][moved].tolist()) <= {0, EOS, -1}, (t, hist[t][moved])


def test_program_boundaries_gate_resampling_and_stay_exact(marked):
    exact = enumerate_posterior(marked)
    results = replicate(marked, "smc", 128, range(24), ess_threshold=1.0)
    assert any(r.resampled.any() for r in results)
    for r in results:
        _moved_slots_were_at_boundaries(r)
    assert evidence_discrepancy(results, exact) is None
    assert not posterior_discrepancies(results, exact)


def test_program_that_never_ends_a_unit_is_importance_sampling(marked):
    class Never(Marked):
        def step(self, ctx, s):
            s = super().step(ctx, s)
            ctx.boundary(False)  # combined by *and*: no unit ever ends before EOS
            return s

    prog = Never(make_bigram(3), prompt="")
    a = ppl.infer(prog, method="smc", particles=64, seed=1, ess_threshold=1.0)
    b = ppl.infer(prog, method="is", particles=64, seed=1)
    # Only finished particles are ever eligible; SMC may shuffle those among themselves.
    hist = a.extras["history"]["tokens"]
    for t, anc in enumerate(a.ancestors):
        moved = anc != np.arange(len(anc))
        assert set(hist[t][moved].tolist()) <= {EOS, -1}
    assert np.isfinite(b.log_evidence)


def test_unit_option_token_ids(marked):
    res = ppl.infer(marked, method="smc", particles=64, seed=0, ess_threshold=1.0, unit=(0,))
    _moved_slots_were_at_boundaries(res)


@pytest.mark.parametrize("bad,match", [(0, ">= 1"), ("word", "ppl.steer"), ([], "non-empty"),
                                       (1.5, "integer")])
def test_unit_option_errors(marked, bad, match):
    with pytest.raises(ppl.errors.OptionError, match=match):
        ppl.infer(marked, method="smc", particles=4, unit=bad)


def test_units_refuse_islands(marked):
    with pytest.raises(ppl.errors.OptionError, match="islands"):
        ppl.infer(marked, method="smc", particles=4, islands=2)


def _word_lm():
    return make_bigram(5, v=4, strings=["a", " ", "b", ""], scale=1.0)


@pytest.mark.parametrize("unit", ["word", pytest.param(2, marks=pytest.mark.slow),
                                  pytest.param(lambda text: text.endswith("b"),
                                               marks=pytest.mark.slow)])
def test_steer_units_with_twists_are_exact(unit):
    lm = _word_lm()
    prog = ppl.steer(lm, "", potentials=[lambda t: 0.5 * t.count("a")],
                     twists=[lambda t: -0.7 * t.count("b")], max_tokens=4, unit=unit)
    exact = enumerate_posterior(prog)
    results = replicate(prog, "smc", 128, range(24), ess_threshold=1.0)
    assert evidence_discrepancy(results, exact) is None
    assert not posterior_discrepancies(results, exact)


def test_steer_word_unit_resamples_only_after_whitespace():
    prog = ppl.steer(_word_lm(), "", twists=[lambda t: -0.7 * t.count("b")], max_tokens=4,
                     unit="word")
    res = ppl.infer(prog, method="smc", particles=64, seed=0, ess_threshold=1.0)
    hist = res.extras["history"]["tokens"]
    for t, anc in enumerate(res.ancestors):
        moved = anc != np.arange(len(anc))
        assert set(hist[t][moved].tolist()) <= {1, EOS, -1}


def test_steer_unit_errors():
    with pytest.raises(ValueError, match="unknown unit"):
        ppl.steer(_word_lm(), "", unit="paragraph")
    with pytest.raises(ValueError, match=">= 1"):
        ppl.steer(_word_lm(), "", unit=0)
