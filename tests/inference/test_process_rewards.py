"""Process rewards in ``steer``: each completed unit scored, aggregated (product/last/min), as a
likelihood (the target changes, exactly as documented) or a twist (it does not)."""

import math

import numpy as np
import pytest

import ppl
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate
from tests.conftest import make_bigram

EOS = 3


def _lm():
    return make_bigram(5, v=4, strings=["a", " ", "b", ""])


def _prm(text):
    """Log-score of the text so far: rewards 'a's in the latest word, penalises 'b', and
    depends on the length (so scoring one unit twice would show)."""
    last = text.rstrip(" ").split(" ")[-1]
    return 0.4 * last.count("a") - 0.6 * last.count("b") + 0.15 * len(text)


def _units(text):
    """The prefixes at which the unit 'word' ends (after each space) and the full text."""
    cuts = [i + 1 for i, c in enumerate(text) if c == " "]
    return [text[:c] for c in cuts] + ([text] if not cuts or cuts[-1] != len(text) else [])


AGG = {"product": sum, "last": lambda xs: xs[-1], "min": min}


@pytest.mark.parametrize("how", ["product", "last", "min"])
def test_likelihood_target_is_prior_times_aggregate(how):
    lm = _lm()
    prog = ppl.steer(lm, "", max_tokens=4, unit="word", process_reward=_prm,
                     reward_aggregate=how)
    exact = enumerate_posterior(prog)
    plain = enumerate_posterior(ppl.steer(lm, "", max_tokens=4))
    for seq, lw in exact.log_weights.items():
        text = lm.vocab.decode([t for t in seq if t != EOS])
        want = plain.log_weights[seq] + AGG[how]([_prm(u) for u in _units(text)])
        assert lw == pytest.approx(want, abs=1e-4), (seq, text)


def test_twist_reward_leaves_the_target_and_smc_exact():
    lm = _lm()
    prog = ppl.steer(lm, "", max_tokens=4, unit="word", process_reward=_prm,
                     reward_aggregate="min", reward_as="twist")
    exact = enumerate_posterior(prog)
    plain = enumerate_posterior(ppl.steer(lm, "", max_tokens=4))
    assert exact.log_evidence == pytest.approx(plain.log_evidence, abs=1e-5)
    results = replicate(prog, "smc", 128, range(24), ess_threshold=1.0)
    assert evidence_discrepancy(results, exact) is None
    assert not posterior_discrepancies(results, exact)


def test_process_reward_errors():
    with pytest.raises(ValueError, match="reward_aggregate"):
        ppl.steer(_lm(), "", process_reward=_prm, reward_aggregate="mean")
    with pytest.raises(ValueError, match="reward_as"):
        ppl.steer(_lm(), "", process_reward=_prm, reward_as="factor")
    with pytest.raises(TypeError, match="process_reward"):
        ppl.steer(_lm(), "", process_reward=3)


def test_terminate_when_stops_at_the_first_prefix_that_satisfies_it():
    lm = _lm()
    prog = ppl.steer(lm, "", max_tokens=4, terminate_when=lambda t: t.endswith("b"))
    exact = enumerate_posterior(prog)
    for seq in exact.log_weights:
        body = [t for t in seq if t != EOS]
        prefixes = [lm.vocab.decode(body[:k]) for k in range(1, len(body) + 1)]
        hits = [p.endswith("b") for p in prefixes]
        if not hits:
            continue
        assert not any(hits[:-1]), seq  # never continues past a stop
        assert hits[-1] or seq[-1] == EOS or len(seq) == 4, seq
    res = ppl.infer(prog, method="smc", particles=32, seed=0)
    assert all(t.count("b") <= 1 and ("b" not in t or t.endswith("b")) for t in res.texts)
    with pytest.raises(TypeError, match="terminate_when"):
        ppl.steer(lm, "", terminate_when="b")
