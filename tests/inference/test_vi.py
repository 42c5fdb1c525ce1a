"""Variational proposals: bounds below log Z, a better proposal than the prior, exactness with
the learned proposal, and save/load.

Tolerances (false-failure rate 1e-4 per check):

* bounds: the ELBO and the K-sample IWAE bound are expectations; their Monte-Carlo estimates
  from ``M`` independent draws must lie below ``log Z + z * se`` (``se`` = sample sd / sqrt(M));
* improvement on ``Rare`` (posterior mass ~1% under the prior): over R=16 independent IS runs of
  1024 particles each, the learned proposal must give a higher mean ESS (the prior's ESS is
  ~N·Z ≈ 10, the learned one's is measured at ~20% of N: the gap is > 10 standard errors)
  and a lower sample variance of ``log Z_hat`` (the true variance ratio is ~20; an F(15, 15)
  ratio falls below 1 with probability < 1e-5);
* exactness with the learned proposal: ``ppl.testing``'s replicate bounds.
"""

import math

import jax
import numpy as np
import pytest

import ppl
from ppl.inference import engine as E
from ppl.inference import vi
from ppl.testing import _z, enumerate_posterior, evidence_discrepancy, posterior_discrepancies
from tests.conftest import make_bigram
from tests.inference.programs import Rare, Soft


@pytest.fixture(scope="module")
def rare():
    prog = Rare(make_bigram(3), prompt="")
    return prog, enumerate_posterior(prog)


@pytest.fixture(scope="module")
def rare_trained(rare):
    prog, _ = rare
    return ppl.infer(prog, method="vi", particles=1024, seed=0, vi_steps=150, vi_particles=32,
                     learning_rate=0.1, objective="vimco")


def _runs(prog, params, seeds):
    out = [ppl.infer(prog, method="is", particles=1024, seed=s, proposal_params=params)
           for s in seeds]
    return out


def test_learned_proposal_beats_prior_on_rare_constraint(rare, rare_trained):
    prog, exact = rare
    params = rare_trained.extras["vi_params"]
    assert params["kind"] == "prev_token" and params["bias"].shape == (5, 4)
    learned = _runs(prog, params, range(100, 116))
    prior = _runs(prog, None, range(100, 116))
    ess_l = np.mean([r.final_ess for r in learned])
    ess_p = np.mean([r.final_ess for r in prior])
    var_l = np.var([r.log_evidence for r in learned], ddof=1)
    var_p = np.var([r.log_evidence for r in prior], ddof=1)
    assert ess_l > 3 * ess_p, (ess_l, ess_p)
    assert var_l < var_p, (var_l, var_p)
    # The learned proposal is exact: corrected weights give the exact posterior and evidence.
    bad = posterior_discrepancies(learned, exact, alpha=1e-4)
    assert not bad, bad
    assert evidence_discrepancy(learned, exact, alpha=1e-4) is None
    # Training history is recorded and improved the training batches' ESS.
    h = rare_trained.extras["vi_ess"]
    assert h.shape == (150,) and h[-30:].mean() > h[:10].mean()


def _bound_check(prog, params, num=4096, k=32):
    setup = E.prepare(prog)
    kind, bias = vi.check_params(params, setup)
    batch = jax.jit(lambda key, p, b: vi.sample_batch(key, setup, p, kind, b, num))(
        jax.random.key(5), setup.lm.params, bias)
    return np.asarray(batch.logw, np.float64)


def test_elbo_and_iwae_estimates_stay_below_log_z():
    prog = Soft(make_bigram(2), prompt="")
    log_z = enumerate_posterior(prog).log_evidence
    params, hist = vi.train(prog, seed=0, vi_steps=60, objective="elbo", learning_rate=0.1)
    z = _z(1e-4)
    for params in (vi.init_params(prog), params):
        lw = _bound_check(prog, params)
        assert np.all(np.isfinite(lw))
        elbo, se = lw.mean(), lw.std(ddof=1) / math.sqrt(lw.size)
        assert elbo <= log_z + z * se, (elbo, log_z)
        groups = lw.reshape(-1, 32)
        iw = np.log(np.mean(np.exp(groups), axis=1))
        assert iw.mean() <= log_z + z * iw.std(ddof=1) / math.sqrt(len(iw)), (iw.mean(), log_z)
        assert elbo <= iw.mean() + z * iw.std(ddof=1) / math.sqrt(len(iw))
    # Training moved the ELBO up (towards log Z).
    h = hist["objective"]
    assert h.shape == (60,) and h[-20:].mean() > h[:5].mean()


