"""The backend contract, checked on every registered backend (as blackjax's
``tests/test_api_protocols.py`` does for its samplers): a frozen options dataclass whose
defaults are its fields' defaults, a runner returning ``(state, info)`` with ``info.nan``, and
a Result with every field set. Backends registered later are picked up automatically."""

import dataclasses

import jax
import numpy as np
import pytest

import ppl
from ppl.errors import OptionError
from ppl.inference import engine as E
from ppl.inference import registry
from ppl.inference.base import Backend, Options, RunConfig
from tests.conftest import make_bigram
from tests.inference.test_exact import Twisted

BACKENDS = registry.names()
# Small options so every backend runs in a second or two on the bigram program.
SMALL = {"pimh": {"steps": 3}, "particle_gibbs": {"steps": 3}, "vi": {"vi_steps": 2, "vi_particles": 4},
         "csmc": {"retained": [1, 2, 3]}}


@pytest.fixture(scope="module")
def program():
    return Twisted(make_bigram(3), prompt="")


def test_the_registry_holds_the_builtin_backends():
    assert set(BACKENDS) >= {"is", "smc", "smc_steer", "pimh", "particle_gibbs", "vi"}
    assert ppl.methods() == BACKENDS


@pytest.mark.parametrize("name", BACKENDS)
def test_record_and_options(name):
    b = registry.get(name)
    assert isinstance(b, Backend) and b.name == name
    assert b.family in ("particle", "mcmc", "vi")
    assert dataclasses.is_dataclass(b.options) and issubclass(b.options, Options)
    opts = b.options()
    for f in dataclasses.fields(b.options):  # defaults live in the dataclass, once
        assert f.default is not dataclasses.MISSING, f"{name}.{f.name} has no default"
        assert getattr(opts, f.name) == f.default
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(opts, f.name, f.default)
    with pytest.raises(OptionError, match=f"Unknown option.*for method {name!r}"):
        b.options.build(name, {"no_such_option": 1})
    hash(opts.cache_key())  # usable as (part of) an executable key


@pytest.mark.parametrize("name", [n for n in BACKENDS if registry.get(n).run is None])
def test_runner_returns_state_and_info(name, program):
    b = registry.get(name)
    setup = E.prepare(program)
    config = RunConfig(4)
    opts = b.options.build(name, SMALL.get(name, {}))
    params = b.params(setup, opts)
    out = jax.jit(b.make_runner(setup, config, opts))(jax.random.key(0), params)
    assert isinstance(out, tuple) and len(out) == 2
    state, info = out
    assert np.asarray(info.nan).shape == () and not bool(info.nan)
    res = b.to_result(setup, config, opts, state, info)
    _check_result(res, name)


@pytest.mark.parametrize("name", BACKENDS)
def test_infer_returns_a_complete_result(name, program):
    res = ppl.infer(program, method=name, particles=4, seed=0, **SMALL.get(name, {}))
    _check_result(res, name)
    assert set(res.timings) >= {"compile", "run", "total"}


def _check_result(res, name):
    assert isinstance(res, ppl.Result)
    assert res.method == name
    n = res.num_particles
    assert res.tokens.ndim == 2 and res.lengths.shape == (n,) and len(res.texts) == n
    assert res.weights.shape == (n,) and abs(res.weights.sum() - 1.0) < 1e-9
    assert res.log_weights.shape == (n,)
    family = registry.get(name).family
    if name in ("particle_gibbs", "csmc"):  # conditional sweeps have no unbiased evidence
        assert res.log_evidence is None
        assert np.isfinite(res.extras["conditional_sweeps_log_mean_z"])
    else:
        assert np.isfinite(res.log_evidence)
    if family == "particle":
        assert res.ess.shape == (res.num_steps,) and res.ancestors.shape == (res.num_steps, n)
        assert "history" in res.extras
    assert "causes" in res.extras and "token_strings" in res.extras
