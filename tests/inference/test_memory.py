"""The up-front memory estimate of ``ppl.infer`` and its refusal of runs that cannot fit.

The KV cache holds each prompt once (layers x 2 (k and v) x kv_heads x head_dim x prompt bucket
x 4 (float32), plus its length) and, per particle, the generated positions (the same with
max_tokens, rounded up to whole attention blocks); the estimate adds the weights and one
step's buffers (N x V x 4 float32 arrays) and is checked against available host memory before
anything is allocated.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ppl  # noqa: E402
from ppl.inference import driver  # noqa: E402
from ppl.inference.engine import prepare, prompt_bucket  # noqa: E402

GIB = 2.0**30


def _param_bytes(lm) -> int:
    import jax

    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(lm.params)))


def _check_formula(lm, layers, kv_heads, head_dim, prompt, max_tokens, n):
    setup = prepare(ppl.steer(lm, prompt, max_tokens=max_tokens))
    # The cache holds the prompt's bucket (prompts are padded to share executables).
    max_len = prompt_bucket(len(lm.prompt_ids(prompt)), max_tokens, lm.max_context) + max_tokens
    assert setup.max_len == max_len
    assert lm.init_cache_bytes(max_len) == layers * 2 * kv_heads * head_dim * max_len * 4
    from ppl.models._common import generated_capacity

    prompt_kv = layers * 2 * kv_heads * head_dim * setup.prompt_len * 4 + 4
    per_particle = layers * 2 * kv_heads * head_dim * generated_capacity(max_tokens) * 4
    est = driver.estimate_bytes(setup, n)
    assert est["kv_prompt"] == prompt_kv and est["kv_rows"] == n * per_particle
    assert est["kv_cache"] == prompt_kv + n * per_particle
    assert est["weights"] == _param_bytes(lm)
    assert est["step_buffers"] == n * lm.vocab_size * 12 * 4
    assert est["runtime"] == driver.RUNTIME_BYTES
    assert est["total"] == est["weights"] + est["kv_cache"] + est["step_buffers"] + est["runtime"]
    return est


def test_estimate_formula_tiny_model():
    lm = ppl.models.load("tiny")
    cfg = json.loads((lm_folder("tiny") / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    _check_formula(lm, cfg["num_hidden_layers"], cfg["num_key_value_heads"], head_dim,
                   "Once upon a time", 24, 16)


def lm_folder(name):
    from ppl.models.loading import resolve

    return resolve(name)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 (4 heads of 8) with the embedded model's tokenizer."""
    from transformers import AutoTokenizer

    from tests.models.conftest import random_checkpoint

    tok = AutoTokenizer.from_pretrained(str(lm_folder("tiny")))
    folder = random_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2"), tok, n_positions=64,
                               n_embd=32, n_layer=2, n_head=4)
    return ppl.models.load(str(folder))


def test_estimate_formula_tiny_gpt2(tiny_gpt2):
    est = _check_formula(tiny_gpt2, 2, 4, 8, "hello world", 10, 32)
    bucket = prompt_bucket(len(tiny_gpt2.prompt_ids("hello world")), 10, tiny_gpt2.max_context)
    assert est["kv_cache"] == 2 * 2 * 4 * 8 * bucket * 4 + 4 + 32 * 2 * 2 * 4 * 8 * 10 * 4


def test_refusal_names_the_numbers(tiny_gpt2, monkeypatch):
    avail = 1 * GIB
    monkeypatch.setattr(driver, "_available_bytes", lambda: avail)
    prog = ppl.steer(tiny_gpt2, "hello world", max_tokens=10)
    setup = prepare(prog)
    n = 10_000_000
    est = driver.estimate_bytes(setup, n)
    assert est["total"] > 0.9 * avail
    with pytest.raises(MemoryError) as info:
        ppl.infer(prog, particles=n)
    msg = str(info.value)
    assert f"needs about {est['total'] / GIB:.2f} GiB" in msg
    assert (f"prompt KV cache {est['kv_prompt'] / GIB:.2f} GiB once for 1 prompt(s) of "
            f"{setup.prompt_len} positions") in msg
    assert (f"generated KV cache {est['kv_rows'] / GIB:.2f} GiB for {n} particles x "
            f"{setup.max_tokens} positions") in msg
    assert f"only {avail / GIB:.2f} GiB is available" in msg
    assert "Lower the number of particles" in msg and "max_tokens" in msg
    # The suggested particle count fits (step buffers included) and one more would not... much.
    fit = int(re.search(r"at most ~(\d+) fit", msg).group(1))
    assert fit > 0
    assert driver.estimate_bytes(setup, fit)["total"] <= 0.9 * avail
    assert driver.estimate_bytes(setup, fit + 1)["total"] > 0.9 * avail
    # A run that fits is not refused.
    res = ppl.infer(prog, particles=4, seed=0)
    assert res.tokens.shape[0] == 4


def test_no_refusal_for_small_runs(tiny_gpt2):
    est = driver.check_memory(prepare(ppl.steer(tiny_gpt2, "hi", max_tokens=4)), 8)
    assert est["total"] - est["runtime"] < 0.01 * GIB
