"""Writing one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(header: str, body: str, path: Path = DOCS) -> None:
    """Replaces the section starting at ``header`` (up to the next ``## ``) with ``body``,
    or appends it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if header in text:
        start = text.index(header)
        nxt = text.find("\n## ", start + len(header))
        text = text[:start] + body + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    path.write_text(text)
