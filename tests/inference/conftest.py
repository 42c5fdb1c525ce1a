"""Fixtures the MCMC and rejuvenation tests share: the ``Twisted`` bigram program and its exact
posterior (enumerated once per session by ``programs.twisted_and_exact``)."""

import pytest

from tests.inference.programs import twisted_and_exact


@pytest.fixture(scope="module")
def twisted():
    return twisted_and_exact()[0]


@pytest.fixture(scope="module")
def exact():
    return twisted_and_exact()[1]
