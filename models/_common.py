"""Building blocks shared by the transformer implementations (GPT-2, Llama).

Everything here is plain functional JAX over arrays. The KV cache of one layer is a pair
``(k, v)`` of arrays shaped ``[B, kv_heads, max_len, head_dim]``: batch first so that
[reorder][ppl.models.reorder] and [broadcast_cache][ppl.models.broadcast_cache] work on it, and
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
    "GLOBAL_WINDOW",
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

#: The window of a layer with full (global) causal attention: larger than any context, so the
#: sliding-window test ``query - key < window`` is always true. A plain int (not ``None``) so
#: that every layer runs the same code and per-layer windows can be stacked into one array.
GLOBAL_WINDOW = 2**30

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


def _scores(s, scale: float, softcap: float | None):
    """Scaled attention scores, soft-capped as ``cap * tanh(s / cap)`` when ``softcap`` is set
    (Gemma 2), before masking."""
    s = s * scale
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    return s


def attend_prefill(q, k, v, scale: float, window=None, softcap: float | None = None):
    """Causal attention of a prompt on itself.

    Args:
        q: ``[P, H, hd]`` queries.
        k, v: ``[P, KVH, hd]`` keys/values (``H`` a multiple of ``KVH``: grouped queries).
        scale: multiplier of the scores.
        window: sliding window (an int, possibly traced): query ``i`` sees keys ``j`` with
            ``i - window < j <= i``, as transformers' sliding-window mask does. ``None`` (or
            ``GLOBAL_WINDOW``) is full causal attention.
        softcap: attention logit soft-capping (Gemma 2), or None.

    Returns:
        ``[P, H * hd]``.
    """
    p, h, hd = q.shape
    kvh = k.shape[1]
    g = h // kvh
    qg = q.reshape(p, kvh, g, hd)
    s = jnp.einsum("qkgd,skd->kgqs", qg, k, preferred_element_type=jnp.float32)
    s = _scores(s, scale, softcap)
    i = jnp.arange(p)[:, None]
    j = jnp.arange(p)[None, :]
    visible = j <= i
    if window is not None:
        visible = visible & (i - j < window)
    s = jnp.where(visible, s, _NEG)
    w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("kgqs,skd->qkgd", w, v, preferred_element_type=jnp.float32)
    return o.reshape(p, h * hd).astype(q.dtype)


def attend_decode(q, cache, positions, scale: float, window=None, softcap: float | None = None):
    """One query per row against that row's cache slots ``<= positions[b]``.

    Args:
        q: ``[B, H, hd]``.
        cache: ``(k, v)``, each ``[B, KVH, L, hd]`` (already holding this step's key/value).
        positions: ``int32[B]``.
        scale: multiplier of the scores.
        window: sliding window: slot ``j`` is visible iff ``positions[b] - window < j`` (see
            ``attend_prefill``); None for full attention.
        softcap: attention logit soft-capping, or None.

    Returns:
        ``[B, H * hd]``.
    """
    kc, vc = cache
    b, h, hd = q.shape
    kvh, length = kc.shape[1], kc.shape[2]
    qg = q.reshape(b, kvh, h // kvh, hd).astype(kc.dtype)
    s = jnp.einsum("bkgd,bkld->bkgl", qg, kc, preferred_element_type=jnp.float32)
    s = _scores(s, scale, softcap)
    # Slots past a row's position may hold stale keys of another branch: mask them.
    slots = jnp.arange(length)[None, :]
    valid = slots <= positions[:, None]
    if window is not None:
        valid = valid & (positions[:, None] - slots < window)
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


def rms_norm(x, w, eps: float, offset: float = 0.0):
    """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * (offset + w)``.

    ``offset=0`` is Llama's norm, which casts back to the activation dtype before the weight
    multiply; ``offset=1`` is Gemma's ``(1 + w)`` norm, computed entirely in float32 and cast
    at the end (each as transformers computes it, so bfloat16 runs round the same way).
    """
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    if offset:
        return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)
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
        """See [LanguageModel.prefill][ppl.models.LanguageModel.prefill];
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
                   eos_key: str = "eos_token_id", eos_token_ids=None) -> None:
        """The fields every transformer sets the same way: weights, dtype, vocabulary size,
        EOS/BOS, tokenizer, vocabulary tables and display name.

        Explicit arguments win over the config. A config listing several EOS ids (Llama 3)
        gives its first as ``eos_token_id`` and all of them as ``eos_token_ids``; every id
        must index a row of the embedding.
        """
        self.params = params
        self.dtype = params["embed"].dtype
        self.vocab_size = int(params["embed"].shape[0])
        cfg_eos = config_value(config, eos_key)
        cfg_eos = list(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]
        cfg_eos = [int(e) for e in cfg_eos if e is not None]
        eos = eos_token_id if eos_token_id is not None else (cfg_eos[0] if cfg_eos else None)
        self.eos_token_id = int(eos if eos is not None else 0)
        ids = [self.eos_token_id, *(eos_token_ids or ()), *cfg_eos]
        self.eos_token_ids = tuple(dict.fromkeys(int(i) for i in ids))
        bos = bos_token_id if bos_token_id is not None else config_value(config, "bos_token_id")
        if isinstance(bos, (list, tuple)):
            bos = bos[0] if bos else None
        self.bos_token_id = None if bos is None else int(bos)
        check_special_ids(name, self.eos_token_ids, self.bos_token_id, self.vocab_size)
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


