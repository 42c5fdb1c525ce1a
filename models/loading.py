"""Loading Hugging Face checkpoint folders as JAX language models: ``ppl.models.load``.

A checkpoint is a folder with ``config.json``, weights in safetensors (``model.safetensors``,
or shards listed in ``model.safetensors.index.json``) and tokenizer files. Configs and
tokenizers are read by transformers' ``AutoConfig``/``AutoTokenizer`` from local files only
(never remote code); weights by the ``safetensors`` library as numpy arrays, so neither torch
nor the network is needed. Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused:
unpickling runs arbitrary code.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ppl.models.base import LanguageModel
from ppl.models.gpt2 import GPT2LM
from ppl.models.llama import LlamaLM
from ppl.models.vocab import base_vocab_size, build_vocab

__all__ = ["SUPPORTED_ARCHITECTURES", "TINY_DIR", "available", "load", "resolve"]

TINY_DIR = Path(__file__).resolve().parent / "tiny"

# architectures entry -> (model_type, implementation)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, type]] = {
    "GPT2LMHeadModel": ("gpt2", GPT2LM),
    "LlamaForCausalLM": ("llama", LlamaLM),
    "Qwen2ForCausalLM": ("qwen2", LlamaLM),
}
_BY_MODEL_TYPE = {mt: cls for mt, cls in SUPPORTED_ARCHITECTURES.values()}

_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "merges.txt")
_DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
}


def _supported_text() -> str:
    return ", ".join(f"{a} (model_type {mt!r})" for a, (mt, _) in SUPPORTED_ARCHITECTURES.items())


# ---- locating a checkpoint --------------------------------------------------------------
def _hf_cache_snapshot(name: str) -> Path | None:
    """The local snapshot folder of hub repo ``name`` if it is cached; never the network."""
    if name.count("/") > 1 or not name or name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        from huggingface_hub import constants

        # The cache folder is read at call time (HF_HUB_CACHE / HF_HOME), offline only.
        path = snapshot_download(
            repo_id=name, local_files_only=True, cache_dir=constants.HF_HUB_CACHE
        )
    except Exception:
        return None
    return Path(path)


def resolve(path_or_name: str | os.PathLike) -> Path:
    """The local folder ``load`` would read for ``path_or_name``.

    Raises:
        ValueError: if it is neither ``"tiny"``, an existing folder, nor a model in the local
            Hugging Face cache.
    """
    s = str(path_or_name)
    if s == "tiny":
        if not (TINY_DIR / "config.json").is_file():
            raise ValueError(
                f"The embedded 'tiny' model is not available: {TINY_DIR} has no config.json "
                "(it has not been trained/installed yet). Pass a local Hugging Face checkpoint "
                "folder instead."
            )
        return TINY_DIR
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{s!r} is a file; ppl.models.load expects a checkpoint folder.")
    snap = _hf_cache_snapshot(s)
    if snap is not None:
        return snap
    raise ValueError(
        f"Cannot find model {s!r}: it is not an existing folder, not 'tiny', and not in the "
        "local Hugging Face cache (models are never downloaded; fetch it beforehand with "
        "`huggingface-cli download` on a machine with network access, or pass a folder with "
        "config.json, *.safetensors and tokenizer files)."
    )


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted({folder / v for v in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(
                f"{folder}: model.safetensors.index.json lists shard files that are missing: "
                f"{', '.join(missing)}."
            )
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(Path(p) for p in glob.glob(str(folder / "*.safetensors")))
    if others:
        return others
    pickles = sorted(
        {Path(p).name for pat in _PICKLE_PATTERNS for p in glob.glob(str(folder / pat))}
    )
    if pickles:
        raise ValueError(
            f"{folder}: only pickle checkpoint files ({', '.join(pickles)}) and no *.safetensors. "
            "Pickle files can run arbitrary code when loaded, so ppl refuses them. Convert once "
            "in a trusted environment with torch and transformers: "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, "
            "safe_serialization=True)` (writes model.safetensors)."
        )
    raise ValueError(
        f"{folder}: no model weights found (expected model.safetensors, or shards listed in "
        "model.safetensors.index.json)."
    )


class _LazyState:
    """A read-only mapping from tensor names to numpy arrays across safetensors shards."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="numpy") for f in files]
        self._where: dict[str, Any] = {}
        for h in self._handles:
            for k in h.keys():
                self._where[k] = h

    def keys(self):
        return self._where.keys()

    def __contains__(self, k) -> bool:
        return k in self._where

    def __getitem__(self, k) -> np.ndarray:
        return self._where[k].get_tensor(k)


