"""JAX models vs transformers' PyTorch implementations on tiny random checkpoints.

Each case saves a randomly initialised PyTorch model with ``save_pretrained`` (safetensors),
loads the folder with [ppl.models.load][] and compares next-token log-probabilities at every
position, both through ``prefill`` + incremental ``decode`` and through
``next_token_logprobs``. Tolerance: 1e-4 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.parity

TOL = 1e-4
SEQ = 12


def _case(name, tokenizers):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    gpt2_tok, bpe_tok, sp_tok = tokenizers
    if name == "gpt2":
        tok = gpt2_tok
        # Per-layer attention scales (1 / layer), so the scanned layer loop is checked with a
        # per-layer value that differs between layers.
        cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         scale_attn_by_inverse_layer_idx=True)
        return GPT2LMHeadModel, cfg, tok, None
    if name == "llama_gqa_untied":
        tok = sp_tok
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=False, rope_theta=500.0,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM, cfg, tok, None
    if name == "llama_tied_llama3_sharded":
        tok = bpe_tok
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                          max_position_embeddings=64, tie_word_embeddings=True,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16},
                          rope_theta=50000.0,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM, cfg, tok, "40KB"
    if name == "llama_linear_bias":
        tok = bpe_tok
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=False,
                          rope_scaling={"rope_type": "linear", "factor": 2.0},
                          attention_bias=True, mlp_bias=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM, cfg, tok, None
    if name == "qwen2_padded":
        tok = bpe_tok
        cfg = Qwen2Config(vocab_size=len(tok) + 20, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return Qwen2ForCausalLM, cfg, tok, None
    raise ValueError(name)


CASES = ["gpt2", "llama_gqa_untied", "llama_tied_llama3_sharded", "llama_linear_bias", "qwen2_padded"]


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory, helpers, gpt2_tokenizer, bpe_tokenizer, sp_tokenizer):
    torch = pytest.importorskip("torch")
    cls, cfg, tok, shard = _case(request.param, (gpt2_tokenizer, bpe_tokenizer, sp_tokenizer))
    torch.manual_seed(0)
    cfg.architectures = [cls.__name__]
    model = cls(cfg).eval()
    helpers.randomize(model, seed=1)
    folder = helpers.save(model, tok, tmp_path_factory.mktemp(request.param), shard)
    return request.param, model, folder, tok


def _torch_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1).numpy()


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
def test_logprobs_match_pytorch(case, layer_loop):
    """Both layer loops (a Python loop XLA unrolls; ``lax.scan`` over stacked layers, with
    per-layer windows/scales as scanned data) against PyTorch."""
    import jax
    import jax.numpy as jnp

    import ppl.models as M

    name, model, folder, tok = case
    if name == "llama_tied_llama3_sharded":
        assert (folder / "model.safetensors.index.json").is_file(), "checkpoint was not sharded"
    lm = M.load(folder, layer_loop=layer_loop)
    assert lm.vocab_size == model.config.vocab_size
    assert lm.tokenizer is not None and len(lm.tokenizer) == len(tok)
    assert lm.eos_token_id == tok.eos_token_id
    assert lm.vocab.size == lm.vocab_size

    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(3, len(tok), size=SEQ)]
    ref = _torch_logprobs(model, ids)

    # next_token_logprobs: the host-side one-shot API.
    got = lm.next_token_logprobs(ids)
    assert got.shape == (lm.vocab_size,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref[-1], atol=TOL, rtol=0)

    # prefill of a prefix, then token-by-token decode (batch of one).
    p = 4
    cache, lp = jax.jit(lambda prm, x: lm.prefill(prm, x, 16))(lm.params, jnp.asarray(ids[:p]))
    np.testing.assert_allclose(np.asarray(lp), ref[p - 1], atol=TOL, rtol=0)
    step = jax.jit(lm.decode_step)
    for t in range(p, SEQ):
        cache, lp = step(lm.params, cache, jnp.asarray([ids[t]]), jnp.asarray([t]))
        np.testing.assert_allclose(np.asarray(lp[0]), ref[t], atol=TOL, rtol=0)


def test_hidden_state_matches_pytorch(case):
    import torch

    import ppl.models as M

    name, model, folder, tok = case
    lm = M.load(folder)
    ids = list(range(5, 12))
    _, _, h = lm.prefill(lm.params, np.asarray(ids, np.int32), 16, return_hidden=True)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(np.asarray(h), ref, atol=TOL, rtol=0)
