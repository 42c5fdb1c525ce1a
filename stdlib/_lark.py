"""Lark grammars as exact constraints: a host-side incremental LALR checker + weighted rejection.

Each step, for every particle (one batched ``jax.pure_callback``), the next token is drawn
from the LM's distribution ``p`` by rejection: candidates are drawn from ``p`` with
replacement and checked with Lark's interactive LALR parser (is ``text + token`` still a
prefix of some sentence of the grammar? EOS: is ``text`` a complete sentence?). The first
accepted candidate ``x`` is distributed exactly as ``p`` restricted to the valid tokens. The
weight must be ``Z = Σ_{v valid} p(v)``; we use an unbiased estimate independent of ``x``:

* drawing until the second acceptance (``N`` draws, at most ``M``), ``Ẑ = 1 / (N - 1)`` — the
  inverse negative-binomial estimator, ``E[1/(N-1)] = Z`` for ``r = 2`` successes;
* if fewer than two acceptances occur in ``M`` draws, every token is checked, ``Z`` is then
  known exactly, and the weight ``Ẑ = Z / ((1 - Z) + M Z)`` makes the truncated estimator
  exactly unbiased: ``E[Ẑ] = Z (1 - (1-Z)^(M-1)) + P(N > M) · Z / ((1-Z) + M Z) = Z``.

A random but unbiased weight independent of the draw keeps IS/SMC exact (a random-weight /
pseudo-marginal argument), while the parser checks only a handful of tokens per step
(expected ``2 / Z`` draws, memoised).

Budget: the run ends after ``max_tokens`` tokens, and a text still unfinished then has zero
target mass. A token is therefore also rejected when the text after it cannot become a
sentence within the tokens left: `LarkChecker.distance` is a lower bound ``d(x)`` on the
characters any completion of ``x`` needs (from the LALR parser's stack and the partially
matched terminal), and each token spells at most ``L`` characters, so ``x`` needs at least
``ceil(d(x) / L)`` more tokens. With ``R`` tokens left after this one the token is kept iff
``ceil(d / L) <= R`` (iff the text is a complete sentence when ``R = 0``). Only tokens after
which *no* completion fits are removed, so ``Z`` becomes the mass of tokens that can still
finish and the weights stay exact for the target ``p_LM(x) 1[x ∈ L(G), |x| <= max_tokens]``,
the same as the device automata's ``within_budget``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from ppl.stdlib.base import BoundSampler, HostSampler

__all__ = ["LarkChecker", "TokenBudget", "rejection_step"]


_INF = float("inf")


class _TerminalDFA:
    """A terminal's character automaton (the engine of `ppl.stdlib._fa`).

    A terminal the engine cannot express (lookarounds, anchors, too many states) gets the
    *universal* automaton instead: every remainder may still be extended and costs nothing
    more, which keeps every bound built on it a lower bound.
    """

    def __init__(self, pattern: str):
        import bisect

        from ppl.stdlib import _fa as F
        from ppl.stdlib import _regex as R

        self._bisect = bisect.bisect_right
        try:
            R.validate(pattern)
            d = F.compile_dfa(R.to_node(pattern), max_states=2048, what="lark terminal")
        except Exception:  # outside our regex subset
            self.bounds, self.trans, self.start, self.accepting = [0], [[0], [1]], 1, [False, True]
            self.exact = False
            return
        self.bounds = [int(b) for b in np.asarray(d.bounds)[:-1]]
        self.trans = np.asarray(d.trans).tolist()
        self.start = int(d.start)
        self.accepting = [bool(a) for a in np.asarray(d.accepting)]
        self.exact = True

    def atom(self, ch: str) -> int:
        return self._bisect(self.bounds, ord(ch)) - 1

    def step(self, state: int, ch: str) -> int:
        return self.trans[state][self.atom(ch)]

    def last_atoms(self) -> set:
        """Atoms whose character can be a match's last character."""
        return {a for row in self.trans for a, s in enumerate(row) if s and self.accepting[s]}

    def distances(self, cost) -> list:
        """Each state's cheapest path to a match; ``cost(lo, hi)`` is the cheapest character
        of the code-point interval ``[lo, hi)`` (``inf``: none may occur)."""
        ends = self.bounds[1:] + [0x110000]
        ac = [cost(lo, hi) for lo, hi in zip(self.bounds, ends)]
        n = len(self.trans)
        dist = [0.0 if self.accepting[s] and s else _INF for s in range(n)]
        for _ in range(n):  # backward relaxation (costs are >= 0)
            changed = False
            for s in range(1, n):
                best = dist[s]
                for a, s2 in enumerate(self.trans[s]):
                    if s2 and ac[a] + dist[s2] < best:
                        best = ac[a] + dist[s2]
                if best < dist[s]:
                    dist[s], changed = best, True
            if not changed:
                break
        return dist


