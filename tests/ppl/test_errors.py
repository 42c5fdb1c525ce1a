"""Errors a user can cause get a clear message naming the cause and the fix."""

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from tests.conftest import make_bigram


def test_all_particles_dead_names_the_constraint():
    lm = make_bigram(0)

    def never(text):
        return False

    prog = ppl.steer(lm, "", constraints=[never], max_tokens=3)
    with pytest.raises(ppl.InferenceError) as e:
        ppl.infer(prog, method="smc", particles=16, seed=0)
    msg = str(e.value)
    assert "No particle satisfied" in msg and "'never'" in msg and "16 of 16" in msg


def test_condition_name_reported_from_custom_program():
    class Impossible(ppl.Program):
        max_tokens = 3

        def step(self, ctx, s):
            tok = ctx.sample(ctx.lm.next_token())
            ctx.condition(tok == 99, name="token 99")
            return s

    with pytest.raises(ppl.InferenceError, match="token 99"):
        ppl.infer(Impossible(make_bigram(0)), method="is", particles=8, seed=0)


def test_prompt_too_long_fails_before_any_work():
    lm = ppl.models.NGramLM(np.zeros(3), np.zeros((3, 3)), eos_token_id=2,
                            token_strings=["a", "b", ""], max_context=10)
    prog = ppl.steer(lm, "abababab", max_tokens=5)
    with pytest.raises(ValueError, match=r"prompt \(8 tokens\) plus max_tokens \(5\).*context of 10.*at most 2"):
        ppl.infer(prog, particles=4)


def test_step_without_token_is_a_program_error():
    class NoToken(ppl.Program):
        def step(self, ctx, s):
            ctx.factor(1.0)
            return s

    with pytest.raises(ppl.ProgramError, match="exactly one token"):
        ppl.infer(NoToken(make_bigram(0), max_tokens=2), particles=2)


def test_two_tokens_in_one_step_is_a_program_error():
    class TwoTokens(ppl.Program):
        def step(self, ctx, s):
            ctx.sample(ctx.lm.next_token())
            ctx.sample(ctx.lm.next_token())
            return s

    with pytest.raises(ppl.ProgramError, match="more than one token"):
        ppl.infer(TwoTokens(make_bigram(0), max_tokens=2), particles=2)


def test_unknown_method_and_option():
    prog = ppl.steer(make_bigram(0), "", max_tokens=2)
    with pytest.raises(ValueError, match="Unknown method 'nope'; available: .*smc"):
        ppl.infer(prog, method="nope")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['beams'\] for method 'smc_steer'.*num_beams"):
        ppl.infer(prog, method="smc_steer", beams=2)
    with pytest.raises(ValueError, match="Unknown resampling scheme 'bogus'"):
        ppl.infer(prog, method="smc", resampling="bogus")


def test_empty_masked_proposal_kills_particle_without_nan():
    class EmptyMask(ppl.Program):
        max_tokens = 2

        def step(self, ctx, s):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(jnp.zeros(self.lm.vocab_size, bool)))
            return s

    with pytest.raises(ppl.InferenceError, match="No particle satisfied"):
        ppl.infer(EmptyMask(make_bigram(0)), particles=4)


def test_memory_estimate_refuses_huge_runs(monkeypatch):
    from ppl.inference import driver

    lm = make_bigram(0)
    monkeypatch.setattr(type(lm), "init_cache_bytes", lambda self, n: 10**12)
    prog = ppl.steer(lm, "", max_tokens=2)
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* Lower the number of particles"):
        ppl.infer(prog, particles=64)
    est = driver.estimate_bytes(ppl.inference.engine.prepare(prog), 64)
    assert est["kv_cache"] == 64 * 10**12