def test_save_load_round_trip_and_reuse(tmp_path, rare, rare_trained):
    prog, _ = rare
    params = rare_trained.extras["vi_params"]
    path = tmp_path / "proposal.npz"
    vi.save_params(path, params)
    loaded = vi.load_params(path)
    assert loaded["kind"] == params["kind"]
    assert np.array_equal(loaded["bias"], params["bias"])
    a = ppl.infer(prog, method="is", particles=1024, seed=3, proposal_params=params)
    b = ppl.infer(prog, method="is", particles=1024, seed=3, proposal_params=loaded)
    assert np.array_equal(a.tokens, b.tokens) and a.log_evidence == b.log_evidence
    c = ppl.infer(prog, method="smc", particles=1024, seed=3, proposal_params=loaded)
    assert np.isfinite(c.log_evidence)


def test_bad_proposal_params_are_rejected(rare):
    prog, _ = rare
    with pytest.raises(ValueError, match="shape"):
        ppl.infer(prog, method="is", particles=8, proposal_params={"kind": "prev_token",
                                                                    "bias": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="objective"):
        ppl.infer(prog, method="vi", particles=8, objective="nope", vi_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iwae", "rws"])
def test_other_objectives_also_improve_the_proposal(rare, objective):
    prog, _ = rare
    res = ppl.infer(prog, method="vi", particles=1024, seed=1, vi_steps=150, vi_particles=32,
                    learning_rate=0.1, objective=objective)
    prior = _runs(prog, None, range(8))
    assert res.final_ess > 3 * np.mean([r.final_ess for r in prior])


# ---- the hidden-state head on a transformer -------------------------------------------------

class Patterned(ppl.Program):
    """Three tokens from a set of four (masked LM); the target rewards a position-dependent
    choice, which a head on the transformer's hidden state can learn (the prior proposal, the
    masked LM, cannot)."""

    max_tokens = 3

    def __init__(self, lm, allowed, favoured):
        super().__init__(lm, prompt="The")
        self.allowed = np.zeros(lm.vocab_size, bool)
        self.allowed[allowed] = True
        self.favoured = np.asarray(favoured, np.int32)

    def step(self, ctx, s):
        import jax.numpy as jnp

        tok = ctx.sample(ctx.lm.next_token().mask(jnp.asarray(self.allowed)))
        t = jnp.minimum(ctx.lm.length, 2)
        ctx.factor(3.0 * (tok == jnp.asarray(self.favoured)[t]))
        return s


@pytest.fixture(scope="module")
def patterned(tmp_path_factory):
    from transformers import AutoTokenizer

    from ppl.models.loading import resolve
    from tests.models.conftest import random_checkpoint

    tok = AutoTokenizer.from_pretrained(str(resolve("tiny")))
    folder = random_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2"), tok, n_positions=16,
                               n_embd=32, n_layer=2, n_head=4)
    lm = ppl.models.load(str(folder))
    allowed = [300, 301, 302, 303]
    prog = Patterned(lm, allowed, favoured=[300, 301, 302])
    return prog, enumerate_posterior(prog)


def test_hidden_state_head_learns_and_stays_exact(patterned, tmp_path):
    """``proposal="auto"`` picks the hidden-state head for a 4096-token vocabulary; after
    training, IS with it has a higher ESS (one-sided Welch test over R=16 runs per side) and
    its corrected weights still give the exact posterior and evidence."""
    from ppl.testing import decrease_discrepancy

    prog, exact = patterned
    res = ppl.infer(prog, method="vi", particles=256, seed=0, vi_steps=80, vi_particles=16,
                    learning_rate=0.05)
    params = res.extras["vi_params"]
    d, v = 32, prog.lm.vocab_size
    assert params["kind"] == "hidden"
    assert params["proj"].shape == (d, vi.HIDDEN_RANK) and params["out"].shape == (vi.HIDDEN_RANK, v)
    assert params["const"].shape == (v,)
    learned = [ppl.infer(prog, method="is", particles=256, seed=s, proposal_params=params)
               for s in range(100, 116)]
    prior = [ppl.infer(prog, method="is", particles=256, seed=s) for s in range(100, 116)]
    err = decrease_discrepancy([r.final_ess for r in learned], [r.final_ess for r in prior],
                               what="final ESS (learned vs prior)")
    assert err is None, err
    bad = posterior_discrepancies(learned, exact, alpha=1e-4)
    assert not bad, bad
    assert evidence_discrepancy(learned, exact, alpha=1e-4) is None
    # Saved and loaded, the head is reused as the proposal of another run, bit for bit.
    path = tmp_path / "head.npz"
    vi.save_params(path, params)
    loaded = vi.load_params(path)
    a = ppl.infer(prog, method="smc", particles=64, seed=9, proposal_params=params)
    b = ppl.infer(prog, method="smc", particles=64, seed=9, proposal_params=loaded)
    assert np.array_equal(a.tokens, b.tokens) and a.log_evidence == b.log_evidence


def test_hidden_head_needs_hidden_states(rare):
    prog, _ = rare
    with pytest.raises(ValueError, match="exposes its hidden states|has none"):
        vi.init_params(prog, "hidden")
