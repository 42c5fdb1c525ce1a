"""The shared-prefix KV cache equals plain attention over the whole sequence.

The prompt's keys/values are stored once per context and each row holds only its generated
tokens; decode attention merges a softmax over the prompt with a blocked online softmax over
the generated part. Two references:

* ``attend_decode_shared`` against plain masked attention over the concatenation
  ``prompt[:length] ++ generated[:written]`` (written here, with numpy), for windows that
  cross the prompt/generated boundary, soft-capping, grouped queries, several contexts and
  garbage in unwritten slots;
* for every architecture the repository supports (GPT-2, Llama, Mistral's sliding window,
  Qwen3's q/k norms and per-layer windows, Gemma 2's caps and alternating windows, Phi-3's
  partial rotary embeddings), prefill + decode with two prompt contexts of different
  lengths (prompt intersection), rows at different positions and a resampling (forked rows),
  against the model's whole-sequence forward pass (full causal attention, no cache).

Tolerance 1e-4 nats in float32, as the other decode tests: summation orders differ (~1e-6),
while a mask off by one position moves these peaked random models by 1e-2 or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl.models as M
from ppl.models import _common as C

TOL = 1e-4
V = 97


# ---- the attention function against plain attention over the concatenation ---------------
def _plain(q, rows, prefix, plen, positions, scale, window, softcap):
    """numpy: for each row, softmax attention over its visible prompt and generated keys."""
    kr, vr = (np.asarray(x, np.float64) for x in rows)
    kp, vp = (np.asarray(x, np.float64) for x in prefix)
    q = np.asarray(q, np.float64)
    b, h, hd = q.shape
    c, kvh = kp.shape[0], kp.shape[1]
    out = np.zeros((b, h, hd))
    for r in range(b):
        ctx = r % c
        n_p = int(plen[ctx])
        written = int(positions[r]) - n_p + 1
        keys = np.concatenate([kp[ctx][:, :n_p], kr[r][:, :written]], axis=1)
        vals = np.concatenate([vp[ctx][:, :n_p], vr[r][:, :written]], axis=1)
        pos = np.arange(n_p + written)
        vis = np.ones(n_p + written, bool) if window is None else positions[r] - pos < window
        for head in range(h):
            kv = head // (h // kvh)
            s = keys[kv] @ q[r, head] * scale
            if softcap is not None:
                s = softcap * np.tanh(s / softcap)
            s = np.where(vis, s, -np.inf)
            w = np.exp(s - s.max())
            out[r, head] = (w / w.sum()) @ vals[kv]
    return out.reshape(b, h * hd)


@pytest.mark.parametrize("window,softcap,gen,few", [
    (None, None, 64, False), (5, None, 64, False), (40, 2.0, 96, False), (3, None, 7, False),
    (None, 1.5, 7, False),
    # 128 slots: the block loop while the longest row has written at most a third of them,
    # the single product beyond (C.DENSE_FRACTION); both across the prompt boundary.
    (None, None, 128, True), (20, 1.5, 128, True), (None, None, 128, False), (50, None, 128, False)])
def test_attend_decode_shared_equals_plain_attention(window, softcap, gen, few):
    rng = np.random.default_rng(0)
    c, n, kvh, g, hd, p = 2, 3, 2, 2, 8, 9
    b = n * c
    plen = np.array([4, 9], np.int32)
    q = rng.standard_normal((b, kvh * g, hd)).astype(np.float32)
    prefix = tuple(rng.standard_normal((c, kvh, p, hd)).astype(np.float32) for _ in range(2))
    rows = tuple(rng.standard_normal((b, kvh, gen, hd)).astype(np.float32) * 3 for _ in range(2))
    # Rows at different lengths: 1 written slot (the current token only) up to the capacity.
    top = int(C.DENSE_FRACTION * gen) if few else gen
    written = np.array([1, top, top // 2 + 1, 2, 33 if top > 33 else 3, top - 1], np.int32)
    assert (gen > 2 * C.BLOCK and few) == (written.max() <= C.DENSE_FRACTION * gen)
    positions = np.tile(plen, n) + written - 1
    got = jax.jit(C.attend_decode_shared, static_argnames=("scale", "softcap"))(
        jnp.asarray(q), rows, prefix, jnp.asarray(plen), jnp.asarray(positions), scale=0.4,
        window=window, softcap=softcap)
    want = _plain(q, rows, prefix, plen, positions, 0.4, window, softcap)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0)


def test_unwritten_blocks_are_not_read():
    """While few slots are written (the block loop), NaN in every slot past the longest row's
    written blocks changes nothing: those blocks are never visited (the loop stops at
    ceil(written / BLOCK)). The single product past ``DENSE_FRACTION`` reads every slot with
    weight zero, so it needs them finite: they are zeros or keys another branch wrote."""
    rng = np.random.default_rng(1)
    b, kvh, hd, gen = 2, 1, 4, 4 * C.BLOCK
    q = jnp.asarray(rng.standard_normal((b, 2, hd)), jnp.float32)
    prefix = tuple(jnp.asarray(rng.standard_normal((1, kvh, 3, hd)), jnp.float32) for _ in range(2))
    rows = [np.asarray(rng.standard_normal((b, kvh, gen, hd)), np.float32) for _ in range(2)]
    positions = jnp.asarray([3 + 5, 3 + C.BLOCK + 2], jnp.int32)  # 6 and BLOCK + 3 written
    assert C.BLOCK + 3 <= C.DENSE_FRACTION * gen
    clean = C.attend_decode_shared(q, tuple(map(jnp.asarray, rows)), prefix, jnp.asarray([3]),
                                   positions, 0.5)
    for r in rows:
        r[:, :, 2 * C.BLOCK:] = np.nan
    dirty = C.attend_decode_shared(q, tuple(map(jnp.asarray, rows)), prefix, jnp.asarray([3]),
                                   positions, 0.5)
    assert np.isfinite(np.asarray(dirty)).all()
    np.testing.assert_array_equal(np.asarray(dirty), np.asarray(clean))


# ---- every architecture: cached decode equals the whole-sequence forward pass ------------
def _gpt2(rng):
    d, L, npos = 32, 2, 96
    r = lambda *s: jnp.asarray(0.15 * rng.standard_normal(s), jnp.float32)  # noqa: E731
    one = lambda n: jnp.asarray(1 + 0.1 * rng.standard_normal(n), jnp.float32)  # noqa: E731
    layers = [dict(ln1_g=one(d), ln1_b=r(d), qkv_w=r(d, 3 * d), qkv_b=r(3 * d), o_w=r(d, d),
                   o_b=r(d), ln2_g=one(d), ln2_b=r(d), fc_w=r(d, 4 * d), fc_b=r(4 * d),
                   proj_w=r(4 * d, d), proj_b=r(d)) for _ in range(L)]
    params = dict(embed=r(V, d), pos=r(npos, d), layers=layers, lnf_g=one(d), lnf_b=r(d))
    cfg = dict(n_layer=L, n_embd=d, n_head=4, n_positions=npos, eos_token_id=0, bos_token_id=0)
    return M.GPT2LM(cfg, params, name="gpt2")


def _llama(rng, model_type, **cfg_kw):
    d, L, h, kvh, inter = 64, 2, 4, 2, 96
    hd = cfg_kw.get("head_dim", d // h)
    r = lambda *s: jnp.asarray(0.15 * rng.standard_normal(s), jnp.float32)  # noqa: E731
    one = lambda n: jnp.asarray(1 + 0.1 * rng.standard_normal(n), jnp.float32)  # noqa: E731
    gemma = model_type == "gemma2"
    layers = []
    for _ in range(L):
        lp = dict(ln1=one(d), qkv_w=r(d, (h + 2 * kvh) * hd), o_w=r(h * hd, d),
                  gu_w=r(d, 2 * inter), down_w=r(inter, d), ln2=one(d))
        if gemma:
            lp.update(attn_post=r(d), mlp_post=r(d), ln1=r(d), ln2=r(d))
        if model_type == "qwen3":
            lp.update(q_norm=one(hd), k_norm=one(hd))
        layers.append(lp)
    params = dict(embed=r(V, d), layers=layers, norm=one(d) if not gemma else r(d))
    if not gemma:
        params["lm_head"] = r(d, V)
    cfg = dict(model_type=model_type, num_hidden_layers=L, hidden_size=d, num_attention_heads=h,
               num_key_value_heads=kvh, intermediate_size=inter, max_position_embeddings=96,
               rope_theta=1000.0, eos_token_id=0, bos_token_id=1, **cfg_kw)
    return M.LlamaLM(cfg, params, name=model_type)


ARCHS = {
    "gpt2": _gpt2,
    "llama": lambda rng: _llama(rng, "llama"),
    "mistral_window": lambda rng: _llama(rng, "mistral", sliding_window=4, head_dim=24),
    "qwen3_qknorm_window": lambda rng: _llama(rng, "qwen3", head_dim=16, use_sliding_window=True,
                                              sliding_window=6, max_window_layers=1),
    "gemma2_caps_alternating": lambda rng: _llama(
        rng, "gemma2", head_dim=16, query_pre_attn_scalar=24, sliding_window=5,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        hidden_activation="gelu_pytorch_tanh"),
    "phi3_partial_rotary": lambda rng: _llama(rng, "phi3", sliding_window=7,
                                              partial_rotary_factor=0.5),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_decode_equals_full_forward(arch):
    rng = np.random.default_rng(7)
    lm = ARCHS[arch](rng)
    if arch.startswith("gemma2"):
        assert lm.attn_softcap == 2.0 and list(lm.layer_windows[:2]) == [5, C.GLOBAL_WINDOW]
    params = lm.params
    bucket, steps, n = 8, 36, 3  # 36 steps: the generated part spans two attention blocks
    prompts = [rng.integers(2, V, size=5).tolist(), rng.integers(2, V, size=7).tolist()]
    k_ctx = len(prompts)
    max_len = bucket + steps

    prefill = jax.jit(lambda ids, length: lm.prefill(params, ids, max_len, length=length))
    decode = jax.jit(lambda cache, tok, pos: lm.decode_step(params, cache, tok, pos))
    forward = jax.jit(lambda ids: lm.forward(params, ids))

    rows, shared = [], []
    for p in prompts:
        ids = np.zeros(bucket, np.int32)
        ids[: len(p)] = p
        cache, lp0 = prefill(jnp.asarray(ids), jnp.asarray(len(p), jnp.int32))
        np.testing.assert_allclose(np.asarray(lp0), _ref(forward, p, max_len), atol=TOL, rtol=0)
        r, s = M.split_cache(M.broadcast_cache(cache, n))
        rows.append(r)
        shared.append(s)
    # Row n*K + k is particle n's context k (the engine's layout).
    rows = jax.tree.map(lambda *xs: jnp.stack(xs, 1).reshape((n * k_ctx,) + xs[0].shape[1:]), *rows)
    shared = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *shared)
    cache = M.SharedCache(rows, shared)
    assert cache.shared["kv"][0][0].shape[0] == k_ctx  # each prompt once, not per particle

    gen = [[] for _ in range(n)]  # each particle's generated tokens (all contexts see them)
    for t in range(steps):
        # Particle 2 lags (every third step it re-feeds its last token at its last position,
        # as the engine does for a finished particle): rows sit at different positions.
        advance = [True, True, t % 3 != 2 or t == 0]
        for i in range(n):
            if advance[i]:
                gen[i].append(int(rng.integers(2, V)))
        tok = np.repeat([g[-1] for g in gen], k_ctx)
        pos = np.array([len(p) + len(gen[i]) - 1 for i in range(n) for p in prompts], np.int32)
        cache, lp = decode(cache, jnp.asarray(tok, jnp.int32), jnp.asarray(pos))
        if t == 20:  # resample: particles become copies of ancestors (a fork and a drop)
            anc = np.array([1, 1, 0])
            rows_idx = (anc[:, None] * k_ctx + np.arange(k_ctx)).reshape(-1)
            cache = M.reorder(cache, jnp.asarray(rows_idx))
            gen = [list(gen[a]) for a in anc]
            lp = lp[rows_idx]
        if t in (0, 1, 20, 31, 32, steps - 1):
            for i in range(n):
                for k, p in enumerate(prompts):
                    np.testing.assert_allclose(np.asarray(lp[i * k_ctx + k]),
                                               _ref(forward, p + gen[i], max_len),
                                               atol=TOL, rtol=0, err_msg=f"{arch} t={t} row {i},{k}")


def _ref(forward, ids, width):
    """Next-token log-probs after ``ids`` from one causal pass (padding after, so it cannot
    influence position ``len(ids) - 1``)."""
    padded = np.zeros(width, np.int32)
    padded[: len(ids)] = ids
    return np.asarray(forward(jnp.asarray(padded))[len(ids) - 1])
