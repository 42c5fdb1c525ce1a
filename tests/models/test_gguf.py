"""GGUF files: written here with the `gguf` package, read by [ppl.models.load][ppl.models.load].

The reference is transformers' PyTorch ``LlamaForCausalLM`` holding the *dequantized* weights
(what the file stores; quantization itself is lossy and not under test). The file is written
as llama.cpp's converter writes one: query/key rows permuted for interleaved RoPE, the
tokenizer as ``tokenizer.ggml.*`` metadata, the chat template. Each tensor type the reader
claims is used at least once: F32 (norms), F16, BF16, Q8_0, Q4_0, Q4_1.

Tolerance 1e-4 (float32 on both sides, as in test_parity.py): the dequantized weights are the
same float32 numbers on both sides, so only summation order differs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ppl
import ppl.models as M

TOL = 1e-4
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Tensor type of each GGUF tensor (by name suffix); the rest is F32.
TYPES = {"token_embd.weight": "Q8_0", "attn_q.weight": "Q4_0", "attn_k.weight": "Q4_1",
         "attn_v.weight": "F16", "attn_output.weight": "BF16", "ffn_gate.weight": "Q8_0",
         "ffn_up.weight": "Q4_1", "ffn_down.weight": "Q4_0", "output.weight": "F16"}


def _permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf ``permute`` (rotate-half rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _quantize(a, kind):
    import gguf
    from gguf.quants import dequantize, quantize

    qt = gguf.GGMLQuantizationType[kind]
    q = quantize(np.ascontiguousarray(a, np.float32), qt)
    return q, qt, np.asarray(dequantize(q, qt), np.float32).reshape(a.shape)


def write_gguf(path, cfg, state, tok, *, pre="default", template=TEMPLATE, arch="llama",
               tokenizer_model="gpt2", extra=None):
    """Writes ``state`` (HF names, float32) as a llama.cpp-style GGUF; returns the dequantized
    HF state dict (what a reader must recover)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    w.add_token_list(tokens)
    special = set(tok.all_special_ids)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    spec = json.loads(tok.backend_tokenizer.to_str())
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)
    if template:
        w.add_chat_template(template)
    for k, v in (extra or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_uint32(k, v)
    out = {}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for hf, a in state.items():
        if hf in names:
            g = names[hf]
        else:
            i, rest = hf[len("model.layers."):].split(".", 1)
            g = f"blk.{i}.{layer[rest]}"
        a = np.asarray(a, np.float32)
        stored = a
        if g.endswith("attn_q.weight"):
            stored = _permute(a, cfg["num_attention_heads"])
        elif g.endswith("attn_k.weight"):
            stored = _permute(a, cfg["num_key_value_heads"])
        kind = next((t for suffix, t in TYPES.items() if g.endswith(suffix)), "F32")
        q, qt, deq = _quantize(stored, kind)
        w.add_tensor(g, q, raw_dtype=qt)
        # What the reader must give back: the dequantized values in HF's row order.
        if g.endswith("attn_q.weight") or g.endswith("attn_k.weight"):
            heads = cfg["num_attention_heads"] if g.endswith("attn_q.weight") else cfg["num_key_value_heads"]
            deq = deq.reshape(heads, deq.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(a.shape)
        out[hf] = deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


CFG = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5)


@pytest.fixture(scope="module")
def written(tmp_path_factory, bpe_tokenizer):
    """``(gguf path, dequantized HF state, torch reference model or None)``."""
    rng = np.random.default_rng(0)
    d, h, kvh, inter, v = 64, 4, 2, 96, len(bpe_tokenizer)
    hd = d // h
    r = lambda *s: (0.15 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    ones = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    state = {"model.embed_tokens.weight": 0.5 * r(v, d) / 0.15, "model.norm.weight": ones(d),
             "lm_head.weight": 0.5 * r(v, d) / 0.15}
    for i in range(2):
        p = f"model.layers.{i}."
        state.update({p + "input_layernorm.weight": ones(d), p + "self_attn.q_proj.weight": r(h * hd, d),
                      p + "self_attn.k_proj.weight": r(kvh * hd, d), p + "self_attn.v_proj.weight": r(kvh * hd, d),
                      p + "self_attn.o_proj.weight": r(d, h * hd), p + "post_attention_layernorm.weight": ones(d),
                      p + "mlp.gate_proj.weight": r(inter, d), p + "mlp.up_proj.weight": r(inter, d),
                      p + "mlp.down_proj.weight": r(d, inter)})
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    deq = write_gguf(path, CFG, state, bpe_tokenizer)
    return path, deq


def test_every_claimed_tensor_type_is_in_the_file(written):
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(str(written[0])).tensors}
    assert types == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"}


def test_read_recovers_the_dequantized_hf_tensors(written):
    from ppl.models import gguf as G

    path, deq = written
    ck = G.read(path)
    assert set(ck.state) == set(deq)
    for k, a in deq.items():
        np.testing.assert_array_equal(ck.state[k], a, err_msg=k)
    assert ck.config["num_hidden_layers"] == 2 and ck.config["tie_word_embeddings"] is False
    assert ck.config["rms_norm_eps"] == 1e-5  # not float32's 9.99999975e-06
    assert ck.generation_config == {"bos_token_id": 0, "eos_token_id": 0}


def test_gguf_logprobs_match_pytorch_on_the_dequantized_weights(written, bpe_tokenizer):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    path, deq = written
    lm = M.load(path)
    assert isinstance(lm, M.LlamaLM) and lm.name == str(path)
    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), tie_word_embeddings=False, **CFG)
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in deq.items()}, strict=False)
    ids = [int(i) for i in np.random.default_rng(1).integers(1, 300, size=10)]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()
    assert (ref.max(-1) - ref.min(-1)).min() > 2.0  # peaked: agreement is informative
    import jax

    np.testing.assert_allclose(np.asarray(jax.jit(lm.forward)(lm.params, np.asarray(ids, np.int32))),
                               ref, atol=TOL, rtol=0)


