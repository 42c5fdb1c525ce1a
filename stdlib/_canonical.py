"""Canonical BPE tokenization as a device constraint: token pairs BPE never emits are masked.

A BPE tokenizer maps a text to one token sequence (its *canonical* tokenization), but a language
model can emit many others for the same text (``"hel" "lo"`` instead of ``"hello"``). Those
non-canonical sequences never occur in training data; masking them concentrates the prior on
tokenizations the model was trained on (Vieira et al., "Language Models over Canonical
Byte-Pair Encodings", 2025; genlm-control's ``CanonicalTokenization``).

What is checked (the *pair rule*). After token ``a``, token ``b`` is allowed iff
``encode(bytes(a) + bytes(b)) == [a, b]``, where ``encode`` is the tokenizer itself
(pre-tokenizer and merges, no special tokens). When ``a`` or ``b`` alone is not valid UTF-8
(a fragment of a character), the pre-tokenizer cannot be run on characters and the pair is
checked by the merges alone, as one pre-token. The first token of the text must be canonical
on its own (``encode(bytes(b)) == [b]``); EOS is always allowed; special tokens never.
`pair_ok_reference` is this rule, computed by brute force with the tokenizer.

Limits. Pair-level canonicality is necessary for a canonical sequence of three or more tokens
under pure BPE (each merge that crosses a boundary in a pair would cross it in the longer
text too), but not sufficient in general, and with a pre-tokenizer it is a property of the
two-token text: a pre-tokenizer's split can depend on characters outside the pair (a run of
spaces followed by a word), so a pair rejected here can, rarely, occur inside the canonical
tokenization of a longer text (measured in tests/stdlib/test_canonical.py). Tokenizers with
a normalizer, ``ignore_merges`` (Llama 3), or a non-byte-level alphabet are refused.

How the rule is computed without the ``V^2`` pairs:

* Merges. Under a merge list in training order (every merge's parts are produced by earlier
  merges; checked at build time), BPE on ``a b`` runs the two halves independently until a
  merge crosses the junction. The token ending the left half at any time is on ``a``'s
  *right spine* (``a``, its right child, that child's right child, ... its last byte) and the
  token starting the right half is on ``b``'s *left spine*. Spine token ``u`` of ``a`` lives
  until the merge that made its parent (rank ``rpar``), spine token ``v`` of ``b`` likewise
  (``lpar``; ``a`` and ``b`` themselves live forever). A crossing merge ``(u, v)`` of rank
  ``R`` fires iff ``R < rpar(u)`` and ``R <= lpar(v)`` (BPE merges the leftmost pair first on
  equal rank). Per state the mask is a scatter-min of the right partners of ``a``'s spine into
  a ``V``-vector followed by a ``[V, W_l]`` gather (no ``[V, V]`` table).
* Pre-tokenizer. Whether it splits ``a b`` exactly at the junction (then each half is its
  own pre-token and only each token's own canonicality matters), nowhere (one pre-token:
  the merge test above) or inside ``a`` or ``b`` (rejected) is read from a small table
  indexed by a *tail class* of ``a`` (character classes of its last two characters and the
  one before) and a *head class* of ``b`` (its first two and the one after), filled by running
  the tokenizer's own pre-tokenizer on one representative string per pair of classes. This
  assumes the split at a junction depends only on those classes (true of the GPT-2 and
  SmolLM2 regexes; the tests compare with brute force over every pair of the embedded
  model's vocabulary and a sample of SmolLM2's). Tokens that the pre-tokenizer splits on
  their own are never allowed.

Memory (``V`` tokens, ``M`` merges, spine widths ``W_r, W_l``, ``n_r x n_l`` class pairs):
``8 V (W_r + W_l) + 8 (M + K) + 16 V + n_r n_l`` bytes; for SmolLM2-135M (``V = 49152``)
8.8 MiB (``CanonicalAutomaton.nbytes``; benchmarks/canonical_tokens.py), against 2.4 GB for a dense
``[V, V]`` boolean table (300 MiB as bits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import unicodedata
from typing import Any

import jax.numpy as jnp
import numpy as np

from ppl.models.base import Vocab
from ppl.stdlib.base import DEAD, Constraint

__all__ = ["CanonicalAutomaton", "CanonicalTables", "CanonicalTokens", "build_tables",
           "pair_ok_reference"]

#: "never destroyed" for spine ranks; mR's empty value is larger, so it never matches.
_NEVER = 2**30 - 1
_EMPTY = 2**30
# junction outcomes
ONE, JUNC, OTHER = 0, 1, 2
START = 1  # state 1: nothing emitted yet; state t + 2: the last token was t


def _backend(tokenizer: Any):
    """The ``tokenizers.Tokenizer`` of an LM, a transformers tokenizer or itself."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # an LM carries its tokenizer
    tok = getattr(tok, "backend_tokenizer", tok)
    if not hasattr(tok, "to_str") or not hasattr(tok, "encode_batch"):
        raise TypeError(
            f"canonical_tokens needs a Hugging Face fast tokenizer (or a model loaded by "
            f"ppl.models.load, which carries one), got {type(tokenizer).__name__}.")
    return tok


