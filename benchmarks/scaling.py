"""How ppl's SMC time and peak memory scale with particles N and tokens T.

The program is vs_llamppl.py's ``words`` task (every word at most 5 letters, EOS masked so
every particle generates exactly T tokens), ``method="smc", ess_threshold=0.5,
resampling="multinomial"``. Every configuration runs in a fresh subprocess so that its peak
RSS (``ru_maxrss``) is its own. Reported per configuration:

* compile time (``Result.timings["compile"]``) and run time (median of ``--repeats`` runs of
  the compiled executable: ``Result.timings["run"]``),
* peak RSS of the process, its RSS after ``import ppl`` (the runtime's floor), and
* the up-front estimate ``ppl.inference.driver.estimate_bytes`` (weights + N x KV cache per
  particle + one step's buffers, N x V x 48 bytes + a fixed runtime part, 576 MiB), with
  ratio = (peak RSS of the compiled runs - RSS after imports) / estimate, and the slope of
  the runs' peak over the N sweep against the slope of the estimate (per particle),
* XLA's own accounting of the compiled run (``memory_analysis()``: arguments, outputs,
  temporaries), which says how many copies of the KV cache the loop keeps.

Sweeps: N in ``--n`` at T = ``--t-fixed``, and T in ``--t`` at N = ``--n-fixed``, per model
(T is capped at the model's context minus the prompt). Writes
``benchmarks/results/scaling.json``, PNG plots under ``docs/img/`` and the "Scaling and
memory" section of docs/benchmarks.md. Usage::

    python benchmarks/scaling.py                                   # tiny, the full sweeps
    python benchmarks/scaling.py --models gpt2-small --n 1 8 32 64 --t 32 128 --no-write
    python benchmarks/scaling.py --docs-only     # rewrite the docs section from the JSON

Rows measured with an older estimate (no ``runtime`` part) are dropped from the JSON when a
new sweep is written, so the table never mixes two definitions of the ratio.
"""

from __future__ import annotations

import argparse
import os

# Decode throughput here is the unrolled layer loop's, as published in docs/benchmarks.md
# (the default above 4 layers is the scanned loop: compile time independent of depth, some
# speed per step on the CPU; docs/performance.md). PPL_LAYER_LOOP=scan measures that one.
os.environ.setdefault("PPL_LAYER_LOOP", "unroll")
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from vs_llamppl import (MAX_WORD, MODELS, PROMPT, child_env, ensure_checkpoints,  # noqa: E402
                        replace_section, words_program)

RESULTS = BENCH / "results" / "scaling.json"
IMG = ROOT / "docs" / "img"
SECTION = "## Scaling and memory"
MIB = 2.0**20


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(model: str, n: int, t: int, repeats: int, method: str) -> dict:
    rss_start = rss_mib()
    import jax

    import ppl
    from ppl.inference import driver, executables
    from ppl.inference.engine import prepare

    jax.numpy.zeros(1).block_until_ready()  # the runtime's threads and arenas
    rss_import = rss_mib()
    lm = ppl.models.load(str(MODELS[model]))
    rss_load = rss_mib()

    prog = words_program(lm, t)
    setup = prepare(prog)
    est = driver.estimate_bytes(setup, n)
    rss_prog = rss_mib()
    runs, compile_s = [], None
    for r in range(repeats + 1):
        res = ppl.infer(prog, method=method, particles=n, seed=r, ess_threshold=0.5,
                        resampling="multinomial")
        assert (res.lengths == t).all()
        if r == 0:
            compile_s = res.timings["compile"]
            del res
            # From here on the peak mark covers the compiled runs only (not the compiler).
            peak_reset = reset_peak()
            rss_compiled = rss_mib()
        else:
            runs.append(res.timings["run"])
    run_peak = rss_mib("VmHWM") if peak_reset else float("nan")
    xla = {}
    for exe in [executables.latest()]:
        try:
            ma = exe.memory_analysis()
            xla = {k: int(getattr(ma, k)) for k in (
                "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes")}
        except Exception as e:  # noqa: BLE001 - best effort, backend-dependent
            xla = {"error": repr(e)}
    return {
        "model": model, "n": n, "t": t, "method": method, "compile_s": compile_s,
        "run_s": statistics.median(runs), "runs": runs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_start_mib": rss_start, "rss_after_import_mib": rss_import,
        "rss_after_load_mib": rss_load, "rss_before_run_mib": rss_prog,
        "rss_after_compile_mib": rss_compiled, "run_peak_rss_mib": run_peak,
        "estimate": est, "max_len": setup.max_len, "xla": xla,
        "kv_bytes_per_particle": int(lm.init_cache_bytes(setup.max_len)),
    }