def test_gguf_tokenizer_equals_the_original(written, bpe_tokenizer):
    lm = M.load(written[0])
    for text in ["hello world! the quick brown fox", "  spaces\tand\nnewlines 123", "émoji 🦊 ok",
                 "<|endoftext|> after a special"]:
        assert lm.tokenizer.encode(text, add_special_tokens=False) == \
            bpe_tokenizer.encode(text, add_special_tokens=False), text
    ref = M.build_vocab(bpe_tokenizer)
    assert lm.vocab.token_bytes == ref.token_bytes
    assert lm.vocab.special_ids == ref.special_ids
    assert lm.add_bos_token is False and lm.prompt_ids("hello") == bpe_tokenizer.encode("hello")


def test_gguf_chat_template_applies(written):
    lm = M.load(written[0])
    msgs = [{"role": "user", "content": "hi"}]
    text = ppl.chat(lm, msgs, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ppl.chat(lm, msgs) == lm.encode(text)


def test_convert_writes_a_folder_both_loaders_read(written, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from ppl.models import gguf as G

    folder = G.convert(written[0], tmp_path / "hf")
    assert {p.name for p in folder.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "ppl_conversion.json",
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    a, b = M.load(written[0]), M.load(folder)
    ids = [3, 17, 42, 5]
    np.testing.assert_array_equal(a.next_token_logprobs(ids), b.next_token_logprobs(ids))
    assert b.chat_template == a.chat_template and b.vocab.token_bytes == a.vocab.token_bytes
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor([ids])).logits[0, -1].float(), -1).numpy()
    np.testing.assert_allclose(b.next_token_logprobs(ids), lp, atol=TOL, rtol=0)


def test_sentencepiece_gguf_tokenizer(tmp_path, sp_tokenizer):
    """A ``tokenizer.ggml.model = llama`` vocabulary (scores, byte tokens, no merges): the
    rebuilt tokenizer round-trips text, falls back to bytes, adds BOS as llama.cpp does by
    default, and its byte table matches its own decoding for every id."""
    from ppl.models import gguf as G

    tok = sp_tokenizer
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
          "tokenizer.ggml.scores": [-float(i) for i in range(len(pieces))],
          "tokenizer.ggml.token_type": [2 if p == "<unk>" else 3 if p in ("<s>", "</s>") else
                                        6 if p.startswith("<0x") else 1 for p in pieces],
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
          "tokenizer.ggml.unknown_token_id": 0}
    rebuilt = G._tokenizer(md, tmp_path / "x.gguf")
    for text in ["hello world", "the lazy dog said hello", "ünïcödé ✓"]:
        ids = rebuilt.encode(text, add_special_tokens=False)
        assert rebuilt.decode(ids) == text
    # "é" is in no piece of this vocabulary: its two UTF-8 bytes become byte tokens.
    assert rebuilt.convert_ids_to_tokens(rebuilt.encode("é", add_special_tokens=False))[-2:] == \
        ["<0xC3>", "<0xA9>"]
    assert rebuilt.encode("hi", add_special_tokens=True)[0] == 1
    vocab = M.build_vocab(rebuilt)
    for i in range(len(rebuilt)):
        if i in vocab.special_ids:
            continue
        anchor = rebuilt.convert_tokens_to_ids("▁the")
        got = rebuilt.decode([anchor, i])[len(rebuilt.decode([anchor])):]
        assert got == vocab.token_bytes[i].decode("utf-8", errors="replace"), (i, pieces[i])


def _md_file(tmp_path, bpe_tokenizer, **kw):
    rng = np.random.default_rng(0)
    state = {"model.embed_tokens.weight": rng.standard_normal((300, 64)).astype(np.float32),
             "model.norm.weight": np.ones(64, np.float32)}
    cfg = dict(CFG, num_hidden_layers=0)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, state, bpe_tokenizer, **kw)
    return path


def test_unsupported_architecture_is_named(tmp_path, bpe_tokenizer):
    path = _md_file(tmp_path, bpe_tokenizer, arch="gemma3")
    with pytest.raises(ValueError) as e:
        M.load(path)
    assert str(e.value) == (f"{path}: unsupported GGUF architecture 'gemma3'; supported: llama. "
                            "Load the model's Hugging Face folder instead.")


def test_unsupported_pre_tokenizer_is_named(tmp_path, bpe_tokenizer):
    path = _md_file(tmp_path, bpe_tokenizer, pre="chameleon")
    with pytest.raises(ValueError) as e:
        M.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: unsupported pre-tokenizer 'chameleon' (tokenizer.ggml.pre); supported: ")
    assert "smollm" in msg and "llama-bpe" in msg


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ValueError, match=r"broken.gguf: not a valid GGUF file \("):
        M.load(path)
