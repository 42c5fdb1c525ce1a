"""Building blocks shared by the transformer implementations (GPT-2, Llama).

Everything here is plain functional JAX over arrays. The KV cache of one layer is a pair
``(k, v)`` of arrays shaped ``[B, kv_heads, max_len, head_dim]``: batch first so that
:func:`ppl.models.base.reorder` and :func:`ppl.models.base.broadcast_cache` work on it, and
one pair per layer (never one stacked array) so a decode step updates each layer's buffer in
place instead of rebuilding a whole-model array (measured 2.7-4x slower per decode step on
GPT-2-small shapes on CPU, when the project chose this layout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ACTIVATIONS",
    "attend_decode",
    "attend_prefill",
    "cache_bytes",
    "check_max_len",
    "empty_layer_cache",
    "log_softmax_f32",
    "write_decode",
    "write_prefill",
]

_NEG = -1e30  # finite "minus infinity": a fully masked row never produces NaN

ACTIVATIONS = {
    # GPT-2's "gelu_new" and PyTorch's tanh-approximate gelu are the same function.
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def config_value(config, key, default=None):
    """``config[key]`` for a dict, ``config.key`` for a Hugging Face config object."""
    from collections.abc import Mapping

    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def activation(name: str, model: str):
    """The activation function called ``name`` in a Hugging Face config."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"{model}: unsupported activation function {name!r}; supported: "
            f"{', '.join(sorted(ACTIVATIONS))}."
        ) from None


def check_max_len(max_len: int, max_context: int, name: str) -> None:
    if max_len > max_context:
        raise ValueError(
            f"{name}: a cache of {max_len} positions exceeds the model's context of "
            f"{max_context} positions."
        )


