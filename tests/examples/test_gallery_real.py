"""The real-model gallery: the chat programs and two classics on SmolLM2-135M-Instruct.

``python examples/NAME.py --model smollm2-135m-instruct`` is what the README tells users to
run; this runs the same programs in-process at the files' own settings (slow: ~1 minute each
on a 2-core CPU, mostly compilation of the 30-layer model) and checks what each one shows:
every output with weight satisfies the example's own ``check``, and the chat programs answer
from the conversation (the model's own answers, measured once: every capital right, the JSON
record's name and age right in most of the posterior mass).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import ppl
from ppl.models import registry

NAME = "smollm2-135m-instruct"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_model,
    pytest.mark.skipif(registry.find(NAME) == (None, None), reason=f"ppl models get {NAME}"),
]


def _example(name):
    spec = importlib.util.spec_from_file_location(f"_real_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lm():
    return ppl.models.load(NAME)


def _run(lm, name):
    mod = _example(name)
    res = ppl.infer(mod.make_program(lm), method=mod.METHOD, particles=mod.PARTICLES, seed=0)
    live = [t for t, w in zip(res.texts, res.weights) if w > 0]
    assert live and all(mod.check(t) for t in live), [t for t in live if not mod.check(t)][:3]
    assert np.isfinite(res.log_evidence)
    return mod, res


def test_chat_answer(lm):
    mod, res = _run(lm, "chat_answer")
    rep = mod.report(lm, res)
    assert rep["right"] == f"{len(mod.QUESTIONS)}/{len(mod.QUESTIONS)}", rep


def test_chat_json(lm):
    mod, res = _run(lm, "chat_json")
    rep = mod.report(lm, res)
    assert rep["name right"] > 0.5 and rep["age right"] > 0.5, rep


@pytest.mark.parametrize("name", ["infilling", "regex_date"])
def test_classic_examples(lm, name):
    _run(lm, name)
