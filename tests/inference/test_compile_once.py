"""Compile once, run many: prompts are data, problems batch into one compiled program, and
how the loop is chunked never changes a result."""

import jax
import numpy as np
import pytest

import ppl
from ppl.errors import MemoryRefusal
from ppl.inference import engine, executables, registry
from ppl.inference.base import RunConfig
from ppl.stdlib import constraints as C

PROMPTS = ["The king said", "Once upon a time there was", "And then"]


@pytest.fixture(scope="module")
def lm():
    return ppl.models.load("tiny")


@pytest.fixture(scope="module")
def short():
    return C.max_word_length(5)


def _same(a, b):
    assert a.texts == b.texts
    assert np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(a.log_weights, b.log_weights)
    assert a.log_evidence == b.log_evidence
    assert np.array_equal(a.ess, b.ess) and np.array_equal(a.ancestors, b.ancestors)


def test_a_new_prompt_in_the_same_bucket_compiles_nothing(lm, short):
    first = ppl.infer(ppl.steer(lm, PROMPTS[0], constraints=[short], max_tokens=6),
                      particles=4, seed=0)
    before = executables.size()
    for prompt in PROMPTS[1:]:
        res = ppl.infer(ppl.steer(lm, prompt, constraints=[short], max_tokens=6),
                        particles=4, seed=0)
        assert res.timings["trace"] == 0.0 and res.timings["compile"] == 0.0
    assert executables.size() == before
    # The prompt really is an input: a different prompt gives a different population.
    assert res.texts != first.texts


@pytest.mark.parametrize("method, options", [("smc", {}), ("smc_steer", {"num_beams": 2}),
                                             ("pimh", {"steps": 2})])
def test_a_problem_in_a_batch_equals_its_run_alone(lm, short, method, options):
    base = ppl.steer(lm, "x", constraints=[short], max_tokens=6)
    batch = ppl.infer_many(base, prompts=PROMPTS, method=method, particles=4, seed=7, **options)
    assert len(batch) == 3 and batch[0].timings["batch_size"] == 3
    for i, prompt in enumerate(PROMPTS):
        alone = ppl.infer(ppl.steer(lm, prompt, constraints=[short], max_tokens=6),
                          method=method, particles=4, seed=7 + i, **options)
        _same(batch[i], alone)


def test_problems_resample_within_themselves(lm):
    """Two problems whose weights differ wildly (one strongly penalised by a potential): if
    resampling crossed problems, the penalised problem's particles would be replaced by the
    other's. Each problem's evidence is its own, as alone."""
    prog = ppl.steer(lm, "x", max_tokens=5, potentials=[lambda t: -5.0 * len(t)])
    res = ppl.infer_many(prog, prompts=["The king said", "Once upon"], particles=8, seed=1,
                         ess_threshold=1.0)
    for i, p in enumerate(["The king said", "Once upon"]):
        prog_i = ppl.steer(lm, p, max_tokens=5, potentials=prog.potentials)
        _same(res[i], ppl.infer(prog_i, particles=8, seed=1 + i, ess_threshold=1.0))
    assert (res[0].ancestors < 8).all() and (res[1].ancestors < 8).all()


def test_problems_of_different_shapes_are_grouped_and_kept_in_order(lm, short):
    progs = [ppl.steer(lm, PROMPTS[0], max_tokens=4),
             ppl.steer(lm, PROMPTS[1], constraints=[short], max_tokens=4),
             ppl.steer(lm, PROMPTS[2], max_tokens=4)]
    batch = ppl.infer_many(progs, particles=4, seeds=[3, 4, 5])
    for prog, seed, got in zip(progs, [3, 4, 5], batch):
        _same(got, ppl.infer(prog, particles=4, seed=seed))
    assert batch[1].timings["batch_size"] == 1 and batch[0].timings["batch_size"] == 2


def test_chunked_loop_equals_the_one_shot_runner(lm, short):
    """The driver runs the token loop in chunks of steps (progress, Ctrl-C); the whole run as
    one jitted function gives the same particles bit for bit."""
    prog = ppl.steer(lm, PROMPTS[1], constraints=[short], max_tokens=8)
    seen = []
    res = ppl.infer(prog, particles=4, seed=2, progress=lambda t, live, ess: seen.append(t))
    assert seen and seen[-1] == res.num_steps and seen == sorted(seen)
    setup = engine.prepare(prog)
    b = registry.get("smc")
    opts = b.options()
    runner = b.make_runner(setup, RunConfig(4), opts)
    parts, info = jax.jit(runner)(jax.random.key(2), setup.lm.params)
    assert np.array_equal(np.asarray(parts.tokens), res.tokens)
    assert np.array_equal(np.asarray(parts.logw, np.float64), res.log_weights)


def test_a_prompt_longer_than_its_bucket_is_refused(lm):
    prog = ppl.steer(lm, "one two three four five six seven eight", max_tokens=4)
    with pytest.raises(ValueError, match=r"does not fit the prompt bucket of 4 tokens"):
        engine.prepare(prog, prompt_len=4)
    assert engine.prompt_bucket(5, 32, 512) == 64
    assert engine.prompt_bucket(65, 32, 512) == 128
    assert engine.prompt_bucket(300, 32, 4096) == 512
    assert engine.prompt_bucket(60, 32, 80) == 60  # never past the context


def test_a_batch_too_big_for_memory_says_how_many_problems_fit(lm, monkeypatch):
    from ppl.inference import driver

    est = driver.estimate_bytes(engine.prepare(ppl.steer(lm, "x", max_tokens=4)), 4)
    per_problem = est["kv_cache"] + est["step_buffers"]
    # 90% of the memory (the refusal's margin) holds the weights, the runtime and 2.5 problems.
    avail = (est["weights"] + est["runtime"] + 2.5 * per_problem) / 0.9
    monkeypatch.setattr(driver, "_available_bytes", lambda: int(avail))
    with pytest.raises(MemoryRefusal, match=r"At most ~2 problems .* batch_size=2"):
        ppl.infer_many(ppl.steer(lm, "x", max_tokens=4), prompts=PROMPTS + ["y"], particles=4)
    res = ppl.infer_many(ppl.steer(lm, "x", max_tokens=4), prompts=PROMPTS + ["y"], particles=4,
                         batch_size=2)
    assert [r.timings["batch_size"] for r in res] == [2, 2, 2, 2]
