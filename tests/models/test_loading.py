"""``ppl.models.load``: what it accepts, and the messages it gives for what it refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import ppl.models as M
from ppl.models import loading, registry


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, helpers, bpe_tokenizer):
    return helpers.random_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2"), bpe_tokenizer)


def _copy(src, dst, skip=()):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def test_load_returns_a_language_model(gpt2_dir, bpe_tokenizer):
    lm = M.load(gpt2_dir)
    assert isinstance(lm, M.LanguageModel) and isinstance(lm, M.GPT2LM)
    assert lm.vocab_size == len(bpe_tokenizer) == lm.vocab.size
    assert lm.eos_token_id == bpe_tokenizer.eos_token_id
    assert lm.bos_token_id == bpe_tokenizer.bos_token_id
    assert lm.max_context == 64
    assert len(lm.tokenizer) == len(bpe_tokenizer)
    assert lm.name == str(gpt2_dir)
    lp = lm.next_token_logprobs(lm.tokenizer.encode("hello world"))
    assert lp.shape == (lm.vocab_size,) and lp.dtype == np.float32
    assert abs(np.exp(lp).sum() - 1) < 1e-4
    assert lm.vocab.decode(lm.encode(" hello world")) == " hello world"


def test_missing_folder():
    with pytest.raises(ValueError, match="not an existing folder") as e:
        M.load("/nonexistent/folder/of/a/model")
    assert "/nonexistent/folder/of/a/model" in str(e.value)


def test_missing_config(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m", skip={"config.json"})
    with pytest.raises(ValueError, match="config.json is missing"):
        M.load(d)


def test_unsupported_architecture(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture") as e:
        M.load(d)
    msg = str(e.value)
    assert "BertForMaskedLM" in msg
    for arch in ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM",
                 "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM"):
        assert arch in msg


def test_pickle_only_checkpoint_is_refused(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m", skip={"model.safetensors"})
    (d / "pytorch_model.bin").write_bytes(b"not a real pickle, never read")
    with pytest.raises(ValueError, match="pickle") as e:
        M.load(d)
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "safe_serialization=True" in msg


def test_no_weights(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m", skip={"model.safetensors"})
    with pytest.raises(ValueError, match="no model weights"):
        M.load(d)


def test_missing_shard(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m", skip={"model.safetensors"})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(ValueError, match="model-00001-of-00002.safetensors"):
        M.load(d)


def test_missing_tokenizer(tmp_path, gpt2_dir):
    d = _copy(gpt2_dir, tmp_path / "m", skip={"tokenizer.json", "tokenizer_config.json"})
    with pytest.raises(ValueError, match="no tokenizer files"):
        M.load(d)


def test_empty_tokenizer(tmp_path, gpt2_dir):
    from tokenizers import Tokenizer, models

    d = _copy(gpt2_dir, tmp_path / "m", skip={"tokenizer.json", "tokenizer_config.json"})
    Tokenizer(models.BPE()).save(str(d / "tokenizer.json"))
    with pytest.raises(ValueError, match="empty"):
        M.load(d)


def test_missing_tensor(tmp_path, gpt2_dir):
    from safetensors.numpy import load_file, save_file

    d = _copy(gpt2_dir, tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    del state["transformer.ln_f.bias"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="ln_f.bias"):
        M.load(d)


def test_unknown_dtype(gpt2_dir):
    with pytest.raises(ValueError, match="dtype"):
        M.load(gpt2_dir, dtype="float8")


def test_unsupported_rope_type():
    from ppl.models.llama import rope_inv_freq

    cfg = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
           "max_position_embeddings": 64}
    with pytest.raises(ValueError, match="yarn") as e:
        rope_inv_freq(cfg, 16)
    assert "llama3" in str(e.value) and "linear" in str(e.value)


def test_tiny_missing_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "TINY_DIR", tmp_path / "tiny")
    with pytest.raises(ValueError, match="tiny"):
        M.load("tiny")


def test_tiny_is_listed_when_present(monkeypatch, tmp_path, gpt2_dir):
    monkeypatch.setattr(loading, "TINY_DIR", gpt2_dir)
    assert "tiny" in M.available()
    lm = M.load("tiny")
    assert lm.name == "tiny"


def test_hf_cache_name_resolves_offline(monkeypatch, tmp_path, gpt2_dir):
    """A model in the local Hugging Face cache loads by name, without the network."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _copy(gpt2_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(loading, "TINY_DIR", tmp_path / "no-tiny")
    monkeypatch.setenv("PPL_MODELS_DIR", str(tmp_path / "no-named-models"))
    monkeypatch.setattr(registry, "_installed_file", lambda m: None)
    assert M.available() == ["someone/tiny-gpt2"]
    lm = M.load("someone/tiny-gpt2")
    assert isinstance(lm, M.GPT2LM) and lm.name == "someone/tiny-gpt2"
    with pytest.raises(ValueError, match="local Hugging Face cache"):
        M.load("someone/not-cached")
    with pytest.raises(ValueError, match="hf download someone/not-cached"):
        M.load("someone/not-cached")
