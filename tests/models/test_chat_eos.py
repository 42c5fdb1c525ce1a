"""Chat prompts (``ppl.chat``, ``steer(messages=...)``) and models with several EOS ids.

Several EOS ids: a checkpoint's ``generation_config.json`` may list more than one (Llama 3
Instruct ends a turn at ``<|eot_id|>`` or ``<|end_of_text|>``). The exact test: a model whose
ids 3 and 4 both end a sequence must give the same posterior and evidence as the model where
id 3's probability is merged into id 4 (``p'(4 | x) = p(3 | x) + p(4 | x)``), since both
define the same distribution over texts. Both sides are exact enumerations
([ppl.testing.enumerate_posterior][ppl.testing.enumerate_posterior]), so the tolerance is
float32 rounding (1e-5).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import ppl
import ppl.models as M
from ppl.models.base import Vocab
from ppl.stdlib import constraints as C

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n"
            "{{ m['content'] }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}")


# ---- several EOS ids ----------------------------------------------------------------------
def _trigram(seed: int, eos_ids):
    from ppl.testing import TrigramLM

    rng = np.random.default_rng(seed)
    v = 5
    first, trans = rng.normal(size=v) * 1.5, rng.normal(size=(v + 1, v, v)) * 1.5
    if len(eos_ids) == 1:  # merge id 3 into id 4
        first[4], first[3] = np.logaddexp(first[3], first[4]), -np.inf
        trans[..., 4], trans[..., 3] = np.logaddexp(trans[..., 3], trans[..., 4]), -np.inf
    lm = TrigramLM(TrigramLM.make_params(first, trans), eos_token_id=4, token_strings=["a", "b", "c", "", ""])
    lm.vocab = Vocab.from_bytes([b"a", b"b", b"c", b"", b""], 4, special_ids={3}, eos_token_ids=eos_ids)
    lm.eos_token_ids = eos_ids
    return lm


@pytest.mark.parametrize("constraint", [
    "(a|b)+", pytest.param(None, marks=pytest.mark.slow), pytest.param("a?c", marks=pytest.mark.slow)])
def test_every_eos_id_ends_a_sequence_exactly(constraint):
    from ppl.testing import enumerate_posterior

    cons = [] if constraint is None else [C.regex(constraint)]
    multi = enumerate_posterior(ppl.steer(_trigram(0, (4, 3)), constraints=cons, max_tokens=4))
    merged = enumerate_posterior(ppl.steer(_trigram(0, (4,)), constraints=cons, max_tokens=4))
    assert multi.log_evidence == pytest.approx(merged.log_evidence, abs=1e-5)
    assert set(multi.posterior) == set(merged.posterior)
    for text, p in merged.posterior.items():
        assert multi.posterior[text] == pytest.approx(p, abs=1e-5), text
    # Sequences really end at id 3 too, and nothing follows an EOS id.
    ends = {seq[-1] for seq in multi.sequences if len(seq) < 4}
    assert ends == {3, 4}
    assert all(3 not in seq[:-1] and 4 not in seq[:-1] for seq in multi.sequences)


def test_token_automaton_treats_every_eos_id_as_eos():
    vocab = Vocab.from_bytes([b"", b"", b"a", b"b"], 0, eos_token_ids=(0, 1))
    aut = C.regex("ab?").compile(vocab)
    assert aut.eos_token_ids == (0, 1)
    s0 = aut.init_state()
    assert list(np.asarray(aut.allowed(s0))) == [False, False, True, False]  # not accepting yet
    s1 = aut.advance(s0, jnp.int32(2))
    assert list(np.asarray(aut.allowed(s1))) == [True, True, False, True]  # "a" is accepted
    for eos in (0, 1):
        assert int(aut.advance(s1, jnp.int32(eos))) == int(s1)  # EOS keeps an accepting state
        assert int(aut.advance(s0, jnp.int32(eos))) == 0  # and kills a non-accepting one
    # "ab" is accepted with no token after "b"; both EOS ids are in budget.
    assert list(np.asarray(aut.within_budget(s1, jnp.int32(0)))) == [True, True, False, True]


def test_vocab_eos_ids_are_special_and_primary_first():
    v = Vocab.from_bytes([b"x", b"", b"", b"y"], 2, eos_token_ids=(1, 2))
    assert v.eos_token_ids == (2, 1) and {1, 2} <= v.special_ids
    assert list(v.eos_mask()) == [False, True, True, False]


# ---- chat ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory, helpers):
    """A random Llama checkpoint whose tokenizer has a Llama-3-style chat template (it writes
    BOS itself) and adds BOS to plain prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["hello there, how are you? user assistant system"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("chat")
    helpers.random_checkpoint("llama", folder, tok, bos_token_id=0, eos_token_id=1)
    return M.load(folder)


MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def test_chat_applies_the_template_with_the_generation_prompt(chat_lm):
    text = ppl.chat(chat_lm, MSGS, tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\nbe brief<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\nhello there<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n")
    ids = ppl.chat(chat_lm, MSGS)
    assert ids == chat_lm.encode(text)
    assert ids.count(0) == 1 and ids[0] == 0  # one BOS: the template's, none added
    assert ppl.chat(chat_lm, MSGS, add_generation_prompt=False, tokenize=False).endswith("hello there<|eot_id|>")
    assert ppl.chat is ppl.models.chat


def test_steer_messages_is_the_chat_prompt(chat_lm):
    prog = ppl.steer(chat_lm, messages=MSGS, max_tokens=3)
    assert prog.prompt == ppl.chat(chat_lm, MSGS)
    assert chat_lm.prompt_ids(prog.prompt) == prog.prompt  # ids are not given a second BOS
    assert chat_lm.prompt_ids("hello")[0] == 0  # while a text prompt gets the tokenizer's BOS
    res = ppl.infer(prog, method="smc", particles=4, seed=0)
    assert len(res.texts) == 4 and np.isfinite(res.log_evidence)


def test_steer_refuses_prompt_and_messages(chat_lm):
    with pytest.raises(ValueError) as e:
        ppl.steer(chat_lm, "hello", messages=MSGS)
    assert str(e.value) == ("steer: give prompt= or messages=, not both (messages are turned into the "
                            "prompt by the model's chat template).")


def test_a_model_without_template_is_told_so(helpers, tmp_path, bpe_tokenizer):
    lm = M.load(helpers.random_checkpoint("llama", tmp_path / "base", bpe_tokenizer))
    assert lm.chat_template is None
    msg = (f"{lm.name}: this model has no chat template (its tokenizer files define none, as for base "
           "models that are not chat/instruct-tuned), so messages cannot be formatted. Give a plain "
           "text prompt instead, or pass chat_template='...' (a Jinja template).")
    with pytest.raises(ValueError) as e:
        ppl.chat(lm, MSGS)
    assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        ppl.steer(lm, messages=MSGS)
    assert str(e.value) == msg
    # An explicit template works on any model.
    assert ppl.chat(lm, [{"role": "user", "content": "hi"}], tokenize=False,
                    chat_template="{{ messages[0]['content'] }}!") == "hi!"


@pytest.mark.parametrize("messages,err", [
    ("hello", TypeError), ([], ValueError), ([{"content": "x"}], TypeError),
    ([{"role": 1, "content": "x"}], TypeError),
])
def test_malformed_messages(chat_lm, messages, err):
    with pytest.raises(err, match="chat: "):
        ppl.chat(chat_lm, messages)


def test_chat_template_file_round_trip(chat_lm, tmp_path):
    """The template survives save_pretrained/load (chat_template.jinja or tokenizer_config)."""
    folder = tmp_path / "again"
    import shutil

    shutil.copytree(chat_lm.path, folder)
    lm = M.load(folder)
    assert lm.chat_template == TEMPLATE
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
