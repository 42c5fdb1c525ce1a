"""The JSON-Schema-Test-Suite (draft 2020-12) against C.json_schema, llguidance and xgrammar.

The suite ships in the ``jsonschema`` sdist on the package index (``json/tests/``). Each test
is a (schema, instance, valid) triple; categories as llguidance's report:

* ``pass``: a valid instance accepted, or an invalid one rejected;
* ``false_negative``: a valid instance rejected (lost coverage, never a wrong output);
* ``compile_error_valid``: the schema was refused and the instance is valid (lost coverage);
* ``compile_error``: the schema was refused and the instance is invalid (neutral);
* ``false_positive``: an invalid instance accepted: the worst outcome (a generated document
  that breaks the schema). Goal: zero.

An instance is checked in the canonical form the constraint generates
(``JsonSchema.canonical``: ``json.dumps(ensure_ascii=False)``, members in schema order).

Usage::

    python benchmarks/json_schema_suite.py [--suite DIR] [--baseline] [--others]

``--baseline`` also writes ``tests/stdlib/schema_suite_baseline.json`` (the ratchet the fast
test compares against). ``--others`` runs llguidance and xgrammar (when importable) on the same
tests and the same texts. Both are benchmark-only, never dependencies of steerppl; the run
published in docs/benchmarks.md installed them outside the venv::

    pip install -q --no-deps --target /tmp/xg xgrammar==0.2.9 apache-tvm-ffi
    pip install -q --no-deps --target /tmp/llgpkg llguidance
    PYTHONPATH=/tmp/xg:/tmp/llgpkg python benchmarks/json_schema_suite.py --baseline --others

(xgrammar imports torch and transformers, which the venv already has.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "json_schema_suite.json"
BASELINE = ROOT / "tests" / "stdlib" / "schema_suite_baseline.json"
VERSION = "4.26.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steerppl"
CATS = ("pass", "false_negative", "compile_error_valid", "compile_error", "false_positive")
#: per-schema compile time limit (seconds): a refusal after this counts as a compile error
TIME_LIMIT = 20


def find_suite(explicit: str | None = None) -> Path | None:
    """The draft2020-12 directory: ``explicit``, ``$JSON_SCHEMA_SUITE``, or the unpacked sdist
    in the cache; None when absent (see :func:`download`)."""
    cands = [explicit, os.environ.get("JSON_SCHEMA_SUITE"),
             CACHE / f"jsonschema-{VERSION}" / "json" / "tests" / "draft2020-12",
             Path("/tmp/js") / f"jsonschema-{VERSION}" / "json" / "tests" / "draft2020-12"]
    for c in cands:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def download() -> Path | None:
    """Fetches the jsonschema sdist with pip and unpacks it into the cache."""
    import tarfile

    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", f"jsonschema=={VERSION}", "-d", str(CACHE)], check=False)
    tgz = CACHE / f"jsonschema-{VERSION}.tar.gz"
    if not tgz.exists():
        return None
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if "/json/tests/draft2020-12/" in m.name]
        tf.extractall(CACHE, members=members)
    return find_suite()


def load(suite: Path) -> list[dict]:
    """Every schema group of the suite's top-level draft2020-12 files (not optional/)."""
    groups = []
    for f in sorted(suite.glob("*.json")):
        for g in json.loads(f.read_text()):
            groups.append({"file": f.stem, "description": g["description"], "schema": g["schema"],
                           "tests": g["tests"]})
    return groups


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_ours(groups: list[dict]) -> list[dict]:
    from ppl.stdlib import constraints as C

    rows = []
    signal.signal(signal.SIGALRM, _alarm)
    for g in groups:
        t0 = time.perf_counter()
        err = None
        c = None
        signal.alarm(TIME_LIMIT)
        try:
            c = C.json_schema(g["schema"])
        except _Timeout:
            err = f"timeout after {TIME_LIMIT} s"
        except (ValueError, TypeError, RecursionError) as e:
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        finally:
            signal.alarm(0)
        build = time.perf_counter() - t0
        for t in g["tests"]:
            if c is None:
                cat = "compile_error_valid" if t["valid"] else "compile_error"
            else:
                ok = c.accepts(c.canonical(t["data"]))
                cat = ("pass" if ok else "false_negative") if t["valid"] else \
                      ("false_positive" if ok else "pass")
            rows.append({"file": g["file"], "group": g["description"], "test": t["description"],
                         "valid": t["valid"], "category": cat, "error": err,
                         "build_s": round(build, 4)})
    return rows