def _byte_decoder() -> dict[str, int]:
    from ppl.models.vocab import _unicode_to_byte

    return _unicode_to_byte()


# Unicode White_Space (what regex engines' \\s matches); Python's str.isspace also counts the
# separators \x1c-\x1f, which regexes do not.
_WHITE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                   + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _char_class(c: str) -> str:
    """A character's class as BPE pre-tokenizer regexes see it (contractions' letters, digits,
    each kind of whitespace and the apostrophe are their own classes)."""
    if c in " \n\r\t'" or c in "stremvldSTREMVLD":
        return c
    if c.isascii():
        if c.isdigit():
            return "0"
        if c.islower():
            return "a"
        if c.isupper():
            return "A"
        if c in _WHITE:
            return "\x0b"
        if c.isprintable():
            return "!"
        return "\x01"
    cat = unicodedata.category(c)
    if c in _WHITE:
        return "ws:" + cat
    return "cat:" + cat


@dataclasses.dataclass
class CanonicalTables:
    """Host tables of the pair rule (numpy); see the module docstring for their meaning."""

    ok_token: np.ndarray      # bool[V]: text token, merges alone give [t], one pre-token
    start_ok: np.ndarray      # bool[V]: encode(bytes(t)) == [t] (a one-token text)
    invalid: np.ndarray       # bool[V]: bytes(t) is not valid UTF-8
    tail: np.ndarray          # int32[V]: tail class of t (as left token)
    head: np.ndarray          # int32[V]: head class of t (as right token)
    junction: np.ndarray      # int8[n_r, n_l]: ONE / JUNC / OTHER
    rspine: np.ndarray        # int32[V, W_r] (-1 padded)
    rpar: np.ndarray          # int32[V, W_r]
    lspine: np.ndarray        # int32[V, W_l] (0 padded, lpar -1 there)
    lpar: np.ndarray          # int32[V, W_l]
    part_start: np.ndarray    # int32[V]: right partners of u: part_*[start : start+count]
    part_count: np.ndarray    # int32[V]
    part_v: np.ndarray        # int32[M + K]
    part_rank: np.ndarray     # int32[M + K]
    window: int               # K: the most right partners of one token
    build_seconds: float = 0.0

    def arrays(self):
        return [getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays()))


def _spec(backend) -> dict:
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"canonical_tokens: the tokenizer's model is {model.get('type')!r}, not "
                         "BPE; the canonical-pair rule is defined for BPE tokenizers only.")
    if spec.get("normalizer") is not None:
        raise ValueError("canonical_tokens: tokenizers with a normalizer (e.g. SentencePiece's "
                         "space replacement) are not supported; the pair rule assumes the text "
                         "reaches the pre-tokenizer unchanged.")
    if model.get("ignore_merges"):
        raise ValueError("canonical_tokens: tokenizers with ignore_merges=True (Llama 3) are not "
                         "supported yet (a pre-token found in the vocabulary skips the merges).")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError("canonical_tokens: BPE with subword prefixes/suffixes is not supported.")
    return spec