class _Completion:
    """Cheapest completion of a text prefix into a sentence: a lower bound from the LALR tables.

    Each character ``c`` has a cost ``w(c) >= 0`` (1: the bound counts characters; see
    `TokenBudget` for token costs). The pieces:

    * ``minlen(X)``: the cheapest string a symbol derives (terminals: the cheapest path
      through their automaton; rules: the least fixed point of ``minlen(A) = min over
      A -> X1..Xn of Σ minlen(Xi)``).
    * ``f(stack)``: the cheapest way from an LALR stack to acceptance. Any completion must at
      some point reduce a rule ``A -> α β`` that pops the top state, with ``α`` on the stack
      already: ``A -> α • β`` is a kernel item of the top state, consistent with the states
      below it. So ``f`` is a shortest path (Dijkstra) over configurations (depth, top state)
      whose edges are those kernel items, cost ``minlen(β)``, landing on
      ``goto(state below α, A)``. Lookaheads are ignored, which only lowers the bound.
    * the text's last terminal may be unfinished and, under maximal munch, may even start at
      an earlier token boundary (``"ab-"`` + ``"c"`` can lex as one terminal ``"ab-c"``):
      every boundary ``p`` of Lark's own lexing of the prefix (token starts, positions among
      ignored text, the position where lexing failed) and every terminal ``T`` the parser
      accepts there contributes ``dist_T(text[p:]) + f(stack_p after T)``.

    The minimum over these interpretations is at most the cost of any completion: the tokens
    of a finished text that end inside the prefix are exactly the tokens Lark lexes from the
    prefix itself (a regular-expression match that ends inside the prefix does not depend on
    what follows), so the finished text's first token that reaches past the prefix starts at
    one of those boundaries, in that boundary's parser state.
    """

    def __init__(self, lark_obj, start: str, dfas: dict, cost=None):
        cost = cost or (lambda lo, hi: 1.0)
        lalr = lark_obj.parser.parser  # ParsingFrontend -> LALR_Parser
        table = lalr._parse_table
        self.states = {s: dict(a) for s, a in table.states.items()}
        self.start_state = table.start_states[start]
        self.start_name = start
        self.end_state = table.end_states[start]
        rules = list(lalr.parser_conf.rules)
        nonterms = {r.origin.name for r in rules}
        self.ignore = set(lark_obj.lexer_conf.ignore)
        self.terms = dfas
        self.tdist = {name: d.distances(cost) for name, d in dfas.items()}
        minlen = {name: self.tdist[name][d.start] for name, d in dfas.items()}
        for r in rules:
            for x in r.expansion:
                if x.is_term:
                    minlen.setdefault(x.name, 0.0)  # declared without a pattern: no bound
        for a in nonterms:
            minlen[a] = _INF
        changed = True
        while changed:
            changed = False
            for r in rules:
                v = sum(minlen[x.name] for x in r.expansion)
                if v < minlen[r.origin.name]:
                    minlen[r.origin.name] = v
                    changed = True
        self.minlen = minlen
        self.start_len = minlen.get(start, _INF)
        # Rules as (origin, symbol names, minlen of each suffix); kernel items per state,
        # from "state s has a goto on A" <=> "A -> • γ is in the closure of s".
        self.rules = []
        by_origin: dict[str, list[int]] = {}
        for i, r in enumerate(rules):
            names = tuple(x.name for x in r.expansion)
            suffix = [0.0] * (len(names) + 1)
            for j in range(len(names) - 1, -1, -1):
                suffix[j] = suffix[j + 1] + minlen[names[j]]
            self.rules.append((r.origin.name, names, tuple(suffix)))
            by_origin.setdefault(r.origin.name, []).append(i)
        kernel: dict[int, set] = {s: set() for s in self.states}
        for s, acts in self.states.items():
            for a, (act, _) in acts.items():
                if a not in nonterms or act.name != "Shift":
                    continue
                for ri in by_origin.get(a, ()):
                    cur = s
                    for m, x in enumerate(self.rules[ri][1], start=1):
                        nxt = self.states[cur].get(x)
                        if nxt is None or nxt[0].name != "Shift":
                            break
                        cur = nxt[1]
                        kernel[cur].add((ri, m))
        self.kernel = {s: sorted(k) for s, k in kernel.items()}
        self.f = functools.lru_cache(maxsize=100_000)(self._f)
        self.feed = functools.lru_cache(maxsize=100_000)(self._feed)

    def _fits(self, stack, h: int, m: int, names, t) -> bool:
        """Whether a kernel item with ``m`` symbols ``names`` before the dot, in state ``t``
        on top of ``stack[:h]``, matches the stack: the symbols must be those of the states
        below the top (only the top state ``t`` is virtual)."""
        cur = stack[h - m]
        for j in range(m):
            cur = self._goto(cur, names[j])
            if cur != (t if j == m - 1 else stack[h - m + 1 + j]):
                return False
        return True

    def _goto(self, state, symbol):
        a = self.states[state].get(symbol)
        return a[1] if a is not None and a[0].name == "Shift" else None

    def _feed(self, stack: tuple, term: str):
        """The stack after the parser reads terminal ``term`` (None: a syntax error)."""
        st = list(stack)
        while True:
            a = self.states[st[-1]].get(term)
            if a is None:
                return None
            act, arg = a
            if act.name == "Shift":
                st.append(arg)
                return tuple(st)
            n = len(arg.expansion)
            if n:
                del st[-n:]
            g = self._goto(st[-1], arg.origin.name)
            if g is None:
                return None
            st.append(g)

    def _f(self, stack: tuple) -> float:
        """Lower bound on the cost from ``stack`` to acceptance (Dijkstra)."""
        import heapq

        if len(stack) == 1:
            return self.start_len
        heap = [(0.0, len(stack) - 1, stack[-1])]
        done = set()
        while heap:
            c, h, t = heapq.heappop(heap)
            if (h, t) in done:
                continue
            done.add((h, t))
            if h == 1 and t == self.end_state:
                return c
            for ri, m in self.kernel.get(t, ()):
                if m > h:
                    continue
                origin, names, suffix = self.rules[ri]
                base = stack[h - m]
                if not self._fits(stack, h, m, names, t):
                    continue
                g = self._goto(base, origin)
                nc = c + suffix[m]
                if g is not None and nc < _INF and (h - m + 1, g) not in done:
                    heapq.heappush(heap, (nc, h - m + 1, g))
        return _INF

    def interpretations(self, parser, text: str):
        """How the text's end may lie in a finished text: ``(end, partial)``. ``end`` is the
        parser stack when the whole text lexes into tokens the parser accepts (None if not);
        ``partial[T][s]`` the stacks before a terminal ``T`` that starts at a boundary and
        is still being matched at the end of the text, in automaton state ``s``."""
        import lark

        ip = parser.parse_interactive(text)
        ps = ip.parser_state
        gaps = []  # (first, last boundary position, parser stack there)
        lo, end = 0, None
        gen = ip.lexer_thread.lex(ps)
        while True:
            try:
                tok = next(gen)
            except StopIteration:
                end = tuple(ps.state_stack)
                gaps.append((lo, len(text), end))
                break
            except lark.exceptions.UnexpectedToken as e:  # only the root lexer matched here
                gaps.append((lo, int(getattr(e.token, "start_pos", lo) or lo), tuple(ps.state_stack)))
                break
            except lark.exceptions.UnexpectedInput as e:
                gaps.append((lo, int(getattr(e, "pos_in_stream", lo) or lo), tuple(ps.state_stack)))
                break
            gaps.append((lo, tok.start_pos, tuple(ps.state_stack)))
            try:
                ps.feed_token(tok)
            except lark.exceptions.UnexpectedInput:
                break
            lo = tok.end_pos
        n = len(text)
        partial: dict[str, dict[int, set]] = {}
        for name, term in self.terms.items():
            ignored = name in self.ignore
            starts: dict[int, list[int]] = {}
            for gi, (a, b, stack) in enumerate(gaps):
                if not ignored and name not in self.states[stack[-1]]:
                    continue
                for p in range(a, min(b, n - 1) + 1):
                    starts.setdefault(p, []).append(gi)
            if not starts:
                continue
            # One walk of the terminal's automaton per start, merged by automaton state.
            active: dict[int, set] = {}
            last = max(starts)
            for i in range(min(starts), n):
                if i in starts:
                    active.setdefault(term.start, set()).update(starts[i])
                nxt: dict[int, set] = {}
                ch = text[i]
                for s, gs in active.items():
                    s2 = term.step(s, ch)
                    if s2:
                        nxt.setdefault(s2, set()).update(gs)
                active = nxt
                if not active and i >= last:
                    break
            if active:
                partial[name] = {s: {gaps[gi][2] for gi in gs} for s, gs in active.items()}
        return end, partial

    def distance(self, interp) -> float:
        """The cheapest completion over the interpretations `interpretations` found."""
        end, partial = interp
        best = self.f(end) if end is not None else _INF
        for name, by_state in partial.items():
            ignored = name in self.ignore
            dist = self.tdist[name]
            for s, stacks in by_state.items():
                d = dist[s]
                if d >= best:
                    continue
                for stack in stacks:
                    if ignored:
                        rest = self.f(stack)
                    else:
                        after = self.feed(stack, name)
                        rest = _INF if after is None else self.f(after)
                    best = min(best, d + rest)
        return best


