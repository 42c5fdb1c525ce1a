"""``steer(proposal_lm=...)``: tokens proposed by a second model, weighted by log p - log q.

* Two real transformers (the embedded tiny model as ``p``; the same model in another prompt,
  or at another temperature, as the proposal): every IS log-weight equals
  ``Σ_t log p(x_t | x_<t) - log q(x_t | x_<t)`` computed independently with ``lm.forward``
  over whole sequences (float32 rounding tolerances).
* Toy bigrams with constraints and truncation: the enumerated target equals the program's
  without the proposal, every IS weight equals numpy's ``log p - log q``, SMC matches the
  exact posterior and evidence (``ppl.testing`` tolerances, false-failure rate 1e-4).
* Mismatched vocabularies and bad settings are refused before any device work, naming both
  models and the fix.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.proposal_lm import PairedLM
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import check_is_log_weights

V, EOS, T = 5, 4, 3


def _bigram(seed, strings=("a", "b", "c", "d", "")):
    rng = np.random.default_rng(seed)
    return ppl.models.NGramLM(rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5,
                              eos_token_id=EOS, token_strings=list(strings))


def _no_aa(text):
    return "aa" not in text


# ---- two real transformer LMs ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return ppl.models.load("tiny")


def _forward_rows(lm, prompt_ids, seq):
    """``float64[len(seq), V]``: log p(. | prompt, seq[:t]) for each t, in one full pass."""
    lp = lm.forward(lm.params, jnp.asarray(list(prompt_ids) + list(seq), jnp.int32))
    return np.asarray(lp, np.float64)[len(prompt_ids) - 1:len(prompt_ids) - 1 + len(seq)]


def _log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("how", ["prompt", "temperature"])
def test_tiny_model_weights_are_log_p_minus_log_q_of_forward_passes(tiny, how):
    """p = the tiny model after ``prompt``; q = (1 - f) r + f p with r the same model after
    another prompt (its own KV cache in the particle state) or at temperature 1.7 (no second
    context). Each IS log-weight equals the sum over tokens of log p - log q recomputed with
    ``forward`` over the whole sequence."""
    prompt, other, f, tau = "Once upon a time", "The little dog", 0.2, 1.7
    kw = (dict(proposal_lm=tiny, proposal_prompt=other) if how == "prompt"
          else dict(proposal_temperature=tau))
    prog = ppl.steer(tiny, prompt, max_tokens=4, proposal_floor=f, **kw)
    assert isinstance(prog.lm, PairedLM) == (how == "prompt")
    res = ppl.infer(prog, method="is", particles=4, seed=3)
    pids, qids = tiny.prompt_ids(prompt), tiny.prompt_ids(other)
    for row, n, lw in zip(res.tokens, res.lengths, res.log_weights):
        seq = [int(t) for t in row[:n]]
        lp = _forward_rows(tiny, pids, seq)
        r = _forward_rows(tiny, qids, seq) if how == "prompt" else _log_softmax(lp / tau)
        want = 0.0
        for t, x in enumerate(seq):
            want += lp[t, x] - np.logaddexp(math.log1p(-f) + r[t, x], math.log(f) + lp[t, x])
        # float32: the incremental decode and the full pass round differently (~1e-5 per
        # token of log-probabilities of magnitude <= 20, and the mixture's logaddexp).
        assert lw == pytest.approx(want, abs=2e-4 * len(seq)), seq


@pytest.mark.slow
def test_tiny_model_smc_with_a_proposal_prompt_runs_and_resamples(tiny):
    """SMC with a proposal prompt resamples (the proposal cache is forked) and stays finite."""
    prog = ppl.steer(tiny, "Once upon a time", max_tokens=4, proposal_lm=tiny,
                     proposal_prompt="The little dog", proposal_floor=0.1)
    res = ppl.infer(prog, method="smc", particles=8, seed=0, ess_threshold=1.0)
    assert np.isfinite(res.log_evidence) and res.resampled.any()


# ---- exactness with toy LMs (constraints, truncation) ------------------------------------


def _np_sequences():
    for n in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < T and seq[-1] != EOS):
                continue
            yield seq


def _rows(lm):
    init = np.asarray(lm.params["initial"], np.float64)
    trans = np.asarray(lm.params["transition"], np.float64)
    return lambda last: _log_softmax(init if last is None else trans[last])


def _tempered(lp, tau):
    if tau == 0:  # greedy: the most likely tokens share the mass
        best = lp == lp.max()
        return np.where(best, -math.log(best.sum()), -np.inf)
    return _log_softmax(lp / tau)


def _oracle(p, q, f, tau, predicate):
    """``{seq: (log p(x), log q(x))}`` for every complete sequence the predicate allows;
    ``q = (1 - f) r + f p`` per token, ``r`` the proposal bigram at temperature ``tau``."""
    rp, rq = _rows(p), _rows(q)
    out = {}
    for seq in _np_sequences():
        lp = lq = 0.0
        last = None
        for tok in seq:
            a, r = rp(last), _tempered(rq(last), tau)
            lp += a[tok]
            lq += np.logaddexp(math.log1p(-f) + r[tok], math.log(f) + a[tok])
            last = tok
        text = "".join("abcd"[t] for t in seq if t != EOS)
        if predicate(text):
            out[seq] = (lp, lq)
    return out


@pytest.mark.parametrize("tau,f", [(0.8, 0.1), (0.0, 0.3)])
def test_bigram_proposal_lm_weights_and_target_are_exact(tau, f):
    """Weights exact for a proposal that misses tokens (greedy: only the floor proposes the
    rest); SMC's posterior and evidence are the program's."""
    p, q = _bigram(7), _bigram(11)
    prog = ppl.steer(p, "", constraints=[_no_aa], max_tokens=T, proposal_lm=q,
                     proposal_temperature=tau, proposal_floor=f)
    plain = enumerate_posterior(ppl.steer(p, "", constraints=[_no_aa], max_tokens=T))
    exact = enumerate_posterior(prog)
    assert exact.log_evidence == pytest.approx(plain.log_evidence, abs=1e-5)
    oracle = _oracle(p, q, f, tau, _no_aa)
    res = ppl.infer(prog, method="is", particles=256, seed=0)
    assert check_is_log_weights(res, {s: lp - lq for s, (lp, lq) in oracle.items()}) > 100
    results = replicate(prog, "smc", 200, range(8))
    assert not posterior_discrepancies(results, plain)
    assert evidence_discrepancy(results, plain) is None


def test_proposal_lm_with_a_device_constraint_and_truncation_stays_exact():
    """Masked by a regex, mixed with the truncated proposal: still the untruncated program."""
    from ppl.stdlib import constraints as C

    p, q = _bigram(7), _bigram(3)
    rule = C.regex(r"[ab]+")
    prog = ppl.steer(p, "", constraints=[rule], max_tokens=T, top_p=0.5, truncation="proposal",
                     proposal_lm=q, proposal_floor=0.3)
    plain = enumerate_posterior(ppl.steer(p, "", constraints=[rule.check], max_tokens=T))
    assert enumerate_posterior(prog).log_evidence == pytest.approx(plain.log_evidence, abs=1e-5)
    results = replicate(prog, "smc", 200, range(8))
    assert not posterior_discrepancies(results, plain)
    assert evidence_discrepancy(results, plain) is None


# ---- errors ------------------------------------------------------------------------------


def test_a_vocabulary_of_another_size_is_refused_naming_both_models():
    p = _bigram(0)
    rng = np.random.default_rng(1)
    q = ppl.models.NGramLM(rng.normal(size=6), rng.normal(size=(6, 6)), eos_token_id=5,
                           token_strings=list("abcde") + [""])
    q.name = "small-draft"
    with pytest.raises(ValueError, match=r"(?s)small-draft.*6 tokens.*NGramLM.* has 5.*"
                                         r"share the LM.s tokenizer"):
        ppl.steer(p, "", max_tokens=T, proposal_lm=q)


def test_a_different_tokenizer_of_the_same_size_is_refused_naming_the_token():
    p, q = _bigram(0), _bigram(1, strings=("a", "b", "x", "d", ""))
    with pytest.raises(ValueError, match=r"different tokenizers: token 2 is b.x. in the "
                                         r"proposal model and b.c."):
        ppl.steer(p, "", max_tokens=T, proposal_lm=q)


@pytest.mark.parametrize("bad", [dict(proposal_floor=0.0), dict(proposal_floor=1.5),
                                 dict(proposal_floor=True), dict(proposal_temperature=-1.0),
                                 dict(proposal_lm="gpt2")])
def test_bad_proposal_settings_are_refused(bad):
    kw = {"proposal_lm": _bigram(1), **bad}
    with pytest.raises((TypeError, ValueError)):
        ppl.steer(_bigram(0), "", max_tokens=T, **kw)


def test_a_proposal_prompt_that_does_not_fit_is_refused(tiny):
    with pytest.raises(ValueError, match="proposal prompt"):
        ppl.steer(tiny, "Hi", max_tokens=8, proposal_lm=tiny,
                  proposal_prompt=list(range(tiny.max_context)))


def test_a_grammar_constraint_with_a_proposal_lm_is_refused():
    from ppl.stdlib import constraints as C

    with pytest.raises(ValueError, match="grammar"):
        ppl.steer(_bigram(0), "", constraints=[C.lark('start: "a"+')], max_tokens=T,
                  proposal_lm=_bigram(1))


def test_paired_params_are_one_object_and_assignable():
    p, q = _bigram(0), _bigram(1)
    paired = PairedLM(p, q)
    a = paired.params
    assert a is paired.params and a["lm"] is p.params and a["proposal"] is q.params
    new = {"lm": _bigram(2).params, "proposal": _bigram(3).params}
    paired.params = new
    assert p.params is new["lm"] and q.params is new["proposal"]
    assert paired.params is not a


def test_programs_built_alike_share_one_paired_model_and_executable():
    p, q = _bigram(0), _bigram(1)
    a = ppl.steer(p, "", max_tokens=T, proposal_lm=q)
    b = ppl.steer(p, "", max_tokens=T, proposal_lm=q)
    assert a.lm is b.lm and a.lm.target is p and a.lm.proposal is q
    ppl.infer(a, method="is", particles=4, seed=0)
    assert ppl.infer(b, method="is", particles=4, seed=0).timings["compile"] == 0


def test_hand_written_program_with_a_proposal_lm_has_exact_weights():
    """The module's recipe (PairedLM + LMProposal in the program's state) gives the same
    exact weights as steer()."""
    from ppl.proposal_lm import LMProposal, paired

    f = 0.25

    class Guided(ppl.Program):
        def __init__(self, lm, small):
            super().__init__(lm=paired(lm, small), max_tokens=T)
            self.guide = LMProposal(self.lm, "", max_tokens=T, floor=f)

        def init(self, ctx):
            return self.guide.init()

        def step(self, ctx, g):
            p = ctx.lm.next_token()
            tok = ctx.sample(p, proposal=self.guide.proposal(g, p))
            ctx.finish_if(tok == self.lm.eos_token_id)
            return self.guide.advance(g, tok, ctx.length)

    p, q = _bigram(5), _bigram(6)
    oracle = _oracle(p, q, f, 1.0, lambda text: True)
    res = ppl.infer(Guided(p, q), method="is", particles=64, seed=1)
    for row, n, lw in zip(res.tokens, res.lengths, res.log_weights):
        lp, lq = oracle[tuple(int(t) for t in row[:n])]
        assert lw == pytest.approx(lp - lq, abs=1e-4)
