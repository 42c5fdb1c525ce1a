"""Language models in pure JAX: the prior of every steering program."""

from ppl.models.base import (LanguageModel, SharedCache, Vocab, broadcast_cache, join_cache, reorder,
                             split_cache)
from ppl.models.chat import chat
from ppl.models.gpt2 import GPT2LM
from ppl.models.llama import LlamaLM
from ppl.models.loading import SUPPORTED_ARCHITECTURES, available, load
from ppl.models.ngram import NGramLM
from ppl.models.registry import NAMED_MODELS
from ppl.models.vocab import build_vocab

__all__ = [
    "GPT2LM",
    "LanguageModel",
    "LlamaLM",
    "NAMED_MODELS",
    "NGramLM",
    "SUPPORTED_ARCHITECTURES",
    "SharedCache",
    "Vocab",
    "available",
    "broadcast_cache",
    "build_vocab",
    "chat",
    "join_cache",
    "load",
    "reorder",
    "split_cache",
]