class _BreakBound:
    """Tokens needed to complete a text, from the token boundaries its completion forces.

    Characters fall into a few classes (each character of the grammar's literal terminals
    and each whitespace character on its own, everything else together). A boundary between
    consecutive characters of classes ``a, b`` is *forced* when no token of the vocabulary
    contains a character of class ``a`` directly followed by one of class ``b``; a
    completion's first character starts a token too. Every tokenization of a completion
    ``s`` then has at least ``B(s) = 1[s != ""] + #forced boundaries in s`` tokens.

    ``min_s B(s)`` is computed like `_Completion`'s distance, with min-plus matrices over
    classes in place of lengths: ``M_X[l][b]`` is the fewest forced boundaries of a string
    derived from ``X`` that follows a character of class ``l`` and ends with class ``b``
    (the class ``NONE`` = nothing yet). Ignored terminals may be inserted before any
    terminal (they can turn one forced boundary into two free ones), so each terminal's
    matrix is multiplied by the Kleene star of the ignored terminals' matrices.
    """

    def __init__(self, comp: _Completion, literal_chars: set, token_strings: Sequence[str]):
        self.comp = comp
        special = sorted(set(literal_chars) | set(" \t\r\n"))
        self.cls = {ch: i + 1 for i, ch in enumerate(special)}
        self.special = special
        k = len(special) + 1
        self.none = k
        size = k + 1
        pairs = np.ones((size, size))  # 1: forced boundary
        for s in token_strings:
            for x, y in zip(s, s[1:]):
                pairs[self.cls.get(x, 0), self.cls.get(y, 0)] = 0
        pairs[self.none, :] = 1  # the completion's first character starts a token
        pairs[:, self.none] = _INF
        self.brk = pairs
        self.size = size
        eye = np.full((size, size), _INF)
        np.fill_diagonal(eye, 0.0)
        self.eye = eye
        self.rem = {}  # (terminal, automaton state) -> row-vector costs from NONE
        term_m = {name: self._term_matrix(name, d.start) for name, d in comp.terms.items()}
        star = eye.copy()
        for _ in range(size + 1):  # Kleene star of the ignored terminals (min-plus)
            step = star
            for name in comp.ignore:
                if name in term_m:
                    step = np.minimum(step, self._mul(star, term_m[name]))
            if np.array_equal(step, star):
                break
            star = step
        self.star = star
        mats = {name: self._mul(star, m) for name, m in term_m.items()}
        nonterms = {origin for origin, _, _ in comp.rules}
        for r in comp.rules:
            for x in r[1]:
                if x not in mats and x not in nonterms:  # declared without a pattern
                    mats[x] = np.minimum(eye, np.zeros((size, size)))
        for a in nonterms:
            mats[a] = np.full((size, size), _INF)
        for _ in range(10_000):
            changed = False
            for origin, names, _ in comp.rules:
                m = eye
                for x in names:
                    m = self._mul(m, mats[x])
                new = np.minimum(mats[origin], m)
                if not np.array_equal(new, mats[origin]):
                    mats[origin], changed = new, True
            if not changed:
                break
        self.mats = mats
        self.suffix = []
        for origin, names, _ in comp.rules:
            suf = [eye] * (len(names) + 1)
            for j in range(len(names) - 1, -1, -1):
                suf[j] = self._mul(mats[names[j]], suf[j + 1])
            self.suffix.append(suf)
        self.f = functools.lru_cache(maxsize=100_000)(self._f)

    @staticmethod
    def _mul(a, b):
        return (a[:, :, None] + b[None, :, :]).min(axis=1)

    def _atom_classes(self, d: _TerminalDFA, atom: int) -> list:
        lo = d.bounds[atom]
        hi = d.bounds[atom + 1] if atom + 1 < len(d.bounds) else 0x110000
        inside = [self.cls[ch] for ch in self.special if lo <= ord(ch) < hi]
        return inside + ([0] if hi - lo > len(inside) else [])

    def _walk(self, name: str, state: int, l: int) -> np.ndarray:
        """Fewest forced boundaries from automaton ``state`` (after class ``l``) to a match,
        per last class (a Dijkstra over (state, last class))."""
        import heapq

        d = self.comp.terms[name]
        edges = getattr(d, "_class_edges", None)
        if edges is None:
            edges = [sorted({(c, s2) for a, s2 in enumerate(row) if s2
                             for c in self._atom_classes(d, a)}) for row in d.trans]
            d._class_edges = edges
        out = np.full(self.size, _INF)
        heap, done = [(0.0, state, l)], set()
        while heap:
            c, s, last = heapq.heappop(heap)
            if (s, last) in done:
                continue
            done.add((s, last))
            if d.accepting[s]:
                out[last] = min(out[last], c)
            for cl, s2 in edges[s]:
                nc = c + self.brk[last, cl]
                if (s2, cl) not in done:
                    heapq.heappush(heap, (nc, s2, cl))
        return out

    def _term_matrix(self, name: str, state: int) -> np.ndarray:
        return np.stack([self._walk(name, state, l) for l in range(self.size)])

    def _f(self, stack: tuple, l: int) -> float:
        import heapq

        comp = self.comp
        if len(stack) == 1:
            m = self.mats.get(comp.start_name)
            return _INF if m is None else float(m[l].min())
        heap = [(0.0, len(stack) - 1, stack[-1], l)]
        done = set()
        while heap:
            c, h, t, last = heapq.heappop(heap)
            if (h, t, last) in done:
                continue
            done.add((h, t, last))
            if h == 1 and t == comp.end_state:
                return c
            for ri, m in comp.kernel.get(t, ()):
                if m > h:
                    continue
                origin, names, _ = comp.rules[ri]
                base = stack[h - m]
                g = comp._goto(base, origin) if comp._fits(stack, h, m, names, t) else None
                if g is None:
                    continue
                row = self.suffix[ri][m][last]
                for b in np.nonzero(row < _INF)[0]:
                    key = (h - m + 1, g, int(b))
                    if key not in done:
                        heapq.heappush(heap, (c + float(row[b]), *key))
        return _INF

    def tokens(self, interp) -> float:
        """Fewest tokens any completion needs (a lower bound), over the interpretations."""
        end, partial = interp
        best = self.f(end, self.none) if end is not None else _INF
        comp = self.comp
        for name, by_state in partial.items():
            ignored = name in comp.ignore
            for s, stacks in by_state.items():
                key = (name, s)
                if key not in self.rem:
                    self.rem[key] = self._walk(name, s, self.none)
                row = self.rem[key]
                for b in np.nonzero(row < best)[0]:
                    for stack in stacks:
                        after = stack if ignored else comp.feed(stack, name)
                        if after is not None:
                            best = min(best, float(row[b]) + self.f(after, int(b)))
        return best


