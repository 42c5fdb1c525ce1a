"""Resampling schemes as pure functions: range, counts, unbiasedness, -inf weights, ESS.

Each statistical assertion fails falsely with probability <= ALPHA = 1e-4 (Bonferroni over the
particles it compares); float32 terms are bounds on rounding, not slack.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppl import strategies as pst
from ppl import testing as pt
from ppl.inference import resampling as R
from tests.properties._harness import ALPHA

M = 8  # particles (fixed shapes: one compilation per scheme and sample count)
KEYS = 2000


@pytest.mark.parametrize("scheme", sorted(R.RESAMPLERS))
@settings(max_examples=6)
@given(lw=pst.log_weight_vectors(M), n=st.sampled_from([M, 5]), seed=st.integers(0, 2**16))
def test_resampler_indices_in_range_and_counts_unbiased(scheme, lw, n, seed):
    """Indices lie in [0, M), there are n of them, -inf particles are never picked, and each
    particle's expected count is n * w_i."""
    bad = pt.resampling_discrepancies(R.RESAMPLERS[scheme], lw, n, num_keys=KEYS, seed=seed,
                                      alpha=ALPHA)
    assert not bad, bad


_optimal = jax.jit(jax.vmap(R.optimal, in_axes=(0, None, None)), static_argnums=2)


@settings(max_examples=8)
@given(lw=pst.log_weight_vectors(12), n=st.sampled_from([5, 12]), seed=st.integers(0, 2**16))
def test_optimal_resampling_preserves_weight_and_is_unbiased(lw, n, seed):
    """Fearnhead–Clifford resampling (smc_steer): the total weight is preserved exactly, no
    candidate is kept twice, -inf candidates never survive, and each candidate's expected new
    weight equals its old weight."""
    m = lw.shape[0]
    keys = jax.random.split(jax.random.key(seed), KEYS)
    idx, new_lw = (np.asarray(x) for x in _optimal(keys, jnp.asarray(lw), n))
    lw64 = lw.astype(np.float64)
    lz = np.logaddexp.reduce(lw64)
    assert idx.min() >= 0 and idx.max() < m
    assert not np.isnan(new_lw).any()
    assert np.isfinite(lw[idx]).all() or (np.isfinite(lw).sum() < n and
                                          np.all(new_lw[~np.isfinite(lw[idx])] == -np.inf))
    total = np.logaddexp.reduce(new_lw.astype(np.float64), axis=1)
    np.testing.assert_allclose(total, lz, atol=1e-5 * (1 + abs(lz)) + 1e-5)
    live = np.where(np.isfinite(new_lw), idx, -1)
    for row in live:
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == len(kept), f"duplicate survivors {row}"
    w = np.exp(lw64 - lz)
    contrib = np.zeros((KEYS, m))
    for i in range(m):
        contrib[:, i] = np.sum(np.where(idx == i, np.exp(new_lw.astype(np.float64) - lz), 0.0), 1)
    bad = [msg for i in range(m) if (msg := pt.mean_discrepancy(
        contrib[:, i], w[i], ALPHA / m, float_tol=1e-5, what=f"new weight of candidate {i}"))]
    assert not bad, bad


_ess = jax.jit(R.ess)


@settings(max_examples=12)
@given(lw=pst.log_weight_vectors(M), c=st.floats(-50, 50))
def test_ess_is_shift_invariant_and_bounded(lw, c):
    """ESS depends on normalised weights only, and 1 <= ESS <= number of live particles."""
    e = float(_ess(jnp.asarray(lw)))
    e_shift = float(_ess(jnp.asarray(lw) + jnp.float32(c)))
    live = int(np.isfinite(lw).sum())
    # float32: log-weights of magnitude <= 54 lose ~54 * eps each; ESS is smooth in them.
    assert e_shift == pytest.approx(e, rel=float(2 * 64 * M * np.finfo(np.float32).eps))
    assert 1.0 - 1e-5 <= e <= live * (1 + 1e-5)


@pytest.mark.parametrize("scheme", sorted(R.RESAMPLERS) + ["optimal"])
def test_all_dead_population_is_handled(scheme):
    """Every weight -inf: ESS is 0, indices stay in range, nothing is NaN."""
    lw = jnp.full((M,), -jnp.inf)
    assert float(R.ess(lw)) == 0.0
    key = jax.random.key(0)
    if scheme == "optimal":
        idx, new_lw = R.optimal(key, lw, 5)
        assert not np.isnan(np.asarray(new_lw)).any()
    else:
        idx = R.RESAMPLERS[scheme](key, lw, 5)
    idx = np.asarray(idx)
    assert idx.shape == (5,) and idx.min() >= 0 and idx.max() < M


_stable = jax.jit(R.stable_ancestors)


@settings(max_examples=40)
@given(n=st.integers(1, 24), data=st.data())
def test_stable_ancestors_keep_survivors_in_place(n, data):
    """The reordering SMC applies to every resampling: the same multiset of ancestors, every
    particle with offspring keeps its own slot, so every copy reads a slot nothing writes."""
    anc = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)), np.int32)
    out = np.asarray(_stable(jnp.asarray(anc)))
    assert sorted(out.tolist()) == sorted(anc.tolist())
    for a in set(anc.tolist()):
        assert out[a] == a
    assert (out[out] == out).all()


@settings(max_examples=25)
@given(n=st.integers(1, 12), k=st.integers(1, 3), data=st.data())
def test_in_place_cache_copy_equals_gather(n, k, data):
    """``copy_rows_in_place`` (a loop over the moved slots) gives exactly the gather of the
    cache rows ``a * K .. a * K + K - 1`` of every particle's ancestor, for a cache pytree
    with several leaf shapes and ``K`` contexts per particle."""
    from ppl.inference import engine as E

    anc = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)), np.int32)
    anc = _stable(jnp.asarray(anc))
    prompts = E.Prompts(np.zeros((k, 1), np.int32), np.ones((k,), np.int32))
    setup = E.Setup(program=None, lm=None, prompt_len=1, max_tokens=1, max_len=2,
                    condition_names=(), prompts=prompts)
    rng = np.random.default_rng(n * 7 + k)
    cache = ((jnp.asarray(rng.normal(size=(n * k, 2, 3)), jnp.float32),
              jnp.asarray(rng.integers(0, 9, size=(n * k,)), jnp.int32)),)
    got = E.copy_rows_in_place(setup, cache, anc)
    rows = E.cache_rows(setup, anc)
    want = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
