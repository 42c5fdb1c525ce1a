"""The public entry points: ``infer`` (every backend) and ``steer`` (the common program)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import jax.numpy as jnp

from ppl._jaxcache import enable_compilation_cache
from ppl.context import Context
from ppl.program import Program
from ppl.result import Result

__all__ = ["infer", "steer", "methods", "register_method", "SteerProgram"]

_METHODS: dict[str, Callable[..., Result]] = {}


def register_method(name: str):
    """Registers ``fn(program, *, particles, seed, **options) -> Result`` as ``method=name``."""

    def deco(fn):
        _METHODS[name] = fn
        return fn

    return deco


def methods() -> list[str]:
    """Names accepted by ``infer(method=...)``."""
    _load_methods()
    return sorted(_METHODS)


def _load_methods():
    # Backends register themselves on import; importing here keeps `import ppl` light.
    from ppl.inference import registry  # noqa: F401


def infer(program: Program, method: str = "smc", particles: int = 32, seed: Any = 0,
          progress: Callable[[int, int, float], None] | None = None, devices=None,
          **options) -> Result:
    """Runs inference on ``program`` and returns its :class:`~ppl.Result`.

    Args:
        program: a :class:`~ppl.Program` (for example from :func:`steer`).
        method: ``"is"``, ``"smc"``, ``"smc_steer"`` and any other name in :func:`methods`.
        particles: number of particles ``N``.
        seed: an int or a JAX PRNG key; the same seed gives the same result bit for bit.
        progress: optional host callback ``(step, live_particles, ess)`` called after every
            step (costs one host round-trip per step; used by the CLI's progress bar).
        devices: a list of devices (e.g. ``jax.devices()``) or a ``jax.sharding.Mesh`` with a
            ``"particles"`` axis: the particle axis is sharded across them (weights
            replicated); ``particles`` must be a multiple of the device count.
        **options: backend options, e.g. ``resampling="systematic"``,
            ``ess_threshold=0.5`` (smc), ``num_beams=3`` (smc_steer).

    Raises:
        ValueError: unknown method or option, prompt too long for the model's context.
        MemoryError: the estimated memory of the run exceeds what is available.
        ppl.InferenceError: no particle satisfied the program's conditions, or NaN.
    """
    _load_methods()
    enable_compilation_cache()
    if not isinstance(program, Program):
        raise TypeError(f"infer() needs a ppl.Program, got {type(program).__name__}.")
    if method not in _METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(methods())}.")
    if int(particles) < 1:
        raise ValueError(f"particles must be >= 1, got {particles}.")
    fn = _METHODS[method]
    allowed = {p for p in inspect.signature(fn).parameters} - {"program", "particles", "seed"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for method {method!r}; it accepts "
            f"{sorted(allowed) or 'no options'}."
        )
    from ppl.inference._engine import prepare

    from ppl.inference.sharding import particle_mesh

    setup = prepare(program)
    mesh = particle_mesh(devices)
    if mesh is not None and int(particles) % mesh.size:
        raise ValueError(
            f"particles ({particles}) must be a multiple of the number of devices ({mesh.size}).")
    setup.progress_fn = progress
    setup.mesh = mesh
    try:
        return fn(program, particles=int(particles), seed=seed, **options)
    finally:
        setup.progress_fn = None
        setup.mesh = None


def _name(obj) -> str:
    return getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__


class SteerProgram(Program):
    """The program :func:`steer` builds: LM prior x hard constraints x potentials.

    Target over token sequences ``x`` (ending at EOS, which is not part of the text, or at
    ``max_tokens`` tokens)::

        pi(x) ∝ p_LM(x) * Π_c 1[c(text(x))] * Π_f exp(f(text(x)))

    Device constraints (token automata) are enforced with the LM masked to the tokens that
    keep the text acceptable as the proposal; the weight increment is the log mass the
    mask kept, ``log Σ_{y allowed} p(y | x_<t)``, which makes the result exact. Python
    predicates and potentials run on the host when a particle finishes. Twist potentials
    ``g`` are applied at every step as ``twist(g(text so far))``.
    """

    def __init__(self, lm, prompt="", constraints: Sequence = (), potentials: Sequence = (),
                 twists: Sequence = (), max_tokens: int = 32, temperature: float | None = None):
        super().__init__(lm=lm, prompt=prompt, max_tokens=max_tokens)
        from ppl.stdlib.base import Constraint, TokenAutomaton

        self.automata: list[TokenAutomaton] = []
        self.predicates: list[Callable[[str], bool]] = []
        self.host = []  # host-side samplers (Lark grammars)
        for c in constraints:
            if getattr(c, "host", False):
                self.host.append(c.bind(lm.vocab))
            elif isinstance(c, TokenAutomaton):
                self.automata.append(c)
            elif isinstance(c, Constraint):
                self.automata.append(c.compile(lm.vocab))
            elif callable(c):
                self.predicates.append(c)
            else:
                raise TypeError(
                    f"constraint {c!r} is neither a ppl.stdlib constraint nor a callable str -> bool."
                )
        self.potentials, self.twists = [], list(twists)
        for f in potentials:
            (self.twists if getattr(f, "when", "end") == "twist" else self.potentials).append(f)
        for f in self.potentials + self.twists:
            if not callable(f):
                raise TypeError(f"potential {f!r} is not callable (str -> float).")
        self.temperature = temperature

    def init(self, ctx: Context):
        return tuple(a.init_state() for a in self.automata)

    def step(self, ctx: Context, state):
        p = ctx.lm.next_token(self.temperature)
        eos = self.lm.eos_token_id
        if self.automata:
            mask = jnp.ones((self.lm.vocab_size,), bool)
            # Tokens left after this one; only tokens from which every automaton can still
            # reach acceptance within them survive (exact: nothing acceptable is removed).
            remaining = self.max_tokens - (ctx.length + 1)
            for a, s in zip(self.automata, state):
                mask = mask & a.allowed(s) & a.within_budget(s, remaining)
            tok = self._draw(ctx, p, p.mask(mask))
            state = tuple(a.advance(s, tok) for a, s in zip(self.automata, state))
            for a, s in zip(self.automata, state):
                ctx.condition(a.alive(s), name=a.name)
        else:
            tok = self._draw(ctx, p, None)
        ctx.finish_if(tok == eos)
        for pred in self.predicates:
            if getattr(pred, "incremental", False):  # prefix-closed: check every prefix
                ctx.condition(ctx.text(lambda t, f=pred: bool(f(t)), dtype=bool), name=_name(pred))
        for g in self.twists:
            ctx.twist(ctx.text(g))
        return state

    def _draw(self, ctx: Context, p, q):
        if not self.host:
            return ctx.sample(p, proposal=q)
        if len(self.host) > 1:
            raise ValueError("steer() supports one grammar constraint at a time; combine the grammars.")
        # Device masks first (their kept mass is exact), then the host sampler's unbiased
        # estimate of the mass the grammar keeps among what is left.
        base = p if q is None else q
        lz_dev = 0.0 if q is None else q.log_normalizer - p.log_normalizer
        tok, lz_host = self.host[0].sample(ctx, base.logprobs)
        return ctx.extend(p, tok, lz_dev + lz_host)

    def final(self, ctx: Context, state):
        for h in self.host:
            ctx.condition(ctx.text(lambda t, c=h.c: c.check(t), dtype=bool), name=h.name)
        for a, s in zip(self.automata, state):
            ctx.condition(a.accepting_state(s), name=a.name)
        for pred in self.predicates:
            ctx.condition(ctx.text(lambda t, f=pred: bool(f(t)), dtype=bool), name=_name(pred))
        for f in self.potentials:
            ctx.factor(ctx.text(lambda t, f=f: float(f(t))))


def steer(lm, prompt: str = "", constraints: Sequence = (), potentials: Sequence = (),
          max_tokens: int = 32, twists: Sequence = (), temperature: float | None = None
          ) -> SteerProgram:
    """The common program without writing a class.

    Args:
        lm: the language model (prior), e.g. ``ppl.models.load("tiny")``.
        prompt: the text generation continues from.
        constraints: hard rules: ``ppl.stdlib.constraints`` objects (enforced token by token
            on device) and/or Python callables ``str -> bool`` (checked when a particle
            finishes).
        potentials: soft rules ``str -> float`` (log-weights) applied to the finished text, or
            :class:`ppl.stdlib.potentials.Potential` objects (``when="twist"`` ones act as
            twists).
        max_tokens: the token budget; a sequence also ends at EOS.
        twists: ``str -> float`` heuristics applied to every prefix as twists (they guide
            resampling and cancel out of the final target).
        temperature: optional LM temperature (changes the prior itself).
    """
    return SteerProgram(lm, prompt, constraints, potentials, twists, max_tokens, temperature)
