"""One decode step and one token draw, timed alone (the micro-benchmarks behind
docs/benchmarks.md's "Long prompts and long generations" and docs/performance.md).

``step``: ``lm.decode_step`` of the GPT-2-small-shaped random checkpoint that
``long_context.py`` writes (12 layers, 768 wide, vocabulary 50257, 2,048 positions), for N rows
after a prompt of P tokens with ``written`` generated slots filled, median of 5 jitted calls
(the cache donated, as in a run). ``draw``: for N rows over the 50,257-token vocabulary, a
masked draw plus its importance weight (``TokenDist.mask(...).sample`` and two ``log_prob``),
median of 20.

Usage::

    python benchmarks/decode_step.py step --n 64 --prompt 1024 --t 64 --written 1 32 64
    python benchmarks/decode_step.py step --n 16 --prompt 16 --t 512 --written 32 200 512
    python benchmarks/decode_step.py draw --n 64

``--code PATH`` times another checkout (e.g. ``git worktree add /work/old18 b9b46e9``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PPL_LAYER_LOOP", "unroll")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import long_context as LC  # noqa: E402


def _median_ms(f, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def step(n: int, prompt: int, t: int, written: list[int]) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ppl
    from ppl.models.base import broadcast_cache

    lm = ppl.models.load(str(LC.ensure_checkpoint()))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 50000, size=prompt), jnp.int32)
    cache, _ = jax.jit(lambda p, x: lm.prefill(p, x, prompt + t))(lm.params, ids)
    cache = jax.tree.map(jnp.array, broadcast_cache(cache, n))
    f = jax.jit(lambda p, c, tok, pos: lm.decode_step(p, c, tok, pos), donate_argnums=1)
    tok = jnp.ones(n, jnp.int32)
    for w in written:
        pos = jnp.full(n, prompt + w - 1, jnp.int32)
        state = {"cache": cache}

        def once():
            state["cache"], lp = f(lm.params, state["cache"], tok, pos)
            lp.block_until_ready()

        once()
        once()
        ms = _median_ms(once, 5)
        cache = state["cache"]
        print(f"decode step: N={n} prompt={prompt} slots={t} written={w}: {ms:.1f} ms", flush=True)


def draw(n: int) -> None:
    import jax
    import numpy as np

    from ppl.dists import TokenDist

    v = 50257
    logits = jax.numpy.asarray(np.random.default_rng(0).standard_normal((n, v)), "float32")
    allowed = jax.numpy.ones(v, bool).at[v - 1].set(False)
    keys = jax.random.split(jax.random.key(0), n)

    def one(k, lg):
        p = TokenDist(jax.nn.log_softmax(lg))
        q = p.mask(allowed)
        x = q.sample(k)
        return x, p.log_prob(x) - q.log_prob(x)

    g = jax.jit(jax.vmap(one))
    jax.block_until_ready(g(keys, logits))
    ms = _median_ms(lambda: jax.block_until_ready(g(keys, logits)), 20)
    print(f"masked draw + weight: N={n} V={v}: {ms:.1f} ms")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["step", "draw"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--t", type=int, default=64, help="generated slots (max_tokens)")
    ap.add_argument("--written", type=int, nargs="+", default=[1, 32, 64])
    ap.add_argument("--code", type=Path, default=None, help="another checkout to time")
    a = ap.parse_args(argv)
    if a.code is not None:
        LC.use_checkout(a.code.resolve())
    if a.what == "step":
        step(a.n, a.prompt, a.t, a.written)
    else:
        draw(a.n)


if __name__ == "__main__":
    main()
