"""The contract every language model in `ppl.models` fulfils.

Inference backends only ever talk to a model through [LanguageModel][ppl.models.LanguageModel]:

* ``prefill(params, prompt_ids, max_len)`` runs the prompt once (batch of one) and returns a
  KV cache sized for ``max_len`` positions plus the next-token log-probabilities.
* ``decode_step(params, cache, tokens, positions)`` feeds one token per row of the batch. Row
  ``b`` writes its key/value at slot ``positions[b]`` and attends to slots ``<= positions[b]``;
  it returns the log-probabilities of the token that follows.
* Models that expose their final hidden state (the input of their head) set
  ``supports_hidden = True`` and accept ``return_hidden=True`` in both functions, which then
  also return it (the feature of learned proposals).
* A cache is either a plain pytree whose every leaf has the batch (particle) axis first, or a
  [SharedCache][ppl.models.SharedCache]: per-row leaves (``rows``, batch axis first: what each
  particle generated) and a per-context part (``shared``, context axis first: the prompt's
  keys and values, stored once however many particles read them). Broadcasting a prefilled
  cache to ``N`` particles and reordering it along resampling ancestors touch the rows only
  and are generic ([broadcast_cache][ppl.models.broadcast_cache], [reorder][ppl.models.reorder]).

Both functions are pure and traceable: backends call them inside one ``jax.jit``.

``params`` is an argument of both, never read from the model inside them. Program code may
still read tables from ``lm.params``: while a backend traces a run it binds the traced
argument with `bound_params`, so in that thread (and only there) ``lm.params`` reads
return the traced value and the compiled run takes the parameters as an input.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import threading
import weakref
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LanguageModel", "SharedCache", "Vocab", "bound_params", "broadcast_cache", "join_cache",
           "reorder", "split_cache"]

PyTree = Any


class SharedCache(NamedTuple):
    """A cache split into what every particle owns and what its prompt's readers share.

    Attributes:
        rows: per-row leaves, batch axis first (the generated tokens' keys and values). Row
            ``b`` belongs to context ``b % C``.
        shared: per-context leaves, context axis first (``C`` prompts' keys and values and
            their lengths); read-only in ``decode_step``, never gathered by resampling.
    """

    rows: PyTree
    shared: PyTree


def split_cache(cache: PyTree) -> tuple[PyTree, PyTree]:
    """``(rows, shared)`` of a cache; ``shared`` is None for a cache with no shared part."""
    if isinstance(cache, SharedCache):
        return cache.rows, cache.shared
    return cache, None


def join_cache(rows: PyTree, shared: PyTree) -> PyTree:
    """The inverse of [split_cache][ppl.models.split_cache]."""
    return rows if shared is None else SharedCache(rows, shared)


@dataclasses.dataclass(frozen=True, eq=False)
class Vocab:
    """Host-side vocabulary tables that constraints are compiled against.

    Attributes:
        token_bytes: for every id in ``range(size)``, the exact bytes the token contributes to
            the decoded text (byte-level BPE and SentencePiece byte-fallback resolved). Special
            and padding ids map to ``b""``.
        token_strings: ``token_bytes`` decoded as UTF-8 with replacement (for display).
        eos_token_id: the primary end-of-sequence id.
        special_ids: ids that never appear inside text (EOS, BOS, padding, added specials).
        eos_token_ids: every id that ends a sequence, ``eos_token_id`` first (a checkpoint's
            ``generation_config.json`` may list several, e.g. Llama 3's ``<|eot_id|>`` and
            ``<|end_of_text|>``). All of them are in ``special_ids``.
    """

    token_bytes: tuple[bytes, ...]
    token_strings: tuple[str, ...]
    eos_token_id: int
    special_ids: frozenset[int] = frozenset()
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        ids = tuple(dict.fromkeys([int(self.eos_token_id), *(int(i) for i in self.eos_token_ids)]))
        object.__setattr__(self, "eos_token_ids", ids)
        object.__setattr__(self, "special_ids", frozenset(self.special_ids) | frozenset(ids))

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def from_bytes(
        cls, token_bytes: Sequence[bytes], eos_token_id: int, special_ids=(), eos_token_ids=()
    ) -> "Vocab":
        tb = tuple(bytes(b) for b in token_bytes)
        return cls(
            token_bytes=tb,
            token_strings=tuple(b.decode("utf-8", errors="replace") for b in tb),
            eos_token_id=int(eos_token_id),
            special_ids=frozenset(int(i) for i in special_ids) | {int(eos_token_id)},
            eos_token_ids=tuple(int(i) for i in eos_token_ids),
        )

    def eos_mask(self) -> np.ndarray:
        """``bool[size]``: True for every id in ``eos_token_ids``."""
        m = np.zeros(self.size, bool)
        m[[i for i in self.eos_token_ids if 0 <= i < self.size]] = True
        return m

    def text_mask(self) -> np.ndarray:
        """``bool[size]``: True for ids that may appear inside text (not special, not padding)."""
        m = np.array([len(b) > 0 for b in self.token_bytes], dtype=bool)
        for i in self.special_ids:
            m[i] = False
        return m

    def decode(self, ids) -> str:
        """Decodes ids by concatenating their bytes (specials contribute nothing)."""
        return b"".join(self.token_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")


_BOUND = threading.local()


@contextlib.contextmanager
def bound_params(lm, params) -> Iterator[None]:
    """Within the block, in this thread only, ``lm.params`` reads return ``params``.

    Backends wrap the tracing of a run in it, so program code that reads tables from
    ``self.lm.params`` reads the traced argument (an input of the compiled run, not a
    constant baked into it). Nothing is assigned to the shared model object, so runs traced
    concurrently in other threads are unaffected.
    """
    table = getattr(_BOUND, "table", None)
    if table is None:
        table = _BOUND.table = {}
    key = id(lm)
    saved = table.get(key, _MISSING)
    table[key] = params
    try:
        yield
    finally:
        if saved is _MISSING:
            del table[key]
        else:
            table[key] = saved


_MISSING = object()


class LanguageModel(abc.ABC):
    """Abstract causal language model usable by every inference backend.

    Subclasses set ``vocab_size`` (the logits dimension), ``eos_token_id``,
    ``bos_token_id`` (or None), ``max_context`` (positions the model supports), ``params``
    (a pytree of device arrays), ``vocab`` (a [Vocab][ppl.models.Vocab] of ``vocab_size``
    entries) and ``tokenizer`` (a Hugging Face tokenizer or an object with
    ``encode``/``decode``). They may set ``eos_token_ids`` (every id that ends a sequence,
    primary first; default ``(eos_token_id,)``) and ``add_bos_token`` (string prompts start
    with BOS, as the checkpoint's tokenizer does; default False).
    """

    vocab_size: int
    eos_token_id: int
    bos_token_id: int | None
    max_context: int
    vocab: Vocab
    tokenizer: Any
    name: str = "lm"
    #: True when ``prefill``/``decode_step`` accept ``return_hidden=True``.
    supports_hidden: bool = False
    #: True when a string prompt starts with ``bos_token_id`` (the tokenizer adds it).
    add_bos_token: bool = False

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a sequence, ``eos_token_id`` first."""
        primary = int(self.eos_token_id)
        extra = self.__dict__.get("_eos_token_ids", ())
        return tuple(dict.fromkeys([primary, *extra]))

    @eos_token_ids.setter
    def eos_token_ids(self, ids) -> None:
        self.__dict__["_eos_token_ids"] = tuple(int(i) for i in ids)

    def is_eos(self, tokens):
        """``bool`` array: ``tokens`` (any shape, traceable) is one of ``eos_token_ids``."""
        ids = self.eos_token_ids
        tokens = jnp.asarray(tokens)
        if len(ids) == 1:
            return tokens == ids[0]
        return jnp.isin(tokens, jnp.asarray(ids, tokens.dtype))

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's chat template (Jinja source), or None for a base model."""
        t = getattr(self.tokenizer, "chat_template", None)
        return t if isinstance(t, str) and t else None

    @property
    def params(self) -> PyTree:
        """The weights (a pytree of arrays); the traced argument while a run is traced
        (see `bound_params`)."""
        table = getattr(_BOUND, "table", None)
        if table:
            bound = table.get(id(self), _MISSING)
            if bound is not _MISSING:
                return bound
        return self.__dict__["_params"]

    @params.setter
    def params(self, value: PyTree) -> None:
        self.__dict__["_params"] = value

    # ---- device side (pure, traceable) -------------------------------------------------
    @abc.abstractmethod
    def prefill(self, params: PyTree, prompt_ids: jax.Array, max_len: int, length=None):
        """Runs the prompt (``int32[P]``, P >= 1) with batch size one.

        Args:
            length: the number of real tokens at the start of ``prompt_ids`` (the rest is
                padding, so prompts of different lengths share one compiled shape); may be
                traced. Default: all ``P``.

        Returns:
            ``(cache, logprobs)``: a cache whose leaves have a leading axis of size 1 and
            room for ``max_len`` positions (slots ``0..length-1`` hold the prompt; padding
            slots are overwritten by the generated tokens before they are attended to),
            and ``float32[V]`` log-softmax of the logits after the last real prompt token.
        """

    @abc.abstractmethod
    def decode_step(self, params: PyTree, cache: PyTree, tokens: jax.Array, positions: jax.Array):
        """Feeds ``tokens`` (``int32[B]``) at ``positions`` (``int32[B]``): one forward step.

        Returns:
            ``(cache, logprobs)`` with ``logprobs`` of shape ``float32[B, V]``: the
            log-softmax of the next-token logits after each row's token.
        """

    def init_cache_bytes(self, max_len: int) -> int:
        """Bytes of cache one sequence of ``max_len`` positions needs (for memory estimates)."""
        return 0

    def cache_layout_bytes(self, prompt_len: int, max_tokens: int) -> tuple[int, int]:
        """``(shared, per_row)``: bytes of cache one context's prompt of ``prompt_len``
        positions takes once, and bytes each row (particle) takes for ``max_tokens`` generated
        positions. Default: nothing shared, a whole sequence per row."""
        return 0, int(self.init_cache_bytes(prompt_len + max_tokens))

    # ---- host side ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_text(self, ids) -> str:
        """Ids to text (the bytes of the tokens; specials contribute nothing)."""
        return self.vocab.decode(ids)

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """Ids that start generation.

        A string is encoded as the checkpoint's tokenizer encodes a prompt: with BOS first when
        the tokenizer adds one (``add_bos_token``; Llama 2/3 do, GPT-2, Qwen and SmolLM2 do not),
        never with EOS. Token ids are used as they are (so a chat prompt from
        [ppl.chat][ppl.chat], which already holds what the template writes, gets no second
        BOS), after checking each lies in ``0..vocab_size - 1``. An empty prompt is BOS.

        Raises:
            ValueError: an id outside the vocabulary, or an empty prompt without a BOS token.
            TypeError: a prompt entry that is not an integer.
        """
        if isinstance(prompt, str):
            ids = self.encode(prompt)
            if ids and self.add_bos_token and self.bos_token_id is not None:
                ids = [int(self.bos_token_id)] + list(ids)
        else:
            ids = _check_ids(prompt, self.vocab_size, self.name)
        if not ids:
            if self.bos_token_id is None:
                raise ValueError(
                    f"{self.name}: the prompt is empty and the model has no BOS token to start "
                    "from; give a non-empty prompt."
                )
            ids = [self.bos_token_id]
        return ids

    def next_token_logprobs(self, token_ids: Sequence[int]) -> np.ndarray:
        """``float32[vocab_size]``: log-softmax of the next-token logits after ``token_ids``."""
        ids = self.prompt_ids(list(token_ids))
        if len(ids) > self.max_context:
            raise ValueError(
                f"{self.name}: {len(ids)} tokens exceed the model's context of "
                f"{self.max_context}."
            )
        fn = _prefill_fn(self, len(ids))
        return np.asarray(fn(self.params, jnp.asarray(ids, jnp.int32)))


def _check_ids(prompt, vocab_size: int, name: str) -> list[int]:
    """``prompt`` as a list of ints, each in ``0..vocab_size - 1``."""
    items = np.asarray(prompt).tolist() if hasattr(prompt, "__array__") else list(prompt)
    if not isinstance(items, list):  # a 0-d array
        items = [items]
    ids = []
    for pos, i in enumerate(items):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(
                f"{name}: a prompt is a string or a flat sequence of integer token ids; entry "
                f"{pos} is {_preview(i)}."
            )
        if not 0 <= i < vocab_size:
            raise ValueError(
                f"{name}: prompt token id {i} (position {pos}) is outside the vocabulary: valid "
                f"ids are 0..{vocab_size - 1}."
            )
        ids.append(int(i))
    return ids


def _preview(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


# Per model (weakly: a dropped model frees its functions), per prompt length.
_PREFILL_FNS: "weakref.WeakKeyDictionary[LanguageModel, dict]" = weakref.WeakKeyDictionary()


def _prefill_fn(lm: LanguageModel, n: int):
    fns = _PREFILL_FNS.setdefault(lm, {})
    if n not in fns:
        # A weak reference: the jitted function must not keep its own model alive.
        ref = weakref.ref(lm)
        fns[n] = jax.jit(lambda p, ids: ref().prefill(p, ids, n)[1])
    return fns[n]


def broadcast_cache(cache: PyTree, n: int) -> PyTree:
    """Repeats a batch-one cache ``n`` times along the leading axis (the rows of a
    [SharedCache][ppl.models.SharedCache]; its shared part stays one copy)."""
    rows, shared = split_cache(cache)
    rows = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), rows)
    return join_cache(rows, shared)


def reorder(cache: PyTree, ancestors: jax.Array) -> PyTree:
    """Gathers every cache row along its leading (particle) axis: row i <- row ancestors[i]
    (the shared part of a [SharedCache][ppl.models.SharedCache] is left as it is)."""
    rows, shared = split_cache(cache)
    return join_cache(jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), rows), shared)
