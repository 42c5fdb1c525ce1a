"""Chat prompts: ``ppl.chat(lm, messages)`` applies the checkpoint's chat template.

Instruct models are trained on conversations written in their own format (``<|im_start|>``
turns for SmolLM2 and Qwen, ``<|start_header_id|>`` for Llama 3, ...). The format is a Jinja
template shipped with the tokenizer (``tokenizer_config.json`` / ``chat_template.jinja``, or a
GGUF file's ``tokenizer.chat_template``). It is rendered by transformers'
``apply_chat_template`` (Jinja2, sandboxed) with the assistant's turn opened
(``add_generation_prompt=True``), then encoded without adding special tokens, exactly as
``apply_chat_template(..., tokenize=True)`` does: whatever BOS the template writes is in the
text, and none is added twice.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["chat"]


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            "chat: messages is a list of {'role': ..., 'content': ...} dicts, e.g. "
            "[{'role': 'user', 'content': 'Hello'}]; got " + type(messages).__name__ + "."
        )
    if not messages:
        raise ValueError("chat: messages is empty; give at least one {'role': 'user', 'content': ...}.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TypeError(f"chat: message {i} is {m!r}; each message is a dict with 'role' and "
                            "'content' keys.")
        if not isinstance(m["role"], str):
            raise TypeError(f"chat: message {i} has role {m['role']!r}; a role is a string "
                            "('system', 'user' or 'assistant').")
        out.append(dict(m))
    return out


def chat(lm, messages: Sequence[dict], *, add_generation_prompt: bool = True,
         tokenize: bool = True, chat_template: str | None = None, **template_vars: Any
         ) -> list[int] | str:
    """The prompt of a chat, formatted with the model's chat template.

    Args:
        lm: a loaded model (its tokenizer carries the template).
        messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
        add_generation_prompt: open the assistant's turn, so that generation is its reply.
        tokenize: return token ids (the default; pass them as the prompt) instead of text.
            Give the ids, not the text, to ``steer``/``Program``: a text prompt gets the
            tokenizer's BOS added in front, which the template may already have written.
        chat_template: a Jinja template to use instead of the checkpoint's.
        **template_vars: extra variables for the template (e.g. ``tools=...``).

    Returns:
        Token ids (``list[int]``), or the formatted text when ``tokenize=False``.

    Raises:
        ValueError: the model has no chat template (a base model), or ``messages`` is empty.
        TypeError: ``messages`` is not a list of role/content dicts.
    """
    msgs = _check_messages(messages)
    template = chat_template or getattr(lm, "chat_template", None)
    name = getattr(lm, "name", "model")
    if not template:
        raise ValueError(
            f"{name}: this model has no chat template (its tokenizer files define none, as for "
            "base models that are not chat/instruct-tuned), so messages cannot be formatted. "
            "Give a plain text prompt instead, or pass chat_template='...' (a Jinja template)."
        )
    tok = getattr(lm, "tokenizer", None)
    if not hasattr(tok, "apply_chat_template"):
        raise ValueError(f"{name}: its tokenizer ({type(tok).__name__}) cannot apply chat templates; "
                         "format the prompt yourself.")
    try:
        import jinja2  # noqa: F401  (transformers renders templates with it)
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("chat templates need jinja2: pip install jinja2") from e
    try:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       chat_template=template, **template_vars)
    except Exception as e:  # a template error names the template's own message
        raise ValueError(f"{name}: the chat template failed on these messages: {e}") from e
    if not tokenize:
        return text
    return list(lm.encode(text))
