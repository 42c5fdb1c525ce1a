"""Engineering properties of every backend: reproducibility, jit = no-jit, vmap = loop, and
reuse of one compilation across parameter values. Deterministic (no statistical tolerance);
float comparisons are bounded by float32 rounding."""

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppl import testing as pt
from ppl.inference import engine as E
from ppl.inference import executables, smc, smc_steer
from ppl.inference.base import RunConfig
from ppl.inference.driver import bind_lm_params
from tests.properties import _harness as H

SMALL = 8  # particles of the runs compared op by op

ALL = H.method_params("particle", "mcmc", "vi")


@pytest.mark.parametrize("method", ALL)
@settings(max_examples=4)
@given(params=H.params_strategy(), seed=st.integers(0, 2**31 - 1))
def test_same_key_same_result(method, params, seed):
    """The same seed (int or the equal typed key) gives the same result bit for bit."""
    H.load(params)
    n = H.N if method.family == "particle" else 32  # chains/VI: a small run
    a = H.run(method, seed, n)
    b = H.run(method, seed, n)
    c = H.run(method, jax.random.key(seed), n)
    assert (a is None) == (b is None) == (c is None)
    if a is not None:
        for r in (b, c):
            assert np.array_equal(a.tokens, r.tokens)
            assert np.array_equal(a.log_weights, r.log_weights)
            assert a.log_evidence == r.log_evidence


RUNNERS = {
    "smc": lambda setup: smc.make_runner(
        setup, RunConfig(SMALL), smc.SMCOptions(resampling="multinomial", ess_threshold=1.0)),
    "smc_steer": lambda setup: smc_steer.make_runner(setup, RunConfig(SMALL),
                                                     smc_steer.SteerOptions(num_beams=2)),
}


@functools.lru_cache(maxsize=None)
def _runner(name):
    """The backend's pure ``runner(key, params)``; program tables are read from ``params``."""
    setup = E.prepare(H.program())
    return bind_lm_params(setup, RUNNERS[name](setup))


@functools.lru_cache(maxsize=None)
def _jitted(name):
    return jax.jit(_runner(name))


def _assert_same_state(a, b):
    (pa, ia), (pb, ib) = a, b
    assert np.array_equal(np.asarray(pa.tokens), np.asarray(pb.tokens))
    assert np.array_equal(np.asarray(pa.length), np.asarray(pb.length))
    assert np.array_equal(np.asarray(ia.ancestors), np.asarray(ib.ancestors))
    la, lb = np.asarray(pa.logw, np.float64), np.asarray(pb.logw, np.float64)
    assert np.array_equal(np.isfinite(la), np.isfinite(lb))
    f = np.isfinite(la)
    # float32: XLA may fuse and reorder the few dozen operations behind each weight.
    np.testing.assert_allclose(la[f], lb[f], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(RUNNERS))
@settings(max_examples=2)
@given(params=H.params_strategy(), seed=st.integers(0, 2**31 - 1))
def test_jit_equals_no_jit(name, params, seed):
    """The kernel functions run eagerly (``jax.disable_jit``) and compiled agree."""
    H.load(params)
    key = jax.random.key(seed)
    fast = _jitted(name)(key, params)
    with jax.disable_jit():
        slow = _runner(name)(key, params)
    _assert_same_state(fast, slow)


@functools.lru_cache(maxsize=None)
def _vmapped(name):
    return jax.jit(jax.vmap(_runner(name), in_axes=(0, None)))


@pytest.mark.parametrize("name", sorted(RUNNERS))
@settings(max_examples=3)
@given(params=H.params_strategy(), seed=st.integers(0, 2**31 - 1))
def test_vmap_over_keys_equals_loop(name, params, seed):
    """``init``/``build_kernel``/``run_loop`` are pure: vmapped over keys they equal a loop."""
    H.load(params)
    keys = jax.random.split(jax.random.key(seed), 3)
    batched = _vmapped(name)(keys, params)
    for i in range(3):
        one = _jitted(name)(keys[i], params)
        _assert_same_state(one, jax.tree.map(lambda x: x[i], batched))


@settings(max_examples=3)
@given(params=H.params_strategy())
def test_new_param_values_reuse_the_compiled_executable(params):
    """Assigning same-shaped arrays to ``program.lm.params`` reruns the cached executable
    (no compilation, same cache entry) and the run uses the new values (IS weights are the
    exact log ratio of the *new* target and proposal)."""
    method = H.Method("is")
    H.run(method, 0)  # make sure it is compiled
    before = executables.size()
    prog, exact = H.load(params)
    res = pt.run_or_none(prog, "is", H.N, 1)
    assert executables.size() == before
    if res is not None:
        assert res.timings["compile"] == 0.0
        for s, lw in zip(pt.sequences(res), res.log_weights):
            if s in exact.log_weights:
                t = exact.log_weights[s] - exact.log_proposal[s]
                assert abs(lw - t) <= 6 * H.T * 1.2e-7 * (abs(t) + 10)