def check_special_ids(name: str, eos_ids, bos_id, vocab_size: int) -> None:
    """Refuses EOS/BOS ids that do not index a row of the embedding."""
    for what, i in [("EOS", e) for e in eos_ids] + [("BOS", bos_id)]:
        if i is not None and not 0 <= int(i) < vocab_size:
            raise ValueError(
                f"{name}: the {what} token id {i} (from the config, generation config or "
                f"tokenizer) is outside the model's vocabulary of {vocab_size} ids "
                f"(0..{vocab_size - 1}); no particle could {'end' if what == 'EOS' else 'start'} "
                "with it. Fix the id in config.json / generation_config.json."
            )


# ---- reading checkpoints ------------------------------------------------------------------
def layer_indices(keys, pattern: str) -> list[int]:
    """Sorted distinct layer numbers among tensor names (``pattern`` has one ``(\\d+)`` group)."""
    import re

    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys for m in [rx.search(k)] if m})


def check_layer_count(keys, pattern: str, n_config: int, family: str, key: str) -> None:
    """Refuses a checkpoint whose weights hold a different number of layers than its config."""
    found = layer_indices(keys, pattern)
    if len(found) != n_config or (found and found[-1] != n_config - 1):
        span = f"{len(found)} (numbered {found[0]}..{found[-1]})" if found else "none"
        raise ValueError(
            f"{family} checkpoint: config.json says {key}={n_config} layers but the weights hold "
            f"{span}. The config does not belong to these weights: fix {key} in config.json or "
            "use the config that was saved with them."
        )


class TensorReader:
    """Reads named tensors from a state dict, checking each one's shape against the config.

    Args:
        state: a mapping from tensor names to numpy arrays (or a lazy mapping).
        family: the architecture's display name, for messages.
        prefixes: prefixes tried in order in front of a name (e.g. ``("model.", "")``).
    """

    def __init__(self, state, family: str, prefixes=("",)):
        self.state = state
        self.keys = set(state.keys())
        self.family = family
        self.prefixes = prefixes

    def find(self, name: str) -> str | None:
        for p in self.prefixes:
            if p + name in self.keys:
                return p + name
        return None

    def get(self, name: str, shape: tuple[int, ...], why: str = "") -> np.ndarray:
        """The tensor ``name`` as numpy, after checking it has ``shape``.

        Raises:
            ValueError: the tensor is missing, or its shape differs from what the config implies
                (naming the tensor and both shapes).
        """
        k = self.find(name)
        if k is None:
            raise ValueError(f"{self.family} checkpoint: tensor {name!r} is missing.")
        a = np.asarray(self.state[k])
        if tuple(a.shape) != tuple(shape):
            raise ValueError(
                f"{self.family} checkpoint: tensor {k!r} has shape {tuple(a.shape)} but config.json "
                f"implies {tuple(shape)}{f' ({why})' if why else ''}. The weights and the config "
                "do not match."
            )
        return a

    def maybe(self, name: str, shape: tuple[int, ...], why: str = "") -> np.ndarray | None:
        """Like ``get``, None when the tensor is absent."""
        return None if self.find(name) is None else self.get(name, shape, why)