def run_llguidance(groups: list[dict]) -> list[dict] | str:
    """llguidance on the same tests and the same texts (a byte-level tokenizer: one token per
    byte, so the check is of the grammar, not of tokenization), or why it could not run."""
    try:
        import llguidance
        from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper
    except Exception as e:  # not installed: say so in the report
        return f"llguidance not importable: {type(e).__name__}: {e}"
    from ppl.stdlib import _jsonschema as J

    class _Bytes:
        eos_token_id = 256
        bos_token_id = None
        tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
        special_token_ids = [256]

        def __call__(self, data):
            return list(data if isinstance(data, bytes) else data.encode())

    tok = LLTokenizer(TokenizerWrapper(_Bytes()))
    opts = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
    rows = []
    for g in groups:
        t0 = time.perf_counter()
        err = None
        try:
            grammar = LLMatcher.grammar_from_json_schema(g["schema"], defaults=opts)
            is_error, msgs = LLMatcher.validate_grammar_with_warnings(grammar, tok)
            if is_error:
                err = str(msgs)[:160]
        except Exception as e:
            err = f"{type(e).__name__}: {str(e)[:160]}"
        build = time.perf_counter() - t0
        for t in g["tests"]:
            if err:
                cat = "compile_error_valid" if t["valid"] else "compile_error"
            else:
                m = LLMatcher(tok, grammar)
                text = J.canonical_text(J.reorder(t["data"], g["schema"]))
                acc = m.consume_tokens(list(text.encode())) and m.is_accepting() and not m.is_error()
                cat = ("pass" if acc else "false_negative") if t["valid"] else \
                      ("false_positive" if acc else "pass")
            rows.append({"file": g["file"], "group": g["description"], "test": t["description"],
                         "valid": t["valid"], "category": cat, "error": err,
                         "build_s": round(build, 4)})
    return rows


def _byte_vocab():
    """A byte-level vocabulary: token ``i < 256`` is the byte ``i``, token 256 the stop token."""
    return [bytes([i]) for i in range(256)] + [b"<eos>"]


