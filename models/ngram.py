"""An exact bigram language model: the toy prior whose posteriors can be enumerated."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl.models.base import LanguageModel, Vocab

__all__ = ["NGramLM"]


class _ListTokenizer:
    """Greedy longest-match tokenizer over a small list of token strings (for prompts)."""

    def __init__(self, strings: Sequence[str], special: set[int]):
        self._items = sorted(
            ((s, i) for i, s in enumerate(strings) if s and i not in special),
            key=lambda p: -len(p[0]),
        )
        self._strings = list(strings)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, pos = [], 0
        while pos < len(text):
            for s, i in self._items:
                if text.startswith(s, pos):
                    ids.append(i)
                    pos += len(s)
                    break
            else:
                raise ValueError(f"NGramLM: cannot tokenize {text[pos:]!r} at position {pos}")
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self._strings[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self._strings)


class NGramLM(LanguageModel):
    """A bigram LM given by explicit log-probability tables.

    ``p(x_1) = initial[x_1]`` when generation starts from an empty prompt, and
    ``p(x_t | x_{t-1}) = transition[x_{t-1}, x_t]``. Rows are renormalised with log-softmax,
    so unnormalised log-weights are accepted. The "cache" is just the last token, so it plugs
    into every backend exactly like a transformer.

    Args:
        initial_logprobs: ``[V]`` log-probabilities of the first token.
        transition_logprobs: ``[V, V]`` log-probabilities of the next token given the last.
        eos_token_id: the id that ends a sequence.
        token_strings: the text of each token (EOS's text is ignored). Defaults to
            ``"t0", "t1", ...`` separated by spaces.
        max_context: context length reported to backends.
    """

    def __init__(
        self,
        initial_logprobs,
        transition_logprobs,
        eos_token_id: int,
        token_strings: Sequence[str] | None = None,
        max_context: int = 4096,
    ):
        init = np.asarray(initial_logprobs, dtype=np.float32)
        trans = np.asarray(transition_logprobs, dtype=np.float32)
        v = init.shape[0]
        if init.ndim != 1 or trans.shape != (v, v):
            raise ValueError(
                f"NGramLM: initial_logprobs must be [V] and transition_logprobs [V, V]; got "
                f"{init.shape} and {trans.shape}."
            )
        if not 0 <= eos_token_id < v:
            raise ValueError(f"NGramLM: eos_token_id {eos_token_id} is outside 0..{v - 1}.")
        if token_strings is None:
            token_strings = [f" t{i}" for i in range(v)]
        if len(token_strings) != v:
            raise ValueError(f"NGramLM: {len(token_strings)} token strings for {v} tokens.")
        strings = list(token_strings)
        strings[eos_token_id] = ""
        self.vocab_size = v
        self.eos_token_id = int(eos_token_id)
        self.bos_token_id = v  # a virtual id: "start of text", handled in prefill
        self.max_context = int(max_context)
        self.name = "NGramLM"
        self.params = {
            "initial": jax.nn.log_softmax(jnp.asarray(init)),
            "transition": jax.nn.log_softmax(jnp.asarray(trans), axis=-1),
        }
        self.vocab = Vocab.from_bytes([s.encode() for s in strings], eos_token_id)
        self.tokenizer = _ListTokenizer(strings, {eos_token_id})

    def prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        else:  # the virtual BOS id (vocab_size) may start a prompt given as ids
            from ppl.models.base import _check_ids

            ids = _check_ids([i if i != self.bos_token_id else 0 for i in prompt],
                             self.vocab_size, self.name)
            ids = [self.bos_token_id if i == self.bos_token_id else j
                   for i, j in zip(prompt, ids)]
        return ids or [self.bos_token_id]

    def _row(self, params, last):
        init_row = params["initial"]
        trans_row = params["transition"][jnp.clip(last, 0, self.vocab_size - 1)]
        return jnp.where((last == self.bos_token_id)[..., None], init_row, trans_row)

    def prefill(self, params, prompt_ids, max_len, length=None):
        ids = jnp.asarray(prompt_ids, jnp.int32)
        last = ids[-1] if length is None else jax.lax.dynamic_index_in_dim(ids, length - 1, 0, False)
        return {"last": last[None]}, self._row(params, last)

    def decode_step(self, params, cache, tokens, positions):
        tokens = jnp.asarray(tokens, jnp.int32)
        return {"last": tokens}, self._row(params, tokens)

    def sequence_logprob(self, ids: Sequence[int]) -> float:
        """Exact log p(ids) from an empty prompt (host-side, for oracles)."""
        init = np.asarray(self.params["initial"])
        trans = np.asarray(self.params["transition"])
        lp, last = 0.0, None
        for t in ids:
            lp += float(init[t] if last is None else trans[last, t])
            last = t
        return lp
