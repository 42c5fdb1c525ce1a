"""Checkpoints that do not hold together, and the messages ``ppl.models.load`` gives for them.

Each case is a mistake a user meets with real files (a config from another model, a truncated
download, a tokenizer from a bigger vocabulary, ...). Before these checks, most of them loaded
silently and ran wrong (ids clamped into range, sliding windows ignored) or failed deep inside
a library. Every message names the file or tensor, the two values that disagree and the fix.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import ppl.models as M


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, helpers, bpe_tokenizer):
    return helpers.random_checkpoint("llama", tmp_path_factory.mktemp("llama"), bpe_tokenizer)


@pytest.fixture(scope="module")
def llama(llama_dir):
    return M.load(llama_dir)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# ---- token ids ----------------------------------------------------------------------------
@pytest.mark.parametrize("prompt,bad,pos", [([5, 99999], 99999, 1), ([-1], -1, 0), ([300], 300, 0)])
def test_prompt_ids_out_of_range_are_refused(llama, prompt, bad, pos):
    with pytest.raises(ValueError) as e:
        llama.prompt_ids(prompt)
    assert str(e.value) == (f"{llama.name}: prompt token id {bad} (position {pos}) is outside the "
                            "vocabulary: valid ids are 0..299.")
    with pytest.raises(ValueError, match="valid ids are 0..299"):
        llama.next_token_logprobs(prompt)


@pytest.mark.parametrize("prompt", [[1.5], [True], [[1, 2]], ["7"]])
def test_prompt_entries_that_are_not_ids_are_refused(llama, prompt):
    with pytest.raises(TypeError, match="a prompt is a string or a flat sequence of integer token ids"):
        llama.prompt_ids(prompt)


def test_valid_id_prompts_pass_through(llama):
    assert llama.prompt_ids([0, 299]) == [0, 299]
    assert llama.prompt_ids(np.array([3, 4], np.int64)) == [3, 4]


def test_tokenizer_bigger_than_the_embedding(tmp_path, helpers):
    """A 4096-id tokenizer (the embedded model's) on a checkpoint with 1000 embedding rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(M.loading.TINY_DIR))
    assert len(tok) == 4096
    d = helpers.random_checkpoint("llama", tmp_path / "m", tok, vocab_size=1000)
    with pytest.raises(ValueError) as e:
        M.load(d)
    assert str(e.value) == (
        f"{d}: the tokenizer has 4096 ids but the model's embedding has 1000 rows (config.json "
        "vocab_size): ids 1000..4095 have no weights. The tokenizer files do not belong to this "
        "checkpoint.")


@pytest.mark.parametrize("where", ["config.json", "generation_config.json"])
def test_eos_id_outside_the_vocabulary(tmp_path, llama_dir, where):
    d = _copy(llama_dir, tmp_path / "m")
    if where == "config.json":
        _edit_config(d, eos_token_id=99999)
    else:
        (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 99999]}))
    with pytest.raises(ValueError) as e:
        M.load(d)
    assert str(e.value).startswith(
        f"{d}: the EOS token id 99999 (from the config, generation config or tokenizer) is outside "
        "the model's vocabulary of 300 ids (0..299); no particle could end with it.")


# ---- config vs weights --------------------------------------------------------------------
def test_layer_count_disagrees_with_the_weights(tmp_path, helpers, bpe_tokenizer):
    d = helpers.random_checkpoint("llama", tmp_path / "m", bpe_tokenizer, num_hidden_layers=4)
    _edit_config(d, num_hidden_layers=2)
    with pytest.raises(ValueError) as e:
        M.load(d)
    assert str(e.value) == (
        "Llama checkpoint: config.json says num_hidden_layers=2 layers but the weights hold 4 "
        "(numbered 0..3). The config does not belong to these weights: fix num_hidden_layers in "
        "config.json or use the config that was saved with them.")


def test_gpt2_layer_count_disagrees(tmp_path, helpers, bpe_tokenizer):
    d = helpers.random_checkpoint("gpt2", tmp_path / "m", bpe_tokenizer, n_layer=3)
    _edit_config(d, n_layer=4)
    with pytest.raises(ValueError, match=r"says n_layer=4 layers but the weights hold 3 \(numbered 0..2\)"):
        M.load(d)


def test_tensor_of_the_wrong_shape(tmp_path, llama_dir):
    from safetensors.numpy import load_file, save_file

    d = _copy(llama_dir, tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"] = np.zeros((80, 64), np.float32)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        M.load(d)
    assert str(e.value) == (
        "Llama checkpoint: tensor 'model.layers.1.mlp.up_proj.weight' has shape (80, 64) but "
        "config.json implies (96, 64) (intermediate_size, hidden_size). The weights and the config "
        "do not match.")


def test_mistral_relabelled_llama_is_refused(tmp_path, helpers, bpe_tokenizer):
    """Llama has no sliding window: loading a windowed checkpoint as Llama would attend past it."""
    d = helpers.random_checkpoint("llama", tmp_path / "m", bpe_tokenizer, sliding_window=16)
    assert json.loads((d / "config.json").read_text())["sliding_window"] == 16
    with pytest.raises(ValueError) as e:
        M.load(d)
    msg = str(e.value)
    assert msg.startswith("Llama: config.json sets sliding_window=16, but architecture Llama has no "
                          "sliding-window attention")
    assert '"architectures": ["MistralForCausalLM"]' in msg and '"model_type": "mistral"' in msg
    # Relabelled correctly, it loads with the window on every layer.
    _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral")
    lm = M.load(d)
    assert lm.family.name == "mistral" and list(lm.layer_windows) == [16, 16]


def test_window_at_least_the_context_is_harmless(tmp_path, helpers, bpe_tokenizer):
    d = helpers.random_checkpoint("llama", tmp_path / "m", bpe_tokenizer, sliding_window=64)
    assert M.load(d).family.name == "llama"


# ---- broken files -------------------------------------------------------------------------
def _good_bytes(llama_dir):
    return (llama_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "pickle", "corrupted header"])
