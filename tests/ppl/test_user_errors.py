"""Mistakes new users make (LLaMPPL habits, careless values, NaN from their code): each is
refused with a message naming the cause and the fix, before anything compiles where possible."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.inference import engine
from ppl.stdlib import constraints as C
from tests.conftest import make_bigram

LM = make_bigram(0)
TABLE = [0.1, 0.2, 0.3, 0.4]
WEIGHTS = {0: 1.0}


def program(step, init=None, max_tokens=3):
    class P(ppl.Program):
        def step(self, ctx, s):
            return step(self, ctx, s)

    if init is not None:
        P.init = lambda self, ctx: init(self, ctx)
    return P(LM, max_tokens=max_tokens)


def prepare(p):
    """The abstract pass every run starts with (no compilation)."""
    return engine.prepare(p)


# ---- LLaMPPL habits inside step(): caught at trace time, with the user's line -------------

def step_if(self, ctx, s):
    tok = ctx.sample(ctx.lm.next_token())
    if tok == 3:  # the line the message must name
        ctx.finish()
    return s


def step_int(self, ctx, s):
    tok = ctx.sample(ctx.lm.next_token())
    ctx.factor(float(int(tok)))
    return s


def step_list(self, ctx, s):
    tok = ctx.sample(ctx.lm.next_token())
    ctx.factor(TABLE[tok])
    return s


def step_dict(self, ctx, s):
    tok = ctx.sample(ctx.lm.next_token())
    ctx.factor(WEIGHTS.get(tok, 0.0))
    return s


def step_decode(self, ctx, s):
    tok = ctx.sample(ctx.lm.next_token())
    ctx.condition(self.lm.vocab.decode([tok]) != "a")
    return s


def step_in_text(self, ctx, s):
    ctx.sample(ctx.lm.next_token())
    ctx.condition("e" not in ctx.tokens)
    return s


@pytest.mark.parametrize("step, fix", [
    (step_if, "ctx.finish_if"),
    (step_int, "jnp"),
    (step_list, "jnp.asarray"),
    (step_dict, "jnp` table"),
    (step_decode, "ctx.text(fn)"),
    (step_in_text, "ctx.text(fn)"),
])
def test_python_on_traced_values_names_the_line_and_the_fix(step, fix):
    with pytest.raises(ppl.ProgramError) as e:
        prepare(program(step))
    msg = str(e.value)
    assert "step()" in msg and __file__ in msg and fix in msg, msg
    if step is step_if:
        assert f"{__file__}:{step.__code__.co_firstlineno + 2}" in msg and "if tok == 3" in msg


def test_tracer_error_in_init_names_init():
    def init(self, ctx):
        x = ctx.sample(ppl.dists.TokenDist(jnp.zeros(4)))
        return jnp.zeros(2) if x > 0 else jnp.ones(2)

    with pytest.raises(ppl.ProgramError, match=r"init\(\) at .*test_user_errors.py:\d+.*Python bool"):
        prepare(program(lambda self, ctx, s: (ctx.sample(ctx.lm.next_token()), s)[1], init))


# ---- shape mistakes: named before compiling ---------------------------------------------

def test_step_returning_none():
    def step(self, ctx, s):
        ctx.sample(ctx.lm.next_token())

    with pytest.raises(ppl.ProgramError, match=r"step\(\) returned None.*return state"):
        prepare(program(step))


def test_state_changing_shape_or_dtype_names_the_leaf():
    def step(self, ctx, s):
        ctx.sample(ctx.lm.next_token())
        return {"count": s["count"], "seen": jnp.zeros(3)}

    with pytest.raises(ppl.ProgramError, match=r"\['seen'\].*float32\[2\].*float32\[3\]"):
        prepare(program(step, lambda self, ctx: {"count": jnp.int32(0), "seen": jnp.zeros(2)}))

    def step2(self, ctx, s):
        ctx.sample(ctx.lm.next_token())
        return s + 0.5

    with pytest.raises(ppl.ProgramError, match=r"int32\[2\].*float32\[2\].*astype"):
        prepare(program(step2, lambda self, ctx: jnp.zeros(2, jnp.int32)))


def test_growing_python_list():
    def step(self, ctx, s):
        return s + [ctx.sample(ctx.lm.next_token())]

    with pytest.raises(ppl.ProgramError, match=r"list of length 0 in init\(\) and 1 after step\(\).*"
                                               r"fixed-size array"):
        prepare(program(step, lambda self, ctx: []))


@pytest.mark.parametrize("primitive", ["condition", "factor", "twist", "finish_if"])
def test_vector_to_a_scalar_primitive_names_the_primitive(primitive):
    def step(self, ctx, s):
        ctx.sample(ctx.lm.next_token())
        getattr(ctx, primitive)(jnp.ones(3, bool if primitive in ("condition", "finish_if") else float))
        return s

    with pytest.raises(ppl.ProgramError, match=rf"ctx.{primitive}\(\) at .*test_user_errors.py:\d+ "
                                               r"got an array of shape \(3,\).*one scalar per particle"):
        prepare(program(step))


def test_top_k_zero_and_out_of_vocabulary_observe():
    with pytest.raises(ppl.ProgramError, match=r"top_k\(k\) needs an integer k in 1..4"):
        prepare(program(lambda self, ctx, s: (ctx.sample(ctx.lm.next_token().top_k(0)), s)[1]))
    with pytest.raises(ppl.ProgramError, match=r"token id 99 is outside the vocabulary \(valid ids are 0..3\)"):
        prepare(program(lambda self, ctx, s: (ctx.observe(ctx.lm.next_token(), 99), s)[1]))


# ---- careless values: refused, not coerced ------------------------------------------------

@pytest.mark.parametrize("bad", [2.7, "10", True])
def test_max_tokens_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="max_tokens must be an integer >= 1"):
        ppl.steer(LM, "", max_tokens=bad)


@pytest.mark.parametrize("bad", [2.5, "8", True, 0])
def test_particles_must_be_a_positive_integer(bad):
    with pytest.raises(ppl.errors.OptionError, match="particles must be"):
        ppl.infer(ppl.steer(LM, "", max_tokens=2), particles=bad)


@pytest.mark.parametrize("bad, kind", [(True, TypeError), ("abc", TypeError), ("42", TypeError),
                                       (None, TypeError), (1.0, TypeError), (2**64, ValueError),
                                       (-1, ValueError)])
def test_seeds_are_ints_or_keys(bad, kind):
    # None is refused (not "a fresh random seed"): a run is a pure function of its seed.
    with pytest.raises(kind, match=r"seed must be|seed=None is not a seed.*secrets.randbits"):
        ppl.infer(ppl.steer(LM, "", max_tokens=2), particles=2, seed=bad)


def test_negative_or_non_numeric_temperature_is_refused():
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0 \(0 = greedy\)"):
        ppl.steer(LM, "", temperature=-1)
    with pytest.raises(TypeError, match="temperature must be a number"):
        ppl.steer(LM, "", temperature="0.7")
    with pytest.raises(ValueError, match="temperature"):
        ppl.steer(LM, "", temperature=math.nan)


def test_temperature_zero_is_greedy():
    # The limit temperature -> 0 of the tempered prior: every particle follows the argmax
    # chain, whose prior mass is 1 (log evidence 0).
    init = np.asarray(LM.params["initial"])
    trans = np.asarray(LM.params["transition"])
    chain = [int(np.argmax(init))]
    while len(chain) < 3 and chain[-1] != LM.eos_token_id:
        chain.append(int(np.argmax(trans[chain[-1]])))
    expected = LM.vocab.decode([t for t in chain if t != LM.eos_token_id])
    res = ppl.infer(ppl.steer(LM, "", max_tokens=3, temperature=0), method="is", particles=4)
    assert set(res.texts) == {expected}
    assert res.log_evidence == pytest.approx(0.0, abs=1e-5)


def test_a_draw_from_an_empty_distribution_kills_the_particle():
    class Empty(ppl.Program):
        max_tokens = 2

        def step(self, ctx, s):
            ctx.sample(ctx.lm.next_token().mask(jnp.zeros(self.lm.vocab_size, bool)))
            return s

    with pytest.raises(ppl.InferenceError, match="empty next-token distribution"):
        ppl.infer(Empty(LM), method="is", particles=4)


@pytest.mark.parametrize("prompt, msg", [([1, 99999], "token id 99999"), ([-1], "token id -1")])
def test_prompt_ids_out_of_range(prompt, msg):
    with pytest.raises(ValueError, match=msg + r".*valid ids are 0..3"):
        ppl.infer(ppl.steer(LM, prompt, max_tokens=2), particles=2)


def test_constraint_arguments_are_not_coerced():
    with pytest.raises(ValueError, match="non-negative int, got True"):
        C.max_word_length(True)
    with pytest.raises(ValueError, match="not a JSON value"):
        C.json_schema({"enum": ["a", float("nan")]})


# ---- NaN / +inf from user code: an error naming the culprit -------------------------------

def test_potential_returning_a_string_is_refused():
    prog = ppl.steer(LM, "", max_tokens=2, potentials=[lambda text: "1.5"])
    with pytest.raises(TypeError, match=r"returned '1.5' \(str\).*must return a number"):
        ppl.infer(prog, method="is", particles=2)


def test_nan_twist_is_an_error_naming_it():
    def score(text):
        return math.nan if "a" in text else 0.0

    prog = ppl.steer(LM, "", max_tokens=3, twists=[score])
    with pytest.raises(ppl.ProgramError, match=r"'score' returned nan for the text .*Rule:.*NaN"):
        ppl.infer(prog, particles=8)


def test_nan_factor_in_device_code_names_the_line():
    def step(self, ctx, s):
        tok = ctx.sample(ctx.lm.next_token())
        ctx.factor(jnp.log(tok - 1.0))  # NaN for token 0
        return s

    with pytest.raises(ppl.InferenceError,
                       match=r"ctx.factor\(\) at .*test_user_errors.py:\d+ produced NaN or \+inf "
                             r"for \d+ of 16 particles"):
        ppl.infer(program(step, max_tokens=2), method="is", particles=16)


@pytest.mark.parametrize("method, opts", [("smc", {"ess_threshold": 1.0}),
                                          ("smc_steer", {"num_beams": 2})])
def test_nan_resampled_away_is_still_an_error(method, opts):
    """A NaN factor on token 0 at the first step only: resampling removes those particles
    before the end, so none is in the final population; the run still names the culprit."""
    def step(self, ctx, s):
        tok = ctx.sample(ctx.lm.next_token())
        ctx.factor(jnp.where(ctx.length == 0, jnp.log(tok - 1.0), 0.0))
        return s

    with pytest.raises(ppl.InferenceError,
                       match=r"ctx.factor\(\) at .*test_user_errors.py:\d+ produced NaN or \+inf "
                             r"during the run .*resampled away"):
        ppl.infer(program(step, max_tokens=3), method=method, particles=16, seed=0, **opts)


# ---- memory: a container's limit counts ---------------------------------------------------

def test_available_memory_reads_the_cgroup_limit(tmp_path, monkeypatch):
    from ppl.inference import driver

    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{2 * 2**30}\n")
    usage.write_text(f"{2**29}\n")
    monkeypatch.setattr(driver, "CGROUP_FILES", ((str(limit), str(usage)),))
    monkeypatch.setattr(driver, "_meminfo_available", lambda: 64 * 2**30)
    assert driver._available_bytes() == 2 * 2**30 - 2**29
    limit.write_text("max\n")
    assert driver._available_bytes() == 64 * 2**30


def test_smc_steer_estimate_counts_every_beam(monkeypatch):
    from ppl.inference import registry

    backend = registry.get("smc_steer")
    opts = backend.options.build("smc_steer", {"num_beams": 50})
    from ppl.inference.base import RunConfig

    cfg = RunConfig(8)
    assert backend.step_rows(cfg, opts) == 8 * 50


def test_an_automaton_compiled_for_another_vocabulary_is_refused():
    other = make_bigram(0, v=6)
    automaton = C.max_word_length(2).compile(other.vocab)
    with pytest.raises(ValueError, match=r"compiled for a vocabulary of 6 tokens.*has 4.*compile\(lm.vocab\)"):
        ppl.steer(LM, "", constraints=[automaton])
    ppl.steer(LM, "", constraints=[C.max_word_length(2).compile(LM.vocab)])


def test_an_exception_in_a_progress_callback_is_raised_as_itself():
    class Boom(Exception):
        pass

    def progress(step, live, ess):
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        ppl.infer(ppl.steer(LM, "", max_tokens=2), particles=2, progress=progress)


def test_a_failed_condition_names_the_cause_before_an_empty_draw():
    class Rule(ppl.Program):
        max_tokens = 2

        def step(self, ctx, s):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(jnp.zeros(self.lm.vocab_size, bool)))
            ctx.condition(False, name="my rule")
            return s

    with pytest.raises(ppl.InferenceError, match=r"'my rule' \(4 of 4\)"):
        ppl.infer(Rule(LM), method="is", particles=4)


def test_potentials_accept_numpy_and_jax_scalars():
    from ppl.stdlib.base import Potential

    for value in (1.5, np.float32(1.5), np.array(1.5), jnp.float32(1.5)):
        assert Potential(lambda text, v=value: v)("x") == 1.5
    for value in ("1.5", None, [1.5], np.ones(2)):
        with pytest.raises(TypeError, match="must return a number"):
            Potential(lambda text, v=value: v)("x")


def test_state_kept_on_self_is_refused_and_the_program_left_unchanged():
    class OnSelf(ppl.Program):
        count = 0

        def step(self, ctx, s):
            tok = ctx.sample(ctx.lm.next_token())
            self.count = self.count + tok  # LLaMPPL style: state on the model object
            return s

    prog = OnSelf(LM, max_tokens=2)
    with pytest.raises(ppl.ProgramError, match=r"assigned `self.count` while tracing.*keep them in the state"):
        prepare(prog)
    assert "count" not in vars(prog)


def test_a_host_error_is_reported_once_without_jax_logging_its_traceback(caplog):
    prog = ppl.steer(LM, "", max_tokens=2, potentials=[lambda text: 1 / 0])
    with pytest.raises(ZeroDivisionError):
        ppl.infer(prog, particles=2)
    assert not [r for r in caplog.records if "pure_callback failed" in r.getMessage()]


def test_an_async_step_is_refused_with_the_fix():
    class Async(ppl.Program):
        async def step(self, ctx, s):
            ctx.sample(ctx.lm.next_token())
            return s

    with pytest.raises(ppl.ProgramError, match=r"Async.step\(\) is `async def`.*without `async`/`await`"):
        prepare(Async(LM, max_tokens=2))
