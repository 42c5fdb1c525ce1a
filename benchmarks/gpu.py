"""Decode and SMC throughput, memory and compile time across particle counts, for accelerators.

For each model shape, prompt length (64 and 1,024 tokens) and particle count N (1 .. 1024):

* ``decode``: prefill once, then T decode steps sampling one token per row, one ``jax.jit``
  with a ``lax.scan`` (the LM alone);
* ``smc``: ``ppl.infer(method="smc")`` of a program that samples the LM with EOS masked (every
  particle generates T tokens), multinomial resampling when the ESS falls under N/2.

Reported per cell (JSON): particle-tokens/s (``N * T / run seconds``, median of
``--repeats`` runs after the compiling one), compile seconds, and memory: XLA's
``memory_analysis()`` of the decode executable (arguments + outputs + temporaries) and, on
accelerators, the device's ``peak_bytes_in_use``.

Models (random weights, made on the device: nothing is downloaded): GPT-2 small's shape,
SmolLM2-135M's (the real weights when ``~/.cache/steerppl/models/smollm2-135m-instruct/hf``
holds them) and Llama-3.2-1B's, in bfloat16 weights and activations with float32 logits and
log-probabilities (``--dtype float32`` for CPU comparisons). Sized to finish in under 8 minutes
on one H100/H200-class GPU; ``--budget`` seconds stops starting new cells (the JSON says which
were skipped). ``--tiny`` runs two-layer models at N = 1, 4 on CPU in seconds (the test).

Usage::

    python benchmarks/gpu.py                       # on a GPU machine; writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --tiny --out /tmp/gpu_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
SMOLLM2 = Path.home() / ".cache" / "steerppl" / "models" / "smollm2-135m-instruct" / "hf"

SHAPES = {
    "gpt2-small": dict(kind="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                       n_positions=2048),
    "smollm2-135m": dict(kind="llama", num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(kind="llama", num_hidden_layers=16, hidden_size=2048, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0,
                         tie_word_embeddings=True, head_dim=64),
}
TINY = {
    "gpt2-tiny": dict(kind="gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256),
    "llama-tiny": dict(kind="llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, vocab_size=512,
                       max_position_embeddings=256, tie_word_embeddings=True),
}


def make_model(name: str, shape: dict, dtype):
    """A model of ``shape`` with random weights made on the default device (the real
    SmolLM2-135M when it is in the models cache)."""
    import jax
    import jax.numpy as jnp

    import ppl

    if name == "smollm2-135m" and (SMOLLM2 / "config.json").is_file():
        return ppl.models.load(str(SMOLLM2), dtype=dtype), "real weights"
    cfg = {k: v for k, v in shape.items() if k != "kind"}
    keys = iter(jax.random.split(jax.random.key(0), 4096))

    def r(*s):
        return (0.02 * jax.random.normal(next(keys), s, jnp.float32)).astype(dtype)

    def one(n):
        return jnp.ones((n,), dtype)

    v = cfg["vocab_size"]
    vocab = ppl.models.Vocab.from_bytes([b"t%d " % i for i in range(v)], eos_token_id=0)
    if shape["kind"] == "gpt2":
        d, n_l = cfg["n_embd"], cfg["n_layer"]
        layers = [dict(ln1_g=one(d), ln1_b=r(d), qkv_w=r(d, 3 * d), qkv_b=r(3 * d), o_w=r(d, d),
                       o_b=r(d), ln2_g=one(d), ln2_b=r(d), fc_w=r(d, 4 * d), fc_b=r(4 * d),
                       proj_w=r(4 * d, d), proj_b=r(d)) for _ in range(n_l)]
        params = dict(embed=r(v, d), pos=r(cfg["n_positions"], d), layers=layers, lnf_g=one(d),
                      lnf_b=r(d))
        return ppl.models.GPT2LM(dict(cfg, eos_token_id=0, bos_token_id=0), params, vocab=vocab,
                                 name=name), "random weights"
    d, n_l = cfg["hidden_size"], cfg["num_hidden_layers"]
    h, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // h
    inter = cfg["intermediate_size"]
    layers = [dict(ln1=one(d), qkv_w=r(d, (h + 2 * kvh) * hd), o_w=r(h * hd, d),
                   gu_w=r(d, 2 * inter), down_w=r(inter, d), ln2=one(d)) for _ in range(n_l)]
    params = dict(embed=r(v, d), layers=layers, norm=one(d))
    return ppl.models.LlamaLM(dict(cfg, model_type="llama", eos_token_id=0, bos_token_id=1), params,
                              vocab=vocab, name=name), "random weights"


def _device_peak():
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends may not report
        stats = {}
    return stats.get("peak_bytes_in_use")


def decode_cell(lm, prompt: int, n: int, t: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import ppl

    ids = jnp.asarray([1 + (7 * i) % (lm.vocab_size - 1) for i in range(prompt)], jnp.int32)

    def run(params, ids, key):
        cache, lp0 = lm.prefill(params, ids, prompt + t)
        cache = ppl.models.broadcast_cache(cache, n)
        tok0 = jax.random.categorical(key, lp0, shape=(n,)).astype(jnp.int32)

        def body(carry, step):
            cache, tok, key = carry
            cache, lp = lm.decode_step(params, cache, tok, jnp.full((n,), prompt + step, jnp.int32))
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, lp).astype(jnp.int32)
            return (cache, nxt, key), nxt

        (_, _, _), toks = jax.lax.scan(body, (cache, tok0, key), jnp.arange(t))
        return toks

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(lm.params, ids, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        compiled(lm.params, ids, jax.random.key(r)).block_until_ready()
        times.append(time.perf_counter() - t0)
    run_s = statistics.median(times[1:]) if repeats else times[0]
    try:
        ma = compiled.memory_analysis()
        xla = int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - backend-dependent
        xla = None
    return {"compile_s": compile_s, "run_s": run_s, "tok_s": n * t / run_s, "xla_bytes": xla,
            "device_peak_bytes": _device_peak()}


def smc_cell(lm, prompt: int, n: int, t: int, repeats: int) -> dict:
    import numpy as np

    import ppl

    allowed = np.ones(lm.vocab_size, bool)
    allowed[list(lm.eos_token_ids)] = False

    class NoEOS(ppl.Program):
        def step(self, ctx, s):
            p = ctx.lm.next_token()
            ctx.sample(p, proposal=p.mask(allowed))
            return s

    ids = [1 + (7 * i) % (lm.vocab_size - 1) for i in range(prompt)]
    prog = NoEOS(lm, ids, max_tokens=t)
    runs, compile_s = [], None
    for r in range(repeats + 1):
        res = ppl.infer(prog, method="smc", particles=n, seed=r, ess_threshold=0.5,
                        resampling="multinomial")
        if r == 0:
            compile_s = res.timings["compile"]
        if r > 0 or not repeats:
            runs.append(res.timings["run"])
    run_s = statistics.median(runs)
    return {"compile_s": compile_s, "run_s": run_s, "tok_s": n * t / run_s,
            "device_peak_bytes": _device_peak()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="two-layer models, N = 1, 4 (CPU, seconds)")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--n", type=int, nargs="+", default=None)
    ap.add_argument("--prompts", type=int, nargs="+", default=None)
    ap.add_argument("--t", type=int, default=None, help="tokens per particle")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; no new cell after it")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp

    shapes = TINY if a.tiny else SHAPES
    models = a.models or list(shapes)
    ns = a.n or ([1, 4] if a.tiny else [1, 16, 256, 1024])
    prompts = a.prompts or ([8, 32] if a.tiny else [64, 1024])
    t = a.t or (4 if a.tiny else 32)
    repeats = a.repeats if a.repeats is not None else (0 if a.tiny else 2)
    dtype = jnp.dtype(a.dtype)
    start = time.perf_counter()
    out = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "dtype": a.dtype, "t": t, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python benchmarks/gpu.py"] + list(argv if argv is not None else sys.argv[1:])),
           "rows": [], "skipped": []}
    for name in models:
        lm, weights = make_model(name, shapes[name], dtype)
        for prompt in prompts:
            for n in ns:
                for what, fn in (("decode", decode_cell), ("smc", smc_cell)):
                    cell = {"model": name, "weights": weights, "prompt": prompt, "n": n, "what": what}
                    if time.perf_counter() - start > a.budget:
                        out["skipped"].append(cell)
                        continue
                    try:
                        cell.update(fn(lm, prompt, n, t, repeats))
                    except Exception as e:  # noqa: BLE001 - recorded, never a table row
                        cell["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    out["rows"].append(cell)
                    print(json.dumps(cell), flush=True)
        del lm
    out["seconds"] = time.perf_counter() - start
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
