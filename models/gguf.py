"""Reading GGUF checkpoints (llama.cpp's single-file format) without torch.

A GGUF file holds the weights, possibly quantized, and the metadata the rest of a checkpoint
folder would hold: the architecture's hyper-parameters, the tokenizer's tokens, merges,
token types and special ids, and the chat template. The `gguf` package (numpy only) reads the
file and dequantizes its tensors; this module maps them to what a Hugging Face folder holds:

* a ``config.json``-style dict (``LlamaForCausalLM``);
* a state dict of float32 numpy arrays under Hugging Face names. llama.cpp stores the query
  and key projections of Llama models with their rows permuted for its interleaved RoPE; they
  are permuted back to Hugging Face's rotate-half layout (the inverse of its conversion
  script's ``permute``);
* a fast tokenizer built with the `tokenizers` library from the metadata (byte-level BPE with
  the pre-tokenizer that ``tokenizer.ggml.pre`` names, or SentencePiece-style BPE with byte
  fallback), wrapped in transformers' ``PreTrainedTokenizerFast`` with the chat template;
* the generation settings (BOS/EOS ids).

[convert][ppl.models.gguf.convert] writes all of it as a folder ``ppl.models.load`` (and
transformers) read; [read][ppl.models.gguf.read] keeps it in memory.

Dequantized values are exact float32 numbers (a quantized weight is ``d * q + m`` with
float16 ``d``, ``m`` and small integers ``q``), so a float32 model on them computes what
llama.cpp's dequantized reference does; it is not the original unquantized model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GGUFCheckpoint",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "SUPPORTED_PRE_TOKENIZERS",
    "TESTED_TENSOR_TYPES",
    "convert",
    "read",
]

#: ``general.architecture`` values this reader maps to a Hugging Face architecture.
SUPPORTED_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM"}

#: Tensor types covered by tests (the `gguf` package dequantizes more, e.g. the K-quants).
TESTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# llama.cpp's pre-tokenizer regexes, by the name ``tokenizer.ggml.pre`` gives them
# (llama-vocab.cpp). Each becomes the equivalent `tokenizers` pre-tokenizer.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE = {
    # GPT-2's regex alone.
    "default": ("gpt2", False),
    "gpt-2": ("gpt2", False),
    "gpt2": ("gpt2", False),
    # Every digit on its own, then GPT-2's regex (StarCoder's tokenizer, SmolLM, ...).
    "smollm": ("digits+gpt2", False),
    "starcoder": ("digits+gpt2", False),
    "refact": ("digits+gpt2", False),
    # Llama 3 (tiktoken-style: whole words found in the vocabulary are not merged again).
    "llama-bpe": ("llama3", True),
    "llama3": ("llama3", True),
    "llama-v3": ("llama3", True),
    "smaug-bpe": ("llama3", False),
    "qwen2": ("qwen2", False),
    "deepseek-r1-qwen": ("qwen2", False),
}
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE))

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclasses.dataclass
class GGUFCheckpoint:
    """Everything [read][ppl.models.gguf.read] gets out of a GGUF file.

    Attributes:
        path: the file.
        config: a ``config.json``-style dict of a Hugging Face architecture.
        state: float32 numpy arrays under Hugging Face tensor names.
        tokenizer: a transformers ``PreTrainedTokenizerFast`` (chat template set when the file
            has one).
        generation_config: a ``generation_config.json``-style dict (BOS/EOS ids).
        tensor_types: GGUF tensor name -> its type name (``"Q4_1"``, ...), for reports.
    """

    path: Path
    config: dict
    state: dict
    tokenizer: Any
    generation_config: dict
    tensor_types: dict


def _fail(path, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - a dependency
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e
    try:
        return GGUFReader(str(path))
    except Exception as e:
        raise _fail(path, f"not a valid GGUF file ({type(e).__name__}: {e}).") from e


def _fields(reader) -> dict:
    out = {}
    for k, f in reader.fields.items():
        try:
            out[k] = f.contents()
        except Exception:  # a value type the reader cannot decode: not one we use
            continue
    return out


def _permute_back(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` of Llama query/key rows (interleaved RoPE pairs back
    to the rotate-half layout): rows ``[head, pair, 2]`` become ``[head, 2, pair]``."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_head, out // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _tensors(reader, path: Path) -> tuple[dict, dict]:
    from gguf.quants import dequantize

    arrays, types = {}, {}
    for t in reader.tensors:
        name = t.tensor_type.name
        try:
            a = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise _fail(path, f"tensor {t.name!r} has type {name}, which the gguf package cannot "
                        f"dequantize ({e}).") from e
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        arrays[t.name] = np.asarray(a, np.float32).reshape(shape)
        types[t.name] = name
    return arrays, types


def _llama_config(md: dict, arrays: dict, path: Path) -> dict:
    arch = md["general.architecture"]

    def get(key, default=KeyError):
        v = md.get(f"{arch}.{key}", default)
        if v is KeyError:
            raise _fail(path, f"metadata key {arch}.{key} is missing.")
        return v

    d = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", d // heads))
    if "token_embd.weight" not in arrays:
        raise _fail(path, "tensor 'token_embd.weight' is missing.")
    vocab = int(arrays["token_embd.weight"].shape[0])
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
    rot = int(get("rope.dimension_count", head_dim))
    if rot != head_dim:
        rope["partial_rotary_factor"] = rot / head_dim
    scaling = str(get("rope.scaling.type", "none"))
    if scaling == "linear":
        rope.update(rope_type="linear", factor=float(get("rope.scaling.factor")))
    elif scaling not in ("none", ""):
        raise _fail(path, f"RoPE scaling {scaling!r} is not supported in GGUF files (supported: "
                    "none, linear); load the Hugging Face folder of this model instead.")
    if "rope_freqs.weight" in arrays:
        raise _fail(path, "per-frequency RoPE factors (tensor 'rope_freqs.weight', Llama 3.1 "
                    "style) are not supported in GGUF files; load the Hugging Face folder instead.")

    def token_id(key):
        v = md.get(f"tokenizer.ggml.{key}")
        return None if v is None else int(v)

    eps = float(get("attention.layer_norm_rms_epsilon", 1e-6))
    cfg = {
        "architectures": [SUPPORTED_GGUF_ARCHITECTURES[arch]],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length")),
        # Stored as float32 (9.99999975e-06 for 1e-5): the shortest decimal that rounds to it.
        "rms_norm_eps": float(np.format_float_positional(np.float32(eps), unique=True, trim="-")),
        "rope_parameters": rope,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in arrays,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "dtype": "float32",
    }
    return cfg


_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _llama_state(arrays: dict, cfg: dict, path: Path) -> dict:
    state, unknown = {}, []
    for name, a in arrays.items():
        if name in _TOP_NAMES:
            state[_TOP_NAMES[name]] = a
            continue
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
            if parts[2] == "attn_q.weight":
                a = _permute_back(a, cfg["num_attention_heads"])
            elif parts[2] == "attn_k.weight":
                a = _permute_back(a, cfg["num_key_value_heads"])
            state[f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"] = a
        else:
            unknown.append(name)
    if unknown:
        raise _fail(path, f"tensors this Llama reader does not know: {', '.join(sorted(unknown)[:6])}"
                    f"{' ...' if len(unknown) > 6 else ''} (a different architecture stored as "
                    "'llama'?).")
    return state


# ---- tokenizer ----------------------------------------------------------------------------
def _pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers as P

    if kind == "gpt2":
        return P.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits+gpt2":
        return P.Sequence([P.Digits(individual_digits=True), P.ByteLevel(add_prefix_space=False, use_regex=True)])
    split = {"llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}[kind]
    return P.Sequence([P.Split(Regex(split), behavior="isolated", invert=False),
                       P.ByteLevel(add_prefix_space=False, use_regex=False)])


def _sentencepiece_merges(tokens: list[str], scores: list[float], vocab: dict) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary (a GGUF stores none for it): every
    split of a piece into two pieces of the vocabulary, ordered by the merged piece's score
    (then the longer left and right parts first), as transformers derives them from a
    ``tokenizer.model``."""
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(lft, rgt) for lft, rgt, _ in merges]


