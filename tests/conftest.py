"""Shared fixtures and the hypothesis profiles (``ci``: derandomized; ``dev``: more examples)."""

import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    # No shrinking in CI: a failure is reported at once with its reproduce blob (shrinking a
    # compiled-program example can take minutes per test and ran CI past its time limit).
    "ci", derandomize=True, max_examples=12, deadline=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def check_is_log_weights(res, log_ratio, abs_tol=1e-4) -> int:
    """Each particle of the IS result ``res`` whose token sequence is a key of ``log_ratio``
    has that log-weight (``log p - log q``, within ``abs_tol``); any other has -inf. Returns
    how many particles had a finite oracle weight."""
    seen = 0
    for row, n, lw in zip(res.tokens, res.lengths, res.log_weights):
        seq = tuple(int(t) for t in row[:n])
        if seq in log_ratio:
            assert lw == pytest.approx(log_ratio[seq], abs=abs_tol), seq
            seen += 1
        else:
            assert lw == -np.inf, seq
    return seen


def make_bigram(seed: int = 0, v: int = 4, eos: int | None = None, strings=None, scale=1.0):
    import ppl

    rng = np.random.default_rng(seed)
    eos = v - 1 if eos is None else eos
    if strings is None:
        strings = [chr(ord("a") + i) for i in range(v)]
    return ppl.models.NGramLM(rng.normal(size=v) * scale, rng.normal(size=(v, v)) * scale,
                              eos_token_id=eos, token_strings=strings)


@pytest.fixture
def bigram():
    return make_bigram(0)
