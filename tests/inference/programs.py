"""Small programs over bigram LMs shared by the MCMC / VI / rejuvenation tests, and the
batch-means check MCMC tests use.

Tolerance for MCMC (``chain_discrepancies``): ``C`` independent chains (vmapped, different
keys) each give a time-average estimate ``p_c`` of a text's probability from its kept states.
The ``p_c`` are i.i.d., so their mean has standard error ``sd(p_c) / sqrt(C)`` whatever the
autocorrelation inside a chain (batch means with one batch per chain); ``z`` is the normal
quantile at the declared false-failure rate, Bonferroni-corrected over the texts compared.
Each chain starts from an SMC sample (with 4 particles: already close to ``pi``), not from
the posterior, which adds a burn-in bias to ``p_c`` of at most ``Σ_s TV(law(x_s), pi) / L``
over the ``L`` kept states; for a geometrically ergodic kernel with
``TV(law(x_s), pi) <= TV_0 rho^s`` that is ``<= TV_0 / ((1 - rho) L)``, and we allow
``bias_scale / L`` with ``bias_scale = 4`` (``rho <= 0.75`` even with ``TV_0 = 1``, after the
discarded burn-in). This allowance is a stated assumption on mixing, not a proven bound; the
kernel-level invariance tests (particle Gibbs, rejuvenation) need no such assumption.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

import ppl
from ppl.testing import _z

EOS = 3


class Rare(ppl.Program):
    """The prior is a poor proposal: at least three 'c' tokens (posterior mass ~1% for seed 3)."""

    max_tokens = 6

    def init(self, ctx):
        return jnp.int32(0)

    def step(self, ctx, n_c):
        tok = ctx.sample(ctx.lm.next_token())
        n_c = n_c + (tok == 2)
        ctx.finish_if(tok == EOS)
        return n_c

    def final(self, ctx, n_c):
        ctx.condition(n_c >= 3, name="three c")


class Soft(ppl.Program):
    """A soft preference only (every sequence has positive weight): the ELBO is finite."""

    max_tokens = 4

    def step(self, ctx, s):
        p = ctx.lm.next_token()
        tok = ctx.sample(p)
        ctx.factor(1.5 * (tok == 2))
        ctx.finish_if(tok == EOS)
        return s


class WithLatent(ppl.Program):
    """Draws a continuous latent in init: replaying backends must refuse it."""

    max_tokens = 2

    def init(self, ctx):
        import numpyro.distributions as dist

        return ctx.sample(dist.Normal(0.0, 1.0))

    def step(self, ctx, z):
        ctx.sample(ctx.lm.next_token())
        ctx.factor(z)
        return z


def chain_discrepancies(res, exact, alpha: float = 1e-4, min_prob: float = 0.02,
                        bias_scale: float = 4.0) -> list[str]:
    """Batch-means comparison of an MCMC Result (``chains`` > 1) with the exact posterior."""
    chain = res.extras["chain_index"]
    ids = np.unique(chain)
    c = len(ids)
    kept = int(np.sum(chain == ids[0]))
    texts = [t for t, p in exact.posterior.items() if p >= min_prob]
    z = _z(alpha / max(len(texts), 1))
    arr = np.array(res.texts, dtype=object)
    bad = []
    for t in texts:
        est = np.array([np.mean(arr[chain == i] == t) for i in ids])
        sd = max(est.std(ddof=1), 1.0 / (kept * math.sqrt(c)))
        tol = z * sd / math.sqrt(c) + bias_scale / kept
        if abs(est.mean() - exact.posterior[t]) > tol:
            bad.append(f"{t!r}: {est.mean():.4f} vs exact {exact.posterior[t]:.4f} (tol {tol:.4f})")
    return bad


def sample_exact(exact, num: int, seed: int = 0):
    """``num`` i.i.d. token sequences from the exact posterior, as padded arrays."""
    seqs = list(exact.sequences)
    probs = np.array([exact.sequences[s] for s in seqs])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(seqs), size=num, p=probs / probs.sum())
    t_max = max(len(s) for s in seqs)
    tokens = np.zeros((num, t_max), np.int32)
    lengths = np.zeros(num, np.int32)
    for r, i in enumerate(pick):
        tokens[r, : len(seqs[i])] = seqs[i]
        lengths[r] = len(seqs[i])
    return tokens, lengths


def histogram_discrepancies(tokens, lengths, exact, alpha: float = 1e-4, min_prob: float = 0.02):
    """i.i.d. samples vs the exact sequence probabilities (binomial CLT per sequence)."""
    n = len(lengths)
    counts: dict = {}
    for row, k in zip(np.asarray(tokens), np.asarray(lengths)):
        s = tuple(int(x) for x in row[:k])
        counts[s] = counts.get(s, 0) + 1
    seqs = [s for s, p in exact.sequences.items() if p >= min_prob]
    z = _z(alpha / max(len(seqs), 1))
    bad = []
    for s in seqs:
        p = exact.sequences[s]
        tol = z * math.sqrt(p * (1 - p) / n)
        if abs(counts.get(s, 0) / n - p) > tol:
            bad.append(f"{s}: {counts.get(s, 0) / n:.4f} vs exact {p:.4f} (tol {tol:.4f})")
    return bad


_CACHE: dict = {}


def twisted_and_exact():
    """test_exact's ``Twisted`` program on ``make_bigram(3)`` and its enumeration (computed once
    per session; the MCMC test modules share it)."""
    if "twisted" not in _CACHE:
        from ppl.testing import enumerate_posterior
        from tests.conftest import make_bigram
        from tests.inference.test_exact import Twisted

        prog = Twisted(make_bigram(3), prompt="")
        _CACHE["twisted"] = (prog, enumerate_posterior(prog))
    return _CACHE["twisted"]
