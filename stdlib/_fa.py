"""Character automata over code-point intervals: the algebra every text constraint compiles to.

A *language* is described by a small expression tree (`Node`): character sets (sorted
disjoint code-point intervals), concatenation, union, Kleene star, counted repetition,
intersection and complement. `compile_dfa` turns a tree into a minimal
deterministic automaton over *atoms* (maximal code-point intervals on which every transition
agrees), and `to_byte_dfa` expands that into a DFA over UTF-8 bytes, which the shared
lifter (`ppl.stdlib._automata`) turns into token tables.

Why our own engine: intersection and complement (JSON Schema ``allOf``/``not``/``oneOf``),
exact Unicode classes, and a state bound checked while the automaton is built (a pattern such
as ``(a|b)*a(a|b){22}`` refuses after ``max_states`` states instead of building millions).

Surrogates (U+D800..U+DFFF) are never part of any language: they cannot occur in UTF-8.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Iterable, Sequence

import numpy as np

from ppl.stdlib._automata import ByteDFA

__all__ = ["CharSet", "Node", "CharDFA", "compile_dfa", "to_byte_dfa", "TooManyStates",
           "lit", "cat", "alt", "star", "rep", "opt", "inter", "neg", "EPS", "EMPTY", "ANY",
           "plus", "from_dfa", "DEFAULT_MAX_STATES"]

MAX_CP = 0x10FFFF
SURR = (0xD800, 0xDFFF)
#: Default bound on the states of one character automaton (each becomes one or more rows of
#: an ``int32[S, V]`` token table: 4096 states x 50k tokens is 800 MiB).
DEFAULT_MAX_STATES = 4096
#: the automaton under construction (before minimisation) may have this many times more
BUILD_FACTOR = 4


class TooManyStates(ValueError):
    """The automaton would exceed its state bound (raised while it is being built)."""


# ---- character sets ----------------------------------------------------------------------


def _norm(ivs: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(ivs):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    # drop surrogates
    res = []
    for lo, hi in out:
        if hi < SURR[0] or lo > SURR[1]:
            res.append((lo, hi))
        else:
            if lo < SURR[0]:
                res.append((lo, SURR[0] - 1))
            if hi > SURR[1]:
                res.append((SURR[1] + 1, hi))
    return tuple(res)


class CharSet:
    """An immutable set of code points as sorted disjoint closed intervals (no surrogates)."""

    __slots__ = ("ivs", "_h")

    def __init__(self, ivs: Iterable[tuple[int, int]] = ()):
        self.ivs = _norm(ivs)
        self._h = hash(self.ivs)

    @staticmethod
    def of(chars: str) -> "CharSet":
        return CharSet((ord(c), ord(c)) for c in chars)

    @staticmethod
    def range(lo: str | int, hi: str | int) -> "CharSet":
        lo = ord(lo) if isinstance(lo, str) else lo
        hi = ord(hi) if isinstance(hi, str) else hi
        return CharSet([(lo, hi)])

    def __or__(self, o: "CharSet") -> "CharSet":
        return CharSet(self.ivs + o.ivs)

    def complement(self) -> "CharSet":
        out, prev = [], 0
        for lo, hi in self.ivs:
            if lo > prev:
                out.append((prev, lo - 1))
            prev = hi + 1
        if prev <= MAX_CP:
            out.append((prev, MAX_CP))
        return CharSet(out)

    def __and__(self, o: "CharSet") -> "CharSet":
        return (self.complement() | o.complement()).complement()

    def __sub__(self, o: "CharSet") -> "CharSet":
        return self & o.complement()

    def __contains__(self, cp: int) -> bool:
        i = bisect.bisect_right(self.ivs, (cp, MAX_CP + 1)) - 1
        return i >= 0 and self.ivs[i][0] <= cp <= self.ivs[i][1]

    def __bool__(self) -> bool:
        return bool(self.ivs)

    def __eq__(self, o) -> bool:
        return isinstance(o, CharSet) and self.ivs == o.ivs

    def __hash__(self) -> int:
        return self._h

    def __repr__(self) -> str:
        return f"CharSet({list(self.ivs)[:6]}{'...' if len(self.ivs) > 6 else ''})"


ALL_CHARS = CharSet([(0, MAX_CP)])

# ---- expression trees --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of a language expression (build with the helper functions below)."""

    op: str  # 'set', 'cat', 'alt', 'star', 'rep', 'and', 'not', 'eps', 'empty', 'dfa'
    args: tuple = ()