def run_config(model, n, t, repeats, threads, method, timeout) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--models", model,
           "--n", str(n), "--t", str(t), "--repeats", str(repeats), "--method", method]
    env = child_env(threads)
    # No persistent compilation cache: every configuration compiles for real, so its compile
    # time and the compiler's share of its memory are those of a first run.
    env["PPL_CACHE_DIR"] = ""
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             cwd=str(ROOT), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "n": n, "t": t, "error": f"timeout {timeout}s"}
    if res.returncode != 0:
        return {"model": model, "n": n, "t": t, "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def derived(r: dict) -> dict:
    est = r["estimate"]
    used = r["run_peak_rss_mib"] - r["rss_after_import_mib"]
    xla = r.get("xla", {})
    kv = est["kv_cache"]
    return {
        "est_mib": est["total"] / MIB, "kv_mib": kv / MIB, "used_mib": used,
        "ratio": used * MIB / est["total"],
        "process_ratio": r["peak_rss_mib"] * MIB / est["total"],
        "temp_mib": xla.get("temp_size_in_bytes", 0) / MIB,
        "temp_over_kv": xla.get("temp_size_in_bytes", 0) / kv if kv else float("nan"),
        "tok_s": r["n"] * r["t"] / r["run_s"],
    }


def table(rows) -> str:
    out = ["| model | N | T | compile (s) | run (s) | particle-tok/s | peak RSS, process (MiB) | "
           "peak RSS, runs (MiB) | RSS after import (MiB) | estimate (MiB) | KV part (MiB) | "
           "(run peak - import) / estimate | peak RSS, process / estimate | XLA temp (MiB) | "
           "XLA temp / KV |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = []
    for r in rows:
        if "error" in r:
            # Never a traceback as a table row: the configuration is named under the table.
            last = [x for x in r["error"].strip().splitlines() if x.strip()][-1:] or ["?"]
            failed.append(f"{r['model']} N={r['n']} T={r['t']} ({last[0].strip()[:80]})")
            continue
        d = derived(r)
        out.append(
            f"| {r['model']} | {r['n']} | {r['t']} | {r['compile_s']:.1f} | {r['run_s']:.3f} | "
            f"{d['tok_s']:.0f} | {r['peak_rss_mib']:.0f} | {r['run_peak_rss_mib']:.0f} | "
            f"{r['rss_after_import_mib']:.0f} | "
            f"{d['est_mib']:.1f} | {d['kv_mib']:.1f} | {d['ratio']:.2f} | "
            f"{d['process_ratio']:.2f} | {d['temp_mib']:.1f} | "
            f"{d['temp_over_kv']:.2f} |")
    if failed:
        out.append("")
        out.append("Not measured (the run failed; see the JSON): " + "; ".join(failed) + ".")
    return "\n".join(out)


def per_particle(rows, t_fixed) -> str:
    """Measured vs estimated memory per particle: least-squares slopes over each N sweep."""
    import numpy as np

    out = ["| model | T | N range | measured run peak per particle (KiB) | estimated per particle "
           "(KiB: KV + step buffers) | measured / estimated | fixed part: run peak at N -> 0, minus "
           "RSS after import (MiB) | estimated fixed part: weights + runtime (MiB) | "
           "measured / estimated fixed part |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        sel = sorted((r for r in rows if "error" not in r and r["model"] == m and r["t"] == t_fixed),
                     key=lambda r: r["n"])
        if len(sel) < 3:
            continue
        n = np.array([r["n"] for r in sel], float)
        peak = np.array([r["run_peak_rss_mib"] - r["rss_after_import_mib"] for r in sel]) * MIB
        est = np.array([r["estimate"]["total"] for r in sel], float)
        bm, am = np.polyfit(n, peak, 1)
        be, ae = np.polyfit(n, est, 1)
        out.append(f"| {m} | {t_fixed} | {int(n[0])}-{int(n[-1])} | {bm / 1024:.0f} | {be / 1024:.0f} | "
                   f"{bm / be:.2f} | {am / MIB:.0f} | {ae / MIB:.0f} | {am / ae:.2f} |")
    return "\n".join(out)


def plots(rows, n_fixed, t_fixed) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if "error" not in r]
    models = sorted({r["model"] for r in ok}, key=list(MODELS).index)
    files = []

    def fig(name, xlab, ylab, series, logy=True):
        plt.figure(figsize=(6, 4))
        for label, xs, ys, style in series:
            if xs:
                plt.plot(xs, ys, style, label=label)
        plt.xscale("log", base=2)
        if logy:
            plt.yscale("log")
        plt.xlabel(xlab)
        plt.ylabel(ylab)
        plt.grid(True, which="both", alpha=0.3)
        plt.legend(fontsize=8)
        plt.tight_layout()
        path = IMG / name
        plt.savefig(path, dpi=110)
        plt.close()
        files.append(str(path.relative_to(ROOT)))

    def sweep(m, axis):
        if axis == "n":
            sel = sorted((r for r in ok if r["model"] == m and r["t"] == t_fixed), key=lambda r: r["n"])
            return [r["n"] for r in sel], sel
        # The T sweep of each model at the N its own command fixed (rows record it).
        nf = next((r["n_fixed"] for r in ok if r["model"] == m and "n_fixed" in r), n_fixed)
        sel = sorted((r for r in ok if r["model"] == m and r["n"] == nf), key=lambda r: r["t"])
        return [r["t"] for r in sel], sel

    s = []
    for m in models:
        xs, sel = sweep(m, "n")
        s.append((f"{m} run (T={t_fixed})", xs, [r["run_s"] for r in sel], "o-"))
        s.append((f"{m} compile", xs, [r["compile_s"] for r in sel], "x--"))
    fig("scaling_time_vs_n.png", "particles N", "seconds", s)
    s = []
    for m in models:
        xs, sel = sweep(m, "t")
        s.append((f"{m} run (N={sel[0]['n'] if sel else n_fixed})", xs, [r["run_s"] for r in sel], "o-"))
        s.append((f"{m} compile", xs, [r["compile_s"] for r in sel], "x--"))
    fig("scaling_time_vs_t.png", "tokens T", "seconds", s)
    s = []
    for m in models:
        xs, sel = sweep(m, "n")
        s.append((f"{m} run peak RSS - RSS after import", xs,
                  [r["run_peak_rss_mib"] - r["rss_after_import_mib"] for r in sel], "o-"))
        s.append((f"{m} estimate (weights + N (KV + step) + runtime)", xs,
                  [r["estimate"]["total"] / MIB for r in sel], "s--"))
        s.append((f"{m} peak RSS (whole process)", xs, [r["peak_rss_mib"] for r in sel], "^:"))
    fig("scaling_memory_vs_n.png", f"particles N (T={t_fixed})", "MiB", s)
    return files


def refusal_check() -> dict:
    """An absurd N on the GPT-2-small shape is refused before any allocation."""
    code = (
        "import time, ppl\n"
        f"lm = ppl.models.load({str(MODELS['gpt2-small'])!r})\n"
        f"prog = ppl.steer(lm, {PROMPT!r}, max_tokens=128)\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    ppl.infer(prog, particles=1_000_000)\n"
        "    print('NOT REFUSED')\n"
        "except MemoryError as e:\n"
        "    print(f'{time.perf_counter() - t0:.2f}s|{e}')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=child_env(1), capture_output=True,
                         text=True, cwd=str(ROOT), timeout=600)
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-500:]
    secs, _, msg = line.partition("|")
    return {"particles": 1_000_000, "refused": bool(msg), "seconds": secs, "message": msg or line}


