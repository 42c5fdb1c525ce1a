"""What sharding the particle axis over D devices costs: SPMD partitioning and resampling
communication, global vs island resampling.

Every device count D runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (D CPU "devices" in one process, as in
tests/inference/test_sharding.py). The program is vs_llamppl.py's ``words`` task on the embedded
``tiny`` model: ``ppl.steer(lm, prompt, constraints=[max_word_length(5)], max_tokens=T)`` with
EOS masked (so every particle generates exactly T tokens; a ``SteerProgram`` subclass as in
vs_llamppl.py, since ``ppl.steer`` has no option for it), run as::

    ppl.infer(program, method="smc", particles=N, devices=jax.devices(), seed=0)
    ppl.infer(..., islands=D)                     # island resampling, one island per device
    ppl.infer(..., islands=D, exchange_every=4)   # islands, every 4th step's resampling global

with ``ess_threshold=1.0`` (``--ess-threshold``; stratified resampling whenever the weights are
not all equal, so the resampling collectives run at nearly every step; at ppl's default 0.5 this
program resamples only 1-2 times in 32 steps). On D = 1 the island variants run with
``islands=max(D)`` on the single device: the island algorithm without any communication.
Reported per row: compile time (``Result.timings["compile"]``, first call; the persistent
compilation cache is off) and run time (median of ``--repeats`` calls of the compiled
executable after it), the number of resampling steps, and the collectives XLA put in the
compiled program (count by kind, and the largest one's result size).

Check: with the same seed, global resampling on D devices against 1 device. Identical texts
and ancestors are asserted with ``--strict`` only: the sharded LM forward rounds differently
from the unsharded one (log-weights differ by ~1e-6), which can flip an occasional token draw
or ancestor, after which the runs are two different valid SMC runs. Always asserted: up to the
first step whose sampled tokens or ancestors differ, every particle's log-weight agrees to
1e-4 and the ESS to 1e-4 (relative), and a run that never diverges has the same log-evidence
(to 1e-4).

Forced host devices share the machine's cores, so this cannot show a speed-up from more
devices; it shows what the partitioning and the collectives add. Writes
``benchmarks/results/sharding.json`` and the "Sharding" section of docs/benchmarks.md::

    python benchmarks/sharding.py                      # D in 1 2 4, N in 64 256, T = 32
    python benchmarks/sharding.py --devices 1 2 --n 64 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _docs import replace_section  # noqa: E402
from vs_llamppl import MAX_WORD, child_env, words_program  # noqa: E402

RESULTS = BENCH / "results" / "sharding.json"
SECTION = "## Sharding"
EXCHANGE = 4
MIB = 2.0**20

_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "s8": 1, "u8": 1, "pred": 1,
                "f64": 8, "s64": 8, "u64": 8, "s16": 2, "u16": 2}
_COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter|"
    r"collective-broadcast)(?:-start)?\(")


def _shape_bytes(text: str) -> int:
    total = 0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dt in _DTYPE_BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            total += n * _DTYPE_BYTES[dt]
    return total


def collectives(hlo: str) -> dict:
    """Collectives in compiled HLO text: count per kind and the largest result (bytes)."""
    count, largest = {}, {}
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m or "-done(" in line:
            continue
        kind = m.group(2)
        count[kind] = count.get(kind, 0) + 1
        largest[kind] = max(largest.get(kind, 0), _shape_bytes(m.group(1)))
    return {"count": count, "largest_bytes": largest}


def worker(ns: list[int], t: int, repeats: int, islands_max: int, ess: float) -> dict:
    import jax
    import numpy as np

    import ppl
    from ppl.inference import executables

    d = len(jax.devices())
    lm = ppl.models.load("tiny")

    isl = d if d > 1 else islands_max
    modes = [("global", {})]
    if isl > 1:
        modes += [(f"islands={isl}", {"islands": isl}),
                  (f"islands={isl}, exchange_every={EXCHANGE}",
                   {"islands": isl, "exchange_every": EXCHANGE})]
    rows = []
    for n in ns:
        for name, opts in modes:
            prog = words_program(lm, t)
            runs, first = [], None
            for r in range(repeats + 1):
                res = ppl.infer(prog, method="smc", particles=n, devices=jax.devices(), seed=0,
                                ess_threshold=ess, **opts)
                assert (res.lengths == t).all()
                if r == 0:
                    first = res
                else:
                    runs.append(res.timings["run"])
                    assert res.texts == first.texts  # same seed, same executable
            hlo = {}
            for exe in [executables.latest()]:
                try:
                    hlo = collectives(exe.as_text())
                except Exception as e:  # noqa: BLE001 - best effort, backend-dependent
                    hlo = {"error": repr(e)}
            rows.append({
                "devices": d, "n": n, "t": t, "mode": name, "islands": opts.get("islands", 1),
                "exchange_every": opts.get("exchange_every", 0),
                "compile_s": first.timings["compile"], "run_s": statistics.median(runs),
                "runs": runs, "resampled_steps": int(np.asarray(first.resampled).sum()),
                "log_evidence": float(first.log_evidence), "texts": list(first.texts),
                "log_weights": np.asarray(first.log_weights, float).tolist(),
                "ess": np.asarray(first.ess, float).tolist(),
                "step_tokens": np.asarray(first.extras["history"]["tokens"]).tolist(),
                "step_log_weights": np.asarray(first.extras["history"]["log_weights"],
                                               float).tolist(),
                "ancestors": np.asarray(first.ancestors).tolist(), "collectives": hlo,
            })
            print(f"D={d} N={n} {name}: compile {rows[-1]['compile_s']:.1f}s "
                  f"run {rows[-1]['run_s']:.3f}s", file=sys.stderr, flush=True)
    return {"devices": d, "device_kind": str(jax.devices()[0]), "rows": rows}


def run_devices(d: int, ns, t, repeats, islands_max, threads, timeout, ess) -> dict:
    env = child_env(threads)
    # The device count goes first, ahead of whatever XLA_FLAGS the caller exported.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={d} " + env["XLA_FLAGS"]
    env["PPL_CACHE_DIR"] = ""  # every compile is a real one
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--devices", str(d),
           "--n", *map(str, ns), "--t", str(t), "--repeats", str(repeats),
           "--islands-max", str(islands_max), "--ess-threshold", str(ess)]
    load0 = os.getloadavg()[0]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT),
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"D={d} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == d, out["devices"]
    out["load_1min"] = [load0, os.getloadavg()[0]]
    return out


def check_same(rows) -> list[dict]:
    """Global resampling on D devices against D = 1, same seed.

    ``identical_until``: the first step at which the two runs differ, in an ancestor or in a
    sampled token (None: never); before it the per-step log-weights (``extras["history"]``)
    and the ESS must agree up to rounding.
    """
    base = {r["n"]: r for r in rows if r["devices"] == 1 and r["mode"] == "global"}
    checks = []
    for r in rows:
        if r["mode"] != "global" or r["devices"] == 1 or r["n"] not in base:
            continue
        b = base[r["n"]]
        differ = [i for i, (x, y) in enumerate(zip(r["texts"], b["texts"])) if x != y]
        anc = [t for t, (x, y) in enumerate(zip(r["ancestors"], b["ancestors"])) if x != y]
        tok = [t for t, (x, y) in enumerate(zip(r["step_tokens"], b["step_tokens"])) if x != y]
        first = min(anc[:1] + tok[:1]) if anc or tok else None
        upto = len(b["ess"]) if first is None else first
        ess_rel = max([abs(x - y) / max(abs(y), 1e-30)
                       for x, y in zip(r["ess"][:upto], b["ess"][:upto])], default=0.0)
        lw = max([abs(u - v) for x, y in zip(r["step_log_weights"][:upto],
                                             b["step_log_weights"][:upto])
                  for u, v in zip(x, y)], default=0.0)
        checks.append({
            "devices": r["devices"], "n": r["n"], "same_texts": not differ,
            "differing_texts": len(differ), "same_ancestors": not anc,
            "first_differing_ancestor_step": anc[0] if anc else None,
            "first_differing_token_step": tok[0] if tok else None,
            "identical_until": first, "steps": len(b["ess"]),
            "ess_rel_diff_before": ess_rel, "log_weight_diff_before": lw,
            "logz_diff": abs(r["log_evidence"] - b["log_evidence"]),
            "max_log_weight_diff": max(abs(x - y) for x, y in zip(r["log_weights"],
                                                                   b["log_weights"])),
        })
    return checks


def assert_checks(checks, strict: bool) -> None:
    """``strict``: identical texts and ancestors. Otherwise the agreement float rounding
    allows: the sharded LM forward rounds differently from the unsharded one (log-weights
    differ by ~1e-6), which can flip an occasional token draw or ancestor, after which the two
    runs are different (equally valid) SMC runs. Up to that step the ESS trajectories must
    agree to 1e-4 (relative), and a run that never diverges must give the same evidence; a
    partitioning bug (wrong gather, wrong weights) breaks the ESS at its first resampling."""
    for c in checks:
        where = f"D={c['devices']} N={c['n']}"
        assert c["ess_rel_diff_before"] < 1e-4, f"{where}: ESS differs before divergence: {c}"
        assert c["log_weight_diff_before"] < 1e-4, f"{where}: weights differ before divergence: {c}"
        if c["identical_until"] is None:
            assert c["logz_diff"] < 1e-4, f"{where}: log-evidence differs: {c}"
        if strict:
            assert c["same_texts"], f"{where}: {c['differing_texts']} texts differ: {c}"
            assert c["same_ancestors"], f"{where}: ancestors differ: {c}"


def _coll(r) -> str:
    c = r.get("collectives", {})
    if "error" in c or not c.get("count"):
        return "none" if not c.get("error") else "?"
    def size(b):
        return f"{b} B" if b < 1024 else f"{b / 1024:.0f} KiB" if b < MIB else f"{b / MIB:.1f} MiB"

    return ", ".join(f"{k} x{v} (largest {size(c['largest_bytes'][k])})"
                     for k, v in sorted(c["count"].items()))


def _kind(r) -> tuple:
    return (r["n"], r["islands"] > 1, r["exchange_every"])


def table(rows) -> str:
    base = {_kind(r): r for r in rows if r["devices"] == 1}
    out = ["| D | N | resampling | compile (s) | run (s) | run / (D=1, same N and kind) | "
           "resampling steps | collectives in the compiled program |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["devices"], r["islands"], r["exchange_every"])):
        b = base.get(_kind(r))
        rel = f"{r['run_s'] / b['run_s']:.2f}" if b else "-"
        out.append(f"| {r['devices']} | {r['n']} | {r['mode']} | {r['compile_s']:.1f} | "
                   f"{r['run_s']:.3f} | {rel} | {r['resampled_steps']}/{r['t']} | {_coll(r)} |")
    return "\n".join(out)


def write_docs(data, md, command) -> None:
    meta = data["meta"]
    checks = data["checks"]
    def until(c):
        return (f"all {c['steps']} steps" if c["identical_until"] is None
                else f"step {c['identical_until']}")

    chk = "\n".join(
        f"| {c['devices']} | {c['n']} | {c['n'] - c['differing_texts']}/{c['n']} | {until(c)} | "
        f"{c['log_weight_diff_before']:.1e} | {c['ess_rel_diff_before']:.1e} | {c['logz_diff']:.1e} |"
        for c in checks)
    strict_held = ("held for every row of this run" if all(c["same_texts"] and c["same_ancestors"]
                                                        for c in checks)
                   else "did not hold for every row of this run")
    body = f"""{SECTION}

