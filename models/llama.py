"""The Llama-family decoder in pure JAX: one block, configured per architecture.

Llama 2/3, SmolLM, TinyLlama, Mistral, Qwen2, Qwen3, Gemma 2 and Phi-3 are the same decoder:
pre-norm blocks of RMSNorm, grouped-query attention with rotary position embeddings and a
gated MLP. They differ in a few switches, all read from the config into a
[Family][ppl.models.llama.Family] and model-level fields (the same for every layer):

* q/k/v(/o) biases (Qwen2, ``attention_bias``) and MLP biases (``mlp_bias``);
* RMSNorm of each query and key head before RoPE (Qwen3, ``qk_norm``);
* Gemma 2: ``(1 + w)`` RMSNorm in float32, embeddings scaled by ``sqrt(hidden_size)``, extra
  norms after attention and after the MLP ("sandwich" norms), attention scale
  ``query_pre_attn_scalar ** -0.5``, soft-capping of attention scores and of the final logits
  (``cap * tanh(x / cap)``), a GeGLU MLP (``gelu_pytorch_tanh`` gate);
* Phi-3 stores q/k/v and gate/up already fused (``qkv_proj``, ``gate_up_proj``);
* rotary embeddings on a fraction of each head (``partial_rotary_factor``), with ``linear`` or
  ``llama3`` scaling.

What differs between layers is data, not code: the sliding window of each layer
(``layer_windows``, an ``int32[n_layers]`` array: Mistral's window on every layer, Gemma 2's on
every other one, Qwen's on layers past ``max_window_layers``, and
``GLOBAL_WINDOW`` (``ppl.models._common``) for full attention). Every layer runs the
same function of (its parameters, its window), so the layers can later be stacked and run with
``lax.scan``.

The q/k/v and gate/up projections are fused into one matrix each at load time: one matmul
instead of three (two) per layer and step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from ppl.models import _common as C
from ppl.models.base import LanguageModel, Vocab

__all__ = ["FAMILIES", "Family", "LlamaLM", "SUPPORTED_ROPE_TYPES", "layer_windows", "rope_inv_freq"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


_cfg = C.config_value


@dataclasses.dataclass(frozen=True)
class Family:
    """How one architecture of the Llama family differs from Llama (the same for all layers).

    Attributes:
        name: the Hugging Face ``model_type``.
        label: display name in messages.
        fused: the checkpoint stores ``qkv_proj`` and ``gate_up_proj`` (Phi-3).
        qk_norm: per-head RMSNorm of queries and keys before RoPE (Qwen3).
        gemma: Gemma 2's norms, embedding scale, attention scale and soft-capping.
        windows: where sliding windows come from: ``"none"`` (the architecture has none),
            ``"all"`` (``sliding_window`` on every layer: Mistral, Phi-3), ``"qwen"``
            (``layer_types``, else layers ``>= max_window_layers`` when
            ``use_sliding_window``) or ``"alternate"`` (``layer_types``, else every other layer
            starting with the first: Gemma 2).
        tied_default: ``tie_word_embeddings`` when the config does not say.
    """

    name: str
    label: str
    fused: bool = False
    qk_norm: bool = False
    gemma: bool = False
    windows: str = "none"
    tied_default: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "Llama"),
    "mistral": Family("mistral", "Mistral", windows="all"),
    "qwen2": Family("qwen2", "Qwen2", windows="qwen"),
    "qwen3": Family("qwen3", "Qwen3", qk_norm=True, windows="qwen"),
    "gemma2": Family("gemma2", "Gemma 2", gemma=True, windows="alternate", tied_default=True),
    "phi3": Family("phi3", "Phi-3", fused=True, windows="all"),
}


def _family(config, family: Family | str | None) -> Family:
    if isinstance(family, Family):
        return family
    name = family or _cfg(config, "model_type") or "llama"
    if name not in FAMILIES:
        raise ValueError(
            f"LlamaLM: unsupported model_type {name!r}; this decoder implements "
            f"{', '.join(FAMILIES)}."
        )
    return FAMILIES[name]


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
    if "partial_rotary_factor" not in out and _cfg(config, "partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = _cfg(config, "partial_rotary_factor")
    rtype = out.get("rope_type", out.get("type")) or "default"
    out["rope_type"] = rtype
    return out


def rope_inv_freq(config, head_dim: int) -> tuple[np.ndarray, float]:
    """``(inv_freq float32[rotary_dim // 2], attention_scaling)`` as transformers computes them.

    ``rotary_dim = int(head_dim * partial_rotary_factor)``: only the first ``rotary_dim``
    features of each head are rotated (all of them unless the config says otherwise).

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
    dim = int(head_dim * float(rp.get("partial_rotary_factor", 1.0) or 1.0))
    if dim <= 0 or dim % 2:
        raise ValueError(
            f"Llama: partial_rotary_factor {rp.get('partial_rotary_factor')} gives a rotary "
            f"dimension of {dim} for heads of {head_dim}; it must be even and positive."
        )
    base = float(rp["rope_theta"])
    # float32 arithmetic, as transformers does, so the angles match to the last bit we can.
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
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


def layer_windows(config, family: Family | str | None = None) -> np.ndarray:
    """``int32[n_layers]``: each layer's sliding window, as transformers decides it.

    A layer with window ``w`` lets position ``i`` attend to positions ``j`` with
    ``i - w < j <= i``; full-attention layers get ``GLOBAL_WINDOW`` (``ppl.models._common``).

    Raises:
        ValueError: ``layer_types`` of the wrong length or with an unknown entry, or a Llama
            config carrying a ``sliding_window`` (a Mistral checkpoint labelled Llama: running
            it without its window would silently change its outputs).
    """
    fam = _family(config, family)
    n = int(_cfg(config, "num_hidden_layers"))
    out = np.full(n, C.GLOBAL_WINDOW, np.int32)
    sw = _cfg(config, "sliding_window")
    if fam.windows == "qwen" and not _cfg(config, "use_sliding_window", False):
        sw = None  # Qwen configs carry a window that is off unless use_sliding_window
    if fam.windows == "none":
        max_pos = _cfg(config, "max_position_embeddings")
        if sw is not None and (max_pos is None or int(sw) < int(max_pos)):
            raise ValueError(
                f"{fam.label}: config.json sets sliding_window={sw}, but architecture "
                f"{fam.label} has no sliding-window attention, so the model would attend beyond "
                "its window and give wrong probabilities. If this is a Mistral checkpoint, set "
                '"architectures": ["MistralForCausalLM"] and "model_type": "mistral" in config.json.'
            )
        return out
    if sw is None or int(sw) <= 0:
        return out
    sw = int(sw)
    types = _cfg(config, "layer_types")
    if types:
        types = list(types)
        if len(types) != n:
            raise ValueError(
                f"{fam.label}: config.json lists {len(types)} layer_types for {n} layers."
            )
        bad = sorted(set(types) - {"sliding_attention", "full_attention"})
        if bad:
            raise ValueError(
                f"{fam.label}: unsupported layer_types {bad}; supported: sliding_attention, "
                "full_attention."
            )
        sliding = [t == "sliding_attention" for t in types]
    elif fam.windows == "alternate":
        sliding = [bool((i + 1) % 2) for i in range(n)]
    elif fam.windows == "qwen":
        first = int(_cfg(config, "max_window_layers", n) or 0)
        sliding = [i >= first for i in range(n)]
    else:
        sliding = [True] * n
    out[np.asarray(sliding, bool)] = sw
    return out


def _rope(x, positions, inv_freq):
    """Rotates the first ``2 * len(inv_freq)`` features of ``x [T, heads, hd]`` by
    ``positions [T]`` (Hugging Face's rotate-half layout); the rest pass unchanged."""
    ang = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    cos = jnp.cos(ang)[:, None, :]
    sin = jnp.sin(ang)[:, None, :]
    rot = 2 * inv_freq.shape[0]
    half = rot // 2
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:rot].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    if rot == x.shape[-1]:
        return out
    return jnp.concatenate([out, x[..., rot:]], axis=-1)


class LlamaLM(C.TransformerLM, LanguageModel):
    """A Llama-family causal LM over a params pytree (a dict of arrays).

    Args:
        config: the Hugging Face config (``LlamaConfig``, ``MistralConfig``, ``Qwen2Config``,
            ``Qwen3Config``, ``Gemma2Config``, ``Phi3Config``) or a dict with those keys.
        params: the pytree made by [convert_state_dict][ppl.models.LlamaLM.convert_state_dict].
        tokenizer: a Hugging Face tokenizer (or anything with ``encode``/``decode``).
        vocab: the [Vocab][ppl.models.Vocab] of ``vocab_size`` entries.
        name: a display name.
        eos_token_id: overrides the config's EOS id.
        bos_token_id: overrides the config's BOS id.
        eos_token_ids: further ids that end a sequence (e.g. from ``generation_config.json``).
        family: the [Family][ppl.models.llama.Family] (or its ``model_type``); default: the
            config's ``model_type``.
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
        name: str = "llama",
        eos_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_ids=None,
        family: Family | str | None = None,
        layer_loop: str | None = None,
    ):
        self.config = config
        self.family = fam = _family(config, family)
        self.n_layers = int(_cfg(config, "num_hidden_layers"))
        self.hidden_size = int(_cfg(config, "hidden_size"))
        self.n_heads = int(_cfg(config, "num_attention_heads"))
        self.kv_heads = int(_cfg(config, "num_key_value_heads") or self.n_heads)
        self.head_dim = int(_cfg(config, "head_dim") or self.hidden_size // self.n_heads)
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"{fam.label}: {self.n_heads} attention heads are not a multiple of "
                f"{self.kv_heads} key/value heads."
            )
        self.max_context = int(_cfg(config, "max_position_embeddings"))
        self.eps = float(_cfg(config, "rms_norm_eps", 1e-6))
        act = (_cfg(config, "hidden_activation") if fam.gemma else None) or _cfg(config, "hidden_act", "silu")
        self.act = C.activation(act, fam.label)
        inv_freq, self.rope_attention_scaling = rope_inv_freq(config, self.head_dim)
        self.inv_freq = inv_freq
        self.layer_windows = layer_windows(config, fam)
        self.norm_offset = 1.0 if fam.gemma else 0.0
        if fam.gemma:
            self.scale = float(_cfg(config, "query_pre_attn_scalar", self.head_dim)) ** -0.5
            self.embed_scale = self.hidden_size**0.5
            self.attn_softcap = _cfg(config, "attn_logit_softcapping")
            self.final_softcap = _cfg(config, "final_logit_softcapping")
        else:
            self.scale = self.head_dim**-0.5
            self.embed_scale = None
            self.attn_softcap = self.final_softcap = None
        self._init_host(config, params, tokenizer=tokenizer, vocab=vocab, name=name,
                        eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                        eos_token_ids=eos_token_ids, layer_loop=layer_loop)

    # ---- weights -----------------------------------------------------------------------
    @staticmethod
    def convert_state_dict(state: Mapping[str, np.ndarray], config, dtype=jnp.float32,
                           family: Family | str | None = None):
        """Maps a Hugging Face state dict (numpy arrays) of the family to this model's params.

        Linear weights (``[out, in]`` in PyTorch) are transposed to ``[in, out]`` and q/k/v and
        gate/up fused, so the forward pass is ``x @ W`` with no transposes. Every tensor's
        shape is checked against the config, and so is the number of layers.

        Raises:
            ValueError: a missing tensor, a tensor whose shape differs from what the config
                implies (naming it and both shapes), or a layer count that differs from
                ``num_hidden_layers``.
        """
        fam = _family(config, family)
        rd = C.TensorReader(state, fam.label, prefixes=("model.", ""))
        n_layer = int(_cfg(config, "num_hidden_layers"))
        C.check_layer_count(rd.keys, r"(?:^|\.)layers\.(\d+)\.", n_layer, fam.label, "num_hidden_layers")
        d = int(_cfg(config, "hidden_size"))
        h = int(_cfg(config, "num_attention_heads"))
        kvh = int(_cfg(config, "num_key_value_heads") or h)
        hd = int(_cfg(config, "head_dim") or d // h)
        inter = int(_cfg(config, "intermediate_size"))
        v = int(_cfg(config, "vocab_size"))
        j = lambda a: jnp.asarray(a, dtype=dtype)  # noqa: E731
        qn, kn = h * hd, kvh * hd

        def lin(name, n_out, n_in, why):
            return rd.get(name, (n_out, n_in), why).T

        def bias(name, n):
            b = rd.maybe(name, (n,), "bias")
            return np.zeros((n,), np.float32) if b is None else b

        layers = []
        for i in range(n_layer):
            p = f"layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            if fam.fused:
                qkv = lin(a + "qkv_proj.weight", qn + 2 * kn, d, "(heads + 2 x kv_heads) x head_dim, hidden_size")
                gu = lin(m + "gate_up_proj.weight", 2 * inter, d, "2 x intermediate_size, hidden_size")
                qkv_bias = [a + "qkv_proj.bias"] if rd.find(a + "qkv_proj.bias") else []
            else:
                qkv = np.concatenate([
                    lin(a + "q_proj.weight", qn, d, "heads x head_dim, hidden_size"),
                    lin(a + "k_proj.weight", kn, d, "kv_heads x head_dim, hidden_size"),
                    lin(a + "v_proj.weight", kn, d, "kv_heads x head_dim, hidden_size"),
                ], axis=1)
                gu = np.concatenate([
                    lin(m + "gate_proj.weight", inter, d, "intermediate_size, hidden_size"),
                    lin(m + "up_proj.weight", inter, d, "intermediate_size, hidden_size"),
                ], axis=1)
                qkv_bias = [a + f"{n}_proj.bias" for n in "qkv" if rd.find(a + f"{n}_proj.bias")]
            norm = lambda name: rd.get(name, (d,), "hidden_size")  # noqa: E731
            lp = {
                "ln1": j(norm(p + "input_layernorm.weight")),
                "qkv_w": j(qkv),
                "o_w": j(lin(a + "o_proj.weight", d, qn, "hidden_size, heads x head_dim")),
                "gu_w": j(gu),
                "down_w": j(lin(m + "down_proj.weight", d, inter, "hidden_size, intermediate_size")),
            }
            if fam.gemma:
                # Gemma 2's "post_attention_layernorm" normalises the attention output; the norm
                # before the MLP is "pre_feedforward_layernorm".
                lp["attn_post"] = j(norm(p + "post_attention_layernorm.weight"))
                lp["ln2"] = j(norm(p + "pre_feedforward_layernorm.weight"))
                lp["mlp_post"] = j(norm(p + "post_feedforward_layernorm.weight"))
            else:
                lp["ln2"] = j(norm(p + "post_attention_layernorm.weight"))
            if fam.qk_norm:
                lp["q_norm"] = j(rd.get(a + "q_norm.weight", (hd,), "head_dim"))
                lp["k_norm"] = j(rd.get(a + "k_norm.weight", (hd,), "head_dim"))
            if qkv_bias:
                if fam.fused:
                    lp["qkv_b"] = j(bias(a + "qkv_proj.bias", qn + 2 * kn))
                else:
                    lp["qkv_b"] = j(np.concatenate([
                        bias(a + "q_proj.bias", qn), bias(a + "k_proj.bias", kn), bias(a + "v_proj.bias", kn)
                    ]))
            if rd.find(a + "o_proj.bias"):
                lp["o_b"] = j(bias(a + "o_proj.bias", d))
            if not fam.fused and (rd.find(m + "gate_proj.bias") or rd.find(m + "up_proj.bias")):
                lp["gu_b"] = j(np.concatenate([bias(m + "gate_proj.bias", inter), bias(m + "up_proj.bias", inter)]))
            if rd.find(m + "down_proj.bias"):
                lp["down_b"] = j(bias(m + "down_proj.bias", d))
            layers.append(lp)
        params = {
            "embed": j(rd.get("embed_tokens.weight", (v, d), "vocab_size, hidden_size")),
            "layers": layers,
            "norm": j(rd.get("norm.weight", (d,), "hidden_size")),
        }
        if not _cfg(config, "tie_word_embeddings", fam.tied_default):
            if "lm_head.weight" not in rd.keys:
                raise ValueError(
                    f"{fam.label} checkpoint: tie_word_embeddings is false but tensor "
                    "'lm_head.weight' is missing."
                )
            head = C.TensorReader(state, fam.label).get("lm_head.weight", (v, d), "vocab_size, hidden_size")
            params["lm_head"] = j(head.T)
        return params

    # ---- forward -----------------------------------------------------------------------
    def _norm(self, x, w):
        return C.rms_norm(x, w, self.eps, self.norm_offset)

    def _block(self, lp, x, positions, window, attn):
        """One decoder layer on ``x [T, D]``: a function of its parameters and its window only
        (so every layer is the same code)."""
        t = x.shape[0]
        hd, h_, kvh = self.head_dim, self.n_heads, self.kv_heads
        h = self._norm(x, lp["ln1"])
        qkv = h @ lp["qkv_w"]
        if "qkv_b" in lp:
            qkv = qkv + lp["qkv_b"]
        q = qkv[:, : h_ * hd].reshape(t, h_, hd)
        k = qkv[:, h_ * hd : (h_ + kvh) * hd].reshape(t, kvh, hd)
        v = qkv[:, (h_ + kvh) * hd :].reshape(t, kvh, hd)
        if "q_norm" in lp:
            q = C.rms_norm(q, lp["q_norm"], self.eps)
            k = C.rms_norm(k, lp["k_norm"], self.eps)
        inv_freq = jnp.asarray(self.inv_freq)
        q = _rope(q, positions, inv_freq)
        k = _rope(k, positions, inv_freq)
        a, cache = attn(q, k, v, window)
        o = a @ lp["o_w"]
        if "o_b" in lp:
            o = o + lp["o_b"]
        if "attn_post" in lp:
            o = self._norm(o, lp["attn_post"])
        x = x + o
        h = self._norm(x, lp["ln2"])
        gu = h @ lp["gu_w"]
        if "gu_b" in lp:
            gu = gu + lp["gu_b"]
        g, u = jnp.split(gu, 2, axis=-1)
        m = (self.act(g) * u) @ lp["down_w"]
        if "down_b" in lp:
            m = m + lp["down_b"]
        if "mlp_post" in lp:
            m = self._norm(m, lp["mlp_post"])
        return x + m, cache

    def _embed(self, params, ids):
        x = params["embed"][ids]
        if self.embed_scale is not None:
            # Gemma rounds the scale to the weights' dtype first, as transformers does.
            x = x * jnp.asarray(self.embed_scale, x.dtype)
        return x

    def _head(self, params, x):
        h = self._norm(x, params["norm"])
        logits = C.lm_head(h, params)
        if self.final_softcap is not None:
            logits = jnp.tanh(logits / self.final_softcap) * self.final_softcap
        return h, C.log_softmax_f32(logits)

    def _prefill(self, params, prompt_ids, max_len: int):
        """The prompt's ``(k, v)`` per layer (``[1, kv_heads, P, hd]`` each) and final-layer
        activations ``[P, D]`` (before the final norm)."""
        C.check_max_len(max_len, self.max_context, self.name)
        ids = jnp.asarray(prompt_ids, jnp.int32)
        n = ids.shape[0]
        if n > max_len:
            raise ValueError(f"{self.name}: a prompt of {n} tokens does not fit a cache of {max_len}.")
        positions = jnp.arange(n, dtype=jnp.int32)
        x = self._embed(params, ids)

        def step(lp, x, window, state, layer):
            def attn(q, k, v, w):
                out = C.attend_prefill(q, k, v, self.scale, w, self.attn_softcap)
                return out, C.prefix_layer(k, v, self.dtype)

            x, c = self._block(lp, x, positions, window, attn)
            return x, state, c

        x, _, outs = self._layer_loop(params, x, step, self.layer_windows)
        return self._prefix(params, outs), x

    def decode_step(self, params, cache, tokens, positions, return_hidden: bool = False):
        """See [LanguageModel.decode_step][ppl.models.LanguageModel.decode_step];
        ``return_hidden`` adds the final hidden states."""
        tokens = jnp.asarray(tokens, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        rows, prefix, plen, slots = self._decode_cache(cache, positions)
        x = self._embed(params, tokens)

        def step(lp, x, window, rows, layer):
            if isinstance(window, int) and window >= C.GLOBAL_WINDOW:
                window = None  # every slot is inside a global window: skip the mask

            def attn(q, k, v, w):
                return self._attend(q, k, v, rows, prefix, plen, slots, positions, self.scale, w,
                                    self.attn_softcap, layer)

            x, rows = self._block(lp, x, positions, window, attn)
            return x, rows, None

        x, rows, _ = self._layer_loop(params, x, step, self.layer_windows, rows)
        cache = C.SharedCache(rows, cache.shared)
        h, lp_ = self._head(params, x)
        return (cache, lp_, h) if return_hidden else (cache, lp_)
