"""A constrained answer to an instruction: the reply is exactly one of the allowed choices.

Run:  python examples/chat_answer.py --model smollm2-135m-instruct   (a real instruct model;
      fetch it once with `ppl models get smollm2-135m-instruct`; about a minute on a CPU)
      python examples/chat_answer.py      (the embedded model: a plain text prompt)

Each question is a chat (``ppl.steer(lm, messages=...)`` applies the checkpoint's chat
template); the reply is constrained by ``C.regex("Paris|Tokyo|...")``: a token automaton that
allows a token only while the reply is still a prefix of a choice, and EOS only after a whole
one. Proposal: the LM masked to the allowed tokens; weight increment: the kept mass
``log Σ_{v allowed} p(v | x_<t)``; so the weighted particles target
``π(y) ∝ p_LM(y EOS | chat) 1[y is a choice]``, the model's own answer normalised over the
choices (no free text to parse), and ``log Z`` estimates ``log P_LM(the reply is exactly a
choice)``. The report asks the other questions too and counts the right answers.
"""

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
CHOICES = ["Paris", "Tokyo", "Rome", "Cairo", "London", "Madrid"]
QUESTIONS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo")]


def _program(lm, country: str, max_tokens: int):
    rule = C.regex("|".join(CHOICES))
    if lm.chat_template is None:  # a base model: the same question as plain text
        return ppl.steer(lm, f"The capital of {country} is the city of ", constraints=[rule],
                         max_tokens=max_tokens)
    messages = [{"role": "user", "content": f"What is the capital of {country}? Answer with one word."}]
    return ppl.steer(lm, messages=messages, constraints=[rule], max_tokens=max_tokens)


def make_program(lm, max_tokens: int = 6):
    """The program of the first question (``report`` asks the others)."""
    return _program(lm, QUESTIONS[0][0], max_tokens)


def check(text: str) -> bool:
    return text in CHOICES


def report(lm, result) -> dict:
    """The posterior answer to every question (the first is the run above) and the score."""
    out, right = {}, 0
    for i, (country, want) in enumerate(QUESTIONS):
        res = result if i == 0 else ppl.infer(_program(lm, country, 6), method=METHOD,
                                              particles=PARTICLES, seed=0)
        post = res.posterior()
        best = max(post, key=post.get)
        right += best == want
        out[country] = f"{best} ({post[best]:.2f})"
    out["right"] = f"{right}/{len(QUESTIONS)}"
    return out


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
