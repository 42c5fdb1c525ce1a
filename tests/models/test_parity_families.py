"""The Llama-family variants vs transformers' PyTorch implementations, on random checkpoints.

Same method as ``test_parity.py``: a randomly initialised PyTorch model is saved with
``save_pretrained`` (safetensors), loaded with [ppl.models.load][ppl.models.load], and the
next-token log-probabilities are compared at every position, through ``prefill`` +
incremental ``decode_step`` and through ``next_token_logprobs``. Each case turns on what makes
its architecture differ from Llama, at sizes where it matters:

* Mistral: a sliding window of 4 positions on a 12-token sequence (so most keys fall out of
  it), a ``head_dim`` different from ``hidden_size / heads``;
* Qwen3: q/k RMSNorms, sliding windows on layers ``>= max_window_layers`` only;
* Gemma 2: ``(1 + w)`` norms, sandwich norms, sqrt(D) embedding scale, GeGLU, soft-capping of
  attention scores (cap 2) and logits (cap 3), chosen small so the caps bend the values,
  ``query_pre_attn_scalar`` different from ``head_dim``, alternating sliding/full layers;
* Phi-3: fused ``qkv_proj`` / ``gate_up_proj`` tensors, a sliding window, partial rotary
  embeddings (half of each head rotated).

Tolerance: 1e-4 (nats) in float32, as for the other architectures: both sides compute in
float32 with different summation orders, whose rounding differences (~1e-6 relative per op
over 2 layers) stay far below it, while any semantic difference (a mask off by one position,
a missing norm, a wrong cap) moves log-probabilities by 1e-2 or more on these peaked weights.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.parity

TOL = 1e-4
SEQ = 12


def _case(name, bpe_tok, sp_tok):
    import transformers as T

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if name == "mistral_window":
        tok = sp_tok
        cfg = T.MistralConfig(vocab_size=len(tok), head_dim=24, sliding_window=4, rope_theta=1000.0,
                              tie_word_embeddings=False, **common)
        return T.MistralForCausalLM, cfg, tok
    if name == "qwen3_qknorm_window":
        tok = bpe_tok
        cfg = T.Qwen3Config(vocab_size=len(tok), head_dim=16, use_sliding_window=True, sliding_window=4,
                            max_window_layers=1, tie_word_embeddings=True, **common)
        return T.Qwen3ForCausalLM, cfg, tok
    if name == "gemma2_caps_alternating":
        tok = sp_tok
        cfg = T.Gemma2Config(vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=24,
                             sliding_window=4, attn_logit_softcapping=2.0,
                             final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh",
                             **common)
        return T.Gemma2ForCausalLM, cfg, tok
    if name == "phi3_fused_partial":
        tok = sp_tok
        cfg = T.Phi3Config(vocab_size=len(tok), sliding_window=5, partial_rotary_factor=0.5,
                           tie_word_embeddings=False, pad_token_id=0, **common)
        return T.Phi3ForCausalLM, cfg, tok
    raise ValueError(name)


CASES = ["mistral_window", "qwen3_qknorm_window", "gemma2_caps_alternating", "phi3_fused_partial"]


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory, helpers, bpe_tokenizer, sp_tokenizer):
    torch = pytest.importorskip("torch")
    cls, cfg, tok = _case(request.param, bpe_tokenizer, sp_tokenizer)
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    cfg.architectures = [cls.__name__]
    cfg._attn_implementation = "eager"  # the reference: softcapping needs eager attention
    torch.manual_seed(0)
    model = cls(cfg).eval()
    helpers.randomize(model, seed=1)
    folder = helpers.save(model, tok, tmp_path_factory.mktemp(request.param))
    return request.param, model, folder, tok


def _torch_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1).numpy()


def test_variant_switches_are_on(case):
    """The loaded model uses the feature the case is about (so parity is not vacuous)."""
    import ppl.models as M
    from ppl.models._common import GLOBAL_WINDOW

    name, model, folder, tok = case
    lm = M.load(folder)
    windows = list(lm.layer_windows)
    if name == "mistral_window":
        assert lm.family.name == "mistral" and windows == [4, 4] and lm.head_dim == 24
    elif name == "qwen3_qknorm_window":
        assert lm.family.qk_norm and "q_norm" in lm.params["layers"][0]
        assert windows == [GLOBAL_WINDOW, 4]
    elif name == "gemma2_caps_alternating":
        assert lm.family.gemma and windows == [4, GLOBAL_WINDOW]
        assert (lm.attn_softcap, lm.final_softcap) == (2.0, 3.0)
        assert lm.scale == pytest.approx(24**-0.5) and lm.embed_scale == pytest.approx(8.0)
        assert "lm_head" not in lm.params  # tied
    elif name == "phi3_fused_partial":
        assert lm.family.fused and windows == [5, 5] and lm.inv_freq.shape == (lm.head_dim // 4,)


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
def test_logprobs_match_pytorch(case, layer_loop):
    """Both layer loops (a Python loop XLA unrolls; ``lax.scan`` over stacked layers, with
    per-layer windows/scales as scanned data) against PyTorch."""
    import jax
    import jax.numpy as jnp

    import ppl.models as M

    name, model, folder, tok = case
    lm = M.load(folder, layer_loop=layer_loop)
    assert lm.vocab_size == model.config.vocab_size and lm.vocab.size == lm.vocab_size
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(3, len(tok), size=SEQ)]
    ref = _torch_logprobs(model, ids)
    # The references are far from uniform, so a 1e-4 agreement is informative.
    assert (ref.max(-1) - ref.min(-1)).min() > 2.0

    got = lm.next_token_logprobs(ids)
    np.testing.assert_allclose(got, ref[-1], atol=TOL, rtol=0)

    full = np.asarray(jax.jit(lm.forward)(lm.params, jnp.asarray(ids)))
    np.testing.assert_allclose(full, ref, atol=TOL, rtol=0)

    p = 3
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
    ids = list(range(5, 5 + SEQ))
    _, _, h = lm.prefill(lm.params, np.asarray(ids, np.int32), 16, return_hidden=True)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(np.asarray(h), ref, atol=1e-4, rtol=1e-4)
