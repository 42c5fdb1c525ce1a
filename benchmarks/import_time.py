"""Import time: ``import ppl`` (lazy: no JAX), and what the first use of the API pays.

Each row runs a fresh interpreter ``--repeats`` times and reports the median of the wall time of
the whole process (``python -c ...``) and the cumulative ``-X importtime`` figure of ``ppl``.
Rows: the interpreter alone, ``import ppl``, ``import jax`` (the floor of any run), and
``import ppl; ppl.Program`` (the first real use: the core, JAX included).

Usage::

    python benchmarks/import_time.py                 # 5 repeats, writes JSON and docs
    python benchmarks/import_time.py --repeats 3 --no-write
"""

from __future__ import annotations

import argparse
import datetime
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import replace_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "import_time.json"
ROWS = {
    "python -c pass": "pass",
    "import ppl": "import ppl",
    "import jax": "import jax",
    "import ppl; ppl.Program (first use)": "import ppl; ppl.Program",
}


def measure(code: str, repeats: int) -> dict:
    walls, ppl_us = [], []
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                             text=True, env=env, cwd="/", timeout=600)
        walls.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(f"{code!r} failed:\n{out.stderr[-2000:]}")
        m = re.search(r"^import time:\s+\d+ \|\s+(\d+) \| ppl$", out.stderr, re.M)
        if m:
            ppl_us.append(int(m.group(1)))
    return {"wall_s": statistics.median(walls), "wall_all_s": walls,
            "ppl_importtime_s": statistics.median(ppl_us) / 1e6 if ppl_us else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = {}
    for name, code in ROWS.items():
        rows[name] = measure(code, args.repeats)
        print(f"{name:40s} wall {rows[name]['wall_s']:.2f} s", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    record = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
              "load_average_1min": load, "repeats": args.repeats, "rows": rows}
    if args.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "## Import time",
        "",
        f"Command: `python benchmarks/import_time.py --repeats {args.repeats}` ({record['date']}, "
        f"{record['machine']}, Python {record['python']}, 1-minute load average "
        f"{load:.1f} while measuring). Median over {args.repeats} fresh interpreters; the wall time "
        "is the whole process, `-X importtime` the cumulative figure of the `ppl` package.",
        "",
        "| what | wall (s) | `ppl` in `-X importtime` (s) |",
        "|---|---|---|",
    ]
    for name, r in rows.items():
        imp = "" if r["ppl_importtime_s"] is None else f"{r['ppl_importtime_s']:.3f}"
        lines.append(f"| `{name}` | {r['wall_s']:.2f} | {imp} |")
    lines += [
        "",
        "Reading: `import ppl` imports no JAX, NumPy or transformers (names load on first use), so "
        "it costs little more than the interpreter. The first use of the API pays for JAX, "
        "whose own import dominates and varies most with the machine's load; transformers is "
        "imported only when a checkpoint's tokenizer or config is read.",
        "",
    ]
    replace_section("## Import time", "\n".join(lines))


if __name__ == "__main__":
    main()