class TokenBudget:
    """Whether a text can still become a sentence within a number of tokens of one vocabulary.

    A completion spelled by ``k`` tokens costs at most ``k`` when each character ``c`` costs
    ``w(c) = 1 / M(c)``, ``M(c)`` the length of the longest token that contains ``c``
    (a token ``u`` then costs ``Σ_{c in u} w(c) <= Σ 1/len(u) = 1``; a character no token
    contains costs ``inf``). So `_Completion`'s cheapest completion under ``w``, ``D(x)``,
    bounds the tokens any completion of ``x`` needs from below: ``D(x) <= k``. Newlines and
    punctuation, which most vocabularies spell in short tokens only, count nearly a whole
    token each; letters count ``1 / 14`` of one on a vocabulary whose longest word has 14.

    With no tokens left the text must be a sentence; with one left, one of the vocabulary's
    tokens that can end a sentence (its last character can end the grammar's last terminal,
    or an ignored one) must complete it, checked exactly when there are few such tokens.

    Args:
        checker: the grammar's [LarkChecker][ppl.stdlib._lark.LarkChecker].
        token_strings: the vocabulary's token texts.
        special: ``bool[V]``, tokens that never occur inside text (EOS included).
        max_finishers: above this many sentence-ending tokens, one token left uses the
            bound ``D(x) <= 1`` instead of the exact check.
    """

    def __init__(self, checker: "LarkChecker", token_strings: Sequence[str], special,
                 max_finishers: int = 256):
        import bisect

        self.checker = checker
        longest: dict[str, int] = {}
        texts = [s for s, sp in zip(token_strings, special) if not sp and s]
        for s in texts:
            for ch in set(s):
                if len(s) > longest.get(ch, 0):
                    longest[ch] = len(s)
        codes = sorted(ord(c) for c in longest)
        weights = [1.0 / longest[chr(c)] for c in codes]

        def cost(lo: int, hi: int) -> float:
            i, j = bisect.bisect_left(codes, lo), bisect.bisect_left(codes, hi)
            return min(weights[i:j], default=_INF)

        self.completion = None
        if checker._completion is not None:
            try:
                self.completion = _Completion(checker.parser, checker.start, checker._dfas, cost)
            except Exception:  # pragma: no cover - a table shape we cannot read
                self.completion = None
        self.breaks = None
        if checker._completion is not None:
            try:
                self.breaks = _BreakBound(checker._completion, checker._literal_chars, texts)
            except Exception:  # pragma: no cover - a table shape we cannot read
                self.breaks = None
        ends = checker.ends_sentence
        self.finishers = sorted({s for s in texts if ends(s[-1])}, key=len)
        self.exact_last = len(self.finishers) <= max_finishers
        self.tokens_lower_bound = functools.lru_cache(maxsize=200_000)(self._bound)

    def _bound(self, text: str) -> float:
        if self.completion is None:
            return 0.0
        interp = self.checker.interpretations(text)
        bound = self.completion.distance(interp)
        if self.breaks is not None and bound < _INF:
            bound = max(bound, self.breaks.tokens(interp))
        return bound

    def allows(self, text: str, tokens_left: int) -> bool:
        """False only when no completion of ``text`` within ``tokens_left`` tokens exists."""
        c = self.checker
        if tokens_left <= 0:
            return c.complete(text)
        if tokens_left == 1 and self.exact_last:
            return c.complete(text) or any(c.complete(text + u) for u in self.finishers)
        # 1e-6: D is a sum of float reciprocals; its rounding must not mask a finishable text.
        return self.tokens_lower_bound(text) <= tokens_left + 1e-6


