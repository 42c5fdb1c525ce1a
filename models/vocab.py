"""Exact token byte tables ([Vocab][ppl.models.Vocab]) from Hugging Face tokenizers.

Constraints (regexes, grammars, word rules) reason about the *bytes* each token adds to the
text, so we recover them exactly rather than calling ``tokenizer.decode([id])`` (which turns
partial UTF-8 sequences into U+FFFD and strips SentencePiece's leading space):

* byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): every character of a token string stands for
  one byte through GPT-2's ``bytes_to_unicode`` table; we invert it.
* SentencePiece-style (Llama 2, TinyLlama, Mistral): ``'▁'`` is a space and ``<0xNN>``
  byte-fallback tokens are the single byte ``NN``; other characters are UTF-8.

Special and added-special tokens map to ``b""`` and are listed in ``special_ids``, as are
padded logits rows (a config ``vocab_size`` larger than the tokenizer, e.g. Qwen2). Two ids with
the same bytes are kept as they are (both are legitimate ways to write that text).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from ppl.models.base import Vocab

__all__ = ["base_vocab_size", "build_vocab", "bytes_to_unicode", "token_scheme"]

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _walk_types(node) -> list[str]:
    """All ``"type"`` values inside a (possibly nested) tokenizers JSON component."""
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            out.append(node["type"])
        for v in node.values():
            out.extend(_walk_types(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk_types(v))
    return out


def token_scheme(tokenizer: Any, pieces: list[str] | None = None) -> str:
    """``"byte_level"`` or ``"sentencepiece"``: how token strings encode bytes.

    Read from the fast tokenizer's decoder/pre-tokenizer configuration when there is one,
    otherwise guessed from the token strings themselves.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # pragma: no cover - exotic backends
            spec = {}
        dec = set(_walk_types(spec.get("decoder")))
        pre = set(_walk_types(spec.get("pre_tokenizer")))
        model = spec.get("model") or {}
        if "ByteLevel" in dec or ("ByteLevel" in pre and not dec & {"Metaspace", "ByteFallback"}):
            return "byte_level"
        if dec & {"Metaspace", "ByteFallback", "Replace"} or "Metaspace" in pre or model.get(
            "byte_fallback"
        ):
            return "sentencepiece"
    pieces = pieces or []
    if any(p.startswith("▁") for p in pieces) or any(_BYTE_TOKEN.match(p) for p in pieces):
        return "sentencepiece"
    return "byte_level"


def _piece_bytes(piece: str, scheme: str) -> bytes:
    if scheme == "byte_level":
        u2b = _unicode_to_byte()
        try:
            return bytes(u2b[c] for c in piece)
        except KeyError:
            # A token string outside the byte alphabet (rare: hand-added vocabulary entries)
            # stands for its own UTF-8 text.
            return piece.encode("utf-8")
    m = _BYTE_TOKEN.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def base_vocab_size(tokenizer: Any) -> int:
    """Tokens of the tokenizer's model proper, added/special tokens not counted.

    Zero means a broken tokenizer: transformers builds one silently from missing or unreadable
    files (and class defaults may still add an ``<|endoftext|>``, so ``len()`` can be 1).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            return int(backend.get_vocab_size(with_added_tokens=False))
        except Exception:  # pragma: no cover
            pass
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return max(len(tokenizer) - len(added), 0)


def build_vocab(tokenizer: Any, vocab_size: int | None = None, eos_token_id: int | None = None) -> Vocab:
    """Builds the exact byte table of a Hugging Face tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow).
        vocab_size: the logits dimension of the model; ids at or past ``len(tokenizer)`` (padded
            rows) map to ``b""`` and count as special. Defaults to ``len(tokenizer)``.
        eos_token_id: overrides ``tokenizer.eos_token_id``.

    Returns:
        A [Vocab][ppl.models.Vocab] with ``vocab_size`` entries.

    Raises:
        ValueError: if the tokenizer is empty or has no EOS id.
    """
    n_tok = len(tokenizer)
    if n_tok == 0 or base_vocab_size(tokenizer) == 0:
        raise ValueError(
            "build_vocab: the tokenizer has an empty vocabulary (a tokenizer that failed to "
            "download or load loads empty without an error)."
        )
    size = int(vocab_size) if vocab_size is not None else n_tok
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("build_vocab: the tokenizer has no EOS token; pass eos_token_id=.")

    pieces = tokenizer.convert_ids_to_tokens(list(range(min(size, n_tok))))
    pieces = [p if isinstance(p, str) else "" for p in pieces]
    scheme = token_scheme(tokenizer, pieces)

    special: set[int] = {int(eos)}
    special.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    added_literal: dict[int, bytes] = {}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, tok in added.items():
        if getattr(tok, "special", True):
            special.add(int(i))
        else:
            # A non-special added token is matched literally in text: its bytes are its content.
            added_literal[int(i)] = str(tok.content).encode("utf-8")

    table: list[bytes] = []
    for i in range(size):
        if i >= n_tok or i >= len(pieces) or i in special:
            table.append(b"")
            if i >= n_tok or i >= len(pieces):
                special.add(i)
        elif i in added_literal:
            table.append(added_literal[i])
        else:
            table.append(_piece_bytes(pieces[i], scheme))
    special = {i for i in special if 0 <= i < size}
    return Vocab.from_bytes(table, int(eos), special_ids=special)
