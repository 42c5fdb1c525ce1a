"""The Llama family in pure JAX: Llama 2/3, Qwen2, SmolLM, TinyLlama (and their kin).

RMSNorm, rotary position embeddings (``rope_theta``; ``rope_scaling`` of type ``linear`` or
``llama3``), grouped-query attention, a SwiGLU MLP, optional q/k/v(/o) biases (Qwen2,
``attention_bias``) and tied or untied embeddings. The q/k/v and gate/up projections are fused
into one matrix each at load time: one matmul instead of three (two) per layer and step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from ppl.models import _common as C
from ppl.models.base import LanguageModel, Vocab

__all__ = ["LlamaLM", "rope_inv_freq", "SUPPORTED_ROPE_TYPES"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


_cfg = C.config_value


def _rope_params(config) -> dict:
    """The RoPE settings of a config, from transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling`` pair."""
    rp = _cfg(config, "rope_parameters")
    if rp is not None and not isinstance(rp, Mapping):
        rp = dict(rp)
    out: dict = {}
    if rp:
        if all(isinstance(v, Mapping) for v in rp.values()):
            raise ValueError(
                "Llama: per-layer-type RoPE parameters are not supported (one set for all layers)."
            )
        out.update(rp)
    scaling = _cfg(config, "rope_scaling")
    if scaling and not rp:
        out.update(dict(scaling))
    if "rope_theta" not in out:
        out["rope_theta"] = _cfg(config, "rope_theta", 10000.0) or 10000.0
    rtype = out.get("rope_type", out.get("type")) or "default"
    out["rope_type"] = rtype
    return out


def rope_inv_freq(config, head_dim: int) -> tuple[np.ndarray, float]:
    """``(inv_freq float32[head_dim // 2], attention_scaling)`` as transformers computes them.

    Raises:
        ValueError: for a ``rope_scaling`` type other than ``linear`` or ``llama3``.
    """
    rp = _rope_params(config)
    rtype = rp["rope_type"]
    if rtype not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"Llama: unsupported rope_scaling type {rtype!r}; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}."
        )
    if float(rp.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("Llama: partial_rotary_factor != 1 is not supported.")
    base = float(rp["rope_theta"])
    # float32 arithmetic, as transformers does, so the angles match to the last bit we can.
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(base) ** exps)).astype(np.float32)
    if rtype == "linear":
        inv_freq = inv_freq / np.float32(rp["factor"])
    elif rtype == "llama3":
        factor = float(rp["factor"])
        low, high = float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
        old = float(rp.get("original_max_position_embeddings") or _cfg(config, "max_position_embeddings"))
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq.astype(np.float32), 1.0


def _rope(x, positions, inv_freq):
    """Rotates ``x [T, heads, hd]`` by ``positions [T]`` (Hugging Face's rotate-half layout)."""
    ang = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    cos = jnp.cos(ang)[:, None, :]
    sin = jnp.sin(ang)[:, None, :]
    half = x.shape[-1] // 2
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class LlamaLM(C.TransformerLM, LanguageModel):
    """A Llama-family causal LM over a params pytree (a dict of arrays).

    Args:
        config: the Hugging Face ``LlamaConfig``/``Qwen2Config`` (or a dict with those keys).
        params: the pytree made by :meth:`convert_state_dict`.
        tokenizer: a Hugging Face tokenizer (or anything with ``encode``/``decode``).
        vocab: the :class:`Vocab` of ``vocab_size`` entries.
        name: a display name.
        eos_token_id: overrides the config's EOS id.
        bos_token_id: overrides the config's BOS id.
    """

    def __init__(
        self,
        config,
        params,
        *,
        tokenizer: Any = None,
        vocab: Vocab | None = None,
        name: str = "llama",
        eos_token_id: int | None = None,
        bos_token_id: int | None = None,
    ):
        self.config = config
        self.n_layers = int(_cfg(config, "num_hidden_layers"))
        self.hidden_size = int(_cfg(config, "hidden_size"))
        self.n_heads = int(_cfg(config, "num_attention_heads"))
        self.kv_heads = int(_cfg(config, "num_key_value_heads") or self.n_heads)
        self.head_dim = int(_cfg(config, "head_dim") or self.hidden_size // self.n_heads)
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"Llama: {self.n_heads} attention heads are not a multiple of "
                f"{self.kv_heads} key/value heads."
            )
        if _cfg(config, "use_sliding_window", False):
            raise ValueError("Llama/Qwen2: sliding-window attention is not supported.")
        self.max_context = int(_cfg(config, "max_position_embeddings"))
        self.eps = float(_cfg(config, "rms_norm_eps", 1e-6))
        self.act = C.activation(_cfg(config, "hidden_act", "silu"), "Llama")
        inv_freq, self.rope_attention_scaling = rope_inv_freq(config, self.head_dim)
        self.inv_freq = inv_freq
        self.scale = self.head_dim**-0.5
        self._init_host(config, params, tokenizer=tokenizer, vocab=vocab, name=name,
                        eos_token_id=eos_token_id, bos_token_id=bos_token_id)

    # ---- weights -----------------------------------------------------------------------
    @staticmethod
    def convert_state_dict(state: Mapping[str, np.ndarray], config, dtype=jnp.float32):
        """Maps a Hugging Face Llama/Qwen2 state dict (numpy arrays) to this model's params.

        Linear weights (``[out, in]`` in PyTorch) are transposed to ``[in, out]`` and q/k/v and
        gate/up fused, so the forward pass is ``x @ W`` with no transposes.
        """
        keys = set(state.keys())

        def find(name):
            for k in ("model." + name, name):
                if k in keys:
                    return k
            return None

        def get(name, transpose=False):
            k = find(name)
            if k is None:
                raise ValueError(f"Llama checkpoint: tensor {name!r} is missing.")
            a = np.asarray(state[k])
            return a.T if transpose else a

        def bias(name, size):
            k = find(name)
            return np.zeros((size,), np.float32) if k is None else np.asarray(state[k])

        n_layer = int(_cfg(config, "num_hidden_layers"))
        j = lambda a: jnp.asarray(a, dtype=dtype)  # noqa: E731
        layers = []
        for i in range(n_layer):
            p = f"layers.{i}."
            qw = get(p + "self_attn.q_proj.weight", True)
            kw = get(p + "self_attn.k_proj.weight", True)
            vw = get(p + "self_attn.v_proj.weight", True)
            lp = {
                "ln1": j(get(p + "input_layernorm.weight")),
                "qkv_w": j(np.concatenate([qw, kw, vw], axis=1)),
                "o_w": j(get(p + "self_attn.o_proj.weight", True)),
                "ln2": j(get(p + "post_attention_layernorm.weight")),
                "gu_w": j(
                    np.concatenate(
                        [get(p + "mlp.gate_proj.weight", True), get(p + "mlp.up_proj.weight", True)],
                        axis=1,
                    )
                ),
                "down_w": j(get(p + "mlp.down_proj.weight", True)),
            }
            if any(find(p + f"self_attn.{n}_proj.bias") for n in "qkv"):
                lp["qkv_b"] = j(
                    np.concatenate(
                        [
                            bias(p + "self_attn.q_proj.bias", qw.shape[1]),
                            bias(p + "self_attn.k_proj.bias", kw.shape[1]),
                            bias(p + "self_attn.v_proj.bias", vw.shape[1]),
                        ]
                    )
                )
            if find(p + "self_attn.o_proj.bias"):
                lp["o_b"] = j(get(p + "self_attn.o_proj.bias"))
            if find(p + "mlp.gate_proj.bias") or find(p + "mlp.up_proj.bias"):
                inter = lp["gu_w"].shape[1] // 2
                lp["gu_b"] = j(
                    np.concatenate(
                        [bias(p + "mlp.gate_proj.bias", inter), bias(p + "mlp.up_proj.bias", inter)]
                    )
                )
            if find(p + "mlp.down_proj.bias"):
                lp["down_b"] = j(get(p + "mlp.down_proj.bias"))
            layers.append(lp)
        params = {"embed": j(get("embed_tokens.weight")), "layers": layers, "norm": j(get("norm.weight"))}
        if not _cfg(config, "tie_word_embeddings", False):
            if "lm_head.weight" not in keys:
                raise ValueError(
                    "Llama checkpoint: tie_word_embeddings is false but tensor 'lm_head.weight' "
                    "is missing."
                )
            params["lm_head"] = j(np.asarray(state["lm_head.weight"]).T)
        return params

    # ---- forward -----------------------------------------------------------------------
    def _block(self, lp, x, positions, attn):
        t = x.shape[0]
        hd, h_, kvh = self.head_dim, self.n_heads, self.kv_heads
        h = C.rms_norm(x, lp["ln1"], self.eps)
        qkv = h @ lp["qkv_w"]
        if "qkv_b" in lp:
            qkv = qkv + lp["qkv_b"]
        q = qkv[:, : h_ * hd].reshape(t, h_, hd)
        k = qkv[:, h_ * hd : (h_ + kvh) * hd].reshape(t, kvh, hd)
        v = qkv[:, (h_ + kvh) * hd :].reshape(t, kvh, hd)
        inv_freq = jnp.asarray(self.inv_freq)
        q = _rope(q, positions, inv_freq)
        k = _rope(k, positions, inv_freq)
        a, cache = attn(q, k, v)
        o = a @ lp["o_w"]
        if "o_b" in lp:
            o = o + lp["o_b"]
        x = x + o
        h = C.rms_norm(x, lp["ln2"], self.eps)
        gu = h @ lp["gu_w"]
        if "gu_b" in lp:
            gu = gu + lp["gu_b"]
        g, u = jnp.split(gu, 2, axis=-1)
        m = (self.act(g) * u) @ lp["down_w"]
        if "down_b" in lp:
            m = m + lp["down_b"]
        return x + m, cache

    def _head(self, params, x):
        h = C.rms_norm(x, params["norm"], self.eps)
        return h, C.log_softmax_f32(C.lm_head(h, params))

    def _prefill(self, params, prompt_ids, max_len: int):
        """Cache and final-layer activations ``[P, D]`` (before the final norm)."""
        C.check_max_len(max_len, self.max_context, self.name)
        ids = jnp.asarray(prompt_ids, jnp.int32)
        n = ids.shape[0]
        if n > max_len:
            raise ValueError(f"{self.name}: a prompt of {n} tokens does not fit a cache of {max_len}.")
        positions = jnp.arange(n, dtype=jnp.int32)
        x = params["embed"][ids]
        caches = []
        for lp in params["layers"]:
            empty = C.empty_layer_cache(1, self.kv_heads, max_len, self.head_dim, self.dtype)

            def attn(q, k, v, empty=empty):
                return C.attend_prefill(q, k, v, self.scale), C.write_prefill(empty, k, v)

            x, c = self._block(lp, x, positions, attn)
            caches.append(c)
        return tuple(caches), x

    def decode_step(self, params, cache, tokens, positions, return_hidden: bool = False):
        """See :meth:`LanguageModel.decode_step`; ``return_hidden`` adds the final hidden states."""
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        x = params["embed"][tokens]
        new = []
        for lp, c in zip(params["layers"], cache):

            def attn(q, k, v, c=c):
                c = C.write_decode(c, k, v, positions)
                return C.attend_decode(q, c, positions, self.scale), c

            x, c = self._block(lp, x, positions, attn)
            new.append(c)
        h, lp_ = self._head(params, x)
        return (tuple(new), lp_, h) if return_hidden else (tuple(new), lp_)