def _read_config_json(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{folder}: config.json is missing (not a Hugging Face checkpoint folder?).")
    with open(cfg) as f:
        return json.load(f)


def _implementation(raw: dict, folder: Path) -> type:
    archs = raw.get("architectures") or []
    for a in archs:
        if a in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[a][1]
    if not archs and raw.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[raw["model_type"]]
    got = ", ".join(archs) if archs else "none"
    raise ValueError(
        f"{folder}: unsupported architecture (architectures: {got}; model_type: "
        f"{raw.get('model_type')!r}). Supported architectures: {_supported_text()}."
    )


def _load_tokenizer(folder: Path):
    present = [n for n in _TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        raise ValueError(
            f"{folder}: no tokenizer files (expected tokenizer.json, or vocab.json + merges.txt, "
            "or tokenizer.model)."
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # surface the cause, not a deep transformers traceback
        raise ValueError(f"{folder}: the tokenizer failed to load: {e}") from e
    if len(tok) == 0 or base_vocab_size(tok) == 0:
        raise ValueError(
            f"{folder}: the tokenizer loaded with an empty vocabulary ({len(tok)} tokens, files "
            f"present: "
            f"{', '.join(present)}); the tokenizer files are incomplete or unreadable."
        )
    return tok


def load(path_or_name: str | os.PathLike, dtype: str | Any = "float32") -> LanguageModel:
    """Loads a causal LM as a JAX :class:`~ppl.models.base.LanguageModel`.

    Args:
        path_or_name: ``"tiny"`` (the embedded default model), a local Hugging Face
            checkpoint folder, or the name of a model already in the local Hugging Face cache
            (e.g. ``"gpt2"``; never downloaded).
        dtype: parameter and KV-cache dtype: ``"float32"`` (default) or ``"bfloat16"``.
            Log-probabilities are always float32.

    Returns:
        A :class:`~ppl.models.gpt2.GPT2LM` or :class:`~ppl.models.llama.LlamaLM` with
        ``tokenizer``, ``vocab``, ``params``, ``eos_token_id``, ``bos_token_id``,
        ``vocab_size``, ``max_context`` and ``name`` set.

    Raises:
        ValueError: missing folder or files, unsupported architecture, pickle-only weights,
            an empty tokenizer.
    """
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"load: unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
        dtype = _DTYPES[dtype]
    folder = resolve(path_or_name)
    raw = _read_config_json(folder)
    cls = _implementation(raw, folder)
    files = _weight_files(folder)
    tokenizer = _load_tokenizer(folder)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    state = _LazyState(files)
    params = cls.convert_state_dict(state, config, dtype=dtype)

    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
    if eos is None:
        raise ValueError(f"{folder}: neither the tokenizer nor config.json names an EOS token.")
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = getattr(config, "bos_token_id", None)
        if isinstance(bos, (list, tuple)):
            bos = bos[0] if bos else None
    name = "tiny" if str(path_or_name) == "tiny" else str(path_or_name)
    lm = cls(config, params, tokenizer=tokenizer, name=name, eos_token_id=int(eos), bos_token_id=bos)
    extra_eos = getattr(config, "eos_token_id", None)
    extra_eos = extra_eos if isinstance(extra_eos, (list, tuple)) else [extra_eos]
    lm.vocab = build_vocab(tokenizer, vocab_size=lm.vocab_size, eos_token_id=int(eos))
    if any(e is not None and e != eos for e in extra_eos):
        # Llama 3 style configs list several end ids: all of them are special.
        from ppl.models.base import Vocab

        lm.vocab = Vocab.from_bytes(
            lm.vocab.token_bytes,
            lm.vocab.eos_token_id,
            lm.vocab.special_ids | {int(e) for e in extra_eos if e is not None and 0 <= e < lm.vocab_size},
        )
    lm.path = str(folder)
    return lm


def available(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Names ``load`` accepts without a path.

    Args:
        cache_dir: the Hugging Face hub cache to scan; defaults to the configured one
            (``HF_HUB_CACHE``, usually ``~/.cache/huggingface/hub``).

    Returns:
        ``"tiny"`` (when installed) followed by the cached models of a supported architecture
        that have safetensors weights, sorted by repo id.
    """
    names = []
    if (TINY_DIR / "config.json").is_file():
        names.append("tiny")
    try:
        from huggingface_hub import constants, scan_cache_dir

        info = scan_cache_dir(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    except Exception:
        return names
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            files = {f.file_name for f in rev.files}
            if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
                continue
            try:
                with open(Path(rev.snapshot_path) / "config.json") as f:
                    raw = json.load(f)
                _implementation(raw, Path(rev.snapshot_path))
            except Exception:
                continue
            names.append(repo.repo_id)
            break
    return names
