"""Token byte tables per tokenizer family, checked against each tokenizer's own decoding.

Constraints compile against [Vocab.token_bytes][ppl.models.Vocab]; if one id's bytes are
wrong, a regex or grammar silently allows or forbids the wrong text. Each family is built
here with the `tokenizers` library the way its checkpoints' ``tokenizer.json`` files are (no
hub):

* byte-level BPE: GPT-2 (the real vocabulary), Llama 3 (split regex + ``ignore_merges``,
  ``<|begin_of_text|>`` added in front), Qwen2 (its split regex, chat specials, a non-special
  added token);
* SentencePiece-style BPE with byte fallback: Llama 2 (``Prepend`` normalizer, BOS), Mistral
  (``Metaspace`` pre-tokenizer), Gemma (no prefix space, multi-space pieces, ``<bos>``);

and for every id ``i`` of every family, the tokenizer's decoding of ``[anchor, i]`` (specials
skipped) must equal the table's ``bytes[anchor] + bytes[i]`` decoded as UTF-8 with replacement
(the anchor, a plain letter, keeps SentencePiece decoders from stripping a leading space).
Byte-fallback vocabularies hold several ids with the same bytes (``"a"`` and ``<0x61>``): both
stay in the table and both are allowed by constraints.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ppl.models as M
from ppl.models import build_vocab
from ppl.models.vocab import token_scheme

CORPUS = [
    "the quick brown fox jumps over the lazy dog. hello world! ",
    "Once upon a time there was a tiny model that liked to say hello.",
    "In 2024 it counted 1, 22, 333 and 4444 sheep;  double  spaces\tand tabs\n",
    "naïve café – “quotes” and emoji 🎉 and 日本語 text",
] * 10

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(split, specials, *, bos=None, ignore_merges=False, added=()):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    post = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                  special_tokens=[(bos, tk.token_to_id(bos))]))
    tk.post_processor = processors.Sequence(post)
    if added:
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tk


def _sentencepiece(specials, *, prefix, metaspace=False, bos=None, multispace=False):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    steps = ([normalizers.Prepend("▁")] if prefix and not metaspace else []) + [normalizers.Replace(" ", "▁")]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence(steps)
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=260, special_tokens=specials))
    spec = json.loads(base.to_str())
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    if multispace:  # Gemma keeps runs of spaces as pieces
        for n in (2, 3, 4):
            vocab.setdefault("▁" * n, len(vocab))
        merges += [("▁", "▁"), ("▁▁", "▁"), ("▁▁", "▁▁")]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tk.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, vocab[bos])])
    return tk


def _wrap(tk, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tk, **special)


FAMILIES = ["gpt2", "llama3", "qwen2", "llama2", "mistral", "gemma"]
# family -> (BOS added to prompts, EOS ids of the generation config (primary first))
EXPECT = {"gpt2": False, "llama3": True, "qwen2": False, "llama2": True, "mistral": True, "gemma": True}


@pytest.fixture(scope="module")
def tokenizers_(gpt2_tokenizer):
    l3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    return {
        "gpt2": gpt2_tokenizer,
        "llama3": _wrap(_byte_level(LLAMA3_SPLIT, l3, bos="<|begin_of_text|>", ignore_merges=True),
                        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
        "qwen2": _wrap(_byte_level(QWEN_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], added=["<think>"]),
                       eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        "llama2": _wrap(_sentencepiece(["<unk>", "<s>", "</s>"], prefix=True, bos="<s>"),
                        bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
        "mistral": _wrap(_sentencepiece(["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], prefix=True,
                                        metaspace=True, bos="<s>"),
                         bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
        "gemma": _wrap(_sentencepiece(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                                      prefix=False, bos="<bos>", multispace=True),
                       bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_id_decodes_like_the_tokenizer(tokenizers_, family):
    tok = tokenizers_[family]
    v = build_vocab(tok)
    assert v.size == len(tok)
    assert token_scheme(tok) == ("byte_level" if family in ("gpt2", "llama3", "qwen2") else "sentencepiece")
    (anchor,) = [i for i in tok.encode("x", add_special_tokens=False) if v.token_bytes[i] == b"x"] or [None]
    if anchor is None:  # SentencePiece spells a leading "x" as "▁x": take the bare piece
        anchor = tok.convert_tokens_to_ids("x")
    assert v.token_bytes[anchor] == b"x"
    got = tok.batch_decode([[anchor, i] for i in range(len(tok))], skip_special_tokens=True,
                           clean_up_tokenization_spaces=False)
    bad = [(i, tok.convert_ids_to_tokens(i), v.token_bytes[i], got[i]) for i in range(len(tok))
           if got[i] != (b"x" + v.token_bytes[i]).decode("utf-8", errors="replace")]
    assert bad == [], bad[:5]
    # Specials contribute no text and are excluded from text.
    for i in tok.all_special_ids:
        assert v.token_bytes[i] == b"" and i in v.special_ids and not v.text_mask()[i]


@pytest.mark.parametrize("family", FAMILIES)
def test_encoded_text_is_reproduced_byte_for_byte(tokenizers_, family):
    tok = tokenizers_[family]
    v = build_vocab(tok)
    for text in CORPUS[:4]:
        ids = tok.encode(text, add_special_tokens=False)
        decoded = tok.decode(ids, clean_up_tokenization_spaces=False)
        table = b"".join(v.token_bytes[i] for i in ids).decode("utf-8")
        # SentencePiece with a prefix space strips it when decoding; the table keeps it.
        assert table == decoded or table == " " + decoded, (family, text)


def test_added_and_special_tokens(tokenizers_):
    qwen = tokenizers_["qwen2"]
    v = build_vocab(qwen)
    think = qwen.convert_tokens_to_ids("<think>")
    assert v.token_bytes[think] == b"<think>" and think not in v.special_ids  # non-special: literal text
    assert qwen.encode("a<think>b", add_special_tokens=False).count(think) == 1
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert v.token_bytes[qwen.convert_tokens_to_ids(t)] == b""


@pytest.mark.parametrize("family", ["llama2", "mistral", "gemma"])
def test_ids_with_the_same_bytes_are_all_kept_and_allowed(tokenizers_, family):
    """``"e"`` and ``<0x65>`` both spell ``e``: the table keeps both, and a constraint allows
    both (libraries that index a vocabulary by its bytes drop one, or crash)."""
    from ppl.stdlib import constraints as C

    tok = tokenizers_[family]
    v = build_vocab(tok)
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(v.token_bytes):
        if b:
            by_bytes.setdefault(b, []).append(i)
    dups = {b: ids for b, ids in by_bytes.items() if len(ids) > 1}
    assert b"e" in dups and len(dups) >= 20
    piece, byte = tok.convert_tokens_to_ids("e"), tok.convert_tokens_to_ids("<0x65>")
    aut = C.regex("e+").compile(v)
    allowed = np.asarray(aut.allowed(aut.init_state()))
    assert allowed[piece] and allowed[byte] and allowed.sum() >= 2


@pytest.fixture(scope="module")
def loaded(tokenizers_, tmp_path_factory, helpers):
    """A random Llama checkpoint per family, with a generation config where there is one."""
    out = {}
    for family, tok in tokenizers_.items():
        folder = tmp_path_factory.mktemp(family)
        helpers.random_checkpoint("llama", folder, tok, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
        if family == "llama3":  # Llama 3 Instruct ends a turn at either id
            ids = [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
            (folder / "generation_config.json").write_text(json.dumps(
                {"bos_token_id": tok.bos_token_id, "eos_token_id": ids}))
        out[family] = (M.load(folder), tok)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_bos_is_added_as_the_tokenizer_adds_it(loaded, family):
    lm, tok = loaded[family]
    assert lm.add_bos_token is EXPECT[family]
    want = tok("the lazy dog")["input_ids"]  # what transformers' generate would receive
    assert lm.prompt_ids("the lazy dog") == want
    assert (want[0] == tok.bos_token_id) is EXPECT[family]
    # Token ids are taken as given (a chat template may have written BOS already).
    assert lm.prompt_ids(want[-2:]) == want[-2:]


def test_every_eos_id_of_the_generation_config(loaded):
    lm, tok = loaded["llama3"]
    eot, end = tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")
    assert lm.eos_token_id == eot  # the tokenizer's EOS comes first
    assert lm.eos_token_ids == (eot, end) == lm.vocab.eos_token_ids
    assert {eot, end} <= lm.vocab.special_ids
    assert list(np.asarray(lm.is_eos(np.array([eot, end, 5])))) == [True, True, False]
    for family in ("gpt2", "qwen2", "llama2"):
        other = loaded[family][0]
        assert other.eos_token_ids == (other.eos_token_id,)