def _tokenizer(md: dict, path: Path):
    """A ``PreTrainedTokenizerFast`` rebuilt from ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise _fail(path, "the file has no tokenizer (metadata tokenizer.ggml.tokens is missing).")
    tokens = [str(t) for t in tokens]
    types = list(md.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)

    def tid(key):
        v = md.get(f"tokenizer.ggml.{key}")
        return None if v is None else int(v)

    bos, eos, unk, pad = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id"), tid("padding_token_id")
    if kind == "gpt2":
        pre = str(md.get("tokenizer.ggml.pre", "default"))
        if pre not in _PRE:
            raise _fail(path, f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: "
                        f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}. Load the model's Hugging Face "
                        "folder (tokenizer.json) instead.")
        split, ignore_merges = _PRE[pre]
        merges = [tuple(m.split(" ", 1)) for m in (md.get("tokenizer.ggml.merges") or [])]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        tk.pre_tokenizer = _pre_tokenizer(split)
        tk.decoder = decoders.ByteLevel()
        post = [processors.ByteLevel(trim_offsets=False)]
        add_bos_default = False
    elif kind == "llama":
        scores = [float(s) for s in (md.get("tokenizer.ggml.scores") or [0.0] * len(tokens))]
        merges = _sentencepiece_merges(tokens, scores, vocab)
        unk_tok = tokens[unk] if unk is not None else None
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk_tok, byte_fallback=True,
                                  fuse_unk=True))
        prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        steps = [normalizers.Prepend("▁")] if prefix else []
        tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tk.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        post = []
        add_bos_default = True
    else:
        raise _fail(path, f"unsupported tokenizer model {kind!r} (tokenizer.ggml.model); supported: "
                    "gpt2 (byte-level BPE), llama (SentencePiece BPE).")

    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
               if ty in (_CONTROL, _UNKNOWN) and vocab.get(t) is not None]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED]
    if special:
        tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos is not None
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join(([tokens[bos]] if add_bos else []) + ["$A"] + ([tokens[eos]] if add_eos else []))
        pair = single + " " + single.replace("$A", "$B")
        specials = sorted({(tokens[i], i) for i, on in ((bos, add_bos), (eos, add_eos)) if on})
        post.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials))
    if post:
        tk.post_processor = post[0] if len(post) == 1 else processors.Sequence(post)

    from ppl.models.loading import _transformers

    fast = _transformers().PreTrainedTokenizerFast
    kw = {name: tokens[i] for name, i in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                                          ("pad_token", pad)) if i is not None}
    tok = fast(tokenizer_object=tk, **kw)
    template = md.get("tokenizer.chat_template")
    if template:
        tok.chat_template = str(template)
    if len(tok) != len(tokens):
        raise _fail(path, f"the rebuilt tokenizer has {len(tok)} ids but the file lists "
                    f"{len(tokens)} tokens (duplicate token strings?).")
    return tok


# ---- entry points -------------------------------------------------------------------------
def read(path: str | os.PathLike) -> GGUFCheckpoint:
    """Reads a GGUF file into a config, float32 Hugging Face-named tensors and a tokenizer.

    Raises:
        ValueError: not a GGUF file, an architecture, tensor type, tokenizer model or
            pre-tokenizer this reader does not support (naming what is supported), or missing
            metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file.")
    reader = _reader(path)
    md = _fields(reader)
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise _fail(path, f"unsupported GGUF architecture {arch!r}; supported: "
                    f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}. Load the model's Hugging Face "
                    "folder instead.")
    arrays, types = _tensors(reader, path)
    cfg = _llama_config(md, arrays, path)
    state = _llama_state(arrays, cfg, path)
    tok = _tokenizer(md, path)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    return GGUFCheckpoint(path=path, config=cfg, state=state, tokenizer=tok, generation_config=gen,
                          tensor_types=types)