EPS = Node("eps")
EMPTY = Node("empty")
ANY = Node("set", (ALL_CHARS,))


def lit(s: str) -> Node:
    return cat(*[Node("set", (CharSet.of(c),)) for c in s]) if s else EPS


def cset(cs: CharSet) -> Node:
    return Node("set", (cs,)) if cs else EMPTY


def cat(*parts: Node) -> Node:
    flat = []
    for p in parts:
        if p.op == "empty":
            return EMPTY
        if p.op == "eps":
            continue
        flat.extend(p.args if p.op == "cat" else (p,))
    if not flat:
        return EPS
    return flat[0] if len(flat) == 1 else Node("cat", tuple(flat))


def alt(*parts: Node) -> Node:
    flat: list[Node] = []
    for p in parts:
        if p.op == "empty":
            continue
        for q in (p.args if p.op == "alt" else (p,)):
            if q not in flat:
                flat.append(q)
    if not flat:
        return EMPTY
    return flat[0] if len(flat) == 1 else Node("alt", tuple(flat))


def star(p: Node) -> Node:
    if p.op in ("empty", "eps"):
        return EPS
    return p if p.op == "star" else Node("star", (p,))


def plus(p: Node) -> Node:
    return cat(p, star(p))


def opt(p: Node) -> Node:
    return alt(EPS, p)


def rep(p: Node, lo: int, hi: int | None) -> Node:
    """``p{lo,hi}`` (``hi=None``: unbounded)."""
    if hi is not None and hi < lo:
        return EMPTY
    if p.op == "eps" or hi == 0:
        return EPS
    if p.op == "empty":
        return EPS if lo == 0 else EMPTY
    if lo == 0 and hi is None:
        return star(p)
    if lo == hi == 1:
        return p
    return Node("rep", (p, lo, hi))


def inter(*parts: Node) -> Node:
    if any(p.op == "empty" for p in parts):
        return EMPTY
    uniq = tuple(dict.fromkeys(parts))
    return uniq[0] if len(uniq) == 1 else Node("and", uniq)


def neg(p: Node) -> Node:
    """Complement within all strings of (non-surrogate) code points."""
    return Node("not", (p,))


def from_dfa(d: "CharDFA") -> Node:
    return Node("dfa", (d,))


# ---- DFAs over atoms ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CharDFA:
    """A DFA over code points: atom ``a`` covers ``[bounds[a], bounds[a+1] - 1]``.

    Attributes:
        bounds: ``int64[A + 1]``, ``bounds[0] == 0`` and ``bounds[A] == MAX_CP + 1``.
        trans: ``int32[S, A]``; state 0 is dead.
        accepting: ``bool[S]``.
        start: the initial state.
    """

    bounds: np.ndarray
    trans: np.ndarray
    accepting: np.ndarray
    start: int

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])

    def atom_of(self, cp: int) -> int:
        return int(np.searchsorted(self.bounds, cp, side="right") - 1)

    def accepts(self, text: str) -> bool:
        s = self.start
        for ch in text:
            cp = ord(ch)
            if SURR[0] <= cp <= SURR[1]:
                return False
            s = int(self.trans[s, self.atom_of(cp)])
            if s == 0:
                return False
        return bool(self.accepting[s])

    def is_empty(self) -> bool:
        return not self.accepting.any()

    def refine(self, bounds: np.ndarray) -> np.ndarray:
        """The transition table over a finer atom partition ``bounds`` (a superset)."""
        idx = np.searchsorted(self.bounds, bounds[:-1], side="right") - 1
        return self.trans[:, idx]