def test_invalid_safetensors_files(tmp_path, llama_dir, kind):
    d = _copy(llama_dir, tmp_path / "m")
    f = d / "model.safetensors"
    good = _good_bytes(llama_dir)
    data = {
        "truncated": good[: len(good) // 2],
        "zero-byte": b"",
        "pickle": pickle.dumps({"model.embed_tokens.weight": [0.0] * 10}),
        "corrupted header": good[:8] + b"{" + b"\x00" * 30 + good[39:],
    }[kind]
    f.write_bytes(data)
    with pytest.raises(ValueError) as e:
        M.load(d)
    msg = str(e.value)
    assert msg.startswith(f"{f}: not a valid safetensors file (")
    assert f"; {len(data)} bytes). It is truncated, corrupted, or another format" in msg
    assert "Download or save it again." in msg


def test_invalid_config_json(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path / "m")
    (d / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64\n  "x": 1\n}')
    with pytest.raises(ValueError) as e:
        M.load(d)
    assert str(e.value) == (f"{d / 'config.json'}: invalid JSON at line 4, column 3 (character 49): "
                            "Expecting ',' delimiter. Fix the file or download it again.")


def test_invalid_generation_config_json(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path / "m")
    (d / "generation_config.json").write_text('{"eos_token_id": [1, 2,]}')
    with pytest.raises(ValueError, match=r"generation_config.json: invalid JSON at line 1, column 24"):
        M.load(d)


# ---- dtypes -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,shown", [(jnp.int32, "int32"), (np.int8, "int8"), ("int32", None),
                                         (jnp.bool_, "bool")])
def test_non_float_dtypes_are_refused(llama_dir, dtype, shown):
    with pytest.raises(ValueError) as e:
        M.load(llama_dir, dtype=dtype)
    msg = str(e.value)
    assert "float32, bfloat16, float16 (or 'auto')" in msg
    if shown:
        assert msg.startswith(f"load: dtype {shown} cannot hold model weights")
    else:
        assert msg.startswith("load: unknown dtype 'int32'")


@pytest.mark.parametrize("dtype,expect", [(jnp.bfloat16, "bfloat16"), (np.float32, "float32"),
                                          ("fp16", "float16"), (None, "float32"), ("auto", "float32")])
def test_float_dtypes_and_cpu_default(llama_dir, dtype, expect):
    lm = M.load(llama_dir, dtype=dtype)
    assert np.dtype(lm.dtype).name == expect
    assert lm.next_token_logprobs([1, 2]).dtype == np.float32


def test_auto_dtype_is_the_checkpoints_on_accelerators(monkeypatch):
    import jax

    from ppl.models.loading import resolve_dtype

    assert resolve_dtype(None, {"dtype": "bfloat16"}) == jnp.float32  # CPU here
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_dtype(None, {"dtype": "bfloat16"}) == jnp.bfloat16
    assert resolve_dtype("auto", {"torch_dtype": "float16"}) == jnp.float16
    assert resolve_dtype(None, {}) == jnp.float32
    assert resolve_dtype("float32", {"dtype": "bfloat16"}) == jnp.float32


# ---- imports ------------------------------------------------------------------------------
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"})


def test_import_ppl_does_not_import_transformers_or_model_backends():
    r = _run("import sys, ppl; print(sorted(m for m in ('transformers', 'torch', 'gguf', 'jinja2', "
             "'huggingface_hub', 'safetensors') if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_no_pytorch_warning_on_load(llama_dir):
    """With torch hidden from transformers, loading prints no "PyTorch was not found" advice
    (while importing transformers directly does, so the check is not vacuous)."""
    hide = "import sys; sys.modules['torch'] = None; "
    r = _run(hide + "import transformers")
    assert "PyTorch was not found" in r.stderr
    r = _run(hide + f"import ppl; lm = ppl.models.load({str(llama_dir)!r}); print(lm.vocab_size)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "300"
    assert "PyTorch was not found" not in r.stderr


# ---- the hub ------------------------------------------------------------------------------
def test_not_cached_names_hf_download(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError) as e:
        M.load("someone/not-cached")
    msg = str(e.value)
    assert "`hf download someone/not-cached`" in msg and "huggingface-cli" not in msg
    assert "download=True" in msg


def test_download_true_without_network_names_hf_download(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        M.load("someone/not-cached", download=True)
    msg = str(e.value)
    assert msg.startswith("Cannot download 'someone/not-cached' from the Hugging Face hub (")
    assert "run `hf download someone/not-cached`" in msg


def test_download_true_fetches_through_snapshot_download(monkeypatch, tmp_path, llama_dir):
    import huggingface_hub

    calls = []

    def fake(repo_id, allow_patterns=None, cache_dir=None, local_files_only=False, **kw):
        calls.append((repo_id, local_files_only, allow_patterns))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        snap = tmp_path / "snap"
        if not snap.exists():
            shutil.copytree(llama_dir, snap)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    lm = M.load("someone/llama", download=True)
    assert lm.vocab_size == 300 and lm.name == "someone/llama"
    assert calls[-1][0] == "someone/llama" and calls[-1][1] is False
    assert "*.safetensors" in calls[-1][2] and not any(p.endswith(".bin") for p in calls[-1][2])
    with pytest.raises(ValueError, match="hf download someone/other"):
        M.load("someone/other")  # not without download=True
