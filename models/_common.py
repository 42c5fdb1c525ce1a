"""Building blocks shared by the transformer implementations (GPT-2, Llama).

Everything here is plain functional JAX over arrays. A transformer's cache is a
[SharedCache][ppl.models.SharedCache]:

* ``rows``: the keys and values of the tokens each row generated (slot ``j`` is position
  ``prompt_len + j``; ``G`` is ``max_tokens`` rounded up to a whole number of attention
  blocks), batch first so that [reorder][ppl.models.reorder] and
  [broadcast_cache][ppl.models.broadcast_cache] work on it. With ``layer_loop="unroll"``: one
  pair ``(k, v)`` per layer, each ``[B, kv_heads, G, head_dim]``. With ``"scan"``: one pair,
  each ``[B, L, kv_heads, G, head_dim]``, carried through the layer scan and updated by a
  scatter at ``(row, layer, slot)``, never rebuilt with ``jnp.stack`` (a cache rebuilt each
  step was measured 2.7-4x slower per decode step on GPT-2-small shapes on CPU).
* ``shared``: ``{"kv": ..., "length": int32[C]}``: the prompt of each of ``C`` contexts,
  stored once however many rows read it (row ``b`` reads context ``b % C``); ``kv`` is one
  ``(k, v)`` per layer, each ``[C, kv_heads, P, head_dim]`` (unrolled), or one pair
  ``[C, L, kv_heads, P, head_dim]`` (scanned).

Decode attention combines the two parts exactly: a softmax over the prompt merged by
log-sum-exp with a softmax over the generated part, read in blocks of ``BLOCK`` slots (as
many blocks as the longest row has written) while few are written and in one product once
most are (``DENSE_FRACTION``), so a step's cost grows with the tokens written, not with
``max_tokens``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ppl.models.base import SharedCache

__all__ = [
    "ACTIVATIONS",
    "BLOCK",
    "DENSE_FRACTION",
    "GLOBAL_WINDOW",
    "LAYER_LOOPS",
    "attend_decode",
    "attend_decode_shared",
    "generated_capacity",
    "attend_prefill",
    "cache_bytes",
    "check_max_len",
    "empty_layer_cache",
    "log_softmax_f32",
    "resolve_layer_loop",
    "stack_layers",
    "unstack_layers",
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


#: Generated slots per attention block: decode attention visits ``ceil(written / BLOCK)``
#: blocks of the generated part (while few of them are written; see ``DENSE_FRACTION``).
BLOCK = 32

#: Decode attention reads all ``G`` generated slots in one product (instead of block by
#: block) once the longest row has written more than this fraction of them. On CPU a block
#: costs about twice its share of one full product (a copy of the block, then a small
#: product), so blocks win only while few are written (GPT-2-small shape, 16 rows, 512
#: slots: 3.2 ms for one product per layer, 9.0 ms for all 16 blocks).
DENSE_FRACTION = 1 / 3


def generated_capacity(max_tokens: int) -> int:
    """Generated slots a row holds: ``max_tokens``, rounded up to whole ``BLOCK``s beyond one
    block (so every block is a full ``dynamic_slice``)."""
    max_tokens = max(int(max_tokens), 0)
    return max_tokens if max_tokens <= BLOCK else -(-max_tokens // BLOCK) * BLOCK


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


def prefix_layer(k, v, dtype):
    """A prompt's keys/values ``[P, kv_heads, hd]`` as one context's shared part
    ``[1, kv_heads, P, hd]``: head-major, the layout of the decode step's batched products
    (stored so, it is never transposed per step)."""
    return (jnp.transpose(k, (1, 0, 2))[None].astype(dtype),
            jnp.transpose(v, (1, 0, 2))[None].astype(dtype))


def write_decode(cache, k, v, positions, layer=None):
    """Row ``b`` writes its key/value ``[B, kv_heads, hd]`` at slot ``positions[b]``.

    A scatter on the (donated) buffer: XLA updates it in place, touching ``B * kv_heads * hd``
    elements instead of copying the cache. With ``layer`` (a traced index), ``cache`` is the
    stacked layout ``[B, L, kv_heads, G, hd]`` and the write goes to that layer.
    """
    kc, vc = cache
    rows = jnp.arange(k.shape[0])
    if layer is None:
        kc = kc.at[rows, :, positions].set(k.astype(kc.dtype), mode="drop")
        vc = vc.at[rows, :, positions].set(v.astype(vc.dtype), mode="drop")
    else:
        kc = kc.at[rows, layer, :, positions].set(k.astype(kc.dtype), mode="drop")
        vc = vc.at[rows, layer, :, positions].set(v.astype(vc.dtype), mode="drop")
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


def attend_decode_shared(q, rows, prefix, prefix_len, positions, scale: float, window=None,
                         softcap: float | None = None, layer=None):
    """One query per row against its context's prompt and its own generated slots.

    Exactly the softmax over the concatenation (prompt slots ``< prefix_len``, then generated
    slots ``0..positions[b] - prefix_len``), computed as a softmax over the prompt merged by
    log-sum-exp with a softmax over the generated part: with partial results
    ``(m_i, l_i, a_i)`` (maximum score, ``sum exp(s - m_i)``, ``sum exp(s - m_i) v``) of the
    two parts and ``m = max(m_1, m_2)``, the output is
    ``(a_1 e^(m_1 - m) + a_2 e^(m_2 - m)) / (l_1 e^(m_1 - m) + l_2 e^(m_2 - m))``.

    The prompt part is one batched product per context and head over all of its rows (the
    prompt is stored head-major, ``[C, KVH, P, hd]``, so neither operand is transposed per
    step). The generated part is read in one of two ways, chosen per step from
    ``w = max_b written_b`` (the slots the longest row has written): while ``w`` is at most
    ``DENSE_FRACTION`` of the ``G`` slots, an online softmax over ``ceil(w / BLOCK)`` blocks
    of ``BLOCK`` slots (unwritten blocks are never read); beyond it, one product over all
    ``G`` slots (masked), which costs less than the blocks' per-block copies and small products
    once most of the row is written (measured on CPU: docs/performance.md). Rows of ``G <= 2
    BLOCK`` slots always take the single product. It weighs unwritten slots by exactly zero,
    so they must hold finite values: zeros, or keys another branch wrote before a fork.

    Args:
        q: ``[B, H, hd]``, ``B = N * C``; row ``b`` belongs to context ``b % C``.
        rows: ``(k, v)``, each ``[B, KVH, G, hd]`` (already holding this step's key/value).
        prefix: ``(k, v)``, each ``[C, KVH, P, hd]``.
        prefix_len: ``int32[C]`` real prompt lengths (slots past them are padding).
        positions: ``int32[B]`` each row's position (of this step's token).
        scale: multiplier of the scores.
        window: sliding window over absolute positions (see ``attend_prefill``), or None.
        softcap: attention logit soft-capping, or None.
        layer: a traced layer index for the stacked layout (``rows`` each
            ``[B, L, KVH, G, hd]``, ``prefix`` each ``[C, L, KVH, P, hd]``): attention reads
            that layer's slices (the blocks of the generated part are sliced straight out of
            the stacked buffer, so no layer's cache is copied whole).

    Returns:
        ``[B, H * hd]``.
    """
    kr, vr = rows
    kp, vp = prefix
    if layer is not None:
        kp = jax.lax.dynamic_index_in_dim(kp, layer, 1, keepdims=False)
        vp = jax.lax.dynamic_index_in_dim(vp, layer, 1, keepdims=False)
    b, h, hd = q.shape
    c, kvh, plen_slots = kp.shape[0], kp.shape[1], kp.shape[2]
    g = h // kvh
    n = b // c
    gen = kr.shape[-2]
    dt = kr.dtype
    qg = q.reshape(b, kvh, g, hd).astype(dt)
    plen = jnp.tile(prefix_len.astype(jnp.int32), n)  # [B]: each row's prompt length

    # Prompt part, context-major: [C, KVH, N * G, hd] queries against [C, KVH, P, hd] keys.
    qc = jnp.transpose(qg.reshape(n, c, kvh, g, hd), (1, 2, 0, 3, 4)).reshape(c, kvh, n * g, hd)
    batch = ((0, 1), (0, 1))
    sp = jax.lax.dot_general(qc, kp.astype(dt), (((3,), (3,)), batch),
                             preferred_element_type=jnp.float32)  # [C, KVH, N * G, P]
    sp = _scores(sp, scale, softcap)
    slots = jnp.arange(plen_slots)
    valid = (slots[None, :] < prefix_len.astype(jnp.int32)[:, None])[:, None, None, :]
    if window is not None:
        pos = jnp.repeat(positions.reshape(n, c).T, g, axis=1)  # [C, N * G], row-major (n, g)
        valid = valid & (pos[:, None, :, None] - slots < window)
    sp = jnp.where(valid, sp, _NEG)
    m = jnp.max(sp, axis=-1)
    e = jnp.where(valid, jnp.exp(sp - m[..., None]), 0.0)
    l = jnp.sum(e, axis=-1)
    acc = jax.lax.dot_general(e.astype(dt), vp.astype(dt), (((3,), (2,)), batch),
                              preferred_element_type=jnp.float32)  # [C, KVH, N * G, hd]

    def rowwise(x):  # [C, KVH, N * G, ...] -> [B, KVH, G, ...]
        x = x.reshape((c, kvh, n, g) + x.shape[3:])
        return jnp.moveaxis(x, 2, 0).reshape((b, kvh, g) + x.shape[4:])

    m, l, acc = rowwise(m), rowwise(l), rowwise(acc)

    if gen:
        written = positions - plen + 1  # generated slots 0..written-1 are visible

        def layer_slice(x, start, size):
            if layer is None:
                return jax.lax.dynamic_slice_in_dim(x, start, size, axis=2)
            at, shape = (0, layer, 0, start, 0), (b, 1, kvh, size, hd)
            return jax.lax.dynamic_slice(x, at, shape)[:, 0]

        def merge(carry, start, size):
            """Folds slots ``start .. start + size - 1`` into the running ``(m, l, acc)``."""
            m, l, acc = carry
            kb, vb = layer_slice(kr, start, size), layer_slice(vr, start, size)
            s = jnp.einsum("bkgd,bkld->bkgl", qg, kb, preferred_element_type=jnp.float32)
            s = _scores(s, scale, softcap)
            j = start + jnp.arange(size)[None, :]
            ok = j < written[:, None]
            if window is not None:
                ok = ok & (positions[:, None] - (plen[:, None] + j) < window)
            ok = ok[:, None, None, :]
            s = jnp.where(ok, s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            alpha = jnp.exp(m - m_new)
            e = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
            l = l * alpha + jnp.sum(e, axis=-1)
            acc = acc * alpha[..., None] + jnp.einsum(
                "bkgl,bkld->bkgd", e.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
            return m_new, l, acc

        def dense(carry):
            return merge(carry, 0, gen)

        if gen <= 2 * BLOCK or gen % BLOCK:
            m, l, acc = dense((m, l, acc))
        else:
            wmax = jnp.clip(jnp.max(written), 0, gen)

            def blocks(carry):
                nblocks = -(-wmax // BLOCK)
                return jax.lax.fori_loop(0, nblocks, lambda i, c_: merge(c_, i * BLOCK, BLOCK),
                                         carry)

            use_dense = wmax > int(DENSE_FRACTION * gen)
            m, l, acc = jax.lax.cond(use_dense, dense, blocks, (m, l, acc))
    o = acc / jnp.where(l > 0, l, 1.0)[..., None]
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


#: How a transformer runs its layers (``layer_loop=`` of the models and of
#: [ppl.models.load][]): ``"scan"`` stacks the layers' weights (``[L, ...]`` per tensor) and
#: the KV cache (``[B, L, ...]``) and runs one ``lax.scan``, so compile time does not grow with
#: depth; ``"unroll"`` keeps one array per layer and a Python loop that XLA unrolls (compile
#: time linear in depth, no per-layer weight slicing at run time); ``"auto"`` picks one.
LAYER_LOOPS = ("auto", "scan", "unroll")

#: ``"auto"`` unrolls models this shallow on the CPU (compile time is small either way there,
#: and XLA:CPU copies each layer's weights out of a stacked array before its matmuls).
AUTO_UNROLL_MAX_LAYERS = 4


def resolve_layer_loop(choice, n_layers: int, name: str) -> str:
    """``"scan"`` or ``"unroll"`` for ``layer_loop=choice``.

    ``None`` means the environment variable ``PPL_LAYER_LOOP`` when set, else ``"auto"``.
    """
    import os

    where = "layer_loop"
    if choice is None:
        choice, where = os.environ.get("PPL_LAYER_LOOP") or "auto", "PPL_LAYER_LOOP"
    if choice not in LAYER_LOOPS:
        raise ValueError(f"{name}: {where}={choice!r} is not one of "
                         f"{', '.join(map(repr, LAYER_LOOPS))}.")
    if choice != "auto":
        return choice
    if n_layers <= AUTO_UNROLL_MAX_LAYERS and jax.default_backend() == "cpu":
        return "unroll"
    return "scan"


def stack_layers(layers, consume: bool = False):
    """Per-layer parameter dicts as one dict of ``[L, ...]`` arrays (for ``lax.scan``).

    ``consume=True`` empties the given dicts tensor by tensor as it stacks, so the peak memory
    is the weights plus one tensor's layers instead of twice the weights (the loader's use).
    """
    keys = set(layers[0])
    for i, lp in enumerate(layers):
        if set(lp) != keys:
            raise ValueError(f"layer {i} has tensors {sorted(set(lp) ^ keys)} that layer 0 has not "
                             "(or the reverse): layers of one model must have the same tensors.")
    if not consume:
        return jax.tree.map(lambda *a: jnp.stack(a), *layers)
    return {k: jnp.stack([lp.pop(k) for lp in layers]) for k in sorted(keys)}


def unstack_layers(stacked, n_layers: int):
    """The inverse of [stack_layers][ppl.models._common.stack_layers]."""
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n_layers)]


def _per_layer(values):
    """A per-layer constant (window, scale): one Python scalar when every layer has the same
    value (so it stays static in a scan), else the ``[L]`` array."""
    a = np.asarray(values)
    if a.size and np.all(a == a.flat[0]):
        return a.flat[0].item(), None
    return None, a


class TransformerLM:
    """Mixin of what GPT-2 and Llama share: cache layout, memory estimate, host fields.

    Subclasses set ``n_layers``, ``kv_heads``, ``head_dim``, ``dtype`` and implement
    ``_prefill(params, ids, max_len) -> (prompt (k, v) per layer, hidden[P, D])``,
    ``_head(params, x) -> (normed hidden, logprobs)`` and ``decode_step`` (with an optional
    ``return_hidden`` flag, attending through ``_decode_cache`` / ``_attend``); ``prefill``
    and ``forward`` are shared here.
    """

    supports_hidden = True

    n_layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    dtype: object

    def init_cache(self, batch: int, max_len: int):
        """An all-zero plain cache: a tuple of ``(k, v)`` per layer, each ``[B, KVH, max_len, hd]``."""
        return tuple(
            empty_layer_cache(batch, self.kv_heads, max_len, self.head_dim, self.dtype)
            for _ in range(self.n_layers)
        )

    def init_cache_bytes(self, max_len: int) -> int:
        return cache_bytes(self.n_layers, self.kv_heads, self.head_dim, max_len, self.dtype)

    def cache_layout_bytes(self, prompt_len: int, max_tokens: int) -> tuple[int, int]:
        """``(shared, per_row)`` bytes: the prompt's keys/values (and its length) once per
        context, each row's generated slots (``generated_capacity(max_tokens)``)."""
        shared = cache_bytes(self.n_layers, self.kv_heads, self.head_dim, prompt_len, self.dtype) + 4
        rows = cache_bytes(self.n_layers, self.kv_heads, self.head_dim,
                           generated_capacity(max_tokens), self.dtype)
        return shared, rows

    # ---- the layer loop ---------------------------------------------------------------
    @staticmethod
    def _stacked(params) -> bool:
        return not isinstance(params["layers"], (list, tuple))

    def _layer_loop(self, params, x, step, per_layer, state=None):
        """Runs ``x`` through every layer.

        ``step(lp, x, value, state, layer) -> (x, state, out)`` is one layer: ``lp`` its
        parameters, ``value`` its entry of ``per_layer`` (window or scale), ``layer`` its index
        (a Python int when unrolled, traced under scan), ``state`` what the layers thread
        through (the decode cache). Returns ``(x, state, outs)``: ``outs`` a tuple per layer
        when unrolled, stacked on a leading layer axis under scan.
        """
        static, arr = _per_layer(per_layer)
        layers = params["layers"]
        if not self._stacked(params):
            outs = []
            for i, lp in enumerate(layers):
                value = static if arr is None else arr[i].item()
                x, state, o = step(lp, x, value, state, i)
                outs.append(o)
            return x, state, tuple(outs)

        def body(carry, inp):
            x, state = carry
            lp, value, i = inp
            x, state, o = step(lp, x, static if arr is None else value, state, i)
            return (x, state), o

        values = jnp.zeros(self.n_layers) if arr is None else jnp.asarray(arr)
        (x, state), outs = jax.lax.scan(body, (x, state), (layers, values, jnp.arange(self.n_layers)))
        return x, state, outs

    def _prefix(self, params, outs):
        """The shared part from the prompt layers' ``(k, v)`` (each ``[1, KVH, P, hd]``): a
        tuple per layer, or (scan: ``outs`` stacked ``[L, 1, KVH, P, hd]``) the pair
        ``[1, L, KVH, P, hd]``, context axis first."""
        if not self._stacked(params):
            return outs
        return tuple(jnp.moveaxis(a, 0, 1) for a in outs)

    def _empty_rows(self, params, batch: int, gen: int):
        if self._stacked(params):
            shape = (batch, self.n_layers, self.kv_heads, gen, self.head_dim)
            return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)
        return tuple(empty_layer_cache(batch, self.kv_heads, gen, self.head_dim, self.dtype)
                     for _ in range(self.n_layers))

    def prefill(self, params, prompt_ids, max_len: int, length=None, return_hidden: bool = False):
        """See [LanguageModel.prefill][ppl.models.LanguageModel.prefill];
        ``return_hidden`` adds the final hidden state.

        The cache is a [SharedCache][ppl.models.SharedCache]: the prompt's keys/values (all
        ``P`` slots of ``prompt_ids``, the first ``length`` real) as one context's shared part,
        and one row of ``generated_capacity(max_len - P)`` empty generated slots."""
        prefix, x = self._prefill(params, prompt_ids, max_len)
        p = x.shape[0]
        last = x[-1] if length is None else jax.lax.dynamic_index_in_dim(x, length - 1, 0, False)
        h, lp_ = self._head(params, last)
        rows = self._empty_rows(params, 1, generated_capacity(max_len - p))
        n = jnp.asarray(p if length is None else length, jnp.int32).reshape(1)
        cache = SharedCache(rows, {"kv": prefix, "length": n})
        return (cache, lp_, h) if return_hidden else (cache, lp_)

    def _decode_cache(self, cache, positions):
        """``(rows, prefix layers, prefix lengths, generated slot of each row)`` of a decode
        step's cache."""
        if not isinstance(cache, SharedCache):
            raise TypeError(
                f"{self.name}: decode_step takes the SharedCache that prefill returns (rows of "
                f"generated keys/values plus the shared prompt), got {type(cache).__name__}.")
        plen = cache.shared["length"].astype(jnp.int32)
        b = positions.shape[0]
        if b % plen.shape[0]:
            raise ValueError(f"{self.name}: {b} cache rows are not a whole number of rows per "
                             f"context for {plen.shape[0]} contexts.")
        slots = positions - jnp.tile(plen, b // plen.shape[0])
        return cache.rows, cache.shared["kv"], plen, slots

    @staticmethod
    def _attend(q, k, v, rows, prefix, plen, slots, positions, scale, window, softcap, layer):
        """Writes this step's key/value in the row's generated slot of ``layer``, then attends.

        ``rows``/``prefix`` are the whole cache's (a tuple per layer with a Python ``layer``, or
        the stacked arrays with a traced one); returns the attention output and the new rows.
        """
        if isinstance(layer, int):
            r = write_decode(rows[layer], k, v, slots)
            out = attend_decode_shared(q, r, prefix[layer], plen, positions, scale, window, softcap)
            return out, rows[:layer] + (r,) + rows[layer + 1:]
        rows = write_decode(rows, k, v, slots, layer)
        return attend_decode_shared(q, rows, prefix, plen, positions, scale, window, softcap,
                                    layer), rows

    def forward(self, params, ids):
        """Log-probs of the next token after every prefix of ``ids``: ``float32[P, V]``.

        Row ``t`` is the distribution of ``ids[t + 1]``. One pass, no cache kept: for scoring
        whole sequences (and as the reference of incremental decoding in tests).
        """
        ids = jnp.asarray(ids, jnp.int32)
        _, x = self._prefill(params, ids, ids.shape[0])
        return self._head(params, x)[1]

    def _init_host(self, config, params, *, tokenizer, vocab, name, eos_token_id, bos_token_id,
                   eos_key: str = "eos_token_id", eos_token_ids=None, layer_loop=None) -> None:
        """The fields every transformer sets the same way: weights, dtype, vocabulary size,
        EOS/BOS, tokenizer, vocabulary tables and display name.

        Explicit arguments win over the config. ``layer_loop`` (see
        [LAYER_LOOPS][ppl.models._common.LAYER_LOOPS]) stacks or unstacks ``params["layers"]``
        to match. A config listing several EOS ids (Llama 3)
        gives its first as ``eos_token_id`` and all of them as ``eos_token_ids``; every id
        must index a row of the embedding.
        """
        self.layer_loop = resolve_layer_loop(layer_loop, self.n_layers, name)
        if self.layer_loop == "scan" and not self._stacked(params):
            params = dict(params, layers=stack_layers(params["layers"]))
        elif self.layer_loop == "unroll" and self._stacked(params):
            params = dict(params, layers=unstack_layers(params["layers"], self.n_layers))
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
