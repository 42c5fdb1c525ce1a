"""C.stop: the text ends at the stop string, with no EOS drawn afterwards (generate's stop).

With ``require=False`` every token sequence of the process "generate until EOS, a stop
string or the budget" is accepted, so the target is a proper distribution: ``Z = 1`` and a
text ending at the stop string has probability ``p_LM(text as a prefix)``, without a
``p(EOS | text)`` factor.
"""

import math

import numpy as np
import pytest

import ppl
from ppl.stdlib import constraints as C
from ppl.testing import enumerate_posterior, evidence_discrepancy, posterior_discrepancies, replicate


def _lm():
    rng = np.random.default_rng(2)
    init, trans = rng.normal(size=4), rng.normal(size=(4, 4))
    return ppl.models.NGramLM(init, trans, eos_token_id=3, token_strings=["a", "b", ".", ""]), init, trans


def _logsoftmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def test_text_ends_at_stop_string_exactly():
    lm, init, trans = _lm()
    prog = ppl.steer(lm, "", constraints=[C.stop(".")], max_tokens=3)
    exact = enumerate_posterior(prog)
    assert exact.log_evidence == pytest.approx(0.0, abs=1e-5)
    # "a." : p(a) p(. | a), no EOS factor
    want = math.exp(_logsoftmax(init)[0] + _logsoftmax(trans[0])[2])
    assert exact.posterior["a."] == pytest.approx(want, rel=1e-4)
    # nothing after the stop string
    assert not any("." in t[:-1] for t in exact.posterior)
    results = replicate(prog, "smc", 300, range(8))
    for r in results:
        assert all(C.stop(".").check(t) for t in r.texts)
    assert not posterior_discrepancies(results, exact)
    assert evidence_discrepancy(results, exact) is None


def test_stop_beside_other_constraints():
    lm, init, trans = _lm()
    cons = [C.regex(r"[ab]*\.?"), C.max_chars(2), C.stop(".")]
    prog = ppl.steer(lm, "", constraints=cons, max_tokens=3)
    assert sum(a.halts for a in prog.automata) == 1 and len(prog.automata) == 2
    exact = enumerate_posterior(prog)
    results = replicate(prog, "smc", 300, range(6))
    assert not posterior_discrepancies(results, exact)
    want = math.exp(_logsoftmax(init)[1] + _logsoftmax(trans[1])[2])  # "b."
    assert exact.posterior["b."] == pytest.approx(want / math.exp(exact.log_evidence), rel=1e-4)


def test_stop_inside_all_of_still_halts():
    lm, init, trans = _lm()
    prog = ppl.steer(lm, "", constraints=[C.all_of(C.max_chars(3), C.stop("."))], max_tokens=3)
    assert [a.halts for a in prog.automata] == [False, True]
    exact = enumerate_posterior(prog)
    want = math.exp(_logsoftmax(init)[0] + _logsoftmax(trans[0])[2])
    assert exact.log_evidence == pytest.approx(0.0, abs=1e-5)
    assert exact.posterior["a."] == pytest.approx(want, rel=1e-4)
