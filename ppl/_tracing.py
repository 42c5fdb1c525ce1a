"""Program checks at trace time: JAX's tracer errors become [ProgramError][ppl.ProgramError]s
that name the user's line and the fix, and shape mistakes are named before anything compiles.

A program is traced, not run: ``init``/``step``/``final`` are called once with abstract
values for one particle and compiled for all of them. Habits from eager Python (a Python
``if`` on a sampled token, ``int(tok)``, indexing a Python list or dict with a token, string
operations on tokens) then fail inside JAX with messages about tracers. [translating][]
turns them into a message about the program; [check_program][] runs the one abstract pass
every run starts with (it also collects the condition names) and checks that ``step``
keeps the state's structure, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import linecache
import os
import traceback
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from ppl.errors import ProgramError

__all__ = ["check_program", "translating", "user_location"]


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    import ppl
    import ppl.inference
    import ppl.models
    import ppl.stdlib

    dirs = [os.path.dirname(m.__file__) for m in (ppl, ppl.inference, ppl.models, ppl.stdlib)]
    dirs.append(os.path.dirname(jax.__file__))
    try:
        import jaxlib

        dirs.append(os.path.dirname(jaxlib.__file__))
    except ImportError:  # pragma: no cover
        pass
    import numpy

    dirs.append(os.path.dirname(numpy.__file__))
    dirs.append(os.path.dirname(contextlib.__file__))  # the standard library
    return tuple(os.path.abspath(d) + os.sep for d in dirs)


def _is_user(filename: str, lib: tuple[str, ...]) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith(lib) and not filename.startswith("<frozen")


def user_location(frames) -> tuple[str, int, str] | None:
    """``(file, line, source)`` of the innermost frame of ``frames`` (``traceback`` summaries,
    outermost first) that is user code: not steerppl, JAX, NumPy or the standard library."""
    lib = _library_dirs()
    for fr in reversed(list(frames)):
        if _is_user(fr.filename, lib):
            src = (fr.line or linecache.getline(fr.filename, fr.lineno)).strip()
            return fr.filename, fr.lineno, src
    return None


def _where(exc: BaseException) -> str:
    loc = user_location(traceback.extract_tb(exc.__traceback__))
    if loc is None:
        return ""
    file, line, src = loc
    return f" at {file}:{line}" + (f" (`{src}`)" if src else "")


_TRACED = ("Inside a program every value that depends on a draw is traced: one program is "
           "compiled for all particles, so Python never sees the value itself.")


def _explain(phase: str, exc: BaseException) -> str | None:
    """The message for a tracer error ``exc`` raised in ``phase``, or None (not one of ours)."""
    msg = str(exc)
    where = _where(exc)
    head = f"{phase}(){where}"
    if isinstance(exc, jax.errors.TracerBoolConversionError):
        return (f"{head} uses a traced value as a Python bool (`if`, `while`, `and`/`or`, "
                f"`not`, `bool(...)`). {_TRACED} Fix: to end the particle use "
                "`ctx.finish_if(tok == x)` (or `ctx.condition(...)`); to choose a value use "
                "`jnp.where(cond, a, b)`; for Python over the text use `ctx.text(fn)`.")
    if isinstance(exc, jax.errors.TracerIntegerConversionError):
        return (f"{head} uses a traced value as a Python index (indexing a Python list, "
                f"tuple or string with a token, `range(tok)`). {_TRACED} Fix: make the table "
                "an array once (`self.table = jnp.asarray(values)` in `__init__`) and index it "
                "with the token, `self.table[tok]`; for Python over the text use "
                "`ctx.text(fn)`.")
    if isinstance(exc, jax.errors.TracerArrayConversionError):
        return (f"{head} converts a traced value to a NumPy array (`np.asarray`, a NumPy "
                f"function). {_TRACED} Fix: use the `jnp` function instead; for Python over "
                "the text use `ctx.text(fn)`.")
    if isinstance(exc, jax.errors.ConcretizationTypeError):
        return (f"{head} needs the concrete value of a traced one (`int(tok)`, `float(x)`, "
                f"`.item()`, or a library call that does, such as decoding tokens). {_TRACED} "
                "Fix: keep it an array (`tok` already is an int32 array; "
                "`x.astype(jnp.float32)`, `jnp.where`, a `jnp` table indexed by `tok`); for "
                "Python over the text (decoding, string tests) use `ctx.text(fn)`, which runs "
                "`fn(text)` on the host for every particle and returns its value.")
    if isinstance(exc, TypeError) and "unhashable type" in msg and "Tracer" in msg:
        return (f"{head} uses a traced value as a dict key or set member "
                f"(`d[tok]`, `d.get(tok)`, `tok in s`). {_TRACED} Fix: turn the dict into a "
                "`jnp` table indexed by token id once, e.g. `self.table = jnp.asarray([d.get(i, "
                "default) for i in range(lm.vocab_size)])`, then `self.table[tok]`.")
    if isinstance(exc, TypeError) and "__contains__" in msg:
        return (f"{head} applies a string operation to token arrays (`'x' in ctx.tokens`). "
                f"{_TRACED} Fix: `ctx.text(fn)` runs `fn(text)` on the host on the particle's "
                "decoded text and returns its value (e.g. "
                "`ctx.condition(ctx.text(lambda s: 'x' not in s, dtype=bool))`).")
    return None


@contextlib.contextmanager
def translating(phase: str) -> Iterator[None]:
    """Re-raises JAX's tracer errors raised by user code in ``phase`` (``"init"``, ``"step"``,
    ``"final"``) as [ProgramError][ppl.ProgramError] naming the user's line and the fix."""
    try:
        yield
    except ProgramError:
        raise
    except (jax.errors.JAXTypeError, TypeError) as e:
        text = _explain(phase, e)
        if text is None:
            raise
        raise ProgramError(text) from e