def build_tables(tokenizer: Any, vocab: Vocab) -> CanonicalTables:
    """The pair rule's tables for ``vocab`` (whose ids are ``tokenizer``'s); host, numpy.

    Cost: one tokenizer call per token, one pre-tokenizer call per pair of classes, and a
    Python BPE replay of every token's merges (seconds for 50k tokens).

    Raises:
        ValueError: a tokenizer the rule does not support, a vocabulary that is not the
            tokenizer's, or a merge list not in training order.
    """
    t0 = time.perf_counter()
    bt = _backend(tokenizer)
    spec = _spec(bt)
    model = spec["model"]
    V = vocab.size
    tb = vocab.token_bytes
    text = vocab.text_mask()
    dec = _byte_decoder()
    str_id = model["vocab"]
    for s, i in str_id.items():
        if i < V and text[i]:
            try:
                b = bytes(dec[c] for c in s)
            except KeyError:
                raise ValueError(f"canonical_tokens: token {s!r} is not in the byte-level "
                                 "alphabet; only byte-level BPE is supported.") from None
            if b != tb[i]:
                raise ValueError(f"canonical_tokens: token {i} is {b!r} in the tokenizer but "
                                 f"{tb[i]!r} in the vocabulary: they do not belong together.")
    merges = []
    for r, m in enumerate(model["merges"]):
        u, v = m.split(" ", 1) if isinstance(m, str) else m
        iu, iv, iuv = str_id.get(u), str_id.get(v), str_id.get(u + v)
        if iu is not None and iv is not None and iuv is not None:
            merges.append((r, iu, iv, iuv))
    rank = {}
    for r, iu, iv, iuv in merges:
        rank.setdefault((iu, iv), (r, iuv))
    byte_id = {}
    for s, i in str_id.items():
        if len(s) == 1 and s in dec:
            byte_id[dec[s]] = i

    # Every token's derivation: replay BPE on its bytes (leftmost lowest-rank pair first).
    children = np.full((V, 2), -1, np.int64)
    form = np.full(V, -1, np.int64)  # rank of the merge that makes t (-1: a byte)
    model_ok = np.zeros(V, bool)
    for t in range(V):
        if not text[t]:
            continue
        try:
            seq = [byte_id[b] for b in tb[t]]
        except KeyError:
            continue
        last = None
        while len(seq) > 1:
            best = None
            for i in range(len(seq) - 1):
                m = rank.get((seq[i], seq[i + 1]))
                if m is not None and (best is None or m[0] < best[0]):
                    best = (m[0], i, m[1])
            if best is None:
                break
            r, i, new = best
            last = (seq[i], seq[i + 1], r)
            seq[i:i + 2] = [new]
        if seq == [t]:
            model_ok[t] = True
            if last is not None:
                children[t] = last[:2]
                form[t] = last[2]
    for r, iu, iv, _ in merges:
        if model_ok[iu] and model_ok[iv] and rank[(iu, iv)][0] == r and not (
                form[iu] < r and form[iv] < r):
            raise ValueError(f"canonical_tokens: merge {r} ({iu}, {iv}) uses a token made by a "
                             "later merge; the merge list is not in training order.")

    # Spines. rpar[u] on a's right spine: the rank of the merge that made u's parent.
    def spine(t, side):
        out, par = [t], [_NEVER]
        while children[t, 0] >= 0:
            par.append(int(form[t]))
            t = int(children[t, side])
            out.append(t)
        return out, par

    rs, ls = [], []
    for t in range(V):
        if model_ok[t]:
            rs.append(spine(t, 1))
            ls.append(spine(t, 0))
        else:
            rs.append(([], []))
            ls.append(([], []))
    wr = max(1, max(len(s) for s, _ in rs))
    wl = max(1, max(len(s) for s, _ in ls))
    rspine = np.full((V, wr), -1, np.int32)
    rpar = np.full((V, wr), -1, np.int32)
    lspine = np.zeros((V, wl), np.int32)
    lpar = np.full((V, wl), -1, np.int32)
    for t in range(V):
        s, p = rs[t]
        rspine[t, :len(s)], rpar[t, :len(p)] = s, p
        s, p = ls[t]
        lspine[t, :len(s)], lpar[t, :len(p)] = s, p

    # Right partners of every token (CSR by left token); only merges that BPE can use.
    usable = [(iu, iv, r) for r, iu, iv, _ in merges
              if rank[(iu, iv)][0] == r and model_ok[iu] and model_ok[iv]]
    usable.sort()
    part_count = np.zeros(V, np.int32)
    for iu, _, _ in usable:
        part_count[iu] += 1
    part_start = np.zeros(V, np.int32)
    part_start[1:] = np.cumsum(part_count)[:-1]
    window = max(1, int(part_count.max()) if V else 1)
    part_v = np.zeros(len(usable) + window, np.int32)
    part_rank = np.full(len(usable) + window, _EMPTY, np.int32)
    if usable:
        arr = np.asarray(usable, np.int64)
        part_v[:len(usable)] = arr[:, 1]
        part_rank[:len(usable)] = arr[:, 2]

    # Pre-tokenizer: one-token texts, tokens split on their own, junction classes.
    invalid = np.zeros(V, bool)
    strs = {}
    for t in range(V):
        if text[t]:
            try:
                strs[t] = tb[t].decode("utf-8")
            except UnicodeDecodeError:
                invalid[t] = True
    ids = list(strs)
    start_ok = model_ok & text
    single = np.ones(V, bool)
    if ids:
        enc = bt.encode_batch([strs[t] for t in ids], add_special_tokens=False)
        pre = bt.pre_tokenizer
        for t, e in zip(ids, enc):
            start_ok[t] = e.ids == [t]
            if pre is not None:
                single[t] = len(pre.pre_tokenize_str(strs[t])) == 1
    ok_token = text & model_ok & single

    reps: dict[str, str] = {}

    def cls(c):
        k = _char_class(c)
        reps.setdefault(k, c)
        return k

    tails, heads = {}, {}
    tail = np.zeros(V, np.int32)
    head = np.zeros(V, np.int32)
    for t, s in strs.items():
        kt = tuple(cls(c) for c in s[-3:])
        kh = tuple(cls(c) for c in s[:3])
        tail[t] = tails.setdefault(kt, len(tails))
        head[t] = heads.setdefault(kh, len(heads))
    junction = np.full((max(1, len(tails)), max(1, len(heads))), ONE, np.int8)
    pre = bt.pre_tokenizer
    if pre is not None and tails and heads:
        for kt, i in tails.items():
            sa = "".join(reps[k] for k in kt)
            for kh, j in heads.items():
                sb = "".join(reps[k] for k in kh)
                cuts = {o[1][0] for o in pre.pre_tokenize_str(sa + sb)} - {0}
                inside = {c for c in cuts if c != len(sa)}
                junction[i, j] = OTHER if inside else (JUNC if len(sa) in cuts else ONE)
    return CanonicalTables(ok_token=ok_token, start_ok=start_ok & ok_token,
                           invalid=invalid, tail=tail, head=head, junction=junction,
                           rspine=rspine, rpar=rpar, lspine=lspine, lpar=lpar,
                           part_start=part_start, part_count=part_count, part_v=part_v,
                           part_rank=part_rank, window=window,
                           build_seconds=time.perf_counter() - t0)