def _merge_bounds(*bs: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate(bs))


def _bounds_of_sets(sets: Iterable[CharSet]) -> np.ndarray:
    pts = {0, MAX_CP + 1}
    for cs in sets:
        for lo, hi in cs.ivs:
            pts.add(lo)
            pts.add(hi + 1)
    return np.asarray(sorted(pts), np.int64)


def _too_many(what: str, n: int, hint: str) -> TooManyStates:
    return TooManyStates(
        f"{what}: the automaton needs more than {n} states (max_states={n}); {hint}"
    )


_HINT = ("shorten counted repeats ({m,n}, maxLength, maxItems), avoid a fixed-distance "
         "character test after a star such as (a|b)*a(a|b){22}, or pass a larger max_states=")


class _NFA:
    def __init__(self):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[CharSet, int]]] = []
        self.budget = 0

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        if len(self.eps) > self.budget:
            raise TooManyStates("nfa")
        return len(self.eps) - 1


def _build(nfa: _NFA, n: Node, max_states: int, what: str) -> tuple[int, int]:
    """Thompson fragment (start, end) of ``n``."""
    op = n.op
    if op == "eps":
        s = nfa.new()
        return s, s
    if op == "empty":
        return nfa.new(), nfa.new()
    if op == "set":
        s, e = nfa.new(), nfa.new()
        nfa.edges[s].append((n.args[0], e))
        return s, e
    if op == "cat":
        s, e = _build(nfa, n.args[0], max_states, what)
        for p in n.args[1:]:
            s2, e2 = _build(nfa, p, max_states, what)
            nfa.eps[e].append(s2)
            e = e2
        return s, e
    if op == "alt":
        s, e = nfa.new(), nfa.new()
        for p in n.args:
            s2, e2 = _build(nfa, p, max_states, what)
            nfa.eps[s].append(s2)
            nfa.eps[e2].append(e)
        return s, e
    if op == "star":
        s = nfa.new()
        s2, e2 = _build(nfa, n.args[0], max_states, what)
        nfa.eps[s].append(s2)
        nfa.eps[e2].append(s)
        return s, s
    if op == "rep":
        p, lo, hi = n.args
        if lo == 0 and hi is None:
            return _build(nfa, star(p), max_states, what)
        s = cur = nfa.new()
        for _ in range(lo):
            s2, e2 = _build(nfa, p, max_states, what)
            nfa.eps[cur].append(s2)
            cur = e2
        if hi is None:
            s2, e2 = _build(nfa, star(p), max_states, what)
            nfa.eps[cur].append(s2)
            return s, e2
        end = nfa.new()
        for _ in range(hi - lo):
            s2, e2 = _build(nfa, p, max_states, what)
            nfa.eps[cur] += [s2, end]
            cur = e2
        nfa.eps[cur].append(end)
        return s, end
    if op in ("and", "not", "dfa"):
        d = _dfa_leaf(n, max_states, what)
        return _embed(nfa, d)
    if op == "list":
        return _build_list(nfa, n, max_states, what)
    raise AssertionError(op)


def list_of(open_: str, close: str, elems, delta, accept, start, sep: Node,
            ws: Node = None) -> Node:
    """``open e1 sep e2 sep ... close`` where the sequence of element kinds is accepted by the
    automaton ``delta(q, kind) -> q' | None`` (kinds index ``elems``), ``accept(q)``, from
    ``start`` (abstract states are any hashable values, explored when compiled)."""
    return Node("list", (open_, close, tuple(elems), delta, accept, start, sep, ws or EPS))