What sharding the particle axis costs (`benchmarks/sharding.py`): `ppl.infer(program,
method="smc", particles=N, devices=jax.devices(), seed=0)` with global resampling (the
default), with `islands=D` and with `islands=D, exchange_every={EXCHANGE}`, on the embedded
`tiny` model and vs_llamppl.py's `words` program (`ppl.steer` with `max_word_length({MAX_WORD})`,
EOS masked so every particle runs exactly T={meta['t']} tokens; stratified resampling with
`ess_threshold={meta.get('ess_threshold', 0.5)}`, i.e. at nearly every step, so that the
resampling collectives run; at ppl's default 0.5 this program resamples only 1-2 times in
32 steps). Each device count D runs in its own process with
`XLA_FLAGS=--xla_force_host_platform_device_count=D`, {meta['threads']} intra-op thread, no
persistent compilation cache. Run time is the median of {meta['repeats']} calls of the compiled
executable after the first (compiling) call. On D = 1 the island rows run
`islands={meta['islands_max']}` on the one device (the island algorithm with no communication).
"Collectives" counts the cross-device operations XLA's SPMD partitioner put in the compiled
program (count per kind, and each kind's largest result); they run inside the SMC loop.

**What this does and does not show.** The D "devices" are threads of one process on a
{meta['machine']} machine shared with other benchmarks (1-minute load average 2-4 during the
run), all running the same compiled program and synchronising at every collective. More
devices therefore cannot show a speed-up here (at most the two cores could, and the load takes
them): the numbers are the *overhead* of the SPMD partitioning and of the resampling
collectives, global against island, on top of noisy run times. Speed-ups on real accelerators
or across hosts are not measured.

Command:

```
{command}
```

{md}

Same seed, global resampling, D devices against 1 device. The sharded LM forward rounds
differently from the unsharded one (per-device batches of N/D rows), so log-weights differ by
~1e-6 and a token draw or an ancestor can eventually flip; from then on the two are different,
equally valid SMC runs. The script asserts agreement up to that step (every particle's
log-weight to 1e-4, the ESS to 1e-4 relative) and the same evidence when nothing flipped;
`--strict` also asserts identical texts and ancestors, which {strict_held}:

| D | N | identical final texts | identical (every step's tokens and ancestors) until | largest \\|log-weight difference\\| until then | largest relative ESS difference until then | \\|log Z difference\\| |
|---|---|---|---|---|---|---|
{chk}

{data.get('notes', '')}
"""
    replace_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--n", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--t", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ess-threshold", type=float, default=1.0,
                    help="resample when ESS < this x N (1.0: at nearly every step, so the "
                         "resampling collectives are exercised; ppl's default 0.5 resamples "
                         "1-2 times in 32 steps here)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--islands-max", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--strict", action="store_true",
                    help="assert identical texts and ancestors on D devices and on 1")
    ap.add_argument("--docs-only", action="store_true", help="rewrite the docs section from the JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.n, args.t, args.repeats, args.islands_max or 1,
                                args.ess_threshold)))
        return
    if args.docs_only:
        data = json.loads(RESULTS.read_text())
        write_docs(data, table(data["rows"]), data["meta"]["command"])
        return
    assert 1 in args.devices, "the same-texts check needs D = 1"
    for n in args.n:
        for d in args.devices:
            assert n % d == 0, f"N={n} is not a multiple of D={d}"
    argv = sys.argv[1:] if argv is None else argv
    command = ("python benchmarks/sharding.py " + " ".join(argv)).strip()
    islands_max = max(args.devices)
    runs = [run_devices(d, args.n, args.t, args.repeats, islands_max, args.threads, args.timeout,
                        args.ess_threshold) for d in args.devices]
    rows = [r for o in runs for r in o["rows"]]
    checks = check_same(rows)
    for r in rows:  # the JSON keeps digests and a few samples, not every text and ancestor
        r["texts_sha256"] = hashlib.sha256(json.dumps(r["texts"]).encode()).hexdigest()
        r["ancestors_sha256"] = hashlib.sha256(json.dumps(r.pop("ancestors")).encode()).hexdigest()
        r["texts"] = r["texts"][:3]
        r.pop("log_weights")
        r.pop("step_tokens")
        r.pop("step_log_weights")
    print(table(rows))
    for c in checks:
        print(c)
    if args.no_write:
        assert_checks(checks, args.strict)
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data = {
        "meta": {"command": command, "t": args.t, "repeats": args.repeats, "threads": args.threads,
                 "ess_threshold": args.ess_threshold,
                 "islands_max": islands_max, "exchange_every": EXCHANGE,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "shared": True,
                 "load_1min": {o["devices"]: o["load_1min"] for o in runs},
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "rows": rows, "checks": checks, "strict": args.strict, "notes": old.get("notes", ""),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    write_docs(data, table(rows), command)
    assert_checks(checks, args.strict)


if __name__ == "__main__":
    main()
