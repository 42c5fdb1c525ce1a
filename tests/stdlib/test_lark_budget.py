"""Budget-aware Lark sampling: the completion bounds never exceed the truth (brute force on
small grammars), tokens that cannot finish within the budget are masked, and Lark's own
unbounded-terminal examples finish on the embedded model."""

import itertools

import numpy as np
import pytest

import ppl
from ppl.stdlib._lark import LarkChecker, LarkConstraint, TokenBudget, rejection_step
from tests.stdlib.lark_examples import CONF, CSV

ARITH = r"""
start: expr
?expr: expr "+" term | term
?term: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""
# Ignored spaces, a keyword-like literal next to a regex terminal, overlapping terminals
# told apart by the contextual lexer.
STMTS = r"""
start: stmt+
stmt: "(" NAME ")" | NAME "=" NUM ";"
NAME: /a+/
NUM: /(aa)+/
%ignore " "
"""


def _true_distances(checker, alphabet, max_len):
    """Fewest characters to a sentence for every prefix of a sentence of length <= max_len
    (exact for those prefixes: every completion within the limit is enumerated)."""
    best = {}
    for n in range(max_len + 1):
        for chars in itertools.product(alphabet, repeat=n):
            y = "".join(chars)
            if checker.complete(y):
                for i in range(n + 1):
                    x = y[:i]
                    best[x] = min(best.get(x, n), n - i)
    return best


@pytest.mark.parametrize("grammar,alphabet,max_len", [(ARITH, "1+()", 7), (STMTS, "(a)=; ", 6)])
def test_character_bound_never_exceeds_the_shortest_completion(grammar, alphabet, max_len):
    checker = LarkChecker(grammar)
    truth = _true_distances(checker, alphabet, max_len)
    assert len(truth) > 50
    over = {x: (checker.distance(x), d) for x, d in truth.items() if checker.distance(x) > d}
    assert not over, over
    assert all(checker.valid_prefix(x) for x in truth)  # the sampler checks both
    # Not vacuous: the bound is exact on most prefixes, and is large where it should be.
    exact = sum(checker.distance(x) == d for x, d in truth.items())
    assert exact >= 0.9 * len(truth)
    assert max(checker.distance(x) for x in truth) >= 3
    # Prefixes with no completion at all get inf (a sample of dead prefixes).
    assert checker.distance("1)") == float("inf") and checker.distance("") > 0


def test_token_bound_never_masks_a_prefix_that_finishes_in_budget():
    """Every split of every token sentence of <= 4 tokens: the text before the split must be
    allowed with the tokens after it (brute force over the token vocabulary)."""
    checker = LarkChecker(STMTS)
    vocab = ["(", "a", "aa", ")", "=", ";", " ", "aa;", ";(", "a =aa;", "a)", "=a"]
    budget = TokenBudget(checker, vocab, np.zeros(len(vocab), bool))
    seen, masked = 0, 0
    shortest = {}
    for k in range(5):
        for seq in itertools.product(vocab, repeat=k):
            if not checker.complete("".join(seq)):
                continue
            for i in range(k + 1):
                x = "".join(seq[:i])
                shortest[x] = min(shortest.get(x, k), k - i)
    for x, need in shortest.items():
        seen += 1
        assert budget.tokens_lower_bound(x) <= need + 1e-9, (x, need)
        for left in range(need, 5):
            assert budget.allows(x, left), (x, left, need)
        masked += sum(not budget.allows(x, left) for left in range(need))
    assert seen > 50 and masked > 20  # the bound does remove prefixes that cannot finish


def test_rejection_masks_tokens_that_cannot_finish_in_budget():
    """With one token left after this one, "(" (then "1)") is kept, "((" and "+" are not; with
    none left only a complete sentence. E[Ẑ] is the kept mass (MC, 1e-4 false-failure rate)."""
    checker = LarkChecker(ARITH)
    strings = ["1", "(", "((", "+", "1)", ""]
    special = np.array([False] * 5 + [True])
    budget = TokenBudget(checker, strings, special)
    p = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.1])
    lp = np.log(p)
    rng = np.random.default_rng(1)
    for left, kept in [(1, {0, 1}), (0, {0}), (None, {0, 1, 2})]:
        draws = [rejection_step(checker, strings, 5, special, "", lp, rng, 8, tokens_left=left,
                                budget=budget) for _ in range(4000)]
        toks = {d[0] for d in draws}
        assert toks == kept, (left, toks)
        w = np.exp([d[1] for d in draws])
        z = p[sorted(kept)].sum()
        assert abs(w.mean() - z) < 3.89 * w.std() / np.sqrt(len(w)) + 1e-12, (left, w.mean(), z)
    # "((" needs "1)" ")": two tokens of this vocabulary, not one.
    assert not budget.allows("((", 1) and budget.allows("((", 2)


def _parses(grammar, text):
    import lark

    try:
        lark.Lark(grammar, parser="earley").parse(text)  # a fresh parser, not the checker's
    except lark.exceptions.LarkError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name,grammar,prompt", [("conf", CONF, "A configuration file:\n"),
                                                 ("csv", CSV, "A table:\n")])
def test_unbounded_terminal_examples_finish_on_tiny(name, grammar, prompt):
    """Lark's conf and CSV examples, 8 particles, 48 tokens: without the budget every particle
    ran out of tokens inside an unbounded terminal (InferenceError)."""
    lm = ppl.models.load("tiny")
    prog = ppl.steer(lm, prompt, constraints=[LarkConstraint(grammar)], max_tokens=48)
    r = ppl.infer(prog, "smc", particles=8, seed=0)
    assert len(r.texts) == 8
    bad = [t for t in r.texts if not _parses(grammar, t)]
    assert not bad, bad


def test_terminal_outside_the_regex_subset_counts_as_free():
    """A lookahead terminal gets the universal automaton: the bound stays a lower bound."""
    grammar = r"""
start: WORD ";"
WORD: /a(?=a)a|b/
"""
    checker = LarkChecker(grammar)
    assert not checker._dfas["WORD"].exact and checker._dfas["SEMICOLON"].exact
    truth = _true_distances(checker, "ab;", 4)
    assert truth and all(checker.distance(x) <= d for x, d in truth.items())
