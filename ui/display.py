"""Small formatting helpers the pages share: text as Streamlit markdown, letters as badges."""

from __future__ import annotations

import re

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]<>#|$~])")


def plain(text: str) -> str:
    """Text shown literally in Streamlit markdown (no stray math, emphasis or HTML)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def message(text: str) -> str:
    """A multi-line message (one problem a line) for `st.error`: its lines kept, no stray math."""
    return "  \n".join(line.replace("$", "\\$") for line in text.splitlines())


def letter_badge(letter: str | None, gold: str | None) -> str:
    """An extracted letter, highlighted: green when it is the gold answer, red when not, blue without gold."""
    if letter is None:
        return ":gray-background[no letter]"
    colour = "blue" if gold is None else ("green" if letter == gold else "red")
    return f":{colour}-background[**{letter}**]"


def verdict(correct: bool | None) -> str:
    return "" if correct is None else (":green[right]" if correct else ":red[wrong]")


def usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