class LarkChecker:
    """Prefix and sentence checks for a Lark grammar (LALR, contextual lexer).

    Raises:
        ValueError: the grammar does not parse or is not LALR(1), naming the problem and its
            line/column.
    """

    def __init__(self, grammar: str, start: str = "start"):
        import lark
        import regex

        self._regex = regex
        try:
            self.parser = lark.Lark(grammar, parser="lalr", start=start, lexer="contextual")
        except lark.exceptions.GrammarError as e:
            raise ValueError(f"Invalid Lark grammar: {e}") from None
        except lark.exceptions.UnexpectedInput as e:
            raise ValueError(
                f"Invalid Lark grammar at line {getattr(e, 'line', '?')}, column "
                f"{getattr(e, 'column', '?')}: {str(e).strip().splitlines()[0]}"
            ) from None
        except Exception as e:  # lark raises several types for grammar problems
            raise ValueError(f"Invalid Lark grammar: {type(e).__name__}: {e}") from None
        self._patterns = {
            t.name: regex.compile(t.pattern.to_regexp()) for t in self.parser.terminals
        }
        self.valid_prefix = functools.lru_cache(maxsize=200_000)(self._valid_prefix)
        self.complete = functools.lru_cache(maxsize=50_000)(self._complete)
        self.start = start
        try:
            self._dfas = {t.name: _TerminalDFA(t.pattern.to_regexp()) for t in self.parser.terminals}
            self._completion = _Completion(self.parser, start, self._dfas)
            self._literal_chars = {ch for t in self.parser.terminals
                                   if type(t.pattern).__name__ == "PatternStr" for ch in t.pattern.value}
            self._last = self._last_atoms()
        except Exception:  # a Lark version whose tables we cannot read: no budget pruning
            self._completion, self._last = None, None
        self.distance = functools.lru_cache(maxsize=200_000)(self._distance)
        self.interpretations = functools.lru_cache(maxsize=4096)(
            lambda text: self._completion.interpretations(self.parser, text))

    def _distance(self, text: str) -> float:
        """A lower bound on the characters any completion of ``text`` into a sentence needs
        (see `_Completion`): 0 when ``text`` is a sentence, ``inf`` when no completion exists.
        Never above the true fewest-characters completion, so a mask built on it removes only
        texts that cannot finish."""
        if self._completion is None:
            return 0.0
        return self._completion.distance(self.interpretations(text))

    def _last_atoms(self):
        """Per terminal that can end a sentence (a last terminal of the start rule, or an
        ignored one), the automaton atoms its last character may come from; None: unknown."""
        comp = self._completion
        nonterms = {origin for origin, _, _ in comp.rules}
        last: dict[str, set] = {a: set() for a in nonterms}
        changed = True
        while changed:  # Last(A) ⊇ Last(Xk) for A -> X1..Xn with Xk+1..Xn nullable
            changed = False
            for origin, names, _ in comp.rules:
                acc, before = last[origin], len(last[origin])
                for x in reversed(names):
                    acc |= last[x] if x in nonterms else {x}
                    if comp.minlen[x] > 0:
                        break
                changed |= len(acc) != before
        ends = last.get(self.start, set()) | set(comp.ignore)
        if any(t not in self._dfas for t in ends):
            return None  # a terminal without a pattern may end the text
        return {t: self._dfas[t].last_atoms() for t in ends}

    def ends_sentence(self, ch: str) -> bool:
        """Whether a sentence may end with the character ``ch`` (a necessary condition)."""
        if self._last is None:
            return True
        return any(self._dfas[t].atom(ch) in atoms for t, atoms in self._last.items())

    def _partial_ok(self, rest: str, names) -> bool:
        return any(
            name in self._patterns and self._patterns[name].fullmatch(rest, partial=True)
            for name in names
        )

    def _valid_prefix(self, text: str) -> bool:
        import lark

        ip = self.parser.parse_interactive(text)
        history = []  # (start position, parser state before the token)
        try:
            for tok in ip.iter_parse():
                # Only the last entry is read, and only for `accepts()` (which runs without
                # callbacks): a shallow copy, not a deep copy of the trees built so far (that
                # made each check quadratic in the text's length).
                history[:] = [(tok.start_pos, ip.copy(deepcopy_values=False))]
        except lark.exceptions.UnexpectedCharacters as e:
            pos = e.pos_in_stream
            if self._partial_ok(text[pos:], ip.accepts()):
                return True
            # The last complete token may be the start of a longer terminal ("1e" of "1e5").
            if history:
                start, before = history[-1]
                return self._partial_ok(text[start:], before.accepts())
            return False
        except lark.exceptions.UnexpectedToken as e:
            # Only the final token may still become a different terminal (a keyword prefix).
            start = getattr(e.token, "start_pos", None)
            if start is not None and self._partial_ok(text[start:], ip.accepts()):
                return True
            if history:
                start, before = history[-1]
                return self._partial_ok(text[start:], before.accepts())
            return False
        except lark.exceptions.UnexpectedInput:
            return False
        return True

    def _complete(self, text: str) -> bool:
        import lark

        try:
            self.parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False