#: Bumped when a conversion's output changes, so that cached folders are rebuilt.
CONVERTER_VERSION = 1


def convert(path: str | os.PathLike, folder: str | os.PathLike, *, source: dict | None = None) -> Path:
    """Writes the GGUF file as a Hugging Face checkpoint folder (float32 safetensors).

    The folder holds ``config.json``, ``generation_config.json``, ``model.safetensors``, the
    tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template)
    and ``ppl_conversion.json`` (the source file, its size and the converter version). It is
    written next to its final place and renamed into it, so an interrupted conversion never
    leaves a half-written folder behind.

    Args:
        path: the ``.gguf`` file.
        folder: where to write (replaced if it exists).
        source: extra provenance recorded in ``ppl_conversion.json``.

    Returns:
        The folder.
    """
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    ck = read(path)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(ck.config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(ck.generation_config, indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in ck.state.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        ck.tokenizer.save_pretrained(str(tmp))
        info = {"converter_version": CONVERTER_VERSION, "gguf": str(Path(path).resolve()),
                "gguf_bytes": Path(path).stat().st_size,
                "tensor_types": sorted(set(ck.tensor_types.values())), **(source or {})}
        (tmp / "ppl_conversion.json").write_text(json.dumps(info, indent=2))
        # mkdtemp (and safetensors) create private files: give them the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