def _build_list(nfa: _NFA, n: Node, max_states: int, what: str) -> tuple[int, int]:
    o, c, elems, delta, accept, start, sep, ws = n.args
    ids = {start: 0}
    order = [start]
    edges = []
    i = 0
    while i < len(order):
        q = order[i]
        i += 1
        for a, e in enumerate(elems):
            if e.op == "empty":
                continue
            q2 = delta(q, a)
            if q2 is None:
                continue
            if q2 not in ids:
                if len(order) >= max_states:
                    raise _too_many(what, max_states, _HINT)
                ids[q2] = len(order)
                order.append(q2)
            edges.append((ids[q], a, ids[q2]))
    s, first = _build(nfa, cat(lit(o), ws), max_states, what)
    after = [nfa.new() for _ in order]          # at least one element written, in state q
    before = {}                                 # entry of (kind, target): shared fragments
    for src, a, dst in edges:
        if (a, dst) not in before:
            fs, fe = _build(nfa, elems[a], max_states, what)
            nfa.eps[fe].append(after[dst])
            before[(a, dst)] = fs
    seps = {}
    for src, a, dst in edges:
        if src == 0:
            nfa.eps[first].append(before[(a, dst)])
        if src not in seps:
            ss, se = _build(nfa, sep, max_states, what)
            nfa.eps[after[src]].append(ss)
            seps[src] = se
        nfa.eps[seps[src]].append(before[(a, dst)])
    cs, ce = _build(nfa, cat(ws, lit(c)), max_states, what)
    if accept(start):
        nfa.eps[first].append(cs)
    for k, q in enumerate(order):
        if accept(q):
            nfa.eps[after[k]].append(cs)
    return s, ce


def _embed(nfa: _NFA, d: CharDFA) -> tuple[int, int]:
    base = [nfa.new() for _ in range(d.num_states)]
    end = nfa.new()
    for s in range(1, d.num_states):
        row = d.trans[s]
        # group atoms by target
        targets: dict[int, list[tuple[int, int]]] = {}
        for a in np.flatnonzero(row):
            targets.setdefault(int(row[a]), []).append((int(d.bounds[a]), int(d.bounds[a + 1]) - 1))
        for t, ivs in targets.items():
            nfa.edges[base[s]].append((CharSet(ivs), base[t]))
        if d.accepting[s]:
            nfa.eps[base[s]].append(end)
    return base[d.start], end


def _dfa_leaf(n: Node, max_states: int, what: str) -> CharDFA:
    if n.op == "dfa":
        return n.args[0]
    if n.op == "not":
        return complement(compile_dfa(n.args[0], max_states, what), max_states, what)
    parts = [compile_dfa(p, max_states, what) for p in n.args]
    parts.sort(key=lambda d: d.num_states)
    d = parts[0]
    for other in parts[1:]:
        d = product(d, other, "and", max_states, what)
    return d


