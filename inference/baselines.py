"""Baselines for comparison: plain batched ancestral sampling and best-of-N.

``ancestral_sample`` is the raw decode reference: one prefill, then ``T`` batched decode steps
with inverse-CDF sampling, under one ``jax.jit`` with ``lax.scan`` and no program machinery.
Benchmarks compare SMC against it to measure the cost of everything that is not the LM.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppl.dists import sample_logits
from ppl.models.base import broadcast_cache

__all__ = ["ancestral_sample", "best_of_n"]


@functools.lru_cache(maxsize=32)
def _sampler(lm, prompt_len: int, num: int, steps: int, exclude_eos: bool):
    eos = lm.eos_token_id

    def run(key, params, prompt):
        cache, lp = lm.prefill(params, prompt, prompt_len + steps)
        cache = broadcast_cache(cache, num)
        lp = jnp.broadcast_to(lp, (num, lp.shape[-1]))

        def body(carry, t):
            cache, lp, key = carry
            key, sub = jax.random.split(key)
            logits = lp.at[:, eos].set(-jnp.inf) if exclude_eos else lp
            tok = sample_logits(sub, logits)
            pos = jnp.full((num,), prompt_len + t, jnp.int32)
            cache, lp = lm.decode_step(params, cache, tok, pos)
            return (cache, lp, key), tok

        (_, _, _), toks = jax.lax.scan(body, (cache, lp, key), jnp.arange(steps))
        return toks.T

    return jax.jit(run)


def ancestral_sample(lm, prompt: str | Sequence[int], num: int, steps: int, seed=0,
                     exclude_eos: bool = True) -> tuple[np.ndarray, dict]:
    """Draws ``num`` continuations of ``steps`` tokens each from the LM.

    Returns:
        ``(tokens[num, steps], timings)`` with ``compile`` and ``run`` seconds.
    """
    ids = jnp.asarray(lm.prompt_ids(prompt), jnp.int32)
    fn = _sampler(lm, int(ids.shape[0]), int(num), int(steps), bool(exclude_eos))
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    t0 = time.perf_counter()
    exe = fn.lower(key, lm.params, ids).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(exe(key, lm.params, ids))
    t2 = time.perf_counter()
    return np.asarray(out), {"compile": t1 - t0, "run": t2 - t1}


def best_of_n(program, score: Callable[[str], float], particles: int, seed=0):
    """Samples ``particles`` texts from the program's prior proposal (method ``is``) and returns
    ``(best text, its score, Result)``: the common reward-maximising baseline."""
    from ppl.api import infer

    res = infer(program, method="is", particles=particles, seed=seed)
    scores = [score(t) for t in res.texts]
    i = int(np.argmax(scores))
    return res.texts[i], float(scores[i]), res