def pair_ok_reference(tokenizer: Any, vocab: Vocab, pairs) -> np.ndarray:
    """``bool[n]``: the pair rule by brute force, one tokenizer call per pair.

    ``encode(bytes(a) + bytes(b)) == [a, b]`` (no special tokens); when ``a`` or ``b`` alone is
    not valid UTF-8, the tokenizer's BPE model on the pair's bytes as one pre-token. Special or
    empty tokens are never allowed.
    """
    bt = _backend(tokenizer)
    from ppl.models.vocab import bytes_to_unicode

    b2u = bytes_to_unicode()
    tb, text = vocab.token_bytes, vocab.text_mask()
    pairs = [(int(a), int(b)) for a, b in pairs]
    out = np.zeros(len(pairs), bool)
    batch, where = [], []
    for k, (a, b) in enumerate(pairs):
        if not (text[a] and text[b]):
            continue
        try:
            tb[a].decode("utf-8")
            tb[b].decode("utf-8")
        except UnicodeDecodeError:
            toks = bt.model.tokenize("".join(b2u[x] for x in tb[a] + tb[b]))
            out[k] = [x.id for x in toks] == [a, b]
            continue
        batch.append((tb[a] + tb[b]).decode("utf-8"))
        where.append(k)
    for k, e in zip(where, bt.encode_batch(batch, add_special_tokens=False) if batch else []):
        out[k] = e.ids == list(pairs[k])
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class CanonicalAutomaton:
    """The pair rule as a device automaton: state ``1`` at the start, ``t + 2`` after token
    ``t``, ``0`` (DEAD) after a forbidden pair. Every live state accepts.

    Duck-types the ``TokenAutomaton`` methods ``steer`` uses,
    without its ``[S, V]`` table (``S = V + 2`` here); it is masked beside the product of the
    table automata, not folded into it.
    """

    tables: Any  # dict of jnp arrays
    window: int
    vocab_size: int
    eos_token_id: int
    eos_token_ids: tuple[int, ...]
    name: str = "canonical_tokens"
    digest: bytes | None = None
    halts: bool = False
    nbytes: int = 0

    def __fingerprint__(self):
        return (self.digest, self.eos_token_ids, self.name)

    @property
    def num_states(self) -> int:
        return self.vocab_size + 2

    def init_state(self):
        return jnp.asarray(START, jnp.int32)

    def _eos(self):
        return jnp.asarray(self.eos_token_ids, jnp.int32)

    def is_eos(self, token):
        return jnp.isin(token, self._eos())

    def _pair_mask(self, a):
        """``bool[V]``: tokens allowed after text token ``a``."""
        T = self.tables
        V, K = self.vocab_size, self.window
        u = T["rspine"][a]
        thr = T["rpar"][a]
        uc = jnp.maximum(u, 0)
        k = jnp.arange(K, dtype=jnp.int32)
        idx = T["part_start"][uc][:, None] + k[None, :]
        keep = (k[None, :] < T["part_count"][uc][:, None]) & (u >= 0)[:, None]
        R = T["part_rank"][idx]
        keep = keep & (R < thr[:, None])
        v = jnp.where(keep, T["part_v"][idx], V)
        # mR[v]: lowest rank of a crossing merge (spine(a) token, v) that can still fire
        m = jnp.full((V,), _EMPTY, jnp.int32).at[v.reshape(-1)].min(
            jnp.where(keep, R, _EMPTY).reshape(-1), mode="drop")
        conflict = jnp.any(m[T["lspine"]] <= T["lpar"], axis=1)
        j = T["junction"][T["tail"][a]][T["head"]]
        j = jnp.where(T["invalid"][a] | T["invalid"], ONE, j)
        ok = (j == JUNC) | ((j == ONE) & ~conflict)
        return T["ok_token"] & T["ok_token"][a] & ok

    def allowed(self, state):
        a = jnp.maximum(state - 2, 0)
        mask = jnp.where(state == START, self.tables["start_ok"],
                         jnp.where(state == DEAD, False, self._pair_mask(a)))
        return mask.at[self._eos()].set(state != DEAD)

    def advance(self, state, token):
        ok = self.allowed(state)[token]
        keep = self.is_eos(token) & (state != DEAD)
        return jnp.where(keep, state, jnp.where(ok, token + 2, DEAD)).astype(jnp.int32)

    def accepting_state(self, state):
        return state != DEAD

    def alive(self, state):
        return state != DEAD

    def within_budget(self, state, remaining):
        return jnp.ones((self.vocab_size,), bool)  # every live state accepts

    def is_final(self, state):
        return jnp.zeros((), bool)

    def accepts_ids(self, ids) -> bool:
        """Host check of a token sequence (EOS excluded) against the automaton itself."""
        s = self.init_state()
        for t in ids:
            s = self.advance(s, jnp.int32(t))
        return bool(s != DEAD)