def _capture_stderr(fn):
    """``fn()`` and what it wrote to file descriptor 2 (xgrammar logs its warnings there from
    C++, not through Python's ``warnings``)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            res = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return res, f.read().decode(errors="replace")


def run_xgrammar(groups: list[dict], strict_mode: bool = False) -> list[dict] | str:
    """xgrammar on the same tests and the same texts as llguidance: its JSON-schema grammar with
    the canonical formatting (one line, separators ``", "`` and ``": "``, no free whitespace),
    a byte tokenizer (one token per byte, plus a stop token), each instance fed byte by byte,
    then the stop token, then ``is_terminated()``. ``strict_mode=False`` keeps JSON Schema's
    semantics (undeclared members and items allowed unless the schema forbids them), as
    steerppl and llguidance do; ``strict_mode=True`` is xgrammar's default (as if
    ``unevaluatedProperties``/``unevaluatedItems`` were false), reported for reference: it
    rejects valid instances by design. A compile that only logs a warning (xgrammar's "falling
    back to anyOf semantics" and the like) is not a compile error, as for llguidance; the first
    warning is kept in the row. Returns why it could not run when not importable."""
    try:
        import xgrammar as xgr
    except Exception as e:  # not installed: say so in the report
        return f"xgrammar not importable: {type(e).__name__}: {e}"
    from ppl.stdlib import _jsonschema as J

    info = xgr.TokenizerInfo(_byte_vocab(), xgr.VocabType.RAW, stop_token_ids=[256])
    # one thread, no cache: each schema's compile time is its own (the machine is shared)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    rows = []
    for g in groups:
        t0 = time.perf_counter()
        err = None
        grammar = None

        def _compile(schema=g["schema"]):
            return compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, indent=None,
                separators=(", ", ": "), strict_mode=strict_mode)

        logged = ""
        try:
            grammar, logged = _capture_stderr(_compile)
        except Exception as e:
            # drop the C++ log prefix ("[hh:mm:ss] file.cc:line: ") so reruns compare equal
            msg = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", (str(e).splitlines() or [""])[0])
            err = f"{type(e).__name__}: {msg[:160]}"
        build = time.perf_counter() - t0
        warn = next((ln.split("Warning: ", 1)[-1][:160] for ln in logged.splitlines()
                     if "Warning" in ln), None)
        for t in g["tests"]:
            if err:
                cat = "compile_error_valid" if t["valid"] else "compile_error"
            else:
                m = xgr.GrammarMatcher(grammar)
                text = J.canonical_text(J.reorder(t["data"], g["schema"]))
                acc = (all(m.accept_token(b) for b in text.encode()) and m.accept_token(256)
                       and m.is_terminated())
                cat = ("pass" if acc else "false_negative") if t["valid"] else \
                      ("false_positive" if acc else "pass")
            rows.append({"file": g["file"], "group": g["description"], "test": t["description"],
                         "valid": t["valid"], "category": cat, "error": err, "warning": warn,
                         "build_s": round(build, 4)})
    return rows


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def summarize(rows: list[dict]) -> dict:
    total = Counter(r["category"] for r in rows)
    by_file: dict = {}
    for r in rows:
        by_file.setdefault(r["file"], Counter())[r["category"]] += 1
    return {"total": {k: total.get(k, 0) for k in CATS}, "tests": len(rows),
            "by_file": {f: {k: c.get(k, 0) for k in CATS} for f, c in sorted(by_file.items())}}


def _write_docs(out: dict) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _docs import replace_section

    t = out["ours"]["total"]
    rows = [f"| steerppl (canonical form) | {t['pass']} | {t['false_negative']} | "
            f"{t['compile_error_valid']} | {t['compile_error']} | {t['false_positive']} |"]
    labels = {"llguidance": "llguidance {v} (same texts, byte tokenizer)",
              "xgrammar": "xgrammar {v} (same texts, byte tokenizer, `strict_mode=False`)",
              "xgrammar_strict": "xgrammar {v} (same, `strict_mode=True`: its default)"}
    for key, label in labels.items():
        o = out.get(key)
        if isinstance(o, dict):
            lt = o["total"]
            rows.append(f"| {label.format(v=o['version'])} | {lt['pass']} | "
                        f"{lt['false_negative']} | {lt['compile_error_valid']} | "
                        f"{lt['compile_error']} | {lt['false_positive']} |")
        elif isinstance(o, str):
            rows.append(f"| {key} | {o} | | | | |")
    vers = {k: out[k]["version"] for k in ("llguidance", "xgrammar")
            if isinstance(out.get(k), dict)}
    ffi = next((out[k].get("apache_tvm_ffi") for k in ("xgrammar", "xgrammar_strict")
                if isinstance(out.get(k), dict)), None)
    xg = out.get("xgrammar")
    xf = len(xg["false_positives"]) if isinstance(xg, dict) else None
    xw = xg.get("false_positives_compiled_with_warning") if isinstance(xg, dict) else None
    walls = ", ".join(f"{k} {out[k]['wall_s']} s" for k in labels
                      if isinstance(out.get(k), dict) and "wall_s" in out[k])
    install = (
        "The other engines are benchmark-only, never dependencies of steerppl; for this run they "
        "were installed outside the venv with `pip install -q --no-deps --target /tmp/xg "
        f"xgrammar=={vers.get('xgrammar', '0.2.9')} apache-tvm-ffi` (apache-tvm-ffi "
        f"{ffi or '?'}; torch and transformers from the venv) and `pip install -q --no-deps "
        f"--target /tmp/llgpkg llguidance` (llguidance {vers.get('llguidance', '?')}), put on "
        "`PYTHONPATH` as in the command above. Every engine checks the same text of each instance: "
        "steerppl's canonical form (`json.dumps(ensure_ascii=False)`, separators `\", \"` and "
        "`\": \"`, members in schema order), which llguidance and xgrammar consume one token "
        "per byte (so the check is of the grammar, not of a tokenizer), given the same "
        "formatting (no free whitespace, the same separators). xgrammar's "
        "`strict_mode=True` (its default) forbids members and items the schema does not "
        "declare, unlike JSON Schema: its false negatives there are by design; the "
        "`strict_mode=False` row is the like-for-like one. llguidance refuses a schema with a "
        "keyword it does not implement (its compile errors); xgrammar compiles it and ignores "
        "the keyword (its false positives: invalid documents it would let through). "
        + (f"{xw} of its {xf} false positives (`strict_mode=False`) come from schemas it "
           "compiled with a logged warning (e.g. oneOf falling back to anyOf, non-local `$ref`); "
           if xf is not None else "")
        + "most others are keywords ignored without a word: `uniqueItems`, `not`, `contains`, "
        "`if`/`then`/`else`, `unevaluatedProperties`, "
        "`dependentRequired`, and type-specific keywords in a schema without `type` "
        "(`{\"maxLength\": 2}` accepts `\"foo\"`, `{\"type\": \"string\", \"maxLength\": 2}` "
        "rejects it). Wall times (the first xgrammar run includes importing it and torch): "
        + (walls or "not measured") + ".\n\n")
    body = (
        "## JSON-Schema-Test-Suite (draft 2020-12)\n\n"
        "`PYTHONPATH=/tmp/xg:/tmp/llgpkg python benchmarks/json_schema_suite.py --baseline "
        f"--others` on {out['machine']}: {out['suite']}, "
        f"{out['ours']['tests']} tests, {out['wall_s']} s for ours. Categories as llguidance's "
        "report; per-keyword counts in docs/constraints.md.\n\n"
        "| engine | pass | false negative | compile error on valid | compile error | false positive |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + (install if vers else ""))
    replace_section("## JSON-Schema-Test-Suite (draft 2020-12)", body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", help="draft2020-12 directory (default: cache, else download)")
    ap.add_argument("--baseline", action="store_true", help="write the CI ratchet baseline")
    ap.add_argument("--others", action="store_true", help="also run llguidance and xgrammar")
    ap.add_argument("--download-only", action="store_true", help="fetch the suite and stop")
    args = ap.parse_args(argv)
    suite = find_suite(args.suite) or download()
    if suite is None:
        sys.exit("json_schema_suite: could not find or download the suite")
    if args.download_only:
        print(suite)
        return None
    groups = load(suite)
    t0 = time.perf_counter()
    rows = run_ours(groups)
    wall = time.perf_counter() - t0
    summary = summarize(rows)
    out = {"suite": f"jsonschema {VERSION} sdist, json/tests/draft2020-12 (top level)",
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, loaded: 1-min load "
                      f"average {os.getloadavg()[0]:.1f} at the start)",
           "wall_s": round(wall, 1), "ours": summary,
           "false_positives": [r for r in rows if r["category"] == "false_positive"]}
    if args.others:
        engines = [("llguidance", "llguidance", lambda: run_llguidance(groups)),
                   ("xgrammar", "xgrammar", lambda: run_xgrammar(groups, strict_mode=False)),
                   ("xgrammar_strict", "xgrammar", lambda: run_xgrammar(groups, strict_mode=True))]
        for key, dist, run in engines:
            t1 = time.perf_counter()
            other = run()
            w = round(time.perf_counter() - t1, 1)
            out[key] = other if isinstance(other, str) else {
                "version": _version(dist), "wall_s": w, **summarize(other),
                # one line each ("file | group | test"), the warning its compile logged if any
                "false_positives": [
                    " | ".join([r["file"], r["group"], r["test"]]
                               + ([f"warning: {r['warning']}"] if r.get("warning") else []))
                    for r in other if r["category"] == "false_positive"]}
            if key.startswith("xgrammar") and not isinstance(other, str):
                out[key]["apache_tvm_ffi"] = _version("apache-tvm-ffi")
                out[key]["false_positives_compiled_with_warning"] = sum(
                    1 for r in other if r["category"] == "false_positive" and r.get("warning"))
            print(key, out[key] if isinstance(other, str) else
                  f"{out[key]['version']} {json.dumps(out[key]['total'])} {w} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    _write_docs(out)
    if args.baseline:
        BASELINE.write_text(json.dumps(
            {"passing": sorted({f"{r['file']}|{r['group']}|{r['test']}" for r in rows
                                if r["category"] == "pass"}),
             "total": summary["total"]}, indent=0) + "\n")
    print(json.dumps(summary["total"]), f"{len(rows)} tests, {wall:.1f} s")
    for r in out["false_positives"]:
        print("FALSE POSITIVE:", r["file"], "|", r["group"], "|", r["test"])
    for key in ("llguidance", "xgrammar", "xgrammar_strict"):
        if isinstance(out.get(key), dict):
            for r in out[key]["false_positives"]:
                print(f"{key} FALSE POSITIVE:", r)
    return out


if __name__ == "__main__":
    main()
