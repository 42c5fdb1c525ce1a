"""The embedded model's tokenizer without transformers.

``transformers`` 5 imports PyTorch whenever it is installed (its configuration module pulls in
``torch`` for RoPE helpers), which is most of the start-up of a short run on the embedded
model. The embedded model's tokenizer is a plain byte-level BPE in a ``tokenizer.json`` with
no chat template, no BOS/EOS post-processing and no text clean-up, so the ``tokenizers``
library reproduces exactly what ``AutoTokenizer`` does with it. This wrapper exposes the part
of the Hugging Face tokenizer interface the package uses, and hands any other attribute to the
``AutoTokenizer`` of the same folder, loaded on first use (so ``lm.tokenizer(...)``,
``batch_decode`` and the rest still work). It refuses any tokenizer folder that needs more
than it reproduces (``tests/models/test_tiny.py`` checks it against ``AutoTokenizer`` token
for token and byte for byte).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

__all__ = ["TokenizersTokenizer"]


class TokenizersTokenizer:
    """A ``tokenizers.Tokenizer`` with the Hugging Face tokenizer methods the package calls.

    Args:
        folder: a folder with ``tokenizer.json`` and ``tokenizer_config.json``.

    Raises:
        ValueError: the folder's tokenizer needs what only transformers does (a chat template,
            added BOS/EOS, text clean-up, a slow tokenizer class).
    """

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        if not self.suitable(cfg):
            raise ValueError(f"{folder}: this tokenizer needs transformers' AutoTokenizer.")
        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.chat_template = None
        self.name_or_path = str(folder)
        added = self.backend_tokenizer.get_added_tokens_decoder()
        self.added_tokens_decoder = {
            int(i): SimpleNamespace(content=t.content, special=bool(t.special)) for i, t in added.items()
        }
        self.eos_token = cfg.get("eos_token")
        self.bos_token = cfg.get("bos_token")
        self.eos_token_id = self._id(self.eos_token)
        self.bos_token_id = self._id(self.bos_token)
        names = [cfg.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
        ids = [self._id(n) for n in names if n]
        ids += [i for i, t in self.added_tokens_decoder.items() if t.special]
        self.all_special_ids = sorted({i for i in ids if i is not None})

    @staticmethod
    def suitable(cfg: dict) -> bool:
        """Whether ``tokenizer_config.json`` describes a tokenizer this class reproduces."""
        return (cfg.get("tokenizer_class") == "PreTrainedTokenizerFast"
                and not cfg.get("chat_template")
                and not cfg.get("add_bos_token") and not cfg.get("add_eos_token")
                and not cfg.get("clean_up_tokenization_spaces")
                and not cfg.get("added_tokens_decoder")
                and all(isinstance(cfg.get(k), (str, type(None)))
                        for k in ("bos_token", "eos_token", "unk_token", "pad_token")))

    def _id(self, token):
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode([int(i) for i in ids],
                                             skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def full_tokenizer(self):
        """The transformers ``AutoTokenizer`` of the same folder (loaded once, on first use)."""
        full = self.__dict__.get("_full")
        if full is None:
            from transformers import AutoTokenizer

            full = AutoTokenizer.from_pretrained(self.name_or_path, local_files_only=True,
                                                 trust_remote_code=False)
            self.__dict__["_full"] = full
        return full

    def __getattr__(self, name: str):
        # Only reached for attributes this class does not define.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.full_tokenizer(), name)

    def __call__(self, *args, **kwargs):
        return self.full_tokenizer()(*args, **kwargs)

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def __repr__(self) -> str:
        return f"TokenizersTokenizer({self.name_or_path!r}, vocab={len(self)})"