def _leaves(tree) -> list:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _check_state(init_state: Any, new_state: Any, program) -> None:
    """``step`` must return a state of ``init``'s structure, shapes and dtypes."""
    name = type(program).__name__
    fix = ("The state is a pytree of fixed shape for the whole run: return a state with "
           "the structure of init()'s (e.g. `return s`), and keep growing data in a "
           "fixed-size array written with `arr.at[ctx.length].set(tok)` (ctx.tokens already "
           "holds the generated tokens).")
    if new_state is None and init_state is not None:
        raise ProgramError(f"{name}.step() returned None; it must return the particle's new "
                           f"state (init() returned {_describe(init_state)}). Add "
                           "`return state` at the end of step().")
    s0, s1 = jax.tree.structure(init_state), jax.tree.structure(new_state)
    if s0 != s1:
        grown = ""
        if (isinstance(init_state, (list, tuple)) and isinstance(new_state, (list, tuple))
                and type(init_state) is type(new_state) and len(init_state) != len(new_state)):
            grown = (f" It is a Python {type(init_state).__name__} of length "
                     f"{len(init_state)} in init() and {len(new_state)} after step(): a "
                     "growing Python list cannot be compiled.")
        raise ProgramError(f"{name}.step() changed the structure of the state: init() returned "
                           f"{_describe(init_state)}, step() returned {_describe(new_state)}."
                           f"{grown} {fix}")
    for (path, a), (_, b) in zip(_leaves(init_state), _leaves(new_state)):
        sa, sb = jnp.shape(a), jnp.shape(b)
        da, db = jnp.result_type(a), jnp.result_type(b)
        if sa != sb or jnp.promote_types(da, db) != da:
            where = jax.tree_util.keystr(path) or "(the state itself)"
            raise ProgramError(
                f"{name}.step() changed the state at {where}: init() gave {da.name}{list(sa)}, "
                f"step() returned {db.name}{list(sb)}. {fix} Convert with `.astype(...)` "
                "where a dtype changed.")


def _describe(tree) -> str:
    if tree is None:
        return "None"
    leaves = jax.tree.leaves(tree)
    shapes = ", ".join(f"{jnp.result_type(x).name}{list(jnp.shape(x))}" for x in leaves[:4])
    more = ", ..." if len(leaves) > 4 else ""
    return f"{type(tree).__name__} with {len(leaves)} array(s) [{shapes}{more}]"


def check_program(program, lm, num_contexts: int, max_tokens: int) -> tuple[str, ...]:
    """One abstract pass over ``init``, ``step`` and ``final`` for one particle (compiles
    nothing): the condition names, in the order of their cause codes.

    Raises:
        ProgramError: a tracer error in user code (with its line and the fix), or a step that
            does not return a state of ``init``'s structure, shapes and dtypes.
    """
    from ppl.context import Context

    names: list[str] = []
    decode = lm.vocab.decode

    def one(key):
        k_init, k_step, k_fin = jax.random.split(key, 3)
        tokens = jnp.zeros((max_tokens,), jnp.int32)
        length = jnp.zeros((), jnp.int32)
        common = dict(tokens=tokens, length=length, max_tokens=max_tokens,
                      condition_names=names, decode_fn=decode)
        with translating("init"):
            state = _not_async(program, "init", program.init(Context(k_init, **common)))
        lp = jnp.zeros((num_contexts, lm.vocab_size), jnp.float32)
        with translating("step"):
            new_state = _not_async(program, "step", program.step(
                Context(k_step, logprobs=lp, t=jnp.zeros((), jnp.int32), **common), state))
        _check_state(state, new_state, program)
        with translating("final"):
            _not_async(program, "final", program.final(Context(k_fin, **common), new_state))
        return jnp.zeros(())

    before = dict(vars(program)) if hasattr(program, "__dict__") else {}
    jax.eval_shape(one, jax.random.key(0))
    _check_attributes(program, before)
    return tuple(names)


def _not_async(program, phase: str, value):
    """``value``, unless the phase was written ``async def`` (LLaMPPL's style)."""
    if inspect.iscoroutine(value):
        value.close()
        raise ProgramError(
            f"{type(program).__name__}.{phase}() is `async def` (LLaMPPL style). steerppl "
            f"programs are plain functions: write `def {phase}(self, ctx, ...)` without "
            "`async`/`await`; `ctx.sample(...)` returns the token directly.")
    return value


def _check_attributes(program, before: dict) -> None:
    """Refuses a program that stored traced values on itself (LLaMPPL keeps a particle's
    state on the model object; here one program object serves every particle)."""
    if not hasattr(program, "__dict__"):
        return
    leaked = []
    for k, v in list(vars(program).items()):
        if k in before and before[k] is v:
            continue
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(v)):
            leaked.append(k)
            if k in before:  # leave the user's object as it was
                setattr(program, k, before[k])
            else:
                delattr(program, k)
    if leaked:
        attrs = ", ".join(f"`self.{k}`" for k in leaked)
        raise ProgramError(
            f"{type(program).__name__} assigned {attrs} while tracing init/step/final. One "
            "program object serves every particle, so its attributes cannot hold a particle's "
            "values: keep them in the state (return them from init(), update and return them "
            "in step()), and read per-particle facts from ctx (ctx.tokens, ctx.length, ctx.t).")
