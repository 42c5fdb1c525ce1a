"""Exact oracles: the posterior and evidence of a program by enumeration.

For programs over small vocabularies (typically an :class:`~ppl.models.NGramLM`) and short
``max_tokens``, :func:`enumerate_posterior` visits every token sequence the program can
generate and computes its exact target weight

    log pi~(x) = Σ_t [log p(x_t | x_<t) + factors_t] + final factors   (-inf if a condition fails)

by *replaying* the program with each token forced: ``ctx.sample(p, proposal=q)`` returns the
forced token and adds ``log p(x)`` (the proposal only matters to samplers, not to the target);
twists cancel as they do in the samplers. ``Z = Σ_x pi~(x)``.

Use it to test your own programs: compare ``ppl.infer(...).posterior()`` and
``log_evidence`` with the oracle, with tolerances from :func:`tv_tolerance` and friends.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from ppl.context import Context, ProgramError
from ppl.inference import _engine as E

__all__ = [
    "Exact",
    "enumerate_posterior",
    "total_variation",
    "binomial_tolerance",
    "evidence_tolerance",
    "evidence_discrepancy",
    "posterior_discrepancies",
    "replicate",
]


@dataclasses.dataclass
class Exact:
    """The exact answer for a program.

    Attributes:
        log_evidence: ``log Z``.
        sequences: ``{token tuple: probability}`` over complete sequences (EOS included).
        posterior: ``{text: probability}`` (probabilities of equal texts summed).
        log_weights: ``{token tuple: log pi~(x)}`` unnormalised target weights.
    """

    log_evidence: float
    sequences: dict
    posterior: dict
    log_weights: dict

    def expectation(self, fn) -> float:
        return float(sum(p * fn(t) for t, p in self.posterior.items()))


class _Forced(Context):
    """A context whose LM draws are fixed in advance and weighted by the target only."""

    forced = None

    def sample(self, dist, proposal=None):
        if getattr(dist, "lm_index", None) is None:
            raise ProgramError(
                "The enumeration oracle can only enumerate LM tokens; this program samples a "
                "non-token variable (use simulation-based calibration for continuous latents)."
            )
        x = self.forced
        self.logw = self.logw + dist.log_prob(x)
        self._record_token(dist, None, x)
        return x


def enumerate_posterior(program, max_sequences: int = 200_000, batch: int = 4096) -> Exact:
    """Exact posterior and evidence of ``program`` by breadth-first enumeration.

    Only LM tokens may be sampled (``init`` may use ``factor``/``condition`` but not draw
    latents). Cost grows as ``V ** max_tokens``; ``max_sequences`` guards the frontier size.

    Raises:
        ValueError: the enumeration would exceed ``max_sequences`` prefixes.
        ProgramError: the program samples something other than LM tokens.
    """
    setup = E.prepare(program)
    lm = setup.lm
    params = lm.params
    v = lm.vocab_size
    key = jax.random.key(0)
    parts, lm_state = E.init_population(key, setup, params, 1)
    # Host-side frontier of live prefixes: particle arrays with a leading axis.
    finished_tokens, finished_len, finished_logw, finished_state = [], [], [], []

    def expand(parts, logprobs):
        m = parts.logw.shape[0]
        rep = lambda x: jnp.repeat(x, v, axis=0)  # noqa: E731
        cand = jax.tree.map(rep, parts)
        forced = jnp.tile(jnp.arange(v, dtype=jnp.int32), m)
        lps = rep(logprobs)

        def one(state, tokens, length, logw, twist, done, cause, lp, x):
            ctx = E._context(setup, key, cls=_Forced, logprobs=lp, tokens=tokens, length=length,
                             t=length)
            ctx.forced = x
            return E.apply_step(setup, ctx, state, tokens, length, logw, twist, done, cause)

        out, toks = jax.vmap(one)(cand.state, cand.tokens, cand.length, cand.logw, cand.twist,
                                  cand.done, cand.cause, lps, forced)
        return out, toks

    expand_jit = jax.jit(expand)

    def advance(parts_old_len, lm_state, toks, active):
        return E.advance_lm(setup, params, lm_state, toks, parts_old_len, active)

    advance_jit = jax.jit(advance)
    frontier, fr_lm = parts, lm_state
    for _ in range(setup.max_tokens):
        m = frontier.logw.shape[0]
        if m == 0:
            break
        if m * v > max_sequences:
            raise ValueError(
                f"Enumeration would visit {m * v} prefixes (> max_sequences={max_sequences}); "
                "use a smaller vocabulary or max_tokens."
            )
        outs, lms = [], []
        for s in range(0, m, batch):
            sl = slice(s, min(s + batch, m))
            sub = jax.tree.map(lambda x: x[sl], frontier)
            out, toks = expand_jit(sub, fr_lm.logprobs[sl])
            rows = jnp.repeat(jnp.arange(sl.start, sl.stop), v)
            k_ctx = setup.num_contexts
            crow = (rows[:, None] * k_ctx + jnp.arange(k_ctx)[None, :]).reshape(-1)
            sub_lm = E.LMState(jax.tree.map(lambda x: jnp.take(x, crow, axis=0), fr_lm.cache),
                               fr_lm.logprobs[rows], fr_lm.nan)
            old_len = jnp.repeat(sub.length, v)
            new_lm = advance_jit(old_len, sub_lm, toks, ~out.done)
            outs.append(out)
            lms.append(new_lm)
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *outs)
        new_lm = E.LMState(
            jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *[x.cache for x in lms]),
            jnp.concatenate([x.logprobs for x in lms], 0),
            jnp.any(jnp.stack([x.nan for x in lms])))
        done = np.asarray(out.done)
        alive = np.isfinite(np.asarray(out.logw))
        fin = done & alive
        if fin.any():
            idx = np.nonzero(fin)[0]
            finished_tokens.append(np.asarray(out.tokens)[idx])
            finished_len.append(np.asarray(out.length)[idx])
            finished_logw.append(np.asarray(out.logw)[idx])
            finished_state.append(jax.tree.map(lambda x: np.asarray(x)[idx], out.state))
        keep = np.nonzero(~done & alive)[0]
        frontier = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[keep]), out)
        k_ctx = setup.num_contexts
        crow = (keep[:, None] * k_ctx + np.arange(k_ctx)[None, :]).reshape(-1)
        fr_lm = E.LMState(jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[crow]), new_lm.cache),
                          jnp.asarray(np.asarray(new_lm.logprobs)[keep]), new_lm.nan)

    if not finished_logw:
        return Exact(-math.inf, {}, {}, {})
    tokens = np.concatenate(finished_tokens)
    lengths = np.concatenate(finished_len)
    logw = np.concatenate(finished_logw)
    states = jax.tree.map(lambda *xs: np.concatenate(xs, 0), *finished_state)
    fin_parts = E.Particles(
        jax.tree.map(jnp.asarray, states), jnp.asarray(tokens), jnp.asarray(lengths),
        jnp.asarray(logw), jnp.zeros_like(jnp.asarray(logw)), jnp.ones(len(logw), bool),
        jnp.full(len(logw), -1, jnp.int32))
    fin_parts = E.finalize(key, setup, fin_parts)
    logw = np.asarray(fin_parts.logw, np.float64)
    m = np.max(logw)
    if not np.isfinite(m):
        return Exact(-math.inf, {}, {}, {})
    log_z = float(m + np.log(np.sum(np.exp(logw - m))))
    seqs, post, lws = {}, defaultdict(float), {}
    for row, n, lw in zip(tokens, lengths, logw):
        seq = tuple(int(t) for t in row[:n])
        lws[seq] = float(lw)
        if np.isfinite(lw):
            p = float(np.exp(lw - log_z))
            seqs[seq] = p
            post[setup.decode(row[:n])] += p
    return Exact(log_z, seqs, dict(sorted(post.items(), key=lambda kv: -kv[1])), lws)


def total_variation(p: dict, q: dict) -> float:
    """``½ Σ |p - q|`` over the union of keys."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def _z(alpha: float) -> float:
    """Two-sided standard normal quantile for a false-failure rate ``alpha``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def binomial_tolerance(p: float, n_eff: float, alpha: float = 1e-4) -> float:
    """Half-width within which a self-normalised estimate of probability ``p`` from ``n_eff``
    effective samples falls with probability ``>= 1 - alpha`` (normal approximation, plus
    a ``1/n_eff`` term for the self-normalisation bias)."""
    return _z(alpha) * math.sqrt(max(p * (1 - p), 1e-12) / n_eff) + 1.0 / n_eff


def evidence_tolerance(std_of_mean: float, alpha: float = 1e-4) -> float:
    """CLT half-width for a mean with the given standard error, at false-failure rate alpha."""
    return _z(alpha) * std_of_mean


def replicate(program, method: str, particles: int, seeds, **options) -> list:
    """Runs ``ppl.infer`` once per seed (one compilation serves all)."""
    from ppl.api import infer

    return [infer(program, method=method, particles=particles, seed=s, **options) for s in seeds]


def posterior_discrepancies(results, exact: Exact, alpha: float = 1e-4, min_prob: float = 0.02,
                            bias_scale: float = 4.0) -> list[str]:
    """Compares replicated posterior estimates with the exact posterior.

    For each text with exact probability ``>= min_prob`` the mean of the ``R`` replicate
    estimates must lie within ``z * sd / sqrt(R) + bias_scale / N`` of the truth, where ``sd``
    is the replicates' sample standard deviation, ``z`` the normal quantile for the
    Bonferroni-corrected rate ``alpha / #texts`` and ``bias_scale / N`` bounds the O(1/N) bias
    of self-normalised estimates. Returns human-readable failures (empty when all pass).
    """
    r = len(results)
    n = results[0].num_particles
    texts = [t for t, p in exact.posterior.items() if p >= min_prob]
    z = _z(alpha / max(len(texts), 1))
    bad = []
    for t in texts:
        est = np.array([res.posterior().get(t, 0.0) for res in results])
        sd = max(est.std(ddof=1), 1.0 / (n * math.sqrt(r)))
        tol = z * sd / math.sqrt(r) + bias_scale / n
        if abs(est.mean() - exact.posterior[t]) > tol:
            bad.append(f"{t!r}: estimate {est.mean():.4f} vs exact {exact.posterior[t]:.4f} (tol {tol:.4f})")
    return bad


def evidence_discrepancy(results, exact: Exact, alpha: float = 1e-4) -> str | None:
    """Checks unbiasedness in ``Z``: the mean of ``Z_hat / Z`` over replicates is within a CLT
    bound of 1 (``z * sd / sqrt(R)``, sd of the replicates' ``Z_hat / Z``). Returns a failure
    message or None."""
    ratios = np.exp(np.array([res.log_evidence for res in results]) - exact.log_evidence)
    r = len(ratios)
    sd = max(ratios.std(ddof=1), 1e-3)
    tol = _z(alpha) * sd / math.sqrt(r)
    if abs(ratios.mean() - 1.0) > tol:
        return f"mean Z_hat/Z = {ratios.mean():.4f}, outside 1 ± {tol:.4f} (sd {sd:.4f}, R={r})"
    return None