def write_docs(data, md, files, command_lines) -> None:
    ref = data.get("refusal", {})
    notes = data.get("notes", "")
    imgs = "\n".join(f"![{Path(f).stem}]({Path(f).relative_to('docs')})" for f in files)
    cmds = "\n".join(command_lines)
    body = f"""{SECTION}

ppl's SMC on vs_llamppl.py's `words` task (every word at most {MAX_WORD} letters, EOS masked
so every particle generates exactly T tokens; `method="smc", ess_threshold=0.5,
resampling="multinomial"`), 1 thread, float32, each configuration in a fresh process with the
persistent compilation cache off (`benchmarks/scaling.py`). Run time is the compiled
executable's (median of the repeats); compile time is separate. Memory: "peak RSS, process" is
`ru_maxrss` of the whole process (compilation included); "peak RSS, runs" is the peak during
the compiled runs only (the kernel's VmHWM reset through `/proc/self/clear_refs` after the
first, compiling call). The estimate is `ppl.inference.driver.estimate_bytes`, what `ppl.infer`
checks before allocating: weights + N x KV cache per particle + one step's buffers
(N x V x 48 bytes: twelve vocabulary-sized float32 buffers per row) + a fixed runtime part
(576 MiB: compiler arenas, the executable, the tokenizer). The main ratio is the runs' peak
minus the RSS after `import ppl` and JAX's start (Python's and the runtime's floor, ~the same
for every configuration, which the estimate leaves out) over the estimate; "peak RSS, process
/ estimate" does not subtract that floor. "XLA temp" is the compiled program's own temporary
buffers (`memory_analysis().temp_size_in_bytes`); divided by the KV cache it counts the cache
copies the compiled loop keeps besides its carried state. Shared 2-core machine with other
jobs running: times are noisy. Data: `benchmarks/results/scaling.json`.

Commands:

```
{cmds}
```

{md}

{imgs}

Memory refusal: `ppl.infer(ppl.steer(gpt2_small, prompt, max_tokens=128), particles=1_000_000)`
raised `MemoryError` in {str(ref.get('seconds', '?')).rstrip('s')} s, before allocating anything:

> {ref.get('message', 'not run')}

{notes}
"""
    replace_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny"], choices=list(MODELS))
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--t", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--n-fixed", type=int, default=32, help="N of the T sweep")
    ap.add_argument("--t-fixed", type=int, default=64, help="T of the N sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", default="smc")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--no-refusal", action="store_true", help="skip the MemoryError check")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--docs-only", action="store_true",
                    help="only rewrite the plots and the docs section from the JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.models[0], args.n[0], args.t[0], args.repeats, args.method)))
        return

    if args.docs_only:
        data = json.loads(RESULTS.read_text())
        write_all(data, data["meta"]["n_fixed"], data["meta"]["t_fixed"])
        return

    ensure_checkpoints(args.models + ([] if args.no_refusal else ["gpt2-small"]))
    command = ("python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    configs = []
    for m in args.models:
        cfg = json.loads((MODELS[m] / "config.json").read_text())
        ctx = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1024
        prompt_len = 16  # generous; the real prompt is shorter
        for n in args.n:
            configs.append((m, n, args.t_fixed))
        for t in args.t:
            configs.append((m, args.n_fixed, min(t, ctx - prompt_len)))
    configs = list(dict.fromkeys(configs))
    rows = []
    for m, n, t in configs:
        r = run_config(m, n, t, args.repeats, args.threads, args.method, args.timeout)
        r["command"] = command
        r["n_fixed"], r["t_fixed"] = args.n_fixed, args.t_fixed
        rows.append(r)
        print(f"{m} N={n} T={t}: " + (r["error"][-300:] if "error" in r else
              f"run {r['run_s']:.3f}s compile {r['compile_s']:.1f}s peak {r['peak_rss_mib']:.0f} MiB"),
              file=sys.stderr, flush=True)
    print(table(rows))
    print(per_particle(rows, args.t_fixed))
    refusal = None if args.no_refusal else refusal_check()
    if refusal:
        print(f"refusal: {refusal}")
    if args.no_write:
        return
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    keep = {(r["model"], r["n"], r["t"]) for r in rows}
    # Rows from an older estimate (before the runtime part) would mix two ratio definitions.
    data["rows"] = [r for r in data["rows"] if (r["model"], r["n"], r["t"]) not in keep
                    and "runtime" in r.get("estimate", {})] + rows
    data["rows"].sort(key=lambda r: (list(MODELS).index(r["model"]), r["n"], r["t"]))
    if refusal:
        data["refusal"] = refusal
    data["meta"] = {"threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "n_fixed": args.n_fixed, "t_fixed": args.t_fixed}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    write_all(data, args.n_fixed, args.t_fixed)


def write_all(data, n_fixed, t_fixed) -> None:
    files = plots(data["rows"], n_fixed, t_fixed)
    cmds = sorted({r.get("command", "") for r in data["rows"]} - {""})
    write_docs(data, table(data["rows"]) + "\n\nMemory per particle (slopes over the N sweep):\n\n"
               + per_particle(data["rows"], t_fixed), files, cmds)


if __name__ == "__main__":
    main()
