"""Language models in pure JAX: the prior of every steering program."""

from ppl.models.base import LanguageModel, Vocab, broadcast_cache, reorder
from ppl.models.loading import load
from ppl.models.ngram import NGramLM

__all__ = ["LanguageModel", "NGramLM", "Vocab", "broadcast_cache", "load", "reorder"]