def compile_dfa(n: Node, max_states: int = DEFAULT_MAX_STATES, what: str = "regex") -> CharDFA:
    """Minimal DFA of ``n``.

    Raises:
        TooManyStates: when an automaton on the way exceeds ``max_states`` states (the
            message names the bound and how to stay under it).
    """
    if n.op in ("and", "not", "dfa"):
        return _dfa_leaf(n, max_states, what)
    nfa = _NFA()
    nfa.budget = max(64 * max_states, 100_000)
    try:
        s0, e0 = _build(nfa, n, max_states, what)
    except TooManyStates as e:
        if str(e) == "nfa":
            raise _too_many(what, max_states, _HINT) from None
        raise
    m = len(nfa.eps)
    closure_memo: dict[int, frozenset] = {}

    def closure(states: Iterable[int]) -> frozenset:
        seen = set()
        stack = list(states)
        while stack:
            q = stack.pop()
            if q in seen:
                continue
            seen.add(q)
            stack.extend(nfa.eps[q])
        # keep only states with outgoing char edges, plus the end (acceptance)
        return frozenset(q for q in seen if nfa.edges[q] or q == e0)

    start = closure([s0])
    ids = {start: 1}
    order = [start]
    rows: list[list[tuple[int, int, int]]] = []  # per DFA state: (lo, hi_exclusive, target)
    i = 0
    while i < len(order):
        cur = order[i]
        i += 1
        edges = [(cs, t) for q in cur for cs, t in nfa.edges[q]]
        pts = set()
        for cs, _ in edges:
            for lo, hi in cs.ivs:
                pts.add(lo)
                pts.add(hi + 1)
        pts = sorted(pts)
        row = []
        if edges:
            # elementary intervals between consecutive points; targets by sweep
            idx = {p: k for k, p in enumerate(pts)}
            adds: list[list[int]] = [[] for _ in pts]
            rems: list[list[int]] = [[] for _ in pts]
            for cs, t in edges:
                for lo, hi in cs.ivs:
                    adds[idx[lo]].append(t)
                    rems[idx[hi + 1]].append(t)
            active: dict[int, int] = {}
            for k, p in enumerate(pts[:-1]):
                for t in rems[k]:
                    active[t] -= 1
                    if not active[t]:
                        del active[t]
                for t in adds[k]:
                    active[t] = active.get(t, 0) + 1
                if not active:
                    continue
                tgt = closure(active.keys())
                j = ids.get(tgt)
                if j is None:
                    # the unminimised automaton may be larger than the minimal one: a margin
                    if len(order) >= BUILD_FACTOR * max_states:
                        raise _too_many(what, max_states, _HINT)
                    order.append(tgt)
                    j = ids[tgt] = len(order)
                if row and row[-1][1] == p and row[-1][2] == j:
                    row[-1] = (row[-1][0], pts[k + 1], j)
                else:
                    row.append((p, pts[k + 1], j))
        rows.append(row)
    pts = {0, MAX_CP + 1}
    for row in rows:
        for lo, hi, _ in row:
            pts.add(lo)
            pts.add(hi)
    bounds = np.asarray(sorted(pts), np.int64)
    trans = np.zeros((len(order) + 1, len(bounds) - 1), np.int32)
    for s, row in enumerate(rows, start=1):
        for lo, hi, t in row:
            a = np.searchsorted(bounds, lo)
            b = np.searchsorted(bounds, hi)
            trans[s, a:b] = t
    acc = np.zeros(len(order) + 1, bool)
    acc[1:] = [e0 in st for st in order]
    del m
    return _bounded(minimize(CharDFA(bounds, trans, acc, 1)), max_states, what)


def _bounded(d: CharDFA, max_states: int, what: str) -> CharDFA:
    if d.num_states - 1 > max_states:
        raise _too_many(what, max_states, _HINT + f" (the minimal automaton has {d.num_states - 1})")
    return d


_MIX = np.random.default_rng(12345).integers(1, 2**62, size=4096, dtype=np.int64) | 1


def _row_classes(sig: np.ndarray) -> np.ndarray:
    """Class index of each row of ``sig`` (equal rows, equal index; sorted like np.unique)."""
    if sig.shape[1] <= _MIX.size:
        # A random linear hash makes this a 1-d unique (np.unique(axis=0) sorts void views and
        # is ~50x slower); a collision is detected below and falls back to the exact path.
        h = (sig * _MIX[: sig.shape[1]]).sum(axis=1)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if np.array_equal(sig, sig[first[inv]]):
            # keep the dead state (the all-zero row) at class 0
            return inv - inv[0] if inv[0] == 0 else _swap0(inv)
    return np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)


def _swap0(inv: np.ndarray) -> np.ndarray:
    z = inv[0]
    out = inv.copy()
    out[inv == z] = 0
    out[inv == 0] = z
    return out


