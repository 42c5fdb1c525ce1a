"""Exact oracles: the posterior and evidence of a program by enumeration.

For programs over small vocabularies (typically an [NGramLM][ppl.models.NGramLM]) and short
``max_tokens``, `enumerate_posterior` visits every token sequence the program can
generate and computes its exact target weight

    log pi~(x) = Σ_t [log p(x_t | x_<t) + factors_t] + final factors   (-inf if a condition fails)

by *replaying* the program with each token forced: ``ctx.sample(p, proposal=q)`` returns the
forced token and adds ``log p(x)`` (the [Enumerate][ppl.handlers.Enumerate] draw handler: the
proposal only matters to samplers, not to the target); twists cancel as they do in the
samplers. ``Z = Σ_x pi~(x)``.

Use it to test your own programs: compare ``ppl.infer(...).posterior()`` and
``log_evidence`` with the oracle, with tolerances from `tv_tolerance` and friends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from ppl import handlers
from ppl.inference import engine as E
from ppl.models.base import LanguageModel

__all__ = [
    "Exact",
    "enumerate_posterior",
    "total_variation",
    "binomial_tolerance",
    "evidence_tolerance",
    "evidence_discrepancy",
    "rank_uniformity_discrepancy",
    "sbc_ranks",
    "posterior_discrepancies",
    "replicate",
    "t_quantile",
    "mean_discrepancy",
    "decrease_discrepancy",
    "sequences",
    "gamma_discrepancies",
    "resampling_discrepancies",
    "run_or_none",
    "TrigramLM",
    "toy_program_tables",
    "toy_program",
    "ToyExact",
    "toy_exact",
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
    parts, kv = E.init_population(key, setup, params, 1)
    # Host-side frontier of live prefixes: particle arrays with a leading axis.
    finished_tokens, finished_len, finished_logw, finished_state = [], [], [], []

    def expand(parts, logprobs):
        m = parts.logw.shape[0]
        rep = lambda x: jnp.repeat(x, v, axis=0)  # noqa: E731
        cand = jax.tree.map(rep, parts)
        forced = jnp.tile(jnp.arange(v, dtype=jnp.int32), m)
        lps = rep(logprobs)

        def one(state, tokens, length, logw, twist, done, cause, lp, x):
            ctx = E.context(setup, key, logprobs=lp, tokens=tokens, length=length, t=length,
                            handler=handlers.Enumerate(x))
            return E.apply_step(setup, ctx, state, tokens, length, logw, twist, done, cause)

        out, toks = jax.vmap(one)(cand.state, cand.tokens, cand.length, cand.logw, cand.twist,
                                  cand.done, cand.cause, lps, forced)
        return out, toks

    expand_jit = jax.jit(expand)

    def advance(parts_old_len, kv, toks, active):
        return E.advance_lm(setup, params, kv, toks, parts_old_len, active)

    advance_jit = jax.jit(advance)
    frontier, fr_lm = parts, kv
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
            crow = E.cache_rows(setup, rows)
            sub_lm = E.KVState(jax.tree.map(lambda x: jnp.take(x, crow, axis=0), fr_lm.cache),
                               fr_lm.logprobs[rows], fr_lm.nan, prefix=fr_lm.prefix)
            old_len = jnp.repeat(sub.length, v)
            new_lm = advance_jit(old_len, sub_lm, toks, ~out.done)
            outs.append(out)
            lms.append(new_lm)
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *outs)
        new_lm = E.KVState(
            jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *[x.cache for x in lms]),
            jnp.concatenate([x.logprobs for x in lms], 0),
            jnp.any(jnp.stack([x.nan for x in lms])), prefix=fr_lm.prefix)
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
        crow = np.asarray(E.cache_rows(setup, jnp.asarray(keep, jnp.int32)))
        fr_lm = E.KVState(jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[crow]), new_lm.cache),
                          jnp.asarray(np.asarray(new_lm.logprobs)[keep]), new_lm.nan,
                          prefix=new_lm.prefix)

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
    fin_parts = E.apply_final(key, setup, fin_parts)
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
            post[setup.decode_text(row[:n])] += p
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


# ---------------------------------------------------------------------------------------------
# Statistical checks with a declared false-failure rate (used by tests/properties).
# ---------------------------------------------------------------------------------------------


def t_quantile(alpha: float, df: int) -> float:
    """Two-sided Student-t quantile: ``P(|T_df| > q) = alpha``."""
    from scipy import stats

    return float(stats.t.ppf(1.0 - alpha / 2.0, df))


def mean_discrepancy(samples, target: float, alpha: float = 1e-4, float_tol: float = 0.0,
                     what: str = "mean") -> str | None:
    """One-sample t-test that ``E[samples] == target`` at false-failure rate ``alpha``.

    The half-width is ``t_{alpha, R-1} * sd / sqrt(R) + float_tol``, with ``sd`` the samples'
    standard deviation and ``float_tol`` a bound on floating-point error (not a statistical
    slack). Returns a failure message, or None when the mean is within the bound.
    """
    x = np.asarray(samples, np.float64)
    r = x.size
    sd = float(x.std(ddof=1)) if r > 1 else 0.0
    tol = t_quantile(alpha, max(r - 1, 1)) * sd / math.sqrt(r) + float_tol
    if not np.all(np.isfinite(x)) or abs(x.mean() - target) > tol:
        return f"{what}: {x.mean():.6g} vs exact {target:.6g}, outside ± {tol:.3g} (sd {sd:.3g}, R={r})"
    return None


def decrease_discrepancy(larger, smaller, alpha: float = 1e-4, what: str = "value") -> str | None:
    """One-sided Welch test that ``E[larger] > E[smaller]``; a message when it is not shown.

    The failure rate under a real decrease depends on its size (the test's power); callers
    choose sample sizes so that the expected statistic is far above the critical value.
    """
    a, b = np.asarray(larger, np.float64), np.asarray(smaller, np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(max(va + vb, 1e-300))
    df = (va + vb) ** 2 / max(va**2 / (a.size - 1) + vb**2 / (b.size - 1), 1e-300)
    from scipy import stats

    crit = float(stats.t.ppf(1.0 - alpha, df))
    stat = (a.mean() - b.mean()) / se
    if not stat > crit:
        return (f"{what} did not decrease: {a.mean():.4g} -> {b.mean():.4g} "
                f"(Welch t = {stat:.2f} <= {crit:.2f})")
    return None


def sequences(result) -> list[tuple]:
    """The token tuples of a [Result][ppl.Result] (EOS included when drawn)."""
    return [tuple(int(t) for t in row[:n]) for row, n in zip(result.tokens, result.lengths)]


def gamma_discrepancies(results, exact_log_weights: dict, features: dict,
                        alpha: float = 1e-4) -> list[str]:
    """Unbiasedness of weighted expectations: for each feature ``f`` (token tuple -> [0, 1]) the
    replicates' ``mean_i exp(logw_i - log Z) f(x_i)`` must average to ``E_pi[f]``.

    ``mean_i exp(logw_i) f(x_i)`` estimates ``Z * E_pi[f]`` without bias under IS, SMC (weights
    reset to their mean at resampling) and SMC-steer (weight-preserving resampling), so the
    comparison needs no slack for self-normalisation bias. ``results`` may contain None for a
    run in which every particle died (its estimate is 0). One t-test per feature at
    ``alpha / #features`` (Bonferroni); the float32 term is ``1e-5`` relative.
    """
    lw_exact = np.array([w for w in exact_log_weights.values() if np.isfinite(w)], np.float64)
    log_z = float(np.log(np.sum(np.exp(lw_exact - lw_exact.max()))) + lw_exact.max())
    probs = {s: math.exp(w - log_z) for s, w in exact_log_weights.items() if np.isfinite(w)}
    runs = []
    for res in results:
        if res is None:
            runs.append((np.zeros(0), []))
        else:
            lw = np.asarray(res.log_weights, np.float64)
            runs.append((np.where(np.isfinite(lw), np.exp(np.minimum(lw - log_z, 700.0)), 0.0),
                         sequences(res)))
    bad = []
    a = alpha / max(len(features), 1)
    for name, f in features.items():
        target = sum(p * f(s) for s, p in probs.items())
        est = [float(np.mean(w * np.array([f(s) for s in seqs], np.float64))) if len(seqs) else 0.0
               for w, seqs in runs]
        msg = mean_discrepancy(est, target, a, float_tol=1e-5 * max(abs(target), 1e-3), what=name)
        if msg:
            bad.append(msg)
    return bad


@functools.lru_cache(maxsize=64)
def _vmapped_resampler(resample_fn, num_samples: int):
    return jax.jit(jax.vmap(lambda k, lw: resample_fn(k, lw, num_samples), in_axes=(0, None)))


def resampling_discrepancies(resample_fn, log_weights, num_samples: int, num_keys: int = 4000,
                             seed: int = 0, alpha: float = 1e-4) -> list[str]:
    """Checks a resampler ``(key, log_weights, n) -> indices`` on ``num_keys`` keys (vmapped):
    indices in range, never an index of weight zero, ``n`` of them, and expected counts
    ``n * w_i`` (a t-test per particle at ``alpha / M``, Bonferroni over the ``M`` particles).
    """
    lw = jnp.asarray(log_weights, jnp.float32)
    m = lw.shape[0]
    keys = jax.random.split(jax.random.key(seed), num_keys)
    idx = np.asarray(_vmapped_resampler(resample_fn, num_samples)(keys, lw))
    bad = []
    if idx.shape != (num_keys, num_samples):
        return [f"indices have shape {idx.shape}, expected {(num_keys, num_samples)}"]
    if idx.min() < 0 or idx.max() >= m:
        bad.append(f"indices out of range: [{idx.min()}, {idx.max()}] for {m} particles")
        return bad
    w = np.exp(np.asarray(lw, np.float64) - np.logaddexp.reduce(np.asarray(lw, np.float64)))
    counts = (idx[:, :, None] == np.arange(m)[None, None, :]).sum(axis=1)
    zero = w == 0
    if zero.any() and counts[:, zero].any():
        bad.append("a particle of weight zero was resampled")
    # float32 cumulative sums shift each stratum boundary by at most ~M ulps.
    float_tol = 4.0 * m * np.finfo(np.float32).eps * num_samples
    for i in range(m):
        msg = mean_discrepancy(counts[:, i], num_samples * w[i], alpha / m, float_tol,
                               what=f"count of particle {i} (w={w[i]:.4f})")
        if msg:
            bad.append(msg)
    return bad


def run_or_none(program, method: str, particles: int, seed, **options):
    """``ppl.infer(...)``, or None when every particle died (``InferenceError``: ``Z_hat = 0``)."""
    from ppl.api import infer
    from ppl.result import InferenceError

    try:
        return infer(program, method=method, particles=particles, seed=seed, **options)
    except InferenceError as e:
        if "NaN" in str(e):
            raise
        return None


# ---------------------------------------------------------------------------------------------
# A toy program family whose every random ingredient is a value (tests reuse one compilation).
# ---------------------------------------------------------------------------------------------


class TrigramLM(LanguageModel):
    """An exact second-order LM: ``p(x_1) = first``, ``p(x_2 | x_1) = trans[V, x_1]``,
    ``p(x_t | x_{t-2}, x_{t-1}) = trans[x_{t-2}, x_{t-1}]``.

    Unlike [NGramLM][ppl.models.NGramLM] its cache matters: it holds the last token fed, which
    the next ``decode`` needs, so a wrong KV-cache gather after resampling changes the
    next-token distribution (as it would in a transformer). ``params`` is
    ``{"lm": {"first": [V], "trans": [V+1, V, V]}, "program": {...}}``; the ``program`` entry
    holds tables of `ToyProgram`. Replace ``params`` with same-shaped arrays
    (`make_params`) to change the model without recompiling.
    """

    def __init__(self, params, eos_token_id: int, token_strings=None, max_context: int = 4096):
        from ppl.models.base import Vocab
        from ppl.models.ngram import _ListTokenizer

        v = int(np.shape(params["lm"]["first"])[0])
        strings = list(token_strings) if token_strings is not None else [chr(97 + i) for i in range(v)]
        strings[eos_token_id] = ""
        self.vocab_size = v
        self.eos_token_id = int(eos_token_id)
        self.bos_token_id = v
        self.max_context = int(max_context)
        self.name = "TrigramLM"
        self.params = params
        self.vocab = Vocab.from_bytes([x.encode() for x in strings], eos_token_id)
        self.tokenizer = _ListTokenizer(strings, {eos_token_id})

    @staticmethod
    def make_params(first_logits, trans_logits, program_tables=None) -> dict:
        """Normalised parameters from unnormalised log-weights (``-inf`` allowed)."""
        first = jax.nn.log_softmax(jnp.asarray(first_logits, jnp.float32))
        trans = jax.nn.log_softmax(jnp.asarray(trans_logits, jnp.float32), axis=-1)
        out = {"lm": {"first": first, "trans": trans}}
        out["program"] = {} if program_tables is None else jax.tree.map(jnp.asarray, program_tables)
        return out

    def prompt_ids(self, prompt) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        return ids or [self.bos_token_id]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode_text(self, ids) -> str:
        return self.vocab.decode(ids)

    def init_cache_bytes(self, max_len: int) -> int:
        return 4

    def _row(self, params, prev, last):
        v = self.vocab_size
        first = params["lm"]["first"]
        row = params["lm"]["trans"][jnp.clip(prev, 0, v), jnp.clip(last, 0, v - 1)]
        return jnp.where((last == self.bos_token_id)[..., None], first, row)

    def prefill(self, params, prompt_ids, max_len, length=None):
        ids = jnp.asarray(prompt_ids, jnp.int32)
        n = ids.shape[0] if length is None else length
        last = jax.lax.dynamic_index_in_dim(ids, n - 1, 0, False)
        prev = jnp.where(n >= 2, jax.lax.dynamic_index_in_dim(ids, jnp.maximum(n - 2, 0), 0, False),
                         self.vocab_size)
        prev = jnp.where(prev == self.bos_token_id, self.vocab_size, prev)
        lp = self._row(params, prev, last)
        fed = jnp.where(last == self.bos_token_id, self.vocab_size, last)
        return {"prev": fed[None]}, lp

    def decode_step(self, params, cache, tokens, positions):
        tokens = jnp.asarray(tokens, jnp.int32)
        return {"prev": tokens}, self._row(params, cache["prev"], tokens)

    def logprob_row(self, prefix) -> np.ndarray:
        """Host-side ``log p(. | prefix)`` (empty prompt), for oracles."""
        first = np.asarray(self.params["lm"]["first"], np.float64)
        trans = np.asarray(self.params["lm"]["trans"], np.float64)
        if len(prefix) == 0:
            return first
        prev = self.vocab_size if len(prefix) == 1 else prefix[-2]
        return trans[prev, prefix[-1]]


def toy_program_tables(num_states: int, vocab_size: int, eos_token_id: int, *, transitions=None,
                       accepting=None, temperature=1.0, bias=None, token_factor=None,
                       twist=None) -> dict:
    """The value tables `ToyProgram` reads from ``lm.params["program"]``.

    ``transitions`` (``int32[S, V]``) follows [TokenAutomaton][ppl.stdlib.base.TokenAutomaton]'s
    conventions, which this function enforces: state 0 is dead (row 0 all 0, not accepting) and
    EOS leads to the dead state (its acceptance is read from ``accepting``). The start state is 1.
    Defaults: every text accepted, prior proposal, no factors, no twist.
    """
    s, v = num_states, vocab_size
    tr = np.ones((s, v), np.int32) if transitions is None else np.array(transitions, np.int32)
    tr[0, :] = 0
    tr[:, eos_token_id] = 0
    acc = np.ones(s, bool) if accepting is None else np.array(accepting, bool)
    acc[0] = False
    live = np.any(tr != 0, axis=1)
    return {
        "transitions": tr,
        "accepting": acc,
        "final": acc & ~live,
        "temperature": np.float32(temperature),
        "bias": np.zeros((s, v), np.float32) if bias is None else np.asarray(bias, np.float32),
        "token_factor": np.zeros(v, np.float32) if token_factor is None else np.asarray(token_factor, np.float32),
        "twist": np.zeros(s, np.float32) if twist is None else np.asarray(twist, np.float32),
    }


def _automaton(tables, eos):
    """A [TokenAutomaton][ppl.stdlib.base.TokenAutomaton] over (possibly traced) tables.

    ``__post_init__`` derives host-side tables with numpy, which traced values cannot feed, so
    the instance is assembled field by field; derived fields the toy program does not use
    stay at their defaults.
    """
    from ppl.stdlib.base import TokenAutomaton

    a = object.__new__(TokenAutomaton)
    for f in dataclasses.fields(TokenAutomaton):
        default = None if f.default is dataclasses.MISSING else f.default
        object.__setattr__(a, f.name, tables.get(f.name, default))
    for name, value in (("start", 1), ("eos_token_id", eos), ("eos_token_ids", (eos,)),
                        ("name", "automaton")):
        object.__setattr__(a, name, value)
    return a


def toy_program(lm: TrigramLM, max_tokens: int, predicate=None, potential=None,
                proposal_lm=None, proposal_floor: float = 0.3):
    """A program exercising every primitive, with all its numbers read from ``lm.params``:

    * proposal ``q ∝ exp(log p / temperature + bias[s])`` masked by a random
      [TokenAutomaton][ppl.stdlib.base.TokenAutomaton] (state ``s``), as ``steer`` masks constraints;
    * ``condition`` on the automaton (alive at each step, accepting at the end);
    * ``factor(token_factor[x])`` per token; ``twist(twist[s])`` per step;
    * optional host ``predicate(text) -> bool`` (condition) and ``potential(text) -> float``
      (factor) in ``final`` through ``ctx.text``. They are looked up at run time
      (``program.predicate`` / ``program.potential`` may be reassigned), but whether each is
      present is fixed at construction;
    * optional ``proposal_lm`` (another `TrigramLM`, empty prompt): tokens are drawn from
      ``(1 - proposal_floor) r + proposal_floor q``, ``r`` its next-token distribution, both
      masked alike ([LMProposal][ppl.proposal_lm.LMProposal]; its cache is in the state, so
      resampling must fork it). The program's ``lm`` is then the
      [PairedLM][ppl.proposal_lm.PairedLM] and its tables are read from
      ``lm.params["lm"]["program"]``.

    Target: ``p_LM(x) exp(Σ token_factor[x_t] + potential(text)) 1[automaton accepts]
    1[predicate(text)]``; `toy_exact` computes it independently in numpy.
    """
    from ppl.program import Program
    from ppl.proposal_lm import LMProposal, PairedLM

    eos = lm.eos_token_id

    class _Toy(Program):
        # Read on the host at run time only (inside ctx.text), so new functions assigned to
        # them reuse the compiled run (see ppl.inference.executables).
        host_attributes = ("predicate", "potential")

        def _tables(self):
            params = self.lm.params
            return params["lm"]["program"] if self.guide is not None else params["program"]

        def init(self, ctx):
            if self.guide is not None:
                return jnp.int32(1), self.guide.init()
            return jnp.int32(1)

        def step(self, ctx, s):
            g = None
            if self.guide is not None:
                s, g = s
            tab = self._tables()
            a = _automaton(tab, eos)
            p = ctx.lm.next_token()
            q = p.temper(tab["temperature"]).add(tab["bias"][s])
            mask = a.allowed(s)
            last_ok = a.accepting[a.transitions[s]].at[eos].set(a.accepting[s])
            mask = jnp.where(ctx.is_last, mask & last_ok, mask)
            prop = q.mask(mask) if g is None else self.guide.proposal(g, q, mask)
            tok = ctx.sample(p, proposal=prop)
            s2 = a.advance(s, tok)
            ctx.condition(a.alive(s2), name="automaton")
            ctx.factor(tab["token_factor"][tok])
            ctx.twist(tab["twist"][s2])
            ctx.finish_if(tok == eos)
            return s2 if g is None else (s2, self.guide.advance(g, tok, ctx.length))

        def final(self, ctx, s):
            if self.guide is not None:
                s = s[0]
            tab = self._tables()
            ctx.condition(tab["accepting"][s], name="automaton")
            if self.has_predicate:
                ctx.condition(ctx.text(lambda t: bool(self.predicate(t)), dtype=bool),
                              name="predicate")
            if self.has_potential:
                ctx.factor(ctx.text(lambda t: float(self.potential(t))))

    paired = None if proposal_lm is None else PairedLM(lm, proposal_lm)
    prog = _Toy(lm=lm if paired is None else paired, prompt="", max_tokens=max_tokens)
    prog.guide = None if paired is None else LMProposal(paired, "", max_tokens=max_tokens,
                                                        floor=proposal_floor)
    prog.has_predicate = predicate is not None
    prog.has_potential = potential is not None
    prog.predicate = predicate
    prog.potential = potential
    return prog


@dataclasses.dataclass
class ToyExact:
    """Exact target of a `toy_program` (numpy enumeration, independent of the engine).

    Attributes:
        log_evidence: ``log Z``.
        log_weights: ``{token tuple: log pi~(x)}`` for complete sequences of positive weight.
        log_proposal: ``{token tuple: log q(x)}`` the program's proposal probability of each
            complete sequence it can generate (any with positive target weight included).
    """

    log_evidence: float
    log_weights: dict
    log_proposal: dict

    @property
    def posterior(self) -> dict:
        return {s: math.exp(w - self.log_evidence) for s, w in self.log_weights.items()}


def toy_exact(program) -> ToyExact:
    """Enumerates every sequence of a `toy_program` in numpy (no JAX, no engine code)."""
    lm = program.lm
    guide = program.guide
    if guide is not None:  # the proposal model's row r, mixed as (1 - f) r + f q, masked alike
        lm, rlm, f = lm.target, lm.proposal, guide.floor
    tab = jax.tree.map(np.asarray, lm.params["program"])
    v, eos, t_max = lm.vocab_size, lm.eos_token_id, program.max_tokens
    tr, acc = tab["transitions"], tab["accepting"]
    tau, bias, tf = float(tab["temperature"]), tab["bias"].astype(np.float64), tab["token_factor"]
    weights, props = {}, {}

    def visit(seq, s, lp_sum, lq_sum, f_sum):
        lp = lm.logprob_row(seq)
        allowed = tr[s] != 0
        allowed[eos] = acc[s]
        if len(seq) + 1 >= t_max:
            last_ok = acc[tr[s]].copy()
            last_ok[eos] = acc[s]
            allowed &= last_ok
        logits = np.where(allowed, lp / tau + bias[s], -np.inf)
        lq = _log_normalise(logits)
        if guide is not None:
            r = _log_normalise(np.where(allowed, rlm.logprob_row(seq), -np.inf))
            with np.errstate(divide="ignore"):
                lq = _log_normalise(np.logaddexp(np.log1p(-f) + r, np.log(f) + lq))
        for x in range(v):
            s2 = s if (x == eos and acc[s]) else int(tr[s, x])
            new = seq + (x,)
            a_lp, a_lq, a_f = lp_sum + lp[x], lq_sum + lq[x], f_sum + float(tf[x])
            if s2 == 0 or not np.isfinite(lp[x]):
                continue
            if x == eos or len(new) >= t_max:
                if not acc[s2]:
                    continue
                text = lm.vocab.decode(new[:-1] if x == eos else new)
                if program.has_predicate and not program.predicate(text):
                    continue
                pot = float(program.potential(text)) if program.has_potential else 0.0
                weights[new] = a_lp + a_f + pot
                props[new] = a_lq
            else:
                visit(new, s2, a_lp, a_lq, a_f)

    visit((), 1, 0.0, 0.0, 0.0)
    if not weights:
        return ToyExact(-math.inf, {}, {})
    lw = np.array(list(weights.values()))
    log_z = float(lw.max() + np.log(np.sum(np.exp(lw - lw.max()))))
    return ToyExact(log_z, weights, props)


def _log_normalise(logits):
    """``logits - logsumexp(logits)`` (all ``-inf`` stays all ``-inf``)."""
    mx = logits.max()
    if not np.isfinite(mx):
        return np.full_like(logits, -np.inf)
    return logits - (mx + np.log(np.sum(np.exp(logits - mx))))


def sbc_ranks(simulate, posterior_draws, num_replicates: int, num_draws: int, seed: int = 0):
    """Simulation-based calibration ranks (Talts et al.): for programs with continuous latents.

    For each replicate, ``simulate(rng) -> (theta, data)`` draws a latent from the prior and
    data given it; ``posterior_draws(data, replicate) -> array`` returns ``num_draws``
    approximately independent posterior draws of the latent. If inference is exact, the rank
    of ``theta`` among the draws is uniform on ``0..num_draws``.
    """
    rng = np.random.default_rng(seed)
    ranks = []
    for r in range(num_replicates):
        theta, data = simulate(rng)
        draws = np.asarray(posterior_draws(data, r))
        if draws.shape != (num_draws,):
            raise ValueError(f"posterior_draws returned shape {draws.shape}, expected ({num_draws},).")
        ranks.append(int(np.sum(draws < theta)))
    return np.asarray(ranks)


def rank_uniformity_discrepancy(ranks, num_draws: int, bins: int = 5, alpha: float = 1e-4) -> str | None:
    """Chi-square test that SBC ranks (on ``0..num_draws``) are uniform, at false-failure rate
    ``alpha``. ``num_draws + 1`` must be a multiple of ``bins``. Returns a message or None."""
    from scipy.stats import chi2  # scipy ships with jax

    if (num_draws + 1) % bins:
        raise ValueError("num_draws + 1 must be a multiple of bins.")
    counts = np.bincount(np.asarray(ranks) * bins // (num_draws + 1), minlength=bins)
    expected = len(ranks) / bins
    stat = float(((counts - expected) ** 2 / expected).sum())
    crit = float(chi2.ppf(1 - alpha, bins - 1))
    if stat > crit:
        return f"SBC ranks not uniform: chi2 = {stat:.1f} > {crit:.1f} (counts {counts.tolist()})"
    return None
