"""Result persistence (JSON, no pickle), its notebook view and its repr."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import ppl
from ppl.result import Result
from ppl.stdlib import constraints as C


@pytest.fixture(scope="module")
def smc_result():
    lm = ppl.models.load("tiny")
    program = ppl.steer(lm, "The king said", constraints=[C.max_word_length(3)], max_tokens=6)
    return ppl.infer(program, method="smc", particles=6, seed=3, ess_threshold=0.7)


def test_save_load_round_trip_is_equal(smc_result, tmp_path):
    path = smc_result.save(tmp_path / "run.json")
    back = Result.load(path)
    assert back == smc_result
    assert back.texts == smc_result.texts
    np.testing.assert_array_equal(back.tokens, smc_result.tokens)
    assert back.tokens.dtype == smc_result.tokens.dtype
    np.testing.assert_array_equal(back.ancestors, smc_result.ancestors)
    assert back.posterior() == smc_result.posterior()
    assert back.seed == 3 and back.options["ess_threshold"] == 0.7
    assert back.version == ppl.__version__ and back.method == "smc"
    assert set(back.timings) >= {"compile", "run", "total"}
    # ppl.Result.load is the public spelling
    assert ppl.Result.load(path) == smc_result


def test_saved_file_is_plain_json_without_nan(smc_result, tmp_path):
    path = smc_result.save(tmp_path / "run.json")
    raw = path.read_text()
    data = json.loads(raw)  # strict JSON: NaN/Infinity would be refused by other readers
    assert "NaN" not in raw and "Infinity" not in raw
    assert data["format"] == "steerppl.Result/1"
    assert data["texts"] == smc_result.texts
    assert smc_result.to_dict()["texts"] == smc_result.texts


def test_non_finite_values_and_key_seeds_survive(tmp_path):
    r = Result(method="is", tokens=np.zeros((2, 3), np.int32), lengths=np.array([1, 2], np.int32),
               texts=["a", "b"], log_weights=np.array([-np.inf, 0.0]), weights=np.array([0.0, 1.0]),
               log_evidence=-np.inf, ess=np.array([np.nan, 1.0]), ancestors=np.zeros((2, 2), np.int32),
               resampled=np.array([False, True]), timings={"total": 1.0}, num_steps=2,
               extras={"pair": (1, 2.5), 7: "int key", "nested": {"x": np.float32(1.5)}})
    back = Result.load(r.save(tmp_path / "r.json"))
    assert back == r
    assert back.log_evidence == -np.inf and back.log_weights[0] == -np.inf
    assert back.extras[7] == "int key" and back.extras["pair"] == (1, 2.5)


def test_key_seed_is_recorded():
    lm = ppl.models.load("tiny")
    program = ppl.steer(lm, "The", max_tokens=2)
    res = ppl.infer(program, method="is", particles=2, seed=jax.random.key(5))
    assert res.seed == np.asarray(jax.random.key_data(jax.random.key(5))).tolist()


def test_load_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a saved steerppl Result"):
        Result.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="not a saved steerppl Result"):
        Result.load(tmp_path / "y.json")


def test_repr_and_html(smc_result):
    text = repr(smc_result)
    assert text.startswith("Result(method='smc', particles=6")
    assert "log_evidence=" in text and "top={" in text and len(text) < 400
    page = smc_result._repr_html_()
    top_text, top_p = next(iter(smc_result.posterior().items()))
    assert f"{top_p:.4f}" in page
    assert "<svg" in page and "polyline" in page  # the ESS sparkline
    assert "write_trace" in page
    assert "log evidence" in page


def test_infer_many_records_each_problems_seed_and_options(tmp_path):
    lm = ppl.models.load("tiny")
    program = ppl.steer(lm, "The", max_tokens=3)
    results = ppl.infer_many(program, method="smc", particles=2, seed=10,
                             prompts=["The king", "And he"], ess_threshold=0.3)
    assert [r.seed for r in results] == [10, 11]
    assert all(r.options["ess_threshold"] == 0.3 for r in results)
    back = Result.load(results[1].save(tmp_path / "b.json"))
    assert back == results[1] and back.seed == 11
