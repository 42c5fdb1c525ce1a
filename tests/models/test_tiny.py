"""The embedded default model ``ppl.models.load("tiny")`` is a real, small English LM.

It is trained by ``python scripts/train_tiny.py --out models/tiny`` (see docs/tiny_model.md);
these tests check what the rest of the project relies on: it ships within the size budget, its
tokenizer is the 4096-token byte-level BPE with ``<|endoftext|>`` as EOS/BOS and round-trips
text, and it prefers English word order to the same words shuffled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ppl.models  # noqa: E402

TINY = Path(ppl.models.__file__).resolve().parent / "tiny"
VOCAB_SIZE = 4096
EOS = "<|endoftext|>"

# Plain sentences, none copied from the training corpus.
SENTENCES = [
    "The man went to the house and sat down by the fire.",
    "I do not know what you mean by that.",
    "She said that she would come back in the morning.",
    "There is no place like home.",
    "It is better to be happy than to be rich.",
    "What is the name of your father?",
    "The children were playing in the garden all day.",
    "He took the book from the table and began to read.",
]


@pytest.fixture(scope="module")
def lm():
    return ppl.models.load("tiny")


def test_folder_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in TINY.iterdir() if p.is_file()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.txt", "metrics.json"):
        assert name in files, f"models/tiny lacks {name}"
    assert sum(files.values()) <= 25 * 1024 * 1024
    cfg = json.loads((TINY / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["vocab_size"] == VOCAB_SIZE
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # exercises GQA


def test_vocabulary_and_special_tokens(lm):
    tok = lm.tokenizer
    assert lm.vocab_size == VOCAB_SIZE
    assert len(tok) == VOCAB_SIZE
    eos = tok.convert_tokens_to_ids(EOS)
    assert lm.eos_token_id == eos == tok.eos_token_id
    assert tok.bos_token == EOS and tok.eos_token == EOS


@pytest.mark.parametrize("text", [
    "Once upon a time, there was a little model.",
    "  two  spaces,\ttabs\nand newlines\n\n",
    "Unicode: café, naïve, Straße, 東京, emoji 🙂!",
    "The weather today is",
])
def test_tokenizer_round_trips(lm, text):
    ids = lm.tokenizer.encode(text, add_special_tokens=False)
    assert ids and all(0 <= i < VOCAB_SIZE for i in ids)
    assert lm.tokenizer.eos_token_id not in ids
    assert lm.tokenizer.decode(ids) == text
    assert lm.vocab.decode(ids) == text


PROMPT = "Once upon a"


@pytest.fixture(scope="module")
def prompt_logprobs(lm):
    ids = [lm.eos_token_id] + lm.tokenizer.encode(PROMPT, add_special_tokens=False)
    return ids, np.asarray(lm.next_token_logprobs(ids), dtype=np.float64)


def test_next_token_logprobs_is_a_distribution(lm, prompt_logprobs):
    _, lp = prompt_logprobs
    assert lp.shape == (VOCAB_SIZE,)
    assert np.all(np.isfinite(lp))
    assert abs(np.logaddexp.reduce(lp)) < 1e-3
    # " time" is among the likeliest continuations of "Once upon a"
    time_id = lm.tokenizer.encode(" time", add_special_tokens=False)
    assert len(time_id) == 1
    assert int((lp > lp[time_id[0]]).sum()) < 50


def _shuffled(sentence: str, rng: random.Random) -> str:
    words = sentence.split()
    perm = words[:]
    while perm == words:
        rng.shuffle(perm)
    return " ".join(perm)


_BATCH, _LEN = 16, 32  # one padded shape: prefill and decode compile once for the module
_JIT: dict = {}


def _token_logprobs(lm, seqs: list[list[int]]) -> list[np.ndarray]:
    """log p(token | BOS, previous tokens) for every token of every sequence, decoded as one
    batch through the LanguageModel API (prefill BOS once, broadcast, decode step by step)."""
    import jax
    import jax.numpy as jnp

    from ppl.models import broadcast_cache

    assert len(seqs) <= _BATCH and max(map(len, seqs)) <= _LEN
    if "prefill" not in _JIT:
        _JIT["prefill"] = jax.jit(lm.prefill, static_argnums=2)
        _JIT["decode"] = jax.jit(lm.decode_step)
    n = max(map(len, seqs))
    toks = np.zeros((_BATCH, _LEN), np.int32)
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = s
    cache, lp0 = _JIT["prefill"](lm.params, jnp.asarray([lm.eos_token_id], jnp.int32), _LEN + 1)
    cache = broadcast_cache(cache, _BATCH)
    lp = np.broadcast_to(np.asarray(lp0), (_BATCH, lm.vocab_size))
    out = np.zeros((_BATCH, n))
    for t in range(n):
        out[:, t] = lp[np.arange(_BATCH), toks[:, t]]
        if t + 1 < n:
            cache, lp = _JIT["decode"](lm.params, cache, jnp.asarray(toks[:, t]),
                                       jnp.full((_BATCH,), t + 1, jnp.int32))
            lp = np.asarray(lp)
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


def _scores(lm, texts: list[str]) -> np.ndarray:
    """log p(text | BOS), summed over each text's tokens."""
    seqs = [lm.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return np.array([lp.sum() for lp in _token_logprobs(lm, seqs)])


def test_batched_decoding_matches_next_token_logprobs(lm, prompt_logprobs):
    ids, ref = prompt_logprobs
    probe = lm.tokenizer.encode(" time", add_special_tokens=False)[0]
    got = _token_logprobs(lm, [ids[1:] + [probe]])[0]
    assert abs(got[-1] - ref[probe]) < 1e-3 * max(1.0, abs(ref[probe]))


def test_prefers_english_word_order(lm):
    rng = random.Random(0)
    shuffled = [_shuffled(s, rng) for s in SENTENCES]
    scores = _scores(lm, SENTENCES + shuffled)
    real, shuf = scores[: len(SENTENCES)], scores[len(SENTENCES):]
    margins = real - shuf
    assert (margins > 0).sum() >= len(SENTENCES) - 1, margins
    assert margins.mean() > 10.0, margins


def test_eos_is_likelier_after_a_finished_sentence(lm):
    tok, eos = lm.tokenizer, lm.eos_token_id
    done = tok.encode("There is no place like home.", add_special_tokens=False) + [eos]
    open_ = tok.encode("There is no place like", add_special_tokens=False) + [eos]
    lp_done, lp_open = (lp[-1] for lp in _token_logprobs(lm, [done, open_]))
    assert lp_done > lp_open + 2.0, (lp_done, lp_open)


def test_loads_without_transformers_as_transformers_would(tmp_path):
    """``load("tiny")`` reads its config and tokenizer without transformers (whose import pulls
    in PyTorch); the same files loaded through ``AutoConfig``/``AutoTokenizer`` (a copy of the
    folder, which takes the general path) give the same tokenizer, vocabulary and model."""
    import shutil
    import subprocess
    import sys

    code = ("import sys, ppl; ppl.models.load('tiny'); "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

    fast = ppl.models.load("tiny")
    copy = tmp_path / "tiny-copy"
    shutil.copytree(TINY, copy)
    slow = ppl.models.load(copy)
    assert type(fast.tokenizer).__name__ == "TokenizersTokenizer"
    assert type(slow.tokenizer).__name__ != "TokenizersTokenizer"
    assert fast.vocab.token_bytes == slow.vocab.token_bytes
    assert fast.vocab.special_ids == slow.vocab.special_ids
    for attr in ("eos_token_id", "eos_token_ids", "bos_token_id", "add_bos_token", "vocab_size",
                 "max_context", "eps", "scale", "n_layers", "head_dim", "kv_heads"):
        assert getattr(fast, attr) == getattr(slow, attr), attr
    np.testing.assert_array_equal(fast.layer_windows, slow.layer_windows)
    np.testing.assert_array_equal(np.asarray(fast.inv_freq), np.asarray(slow.inv_freq))
    assert fast.rope_attention_scaling == slow.rope_attention_scaling
    assert len(fast.tokenizer) == len(slow.tokenizer)
    assert fast.tokenizer.all_special_ids == sorted(slow.tokenizer.all_special_ids)
    texts = SENTENCES + ["  two  spaces\tand a tab\n", "<|endoftext|>inside", "ünïcödé ✓ 日本", ""]
    for text in texts:
        for special in (False, True):
            assert fast.tokenizer.encode(text, add_special_tokens=special) == list(
                slow.tokenizer.encode(text, add_special_tokens=special)), (text, special)
        assert fast.prompt_ids(text) == slow.prompt_ids(text)
    ids = fast.encode(SENTENCES[0])
    assert fast.tokenizer.convert_ids_to_tokens(ids) == slow.tokenizer.convert_ids_to_tokens(ids)
    assert fast.tokenizer.convert_tokens_to_ids(EOS) == slow.tokenizer.convert_tokens_to_ids(EOS)
    # Anything else is the full tokenizer's, loaded on first use.
    assert fast.tokenizer(SENTENCES[1])["input_ids"] == slow.tokenizer(SENTENCES[1])["input_ids"]
    assert fast.tokenizer.batch_decode([ids]) == slow.tokenizer.batch_decode([ids])
    np.testing.assert_array_equal(fast.next_token_logprobs(ids), slow.next_token_logprobs(ids))