def rejection_step(checker: LarkChecker, token_strings: Sequence[str], eos: int, special: np.ndarray,
                   prefix: str, logprobs: np.ndarray, rng: np.random.Generator, max_draws: int,
                   tokens_left: int | None = None, budget: "TokenBudget | None" = None):
    """One exact weighted-rejection draw. Returns ``(token, log Ẑ)``; ``log Ẑ = -inf`` when no
    token is valid.

    A text token ``t`` is valid when ``prefix + t`` is a prefix of a sentence and, given
    ``tokens_left`` (the tokens the budget allows after ``t``; None: unlimited), can still
    become one within them (`TokenBudget.allows`); EOS when ``prefix`` is a sentence."""
    p = np.exp(logprobs.astype(np.float64) - np.max(logprobs))
    p /= p.sum()
    cdf = np.cumsum(p)

    def valid(t: int) -> bool:
        if t == eos:
            return checker.complete(prefix)
        if special[t]:
            return False
        text = prefix + token_strings[t]
        if not checker.valid_prefix(text):
            return False
        return tokens_left is None or budget is None or budget.allows(text, tokens_left)

    first, draws = None, 0
    for draws in range(1, max_draws + 1):
        t = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))
        if p[t] <= 0 or not valid(t):
            continue
        if first is None:
            first = t
        else:
            return first, -float(np.log(draws - 1))
    # Fewer than two acceptances in max_draws: check every token with positive mass.
    mask = np.zeros(len(p), bool)
    for t in np.nonzero(p > 0)[0]:
        mask[t] = valid(int(t))
    z = float(p[mask].sum())
    if z <= 0:
        return eos, -np.inf
    if first is None:
        q = np.where(mask, p, 0.0)
        first = int(min(np.searchsorted(np.cumsum(q), rng.random() * z, side="right"), len(p) - 1))
    m = max_draws
    return first, float(np.log(z) - np.log((1.0 - z) + m * z))


