"""The contract every language model in :mod:`ppl.models` fulfils.

Inference backends only ever talk to a model through :class:`LanguageModel`:

* ``prefill(params, prompt_ids, max_len)`` runs the prompt once (batch of one) and returns a
  KV cache sized for ``max_len`` positions plus the next-token log-probabilities.
* ``decode(params, cache, tokens, positions)`` feeds one token per row of the batch. Row ``b``
  writes its key/value at slot ``positions[b]`` and attends to slots ``<= positions[b]``; it
  returns the log-probabilities of the token that follows.
* Every leaf of a cache has the batch (particle) axis first, so broadcasting a prefilled cache
  to ``N`` particles and reordering it along resampling ancestors are generic
  (:func:`broadcast_cache`, :func:`reorder`).

Both functions are pure and traceable: backends call them inside one ``jax.jit``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LanguageModel", "Vocab", "broadcast_cache", "reorder"]

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Vocab:
    """Host-side vocabulary tables that constraints are compiled against.

    Attributes:
        token_bytes: for every id in ``range(size)``, the exact bytes the token contributes to
            the decoded text (byte-level BPE and SentencePiece byte-fallback resolved). Special
            and padding ids map to ``b""``.
        token_strings: ``token_bytes`` decoded as UTF-8 with replacement (for display).
        eos_token_id: the end-of-sequence id.
        special_ids: ids that never appear inside text (EOS, BOS, padding, added specials).
    """

    token_bytes: tuple[bytes, ...]
    token_strings: tuple[str, ...]
    eos_token_id: int
    special_ids: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def from_bytes(
        cls, token_bytes: Sequence[bytes], eos_token_id: int, special_ids=()
    ) -> "Vocab":
        tb = tuple(bytes(b) for b in token_bytes)
        return cls(
            token_bytes=tb,
            token_strings=tuple(b.decode("utf-8", errors="replace") for b in tb),
            eos_token_id=int(eos_token_id),
            special_ids=frozenset(int(i) for i in special_ids) | {int(eos_token_id)},
        )

    def text_mask(self) -> np.ndarray:
        """``bool[size]``: True for ids that may appear inside text (not special, not padding)."""
        m = np.array([len(b) > 0 for b in self.token_bytes], dtype=bool)
        for i in self.special_ids:
            m[i] = False
        return m

    def decode(self, ids) -> str:
        """Decodes ids by concatenating their bytes (specials contribute nothing)."""
        return b"".join(self.token_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")


class LanguageModel(abc.ABC):
    """Abstract causal language model usable by every inference backend.

    Subclasses set ``vocab_size`` (the logits dimension), ``eos_token_id``,
    ``bos_token_id`` (or None), ``max_context`` (positions the model supports), ``params``
    (a pytree of device arrays), ``vocab`` (a :class:`Vocab` of ``vocab_size`` entries) and
    ``tokenizer`` (a Hugging Face tokenizer or an object with ``encode``/``decode``).
    """

    vocab_size: int
    eos_token_id: int
    bos_token_id: int | None
    max_context: int
    params: PyTree
    vocab: Vocab
    tokenizer: Any
    name: str = "lm"

    # ---- device side (pure, traceable) -------------------------------------------------
    @abc.abstractmethod
    def prefill(self, params: PyTree, prompt_ids: jax.Array, max_len: int):
        """Runs the prompt (``int32[P]``, P >= 1) with batch size one.

        Returns:
            ``(cache, logprobs)``: a cache whose leaves have a leading axis of size 1 and
            room for ``max_len`` positions (slots ``0..P-1`` filled), and ``float32[V]``
            log-softmax of the logits after the last prompt token.
        """

    @abc.abstractmethod
    def decode(self, params: PyTree, cache: PyTree, tokens: jax.Array, positions: jax.Array):
        """Feeds ``tokens`` (``int32[B]``) at ``positions`` (``int32[B]``).

        Returns:
            ``(cache, logprobs)`` with ``logprobs`` of shape ``float32[B, V]``: the
            log-softmax of the next-token logits after each row's token.
        """

    def init_cache_bytes(self, max_len: int) -> int:
        """Bytes of cache one sequence of ``max_len`` positions needs (for memory estimates)."""
        return 0

    # ---- host side ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_text(self, ids) -> str:
        return self.vocab.decode(ids)

    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        """Ids that start generation: the encoded prompt, or BOS when the prompt is empty."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
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


_PREFILL_CACHE: dict = {}


def _prefill_fn(lm: LanguageModel, n: int):
    key = (id(lm), n)
    if key not in _PREFILL_CACHE:
        _PREFILL_CACHE[key] = jax.jit(lambda p, ids: lm.prefill(p, ids, n)[1])
    return _PREFILL_CACHE[key]


def broadcast_cache(cache: PyTree, n: int) -> PyTree:
    """Repeats a batch-one cache ``n`` times along the leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), cache)


def reorder(cache: PyTree, ancestors: jax.Array) -> PyTree:
    """Gathers every cache leaf along its leading (particle) axis: row i <- row ancestors[i]."""
    return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), cache)
