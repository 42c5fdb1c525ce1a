"""The GPT-2 family in pure JAX (GPT2LMHeadModel checkpoints: gpt2, distilgpt2, ...).

Learned absolute positions, pre-LayerNorm blocks, fused ``c_attn`` projection stored as
Hugging Face's ``Conv1D`` (``[in, out]``, so ``x @ W`` needs no transpose), ``gelu_new`` MLP and
an LM head tied to the token embedding.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from ppl.models import _common as C
from ppl.models.base import LanguageModel, Vocab

__all__ = ["GPT2LM"]


_cfg = C.config_value


class GPT2LM(C.TransformerLM, LanguageModel):
    """A GPT-2 causal LM over a params pytree (a dict of arrays).

    Args:
        config: the Hugging Face ``GPT2Config`` (or a dict with the same keys).
        params: the pytree made by [convert_state_dict][ppl.models.GPT2LM.convert_state_dict].
        tokenizer: a Hugging Face tokenizer (or anything with ``encode``/``decode``).
        vocab: the [Vocab][ppl.models.Vocab] of ``vocab_size`` entries.
        name: a display name.
        eos_token_id: overrides the config's EOS id.
        bos_token_id: overrides the config's BOS id.
        eos_token_ids: further ids that end a sequence (e.g. from ``generation_config.json``).
        layer_loop: ``"scan"``, ``"unroll"`` or ``"auto"`` (default); see
            [LAYER_LOOPS][ppl.models._common.LAYER_LOOPS].
    """

    def __init__(
        self,
        config,
        params,
        *,
        tokenizer: Any = None,
        vocab: Vocab | None = None,
        name: str = "gpt2",
        eos_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_ids=None,
        layer_loop: str | None = None,
    ):
        self.config = config
        self.n_layers = int(_cfg(config, "n_layer"))
        self.hidden_size = int(_cfg(config, "n_embd"))
        self.n_heads = int(_cfg(config, "n_head"))
        self.head_dim = self.hidden_size // self.n_heads
        self.kv_heads = self.n_heads
        self.max_context = int(_cfg(config, "n_positions"))
        self.eps = float(_cfg(config, "layer_norm_epsilon", 1e-5))
        self.act = C.activation(_cfg(config, "activation_function", "gelu_new"), "GPT-2")
        scale = self.head_dim**-0.5 if _cfg(config, "scale_attn_weights", True) else 1.0
        by_layer = bool(_cfg(config, "scale_attn_by_inverse_layer_idx", False))
        self.scales = [scale / (i + 1) if by_layer else scale for i in range(self.n_layers)]
        self._init_host(config, params, tokenizer=tokenizer, vocab=vocab, name=name,
                        eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                        eos_token_ids=eos_token_ids, layer_loop=layer_loop)

    # ---- weights -----------------------------------------------------------------------
    @staticmethod
    def convert_state_dict(state: Mapping[str, np.ndarray], config, dtype=jnp.float32):
        """Maps a Hugging Face GPT-2 state dict (numpy arrays) to this model's params.

        Accepts names with or without the ``transformer.`` prefix. Extra tensors (the old
        ``attn.bias`` causal-mask buffers) are ignored.
        """
        rd = C.TensorReader(state, "GPT-2", prefixes=("", "transformer."))
        n_layer = int(_cfg(config, "n_layer"))
        C.check_layer_count(rd.keys, r"(?:^|\.)h\.(\d+)\.", n_layer, "GPT-2", "n_layer")
        d = int(_cfg(config, "n_embd"))
        inner = int(_cfg(config, "n_inner") or 4 * d)
        v, npos = int(_cfg(config, "vocab_size")), int(_cfg(config, "n_positions"))

        def get(name, shape, why=""):
            return jnp.asarray(rd.get(name, shape, why), dtype=dtype)

        layers = []
        for i in range(n_layer):
            p = f"h.{i}."
            layers.append(
                {
                    "ln1_g": get(p + "ln_1.weight", (d,), "n_embd"),
                    "ln1_b": get(p + "ln_1.bias", (d,), "n_embd"),
                    "qkv_w": get(p + "attn.c_attn.weight", (d, 3 * d), "n_embd, 3 x n_embd"),
                    "qkv_b": get(p + "attn.c_attn.bias", (3 * d,), "3 x n_embd"),
                    "o_w": get(p + "attn.c_proj.weight", (d, d), "n_embd, n_embd"),
                    "o_b": get(p + "attn.c_proj.bias", (d,), "n_embd"),
                    "ln2_g": get(p + "ln_2.weight", (d,), "n_embd"),
                    "ln2_b": get(p + "ln_2.bias", (d,), "n_embd"),
                    "fc_w": get(p + "mlp.c_fc.weight", (d, inner), "n_embd, n_inner"),
                    "fc_b": get(p + "mlp.c_fc.bias", (inner,), "n_inner"),
                    "proj_w": get(p + "mlp.c_proj.weight", (inner, d), "n_inner, n_embd"),
                    "proj_b": get(p + "mlp.c_proj.bias", (d,), "n_embd"),
                }
            )
        params = {
            "embed": get("wte.weight", (v, d), "vocab_size, n_embd"),
            "pos": get("wpe.weight", (npos, d), "n_positions, n_embd"),
            "layers": layers,
            "lnf_g": get("ln_f.weight", (d,), "n_embd"),
            "lnf_b": get("ln_f.bias", (d,), "n_embd"),
        }
        tied = _cfg(config, "tie_word_embeddings", True)
        if not tied and "lm_head.weight" in rd.keys:
            head = C.TensorReader(state, "GPT-2").get("lm_head.weight", (v, d), "vocab_size, n_embd")
            params["lm_head"] = jnp.asarray(head.T, dtype=dtype)
        return params

    # ---- forward -----------------------------------------------------------------------
    def _block(self, lp, x, scale, attn):
        """One transformer block on ``x [T, D]``; ``attn(q, k, v, scale)`` does attention."""
        t = x.shape[0]
        h = C.layer_norm(x, lp["ln1_g"], lp["ln1_b"], self.eps)
        qkv = h @ lp["qkv_w"] + lp["qkv_b"]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        shape = (t, self.n_heads, self.head_dim)
        a, cache = attn(q.reshape(shape), k.reshape(shape), v.reshape(shape), scale)
        x = x + (a @ lp["o_w"] + lp["o_b"])
        h = C.layer_norm(x, lp["ln2_g"], lp["ln2_b"], self.eps)
        x = x + (self.act(h @ lp["fc_w"] + lp["fc_b"]) @ lp["proj_w"] + lp["proj_b"])
        return x, cache

    def _head(self, params, x):
        h = C.layer_norm(x, params["lnf_g"], params["lnf_b"], self.eps)
        return h, C.log_softmax_f32(C.lm_head(h, params))

    def _prefill(self, params, prompt_ids, max_len: int):
        """The prompt's ``(k, v)`` per layer (``[1, kv_heads, P, hd]`` each) and final-layer
        activations ``[P, D]`` (before the final norm)."""
        C.check_max_len(max_len, self.max_context, self.name)
        ids = jnp.asarray(prompt_ids, jnp.int32)
        n = ids.shape[0]
        if n > max_len:
            raise ValueError(f"{self.name}: a prompt of {n} tokens does not fit a cache of {max_len}.")
        x = params["embed"][ids] + params["pos"][:n]

        def step(lp, x, scale, state, layer):
            def attn(q, k, v, s):
                return C.attend_prefill(q, k, v, s), C.prefix_layer(k, v, self.dtype)

            x, c = self._block(lp, x, scale, attn)
            return x, state, c

        x, _, outs = self._layer_loop(params, x, step, self.scales)
        return self._prefix(params, outs), x

    def decode_step(self, params, cache, tokens, positions, return_hidden: bool = False):
        """See [LanguageModel.decode_step][ppl.models.LanguageModel.decode_step]; ``return_hidden`` adds the final hidden states."""
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        rows, prefix, plen, slots = self._decode_cache(cache, positions)
        x = params["embed"][tokens] + params["pos"][positions]

        def step(lp, x, scale, rows, layer):
            def attn(q, k, v, s):
                return self._attend(q, k, v, rows, prefix, plen, slots, positions, s, None, None,
                                    layer)

            x, rows = self._block(lp, x, scale, attn)
            return x, rows, None

        x, rows, _ = self._layer_loop(params, x, step, self.scales, rows)
        cache = C.SharedCache(rows, cache.shared)
        h, lp_ = self._head(params, x)
        return (cache, lp_, h) if return_hidden else (cache, lp_)