class LarkConstraint(HostSampler):
    """``lark(grammar)``: the final text is a sentence of the Lark grammar (exact).

    Enforced token by token by `rejection_step` on the host (one batched
    ``pure_callback`` per step), and checked again on the finished text. Tokens after which
    the text cannot become a sentence within the program's remaining ``max_tokens`` are
    rejected as well (`TokenBudget`), so grammars with unbounded terminals (``/./+``) finish
    instead of running every particle out of tokens; the target stays exact.

    Args:
        grammar: Lark grammar text (LALR(1)-compatible).
        start: the start rule.
        max_draws: rejection draws per particle per step before checking every token.
    """

    def __init__(self, grammar: str, start: str = "start", max_draws: int = 64):
        self.checker = LarkChecker(grammar, start)
        self.grammar = grammar
        self.name = f"lark({start})"
        self.max_draws = int(max_draws)

    def check(self, text: str) -> bool:
        return self.checker.complete(text)

    def bind(self, vocab):
        """Host tables for a vocabulary (token strings, special ids)."""
        special = ~vocab.text_mask()
        special[vocab.eos_token_id] = False
        return _BoundLark(self, list(vocab.token_strings), vocab.eos_token_id, special)


class _BoundLark(BoundSampler):
    def __init__(self, c: LarkConstraint, strings, eos, special):
        self.c, self.strings, self.eos, self.special = c, strings, eos, special
        self.name = c.name
        text_special = special.copy()
        text_special[eos] = True  # EOS spells no text
        self.budget = TokenBudget(c.checker, strings, text_special)

    def check(self, text: str) -> bool:
        return self.c.check(text)

    def sample(self, ctx, logprobs):
        """Draws the next token for this particle; returns ``(token, log Ẑ)`` (traced)."""
        import jax
        import jax.numpy as jnp

        from ppl._host import host_map

        seed = jax.random.bits(ctx.key(), dtype=jnp.uint32)
        strings, eos, special, c = self.strings, self.eos, self.special, self.c
        max_tokens, budget = int(ctx.max_tokens), self.budget

        def row(tokens, length, lps, seed, active):
            if not active:
                return eos, 0.0
            prefix = "".join(strings[int(t)] for t in tokens[: int(length)])
            # Tokens the budget allows after this one (0: this is the last).
            left = max_tokens - int(length) - 1 if max_tokens > 0 else None
            return rejection_step(c.checker, strings, eos, special, prefix, lps,
                                  np.random.default_rng(int(seed)), c.max_draws,
                                  tokens_left=left, budget=budget)

        return host_map(row, (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32)),
                        ctx.tokens, ctx.length, logprobs, seed, ctx.active)