class CanonicalTokens(Constraint):
    """Only token sequences whose adjacent pairs the BPE tokenizer would produce.

    After token ``a``, token ``b`` is allowed iff ``encode(bytes(a) + bytes(b)) == [a, b]``
    (the tokenizer's pre-tokenizer and merges; a pair with a token that is not valid UTF-8 on
    its own is checked by the merges alone). The first token must satisfy
    ``encode(bytes(b)) == [b]`` (the prompt's last token is not paired with it); EOS is always
    allowed and every state accepts, so the target
    is ``p_LM(x) * 1[every adjacent pair of x passes]``. Pair canonicality is necessary, not
    sufficient, for the whole sequence to be the tokenizer's output; with a pre-tokenizer a
    rejected pair can rarely occur inside a longer canonical text (docs/constraints.md,
    *Canonical tokenization*, gives the measured rate, the method and the memory: about
    9 MiB of tables for a 50k vocabulary, no ``[V, V]`` table).

    ``steer`` masks it beside the product automaton of the other device constraints; it
    cannot join an ``all_of`` product (no state table).

    Args:
        tokenizer: the model (``ppl.models.load(...)``), its transformers tokenizer or a
            ``tokenizers.Tokenizer``; the vocabulary it is compiled against must be this
            tokenizer's.

    Raises:
        TypeError: not a fast (Rust) tokenizer.
        ValueError: a tokenizer the rule does not support (not BPE, a normalizer,
            ``ignore_merges``, not byte-level), raised when compiled.
    """

    name = "canonical_tokens"

    def __init__(self, tokenizer: Any):
        self.backend = _backend(tokenizer)
        _spec(self.backend)  # refuse unsupported tokenizers before any heavy work
        self.tables: CanonicalTables | None = None

    def _compile(self, vocab: Vocab) -> CanonicalAutomaton:
        n = self.backend.get_vocab_size(with_added_tokens=True)
        if n > vocab.size:
            raise ValueError(f"canonical_tokens: the tokenizer has {n} ids but the vocabulary "
                             f"{vocab.size}; compile it for the model whose tokenizer it is.")
        tab = build_tables(self.backend, vocab)
        self.tables = tab
        h = hashlib.blake2b(digest_size=16)
        for arr in tab.arrays():
            h.update(str((arr.shape, arr.dtype)).encode())
            h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
        dev = {f.name: jnp.asarray(getattr(tab, f.name)) for f in dataclasses.fields(tab)
               if isinstance(getattr(tab, f.name), np.ndarray)}
        ids = tuple(getattr(vocab, "eos_token_ids", ()) or (vocab.eos_token_id,))
        return CanonicalAutomaton(tables=dev, window=tab.window, vocab_size=vocab.size,
                                  eos_token_id=int(vocab.eos_token_id), eos_token_ids=ids,
                                  digest=h.digest(), nbytes=tab.nbytes)

    def check(self, text: str) -> bool:
        raise TypeError("canonical_tokens is a rule on token ids, not on text; use "
                        "check_ids(ids, vocab).")

    def check_ids(self, ids, vocab: Vocab) -> bool:
        """Every adjacent pair passes `pair_ok_reference` and the first token is canonical."""
        ids = [int(i) for i in ids]
        text = vocab.text_mask()
        if not all(0 <= i < vocab.size and text[i] for i in ids):
            return False
        if not ids:
            return True
        first = self.compile(vocab)
        if not bool(first.tables["start_ok"][ids[0]]):
            return False
        return bool(pair_ok_reference(self.backend, vocab, list(zip(ids, ids[1:]))).all())

    def __repr__(self) -> str:
        return self.name