def _hopcroft(t: np.ndarray, acc: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Equivalence classes of a complete DFA (``t[S, A]``, state 0 the dead sink):
    Hopcroft's partition refinement, O(A S log S); class 0 is the dead state's."""
    n, na = t.shape
    # start from a partition coarser than the equivalence (Moore's rounds so far)
    members = [set(np.flatnonzero(init == b).tolist()) for b in range(int(init.max()) + 1)]
    members = [m for m in members if m]
    block = np.zeros(n, np.int64)
    for b, m in enumerate(members):
        block[list(m)] = b
    work = set(range(len(members))) if len(members) > 1 else set()
    cols = [np.ascontiguousarray(t[:, c]) for c in range(na)]
    mark = np.zeros(n, bool)
    while work:
        A_ = work.pop()
        sa = np.fromiter(members[A_], np.int64)
        mark[:] = False
        mark[sa] = True
        for col in cols:
            x = np.flatnonzero(mark[col])
            if x.size == 0:
                continue
            hit = block[x]
            order = np.argsort(hit, kind="stable")
            hit, xs = hit[order], x[order]
            cuts = np.flatnonzero(np.diff(hit)) + 1
            for grp in np.split(xs, cuts):
                y = int(block[grp[0]])
                if len(grp) == len(members[y]):
                    continue  # the whole block goes to A: no split
                part = set(grp.tolist())
                rest = members[y] - part
                small, big = (part, rest) if len(part) <= len(rest) else (rest, part)
                members[y] = big
                members.append(small)
                nb = len(members) - 1
                block[list(small)] = nb
                if y in work:
                    work.add(nb)
                else:
                    work.add(nb if len(small) <= len(big) else y)
    # renumber so that the dead state's class is 0, in order of first state
    _, first = np.unique(block, return_index=True)
    order = np.argsort(first)
    ren = np.zeros(len(order), np.int64)
    ren[order] = np.arange(len(order))
    cls = ren[block]
    if cls[0] != 0:
        z = cls[0]
        cls = np.where(cls == z, -1, cls)
        cls = np.where(cls == 0, z, cls)
        cls = np.where(cls == -1, 0, cls)
    return cls


def minimize(d: CharDFA) -> CharDFA:
    """Trim (reachable and co-reachable states) and merge equivalent states (Moore), then
    merge atoms on which every state agrees."""
    trans, acc, start = d.trans, d.accepting, d.start
    n = trans.shape[0]
    # reachable
    reach = np.zeros(n, bool)
    reach[start] = True
    frontier = np.asarray([start])
    while frontier.size:
        nxt = np.unique(trans[frontier])
        nxt = nxt[~reach[nxt]]
        reach[nxt] = True
        frontier = nxt
    reach[0] = False
    # co-reachable
    co = acc & reach
    while True:
        new = co | (reach & co[trans].any(axis=1))
        new[0] = False
        if np.array_equal(new, co):
            break
        co = new
    if not co[start]:
        return CharDFA(np.asarray([0, MAX_CP + 1], np.int64), np.zeros((2, 1), np.int32),
                       np.zeros(2, bool), 1)
    keep = np.flatnonzero(co)
    remap = np.zeros(n, np.int64)
    remap[keep] = np.arange(1, len(keep) + 1)
    t = np.zeros((len(keep) + 1, trans.shape[1]), np.int64)
    t[1:] = remap[trans[keep]]
    a = np.zeros(len(keep) + 1, bool)
    a[1:] = acc[keep]
    st = int(remap[start])
    # Moore rounds are cheap vectorised passes but one per distinguishing depth; long chains
    # (counted repeats) switch to Hopcroft's O(A S log S) refinement.
    cls = a.astype(np.int64) + 1
    cls[0] = 0
    cls = np.unique(cls, return_inverse=True)[1].reshape(-1)
    ncls = int(cls.max()) + 1
    for _ in range(48):
        sig = np.concatenate([cls[:, None], cls[t]], axis=1)
        new = _row_classes(sig)
        new = new - new[0]
        k = len(np.unique(new))
        if k == ncls:
            break
        cls, ncls = new, k
    else:
        cls = _hopcroft(t, a, cls)
        ncls = int(cls.max()) + 1
    reps = np.zeros(ncls, np.int64)
    reps[cls[::-1]] = np.arange(len(cls))[::-1]  # first state of each class
    t2 = cls[t[reps]].astype(np.int32)
    a2 = a[reps]
    # merge equal atom columns that are adjacent
    bounds = d.bounds
    if t2.shape[1] > 1:
        same = np.all(t2[:, 1:] == t2[:, :-1], axis=0)
        keep_cols = np.concatenate([[True], ~same])
        t2 = t2[:, keep_cols]
        bounds = np.concatenate([bounds[:-1][keep_cols], bounds[-1:]])
    return CharDFA(bounds, t2, a2, int(cls[st]))


def complement(d: CharDFA, max_states: int = DEFAULT_MAX_STATES, what: str = "regex") -> CharDFA:
    """All strings (over non-surrogate code points) that ``d`` rejects."""
    n = d.num_states
    if n + 1 > max_states + 1:
        raise _too_many(what, max_states, _HINT)
    t = np.asarray(d.trans, np.int64).copy()
    sink = n
    t = np.vstack([t, np.zeros((1, t.shape[1]), np.int64)])
    t[t == 0] = sink
    t[0] = 0
    acc = np.concatenate([~d.accepting, [True]])
    acc[0] = False
    # surrogate atoms stay dead
    lo = d.bounds[:-1]
    hi = d.bounds[1:] - 1
    surr = (lo >= SURR[0]) & (hi <= SURR[1])
    t[:, surr] = 0
    return minimize(CharDFA(d.bounds, t.astype(np.int32), acc, d.start))


def product(d1: CharDFA, d2: CharDFA, op: str = "and", max_states: int = DEFAULT_MAX_STATES,
            what: str = "regex") -> CharDFA:
    """Intersection (``op='and'``) or union (``'or'``) of two DFAs, explored from the start."""
    bounds = _merge_bounds(d1.bounds, d2.bounds)
    t1 = d1.refine(bounds).astype(np.int64)
    t2 = d2.refine(bounds).astype(np.int64)
    s2 = d2.num_states
    index = {d1.start * s2 + d2.start: 1}
    order = [(d1.start, d2.start)]
    rows = []
    i = 0
    while i < len(order):
        a, b = order[i]
        i += 1
        ka, kb = t1[a], t2[b]
        key = ka * s2 + kb
        if op == "and":
            key[(ka == 0) | (kb == 0)] = 0
        row = np.zeros(len(key), np.int64)
        for k in np.unique(key):
            k = int(k)
            if k == 0:
                continue
            j = index.get(k)
            if j is None:
                if len(order) >= BUILD_FACTOR * max_states:
                    raise _too_many(what, max_states, "combine fewer or smaller schemas / "
                                    "patterns, or pass a larger max_states=")
                order.append(divmod(k, s2))
                j = index[k] = len(order)
            row[key == k] = j
        rows.append(row)
    trans = np.zeros((len(order) + 1, len(bounds) - 1), np.int32)
    trans[1:] = np.stack(rows)
    o = np.asarray(order)
    if op == "and":
        acc_v = d1.accepting[o[:, 0]] & d2.accepting[o[:, 1]]
    else:
        acc_v = d1.accepting[o[:, 0]] | d2.accepting[o[:, 1]]
    acc = np.concatenate([[False], acc_v])
    return _bounded(minimize(CharDFA(bounds, trans, acc, 1)), max_states, what)


# ---- code points -> UTF-8 bytes ----------------------------------------------------------


def to_byte_dfa(d: CharDFA) -> ByteDFA:
    """Expands a character DFA into a DFA over UTF-8 bytes.

    Character states keep their ids; multi-byte characters go through intermediate states
    that are hash-consed by the targets they lead to, so a class covering a million code
    points costs a handful of states. Overlong encodings, surrogates and code points above
    U+10FFFF are dead, so every accepted byte string is valid UTF-8.
    """
    bounds = [int(b) for b in d.bounds]
    n_char = d.num_states
    rows: list[np.ndarray | None] = [None] * n_char
    rows[0] = np.zeros(256, np.int32)
    memo: dict = {}

    def new_state(children) -> int:
        row = np.zeros(256, np.int32)
        row[0x80:0xC0] = children
        rows.append(row)
        return len(rows) - 1

    def node(trow, lo: int, k: int, minv: int) -> int:
        """State reading the remaining ``k`` continuation bytes of code points
        lo..lo+64^k-1 (those below ``minv`` are overlong encodings: dead)."""
        size = 64 ** k
        hi = lo + size - 1
        if hi < minv or lo > MAX_CP or (SURR[0] <= lo and hi <= SURR[1]):
            return 0
        a = bisect.bisect_right(bounds, lo) - 1
        b = bisect.bisect_right(bounds, min(hi, MAX_CP)) - 1
        if a == b and lo >= minv and hi <= MAX_CP:
            t = int(trow[a])
            return node_uniform(k, t) if t else 0
        if lo >= minv and hi <= MAX_CP:
            # same targets at the same offsets -> same sub-automaton
            key = ("m", k, tuple(int(x) for x in trow[a : b + 1]),
                   tuple(bounds[j] - lo for j in range(a + 1, b + 1)))
        else:
            key = ("x", k, lo)
            key = key + (tuple(int(x) for x in trow[a : b + 1]),)
        got = memo.get(key)
        if got is not None:
            return got
        sub = size // 64
        children = []
        for c in range(64):
            slo = lo + c * sub
            if k == 1:
                if slo < minv or SURR[0] <= slo <= SURR[1] or slo > MAX_CP:
                    children.append(0)
                else:
                    children.append(int(trow[bisect.bisect_right(bounds, slo) - 1]))
            else:
                children.append(node(trow, slo, k - 1, minv))
        if not any(children):
            memo[key] = 0
            return 0
        memo[key] = new_state(np.asarray(children, np.int32))
        return memo[key]

    def node_uniform(k: int, t: int) -> int:
        key = ("u", k, t)
        if key not in memo:
            child = t if k == 1 else node_uniform(k - 1, t)
            memo[key] = new_state(np.full(64, child, np.int32))
        return memo[key]

    ascii_atoms = np.searchsorted(d.bounds, np.arange(128), side="right") - 1
    for q in range(1, n_char):
        trow = d.trans[q]
        row = np.zeros(256, np.int32)
        row[:128] = trow[ascii_atoms]
        for b in range(0xC2, 0xE0):
            row[b] = node(trow, (b & 0x1F) << 6, 1, 0x80)
        for b in range(0xE0, 0xF0):
            row[b] = node(trow, (b & 0x0F) << 12, 2, 0x800)
        for b in range(0xF0, 0xF5):
            row[b] = node(trow, (b & 0x07) << 18, 3, 0x10000)
        rows[q] = row
    out = np.stack(rows).astype(np.int32)
    acc = np.zeros(out.shape[0], bool)
    acc[:n_char] = d.accepting
    return ByteDFA(out, acc, int(d.start))


def dfa_from_char_step(start, step, accept, chars: Sequence[str], *, max_states: int,
                       what: str) -> CharDFA:
    """A DFA from a transition function on the distinguished characters ``chars`` (every
    other code point goes dead)."""
    cps = sorted(set(ord(c) for c in chars))
    pts = sorted({0, MAX_CP + 1} | set(cps) | {c + 1 for c in cps})
    bounds = np.asarray(pts, np.int64)
    atom = {cp: int(np.searchsorted(bounds, cp, side="right") - 1) for cp in cps}
    ids = {start: 1}
    order = [start]
    rows = []
    i = 0
    while i < len(order):
        s = order[i]
        i += 1
        row = np.zeros(len(bounds) - 1, np.int32)
        for cp in cps:
            t = step(s, chr(cp))
            if t is None:
                continue
            j = ids.get(t)
            if j is None:
                if len(order) >= max_states:
                    raise _too_many(what, max_states, "use smaller bounds / multipleOf")
                order.append(t)
                j = ids[t] = len(order)
            row[atom[cp]] = j
        rows.append(row)
    trans = np.zeros((len(order) + 1, len(bounds) - 1), np.int32)
    trans[1:] = np.stack(rows)
    acc = np.zeros(len(order) + 1, bool)
    acc[1:] = [bool(accept(s)) for s in order]
    return minimize(CharDFA(bounds, trans, acc, 1))
