"""The official JSON-Schema-Test-Suite (draft 2020-12) against C.json_schema (and llguidance).

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
test compares against). ``--others`` runs llguidance (when importable) on the same tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    llg = out.get("llguidance")
    if isinstance(llg, dict):
        lt = llg["total"]
        rows.append(f"| llguidance {llg['version']} (same texts, byte tokenizer) | {lt['pass']} | "
                    f"{lt['false_negative']} | {lt['compile_error_valid']} | {lt['compile_error']} | "
                    f"{lt['false_positive']} |")
    elif isinstance(llg, str):
        rows.append(f"| llguidance | {llg} | | | | |")
    if "xgrammar" in out:
        rows.append(f"| xgrammar | {out['xgrammar']} | | | | |")
    body = (
        "## JSON-Schema-Test-Suite (draft 2020-12)\n\n"
        f"`python benchmarks/json_schema_suite.py --others` on {out['machine']}: {out['suite']}, "
        f"{out['ours']['tests']} tests, {out['wall_s']} s for ours. Categories as llguidance's "
        "report; per-keyword counts in docs/constraints.md.\n\n"
        "| engine | pass | false negative | compile error on valid | compile error | false positive |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")
    replace_section("## JSON-Schema-Test-Suite (draft 2020-12)", body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", help="draft2020-12 directory (default: cache, else download)")
    ap.add_argument("--baseline", action="store_true", help="write the CI ratchet baseline")
    ap.add_argument("--others", action="store_true", help="also run llguidance")
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
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, loaded)",
           "wall_s": round(wall, 1), "ours": summary,
           "false_positives": [r for r in rows if r["category"] == "false_positive"]}
    if args.others:
        other = run_llguidance(groups)
        import importlib.metadata as md

        try:
            ver = md.version("llguidance")
        except md.PackageNotFoundError:
            ver = "?"
        out["llguidance"] = other if isinstance(other, str) else {
            "version": ver, **summarize(other),
            "false_positives": [r for r in other if r["category"] == "false_positive"]}
        if not isinstance(other, str):
            print("llguidance", ver, json.dumps(out["llguidance"]["total"]))
        try:
            import xgrammar  # noqa: F401
            out["xgrammar"] = "importable but not wired"
        except Exception as e:
            out["xgrammar"] = f"not run: {type(e).__name__}: {e}"
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
    return out


if __name__ == "__main__":
    main()