def empty_layer_cache(batch: int, kv_heads: int, max_len: int, head_dim: int, dtype):
    shape = (batch, kv_heads, max_len, head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def cache_bytes(n_layers: int, kv_heads: int, head_dim: int, max_len: int, dtype) -> int:
    """Bytes of KV cache one sequence of ``max_len`` positions needs."""
    return 2 * n_layers * kv_heads * max_len * head_dim * np.dtype(dtype).itemsize


def write_prefill(cache, k, v):
    """Writes prompt keys/values ``[P, kv_heads, hd]`` into slots ``0..P-1`` of row 0."""
    kc, vc = cache
    kt = jnp.transpose(k, (1, 0, 2))[None].astype(kc.dtype)
    vt = jnp.transpose(v, (1, 0, 2))[None].astype(vc.dtype)
    return (
        jax.lax.dynamic_update_slice(kc, kt, (0, 0, 0, 0)),
        jax.lax.dynamic_update_slice(vc, vt, (0, 0, 0, 0)),
    )


def write_decode(cache, k, v, positions):
    """Row ``b`` writes its key/value ``[B, kv_heads, hd]`` at slot ``positions[b]``.

    A scatter on the (donated) buffer: XLA updates it in place, touching ``B * kv_heads * hd``
    elements instead of copying the cache.
    """
    kc, vc = cache
    rows = jnp.arange(k.shape[0])
    kc = kc.at[rows, :, positions].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[rows, :, positions].set(v.astype(vc.dtype), mode="drop")
    return kc, vc


def attend_prefill(q, k, v, scale: float):
    """Causal attention of a prompt on itself.

    Args:
        q: ``[P, H, hd]`` queries.
        k, v: ``[P, KVH, hd]`` keys/values (``H`` a multiple of ``KVH``: grouped queries).
        scale: multiplier of the scores.

    Returns:
        ``[P, H * hd]``.
    """
    p, h, hd = q.shape
    kvh = k.shape[1]
    g = h // kvh
    qg = q.reshape(p, kvh, g, hd)
    s = jnp.einsum("qkgd,skd->kgqs", qg, k, preferred_element_type=jnp.float32) * scale
    causal = jnp.tril(jnp.ones((p, p), bool))
    s = jnp.where(causal, s, _NEG)
    w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("kgqs,skd->qkgd", w, v, preferred_element_type=jnp.float32)
    return o.reshape(p, h * hd).astype(q.dtype)


def attend_decode(q, cache, positions, scale: float):
    """One query per row against that row's cache slots ``<= positions[b]``.

    Args:
        q: ``[B, H, hd]``.
        cache: ``(k, v)``, each ``[B, KVH, L, hd]`` (already holding this step's key/value).
        positions: ``int32[B]``.
        scale: multiplier of the scores.

    Returns:
        ``[B, H * hd]``.
    """
    kc, vc = cache
    b, h, hd = q.shape
    kvh, length = kc.shape[1], kc.shape[2]
    qg = q.reshape(b, kvh, h // kvh, hd).astype(kc.dtype)
    s = jnp.einsum("bkgd,bkld->bkgl", qg, kc, preferred_element_type=jnp.float32) * scale
    # Slots past a row's position may hold stale keys of another branch: mask them.
    valid = jnp.arange(length)[None, :] <= positions[:, None]
    s = jnp.where(valid[:, None, None, :], s, _NEG)
    w = jax.nn.softmax(s, axis=-1).astype(vc.dtype)
    o = jnp.einsum("bkgl,bkld->bkgd", w, vc, preferred_element_type=jnp.float32)
    return o.reshape(b, h * hd).astype(q.dtype)


def log_softmax_f32(logits):
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def lm_head(h, params):
    """Logits ``h @ W`` with ``W`` the ``[D, V]`` head (untied) or the ``[V, D]`` embedding."""
    if "lm_head" in params:
        return jnp.dot(h, params["lm_head"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", h, params["embed"], preferred_element_type=jnp.float32)


def rsqrt_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def layer_norm(x, g, b, eps: float):
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + eps)
    return (y * g.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def rms_norm(x, w, eps: float):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    # Llama casts back to the activation dtype before the weight multiply.
    return w * y.astype(x.dtype)


class TransformerLM:
    """Mixin of what GPT-2 and Llama share: cache layout, memory estimate, host fields.

    Subclasses set ``n_layers``, ``kv_heads``, ``head_dim``, ``dtype`` and implement
    ``_prefill(params, ids, max_len) -> (caches, hidden[P, D])``, ``_head(params, x) ->
    (normed hidden, logprobs)`` and ``decode_step`` (with an optional ``return_hidden``
    flag); ``prefill`` and ``forward`` are shared here.
    """

    supports_hidden = True

    n_layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    dtype: object

    def init_cache(self, batch: int, max_len: int):
        """An all-zero cache: a tuple of ``(k, v)`` per layer, each ``[B, KVH, max_len, hd]``."""
        return tuple(
            empty_layer_cache(batch, self.kv_heads, max_len, self.head_dim, self.dtype)
            for _ in range(self.n_layers)
        )

    def init_cache_bytes(self, max_len: int) -> int:
        return cache_bytes(self.n_layers, self.kv_heads, self.head_dim, max_len, self.dtype)

    def prefill(self, params, prompt_ids, max_len: int, length=None, return_hidden: bool = False):
        """See [LanguageModel.prefill][ppl.models.base.LanguageModel.prefill];
        ``return_hidden`` adds the final hidden state."""
        caches, x = self._prefill(params, prompt_ids, max_len)
        last = x[-1] if length is None else jax.lax.dynamic_index_in_dim(x, length - 1, 0, False)
        h, lp_ = self._head(params, last)
        return (caches, lp_, h) if return_hidden else (caches, lp_)

    def forward(self, params, ids):
        """Log-probs of the next token after every prefix of ``ids``: ``float32[P, V]``.

        Row ``t`` is the distribution of ``ids[t + 1]``. One pass, no cache kept: for scoring
        whole sequences (and as the reference of incremental decoding in tests).
        """
        ids = jnp.asarray(ids, jnp.int32)
        _, x = self._prefill(params, ids, ids.shape[0])
        return self._head(params, x)[1]

    def _init_host(self, config, params, *, tokenizer, vocab, name, eos_token_id, bos_token_id,
                   eos_key: str = "eos_token_id") -> None:
        """The fields every transformer sets the same way: weights, dtype, vocabulary size,
        EOS/BOS (explicit arguments win over the config; a list of EOS ids gives its first),
        tokenizer, vocabulary tables and display name."""
        self.params = params
        self.dtype = params["embed"].dtype
        self.vocab_size = int(params["embed"].shape[0])
        eos = eos_token_id if eos_token_id is not None else config_value(config, eos_key)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        self.eos_token_id = int(eos if eos is not None else 0)
        bos = bos_token_id if bos_token_id is not None else config_value(config, "bos_token_id")
        if isinstance(bos, (list, tuple)):
            bos = bos[0] if bos else None
        self.bos_token_id = None if bos is None else int(bos)
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.name = name

    def param_bytes(self) -> int:
        return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.params)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, layers={self.n_layers}, "
            f"hidden={self.hidden_size}, vocab={self.vocab_size}, dtype={np.dtype(self.dtype).name})"
        )
