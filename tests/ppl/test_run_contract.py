"""The run contract: nothing is cached on the user's program, a changed program is never run
with a stale executable, equal programs share one, and concurrent runs are independent."""

import threading

import numpy as np
import pytest

import ppl
from ppl.inference import executables


@pytest.fixture(scope="module")
def lm():
    return ppl.models.load("tiny")


def _texts(program, **kw):
    return ppl.infer(program, method="is", particles=4, seed=0, **kw)


def test_changing_a_program_after_a_run_is_never_ignored(lm):
    """Regression: Setup and executables used to be cached on the program object, so these
    three changes were silently ignored (compile 0 s, the old texts)."""
    p = ppl.steer(lm, "Once upon", max_tokens=3)
    r1 = _texts(p)
    assert not hasattr(p, "_ppl_setup")
    p.temperature = 0.05
    r2 = _texts(p)
    fresh = _texts(ppl.steer(lm, "Once upon", max_tokens=3, temperature=0.05))
    assert r2.timings["trace"] > 0  # traced anew (not the stale executable)
    assert r2.texts == fresh.texts and np.array_equal(r2.log_weights, fresh.log_weights)
    assert r2.texts != r1.texts or not np.array_equal(r2.log_weights, r1.log_weights)

    p.prompt = "The king said"
    r3 = _texts(p)
    fresh = _texts(ppl.steer(lm, "The king said", max_tokens=3, temperature=0.05))
    assert r3.texts == fresh.texts and np.array_equal(r3.log_weights, fresh.log_weights)

    p.max_tokens = 5  # the loop and the budget read the same value
    r4 = _texts(p)
    assert r4.tokens.shape[1] == 5 and int(r4.lengths.max()) <= 5
    fresh = _texts(ppl.steer(lm, "The king said", max_tokens=5, temperature=0.05))
    assert r4.texts == fresh.texts


def test_equal_programs_share_one_executable(lm):
    a = ppl.steer(lm, "Once upon a time", max_tokens=3)
    ra = _texts(a)
    before = executables.size()
    rb = _texts(ppl.steer(lm, "Once upon a time", max_tokens=3))
    assert executables.size() == before and rb.timings["compile"] == 0.0
    assert rb.texts == ra.texts


def test_a_numpy_table_mutated_in_place_is_seen(lm):
    """NumPy arrays are fingerprinted by content (they can change in place)."""
    import jax.numpy as jnp

    class Banned(ppl.Program):
        max_tokens = 3

        def __init__(self, lm, banned):
            super().__init__(lm, prompt="Once")
            self.banned = banned

        def step(self, ctx, s):
            p = ctx.lm.next_token()
            tok = ctx.sample(p, proposal=p.mask(~jnp.asarray(self.banned)))
            return s

    banned = np.zeros(lm.vocab_size, bool)
    prog = Banned(lm, banned)
    r1 = _texts(prog)
    banned[np.unique(r1.tokens)] = True  # ban every token the first run drew
    r2 = _texts(prog)
    assert not set(np.unique(r2.tokens)) & set(np.unique(r1.tokens))


def test_concurrent_runs_on_one_model(lm):
    """Two threads tracing runs of two programs on the same model at once (the old driver
    assigned traced parameters to the shared model and leaked tracers)."""
    progs = [ppl.steer(lm, "Once upon a time", max_tokens=4, temperature=t) for t in (0.7, 1.3)]
    want = [ppl.infer(p, method="smc", particles=4, seed=1).texts for p in progs]
    executables.clear()
    got, errors = [None, None], []

    def work(i):
        try:
            got[i] = ppl.infer(progs[i], method="smc", particles=4, seed=1).texts
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == want


def test_a_user_exception_in_a_host_function_is_raised_as_itself(lm):
    class Boom(Exception):
        pass

    def potential(text):
        raise Boom(f"my potential failed on {text!r}")

    prog = ppl.steer(lm, "Once", max_tokens=2, potentials=[potential])
    with pytest.raises(Boom, match="my potential failed on"):
        ppl.infer(prog, method="is", particles=2, seed=0)
