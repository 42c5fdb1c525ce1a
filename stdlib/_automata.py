"""Host-side automaton machinery shared by every constraint.

Every text constraint is first a *byte DFA* (a transition table over the 256 byte values) and
is then lifted to a *token automaton* over a vocabulary by one function, `lift`, and
pruned and renumbered by one function, `to_automaton`. Token-level constructions (a token
budget, conjunctions) build a token table directly and go through the same
`to_automaton`, so the exactness contract of [ppl.stdlib.base][] is enforced in one place.

Everything here is numpy; only `to_automaton` creates device arrays.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable, Hashable, Sequence

import jax.numpy as jnp
import numpy as np

from ppl.models.base import Vocab
from ppl.stdlib.base import DEAD, TokenAutomaton

__all__ = ["ByteDFA", "dfa_from_step", "lift", "to_automaton", "prune", "product", "host_tables"]

#: Largest device table (int32[S, V]) a constraint may compile to; beyond it lift raises.
MAX_TABLE_BYTES = 2 << 30

# Upper bound on the size of one [rows, V] block materialised while lifting, in elements.
_BLOCK_ELEMS = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class ByteDFA:
    """A deterministic automaton over bytes.

    Attributes:
        trans: ``int32[N, 256]``; state 0 is the dead state (``trans[0] == 0``).
        accepting: ``bool[N]``; True where the bytes read so far form an accepted text.
        start: the initial state.
    """

    trans: np.ndarray
    accepting: np.ndarray
    start: int

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])

    def run(self, data: bytes) -> int:
        """State after reading ``data`` from the start state (host-side, for checks)."""
        s = self.start
        for b in data:
            s = int(self.trans[s, b])
            if s == DEAD:
                return DEAD
        return s

    def accepts(self, data: bytes) -> bool:
        return bool(self.accepting[self.run(data)])


def dfa_from_step(
    start: Hashable,
    step: Callable[[Hashable, int], Hashable | None],
    accept: Callable[[Hashable], bool],
    byte_class: np.ndarray,
    *,
    max_states: int = 200_000,
    what: str = "constraint",
) -> ByteDFA:
    """Builds a byte DFA by exploring a Python transition function from ``start``.

    Args:
        start: the initial (hashable) state.
        step: ``step(state, byte) -> state`` or None for the dead state. It is called once per
            (state, byte class) with a representative byte of the class.
        accept: whether a state is accepting.
        byte_class: ``int[256]`` partition of the bytes into classes on which ``step`` behaves
            identically (this keeps construction at states x classes Python calls).
        max_states: raises ``ValueError`` beyond this many states.
        what: name used in the error message.
    """
    byte_class = np.asarray(byte_class, np.int64)
    n_cls = int(byte_class.max()) + 1
    reps = [int(np.flatnonzero(byte_class == c)[0]) for c in range(n_cls)]
    ids: dict = {start: 1}
    order = [start]
    rows = []
    i = 0
    while i < len(order):
        s = order[i]
        i += 1
        row = np.zeros(n_cls, np.int32)
        for c, b in enumerate(reps):
            t = step(s, b)
            if t is None:
                continue
            j = ids.get(t)
            if j is None:
                j = len(order) + 1
                if j > max_states:
                    raise ValueError(
                        f"{what}: the byte automaton exceeds {max_states} states; use fewer "
                        "or shorter words/strings."
                    )
                ids[t] = j
                order.append(t)
            row[c] = j
        rows.append(row[byte_class])
    trans = np.zeros((len(order) + 1, 256), np.int32)
    trans[1:] = np.stack(rows)
    acc = np.zeros(len(order) + 1, bool)
    acc[1:] = [bool(accept(s)) for s in order]
    return ByteDFA(trans, acc, 1)


# ---- vocabulary preprocessing (cached per vocabulary object) ------------------------------

_VOCAB_GROUPS: "weakref.WeakKeyDictionary[Vocab, list]" = weakref.WeakKeyDictionary()


def _length_groups(vocab: Vocab) -> list[tuple[np.ndarray, np.ndarray]]:
    """Text tokens grouped by byte length: ``[(ids int64[n], bytes uint8[n, L]), ...]``.

    Grouping by length lets the lifter advance all (state, token) pairs of a group one byte
    position at a time with a single gather, instead of looping over tokens in Python.
    """
    groups = _VOCAB_GROUPS.get(vocab)
    if groups is None:
        text = vocab.text_mask()
        by_len: dict[int, list[int]] = {}
        for i, b in enumerate(vocab.token_bytes):
            if text[i]:
                by_len.setdefault(len(b), []).append(i)
        groups = []
        for length in sorted(by_len):
            ids = np.asarray(by_len[length], np.int64)
            buf = b"".join(vocab.token_bytes[i] for i in ids)
            mat = np.frombuffer(buf, np.uint8).reshape(len(ids), length).astype(np.int64)
            groups.append((ids, mat))
        _VOCAB_GROUPS[vocab] = groups
    return groups


# ---- lifting bytes -> tokens ------------------------------------------------------------


def lift(dfa: ByteDFA, vocab: Vocab, name: str = "constraint", method: str = "trie"
         ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Lifts a byte DFA to a token table over the states reachable at token boundaries.

    Only byte states reached after whole tokens become token states (states reachable only in
    the middle of a token never need a row). The table is built breadth-first from the start
    state; each block of frontier states is advanced through every token, vectorised over
    (state, token) pairs one byte position at a time, tokens grouped by byte length.

    Tokens whose bytes fall into the same DFA byte classes position by position behave
    identically, so they are deduplicated first and the table is returned *column-compressed*:
    ``table[:, columns]`` is the full ``[S, V]`` table. Column ``U`` (the last) is all-dead
    and is where special and empty tokens point.

    The distinct tokens are advanced along their prefix trie (``method="trie"``): a
    (state, trie node) pair costs one gather and is shared by every token through that
    node, and a dead pair drops its whole subtree. ``method="columns"`` (the previous
    implementation, kept as the reference the tests compare with) advances each token's
    bytes separately; both give the same table.

    Returns:
        ``(table int32[S, U + 1], accepting bool[S], start, columns int64[V])`` with row 0
        the dead state; not yet pruned (see `to_automaton`).
    """
    if method not in ("trie", "columns"):
        raise ValueError(f"lift: method must be 'trie' or 'columns', got {method!r}")
    v = vocab.size
    # Bytes on which the DFA behaves identically form one class (e.g. "digit / '-' / other"
    # for a date regex: 50k tokens collapse to a few hundred distinct class sequences).
    col_keys = np.ascontiguousarray(dfa.trans.T).view(
        np.dtype((np.void, dfa.trans.shape[0] * dfa.trans.itemsize))).reshape(-1)
    byte_class = np.unique(col_keys, return_inverse=True)[1].reshape(-1).astype(np.uint8)
    groups = []
    n_unique = 0
    columns = np.full(v, -1, np.int64)
    for ids, mat in _length_groups(vocab):
        cmat = np.ascontiguousarray(byte_class[mat])
        # unique rows via a fixed-width bytes view (much faster than np.unique(axis=0))
        keys = cmat.view(np.dtype((np.void, cmat.shape[1]))).reshape(-1)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        groups.append((n_unique, mat[first]))
        columns[ids] = n_unique + inverse.reshape(-1)
        n_unique += len(first)
    columns[columns < 0] = n_unique  # special / empty tokens -> the all-dead column
    trie = _token_trie(groups, byte_class) if method == "trie" else None
    flat = np.ascontiguousarray(dfa.trans, dtype=np.int64).ravel()
    local = np.zeros(dfa.num_states, np.int64)  # byte state -> token state (0 = unseen/dead)
    local[dfa.start] = 1
    order = [int(dfa.start)]
    rows = []
    rows_per_block = max(1, _BLOCK_ELEMS // max(n_unique + 1, 1))
    i = 0
    while i < len(order):
        frontier = np.asarray(order[i : i + rows_per_block], np.int64)
        i += len(frontier)
        if method == "trie":
            # only the live (state, token) ends: new states are numbered in increasing byte
            # state order, as the reference does
            fi, col, st = _advance_trie(flat, frontier, trie)
            new = np.unique(st)
            new = new[local[new] == 0]
            local[new] = len(order) + 1 + np.arange(len(new))
            order.extend(new.tolist())
            block = np.zeros((len(frontier), n_unique + 1), np.int32)
            block[fi, col] = local[st]
        else:
            out = _advance_columns(flat, frontier, groups, n_unique + 1)
            seen = np.zeros(dfa.num_states, bool)
            seen[out.ravel()] = True
            seen[DEAD] = False
            for s in np.flatnonzero(seen & (local == 0)):
                order.append(int(s))
                local[s] = len(order)
            block = local.astype(np.int32)[out]
        if (len(order) + 1) * v * 4 > MAX_TABLE_BYTES:
            raise ValueError(
                f"{name}: the token table would exceed {MAX_TABLE_BYTES >> 20} MiB "
                f"(more than {len(order)} states x {v} tokens); shorten counted repeats such "
                "as maxLength/maxItems/{m,n}, or split the constraint."
            )
        rows.append(block)
    table = np.empty((len(order) + 1, n_unique + 1), np.int32)
    table[0] = 0
    r = 1
    for blk in rows:
        table[r : r + len(blk)] = blk
        r += len(blk)
    acc = np.zeros(len(order) + 1, bool)
    acc[1:] = dfa.accepting[np.asarray(order)]
    return table, acc, 1, columns


def _advance_columns(flat: np.ndarray, frontier: np.ndarray, groups: list, width: int) -> np.ndarray:
    """``out[i, u]``: the byte state after unique token ``u`` from ``frontier[i]``, each
    token's bytes advanced separately (the reference for `_advance_trie`)."""
    out = np.zeros((len(frontier), width), np.int64)
    f = len(frontier)
    for off, mat in groups:
        n, length = mat.shape
        # All (state, token) pairs of this length group advance one byte position per
        # step: cur <- trans[cur, byte_j], a single gather. Pairs that died are dropped
        # once they are the majority (structured patterns kill most pairs at byte 0).
        cur = np.repeat(frontier, n)
        tok = None  # None: all pairs present, in [f, n] order
        pos = None
        for j in range(length):
            byte_j = mat[:, j] if tok is None else mat[tok, j]
            cur = flat[cur * 256 + (np.tile(byte_j, f) if tok is None else byte_j)]
            if j + 1 < length:
                alive = cur != DEAD
                if 2 * int(np.count_nonzero(alive)) < alive.size:
                    if tok is None:
                        tok = np.tile(np.arange(n), f)
                        pos = np.arange(f * n)
                    cur, tok, pos = cur[alive], tok[alive], pos[alive]
        if pos is None:
            out[:, off : off + n] = cur.reshape(f, n)
        else:
            block = np.zeros(f * n, np.int64)
            block[pos] = cur
            out[:, off : off + n] = block.reshape(f, n)
    return out


def _token_trie(groups: list, byte_class: np.ndarray) -> tuple:
    """The prefix trie of the distinct tokens (as byte-class sequences), level by level.

    Returns ``(rep, child_start, child_count, end_col, n_root)``: for every node (numbered
    level by level, children of a node contiguous, the ``n_root`` first-level nodes first)
    a representative byte of its class, its children's range, and the unique-token column
    ending there (-1: none).
    """
    n_cls = int(byte_class.max()) + 1
    rep_of_class = np.zeros(n_cls, np.int64)
    rep_of_class[byte_class[::-1]] = np.arange(255, -1, -1)  # lowest byte of each class
    cls = [(off, np.asarray(byte_class[mat], np.int64)) for off, mat in groups]
    prev = [None] * len(cls)  # node id (global) of each token's prefix so far
    reps, parents, ends = [], [], []
    base = 0
    k = 0
    while True:
        keys, who = [], []
        for g, (off, cm) in enumerate(cls):
            if cm.shape[1] > k:
                p = prev[g] if k else np.zeros(cm.shape[0], np.int64)
                keys.append(p * n_cls + cm[:, k])
                who.append(g)
        if not keys:
            break
        allk = np.concatenate(keys)
        uniq, inv = np.unique(allk, return_inverse=True)
        inv = inv.reshape(-1) + base
        parents.append(uniq // n_cls if k else np.full(len(uniq), -1, np.int64))
        reps.append(rep_of_class[uniq % n_cls])
        pos = 0
        end = np.full(len(uniq), -1, np.int64)
        for g, kk in zip(who, keys):
            off, cm = cls[g]
            ids = inv[pos : pos + len(kk)]
            pos += len(kk)
            prev[g] = ids
            if cm.shape[1] == k + 1:  # these tokens end at level k
                end[ids - base] = off + np.arange(cm.shape[0])
        ends.append(end)
        base += len(uniq)
        k += 1
    n_nodes = base
    rep = np.concatenate(reps)
    end_col = np.concatenate(ends)
    parent = np.concatenate(parents)
    child_count = np.bincount(parent[parent >= 0], minlength=n_nodes).astype(np.int64)
    child_start = np.zeros(n_nodes, np.int64)
    has = parent >= 0
    # children are sorted by parent (np.unique sorts the keys parent * n_cls + class)
    kids = np.flatnonzero(has)
    first = np.searchsorted(parent[kids], np.arange(n_nodes), side="left")
    child_start[:] = kids[np.minimum(first, len(kids) - 1)] if len(kids) else 0
    return rep, child_start, child_count, end_col, len(reps[0]) if reps else 0


def _advance_trie(flat: np.ndarray, frontier: np.ndarray, trie: tuple) -> tuple:
    """As `_advance_columns`, walking the token trie over live (state, node) pairs only;
    returns the live entries ``(row, column, byte state)`` (every other entry is dead)."""
    rep, child_start, child_count, end_col, n_root = trie
    f = len(frontier)
    ends = []
    fi = np.repeat(np.arange(f), n_root)
    node = np.tile(np.arange(n_root), f)
    state = flat[np.repeat(frontier, n_root) * 256 + rep[node]]
    while fi.size:
        alive = state != DEAD
        fi, node, state = fi[alive], node[alive], state[alive]
        col = end_col[node]
        e = col >= 0
        ends.append((fi[e], col[e], state[e]))
        counts = child_count[node]
        total = int(counts.sum())
        if not total:
            break
        starts = np.cumsum(counts) - counts
        within = np.arange(total) - np.repeat(starts, counts)
        node = np.repeat(child_start[node], counts) + within
        fi = np.repeat(fi, counts)
        state = flat[np.repeat(state, counts) * 256 + rep[node]]
    if not ends:
        z = np.zeros(0, np.int64)
        return z, z, z
    return tuple(np.concatenate(x) for x in zip(*ends))


# ---- pruning, renumbering, device arrays --------------------------------------------------


def _edges(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (src, dst) state pairs of a token table (dead targets dropped)."""
    s = table.shape[0]
    srcs, dsts = [], []
    block = max(1, _BLOCK_ELEMS // max(s, 1))
    for lo in range(0, s, block):
        part = table[lo : lo + block]
        present = np.zeros((part.shape[0], s), bool)
        present[np.arange(part.shape[0])[:, None], part] = True
        present[:, DEAD] = False
        a, b = np.nonzero(present)
        srcs.append(a + lo)
        dsts.append(b)
    return np.concatenate(srcs), np.concatenate(dsts)


def _csr(keys: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return np.searchsorted(keys[order], np.arange(n + 1)), vals[order]


def _gather_neighbours(starts: np.ndarray, vals: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The neighbours of ``nodes``, node after node, each node's in CSR order."""
    lo, hi = starts[nodes], starts[nodes + 1]
    counts = hi - lo
    total = int(counts.sum())
    if not total:
        return np.zeros(0, vals.dtype)
    idx = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    return vals[idx]


def _bfs_order(src: np.ndarray, dst: np.ndarray, n: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """States reachable from ``start`` in breadth-first order (a queue that visits each
    state's successors in increasing order, level by level, vectorised), and the mask."""
    starts, vals = _csr(src, dst, n)
    reach = np.zeros(n, bool)
    reach[start] = True
    levels = [np.asarray([start], np.int64)]
    frontier = levels[0]
    while frontier.size:
        cand = _gather_neighbours(starts, vals, frontier)
        cand = cand[~reach[cand]]
        # first occurrences, in discovery order
        _, first = np.unique(cand, return_index=True)
        frontier = cand[np.sort(first)].astype(np.int64)
        reach[frontier] = True
        levels.append(frontier)
    return np.concatenate(levels), reach


def _coreachable(src: np.ndarray, dst: np.ndarray, n: int, seeds: np.ndarray,
                 allowed: np.ndarray) -> np.ndarray:
    """Mask of the ``allowed`` states from which a ``seeds`` state is reachable through
    ``allowed`` states (backward search over the reversed edges)."""
    starts, vals = _csr(dst, src, n)
    found = seeds.copy()
    frontier = np.flatnonzero(found)
    while frontier.size:
        cand = _gather_neighbours(starts, vals, frontier)
        cand = np.unique(cand[allowed[cand] & ~found[cand]])
        found[cand] = True
        frontier = cand
    return found


def prune(
    table: np.ndarray,
    accepting: np.ndarray,
    start: int,
    vocab: Vocab,
    name: str,
    columns: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Keeps states reachable from ``start`` from which an accepting state is reachable.

    ``table`` is ``[S, V]``, or column-compressed ``[S, U]`` with ``columns`` (``int[V]``)
    mapping each token to its column (as returned by `lift`); the output keeps the
    input's column layout (``[K, V]`` or ``[K, U]``).

    Co-accessibility is computed over the *token* graph (which is what a particle walks),
    so a state that could only be rescued by a byte sequence no token sequence spells is
    pruned too. Every other state becomes dead (0); kept states are renumbered ``1..K`` in
    breadth-first order with ``start`` = 1. Special and empty tokens (EOS included) are dead.

    Raises:
        ValueError: when no accepted text can be spelled by the vocabulary's tokens.
    """
    table = np.array(table, np.int32, copy=True)
    text = vocab.text_mask()
    if columns is None:
        table[:, ~text] = DEAD
    else:
        dead_cols = np.ones(table.shape[1], bool)
        dead_cols[columns[text]] = False  # columns used only by special tokens
        table[:, dead_cols] = DEAD
    table[DEAD] = DEAD
    acc = np.asarray(accepting, bool).copy()
    acc[DEAD] = False
    n = table.shape[0]
    src, dst = _edges(table)
    bfs, reach = _bfs_order(src, dst, n, start)
    coacc = _coreachable(src, dst, n, acc & reach, reach)
    if not coacc[start]:
        raise ValueError(
            f"{name}: no text that this vocabulary's tokens can spell satisfies the constraint "
            "(the automaton is empty after pruning)."
        )
    kept = bfs[coacc[bfs]]  # BFS order, start first
    new = np.zeros(n, np.int32)
    new[np.asarray(kept)] = np.arange(1, len(kept) + 1, dtype=np.int32)
    out = np.zeros((len(kept) + 1, table.shape[1]), np.int32)
    out[1:] = new[table[np.asarray(kept)]]
    out_acc = np.zeros(len(kept) + 1, bool)
    out_acc[1:] = acc[np.asarray(kept)]
    return out, out_acc, 1


_HOST: "weakref.WeakKeyDictionary[TokenAutomaton, tuple]" = weakref.WeakKeyDictionary()


def to_automaton(
    table: np.ndarray,
    accepting: np.ndarray,
    start: int,
    vocab: Vocab,
    name: str,
    columns: np.ndarray | None = None,
) -> TokenAutomaton:
    """Prunes (see `prune`), expands compressed columns and moves tables to the device."""
    table, acc, start = prune(table, accepting, start, vocab, name, columns)
    if columns is None:
        table, columns = _compress(table)
    final = acc & ~np.any(table != DEAD, axis=1)
    full = table[:, columns]
    aut = TokenAutomaton(
        transitions=jnp.asarray(full, jnp.int32),
        accepting=jnp.asarray(acc),
        start=int(start),
        eos_token_id=int(vocab.eos_token_id),
        name=name,
        final=jnp.asarray(final),
    )
    _HOST[aut] = (table, np.asarray(columns, np.int64), acc)
    return aut


def _compress(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-compresses a full ``[S, V]`` table: ``(table[:, first], columns)``."""
    cols = np.ascontiguousarray(table.T)
    keys = cols.view(np.dtype((np.void, cols.shape[1] * cols.itemsize))).reshape(-1)
    _, first, columns = np.unique(keys, return_index=True, return_inverse=True)
    return np.ascontiguousarray(table[:, first]), columns.reshape(-1).astype(np.int64)


def host_tables(aut: TokenAutomaton) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host copies ``(table int32[S, U], columns int64[V], accepting bool[S])``.

    ``table[:, columns]`` equals ``aut.transitions``; automata built here keep their
    compressed form, others (built elsewhere) are compressed on first use.
    """
    got = _HOST.get(aut)
    if got is None:
        table, columns = _compress(np.asarray(aut.transitions))
        got = (table, columns, np.asarray(aut.accepting))
        _HOST[aut] = got
    return got


def product(
    parts: Sequence[TokenAutomaton], vocab: Vocab, name: str, max_states: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Product (conjunction) of token automata, explored from the joint start state.

    Pairs are folded left to right and pruned after each fold so that intermediate products
    stay small. Tokens that fall in the same column of every part behave identically, so the
    exploration runs over distinct column tuples only (often a few hundred of 50k tokens).

    Returns:
        ``(table [S, U], accepting, start, columns)``, column-compressed as from `lift`.

    Raises:
        ValueError: when a (pruned) product would exceed ``max_states`` states.
    """
    table, columns, acc = host_tables(parts[0])
    start = parts[0].start
    for other in parts[1:]:
        t2, cols2, a2 = host_tables(other)
        s2 = t2.shape[0]
        u2 = t2.shape[1]
        uniq, columns = np.unique(columns * u2 + cols2, return_inverse=True)
        columns = columns.reshape(-1).astype(np.int64)
        table, t2 = table[:, uniq // u2], t2[:, uniq % u2]
        index = {start * s2 + other.start: 1}
        order = [(start, other.start)]
        rows = []
        block = max(1, _BLOCK_ELEMS // max(table.shape[1], 1))
        i = 0
        while i < len(order):
            pairs = np.asarray(order[i : i + block], np.int64)
            i += len(pairs)
            ka = table[pairs[:, 0]].astype(np.int64)
            kb = t2[pairs[:, 1]].astype(np.int64)
            key = ka * s2 + kb
            key[(ka == DEAD) | (kb == DEAD)] = 0
            for k in np.unique(key):
                k = int(k)
                if k and k not in index:
                    order.append(divmod(k, s2))
                    index[k] = len(order)
                    if len(order) > max_states:
                        raise ValueError(
                            f"{name}: the product automaton exceeds max_states={max_states} "
                            "states; combine fewer constraints, or run them side by side as "
                            "separate automata."
                        )
            rows.append(key)
        keys = np.asarray([0] + sorted(index), np.int64)
        vals = np.asarray([0] + [index[k] for k in sorted(index)], np.int32)
        allkeys = np.concatenate(rows)
        new_table = np.zeros((len(order) + 1, table.shape[1]), np.int32)
        new_table[1:] = vals[np.searchsorted(keys, allkeys)]
        new_acc = np.zeros(len(order) + 1, bool)
        o = np.asarray(order, np.int64)
        new_acc[1:] = acc[o[:, 0]] & a2[o[:, 1]]
        table, acc, start = prune(new_table, new_acc, 1, vocab, name, columns)
    return table, acc, start, columns



_COMBINED: dict = {}


def combine(automata: Sequence[TokenAutomaton], vocab: Vocab, max_states: int = 20_000
            ) -> list[TokenAutomaton]:
    """Several token automata as one co-accessible product (what ``all_of`` builds).

    Masking with each automaton separately lets a particle take a token every automaton
    allows on its own but after which their conjunction can no longer be satisfied (it then
    dies); the pruned product removes those tokens, and its ``min_steps`` is the joint
    distance to acceptance. Returns ``[product]``, or the automata unchanged when there are
    fewer than two, when one was built inside a trace (no host tables), or when the product
    would exceed ``max_states`` (separate masks are still exact, only wasteful).
    """
    auts = list(automata)
    # Automata without a state table (canonical_tokens: V + 2 states read from compact
    # tables) are masked beside the product, not folded into it.
    tableless = [a for a in auts if not isinstance(a, TokenAutomaton)]
    if tableless:
        return combine([a for a in auts if isinstance(a, TokenAutomaton)], vocab,
                       max_states) + tableless
    if len(auts) < 2 or any(a.digest is None for a in auts):
        return auts
    key = (tuple(a.__fingerprint__() for a in auts), id(vocab), vocab.size)
    got = _COMBINED.get(key)
    if got is not None and got[0]() is vocab:
        return [got[1]]
    name = "all_of(" + ", ".join(a.name for a in auts) + ")"
    try:
        table, acc, start, columns = product(auts, vocab, name, max_states)
        out = to_automaton(table, acc, start, vocab, name, columns)
    except ValueError:
        return auts
    ids = tuple(dict.fromkeys(i for a in auts for i in a.eos_token_ids))
    if ids != out.eos_token_ids:
        object.__setattr__(out, "eos_token_ids", ids)
    if len(_COMBINED) > 32:
        _COMBINED.clear()
    _COMBINED[key] = (weakref.ref(vocab), out)
    return [out]
