"""Exact token byte tables from Hugging Face tokenizers (byte-level BPE and SentencePiece)."""

from __future__ import annotations

import numpy as np
import pytest

from ppl.models import build_vocab
from ppl.models.vocab import bytes_to_unicode, token_scheme

TEXTS = [
    "Hello world, this is a test.",
    " hello  there\n\ttabs and\r\nnewlines",
    "naïve café – “quotes” and emoji 🎉🐍 and 日本語のテキスト",
    "x = [1, 2, 3]; print(x[-1]) # code!",
]


def test_bytes_to_unicode_is_a_bijection():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256


def test_gpt2_byte_table(gpt2_tokenizer):
    tok = gpt2_tokenizer
    v = build_vocab(tok)
    assert v.size == 50257
    assert token_scheme(tok) == "byte_level"
    (hello,) = tok.encode(" hello")
    assert v.token_bytes[hello] == b" hello"
    assert v.token_strings[hello] == " hello"
    assert v.token_bytes[tok.encode("\n")[0]] == b"\n"
    # EOS is special and contributes no text.
    assert v.eos_token_id == 50256
    assert v.token_bytes[50256] == b"" and 50256 in v.special_ids
    assert not v.text_mask()[50256] and v.text_mask()[hello]
    # Every one of the 256 single-byte tokens is present with its byte.
    singles = {b for b in v.token_bytes if len(b) == 1}
    assert len(singles) == 256


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_roundtrip_text(gpt2_tokenizer, text):
    v = build_vocab(gpt2_tokenizer)
    ids = gpt2_tokenizer.encode(text)
    assert b"".join(v.token_bytes[i] for i in ids) == text.encode("utf-8")
    assert v.decode(ids) == gpt2_tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_gpt2_random_id_sequences_decode_like_tokenizer(gpt2_tokenizer):
    """Random sequences of text tokens (including ones that split UTF-8 characters)."""
    tok = gpt2_tokenizer
    v = build_vocab(tok)
    rng = np.random.default_rng(0)
    mismatches = 0
    for _ in range(200):
        ids = [int(i) for i in rng.integers(0, 50256, size=int(rng.integers(1, 12)))]
        raw = b"".join(v.token_bytes[i] for i in ids)
        ref = tok.decode(ids, clean_up_tokenization_spaces=False)
        try:
            # Valid UTF-8: the byte table must reproduce the tokenizer's text exactly.
            assert raw.decode("utf-8") == ref
        except UnicodeDecodeError:
            # Invalid UTF-8: both replace bad bytes; the count of U+FFFD may differ between
            # Rust's and Python's lossy decoders, the valid text may not.
            mismatches += raw.decode("utf-8", "replace").replace("\ufffd", "") != ref.replace("\ufffd", "")
    assert mismatches == 0


def test_padded_logits_rows_are_special(bpe_tokenizer):
    v = build_vocab(bpe_tokenizer, vocab_size=len(bpe_tokenizer) + 20)
    assert v.size == len(bpe_tokenizer) + 20
    for i in range(len(bpe_tokenizer), v.size):
        assert v.token_bytes[i] == b"" and i in v.special_ids
    assert v.text_mask().sum() == len(bpe_tokenizer) - 1  # all but <|endoftext|>


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_roundtrip(bpe_tokenizer, text):
    v = build_vocab(bpe_tokenizer)
    ids = bpe_tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(v.token_bytes[i] for i in ids) == text.encode("utf-8")


def test_sentencepiece_table(sp_tokenizer):
    tok = sp_tokenizer
    v = build_vocab(tok)
    assert token_scheme(tok) == "sentencepiece"
    assert v.eos_token_id == tok.convert_tokens_to_ids("</s>")
    for name in ("<unk>", "<s>", "</s>"):
        i = tok.convert_tokens_to_ids(name)
        assert v.token_bytes[i] == b"" and i in v.special_ids
    # Byte-fallback tokens are single bytes.
    i = tok.convert_tokens_to_ids("<0xE2>")
    assert v.token_bytes[i] == b"\xe2"
    # '▁' is a space.
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    i = next(k for k, p in enumerate(pieces) if p.startswith("▁") and len(p) > 2)
    assert v.token_bytes[i] == (" " + pieces[i][1:]).encode()


def test_sentencepiece_duplicate_bytes_keep_both_ids(sp_tokenizer):
    tok = sp_tokenizer
    v = build_vocab(tok)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    letter = next(p for p in pieces if len(p) == 1 and p.isalpha())
    a, b = tok.convert_tokens_to_ids(letter), tok.convert_tokens_to_ids(f"<0x{ord(letter):02X}>")
    assert a != b and v.token_bytes[a] == v.token_bytes[b] == letter.encode()


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_roundtrip(sp_tokenizer, text):
    v = build_vocab(sp_tokenizer)
    ids = sp_tokenizer.encode(text, add_special_tokens=False)
    # The normalizer prepends '▁' to the text; the decoder strips it again.
    assert b"".join(v.token_bytes[i] for i in ids) == (" " + text).encode("utf-8")
    assert v.decode(ids)[1:] == sp_tokenizer.decode(ids)


def test_empty_tokenizer_is_refused():
    class Empty:
        eos_token_id = 0

        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="empty vocabulary"):
        build_vocab(Empty())
