"""The text views the steps work on: the code of a sample, normalized text, word tokens and their n-grams."""

from __future__ import annotations

import re
from collections.abc import Iterator

FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
WORD = re.compile(r"\w+")
TOKEN = re.compile(r"\w+|[^\w\s]")
SPACE = re.compile(r"\s+")


def code_of(text: str, target: str) -> str:
    """With ``target`` ``code_block``: the first fenced code block of ``text`` (any language), or the whole
    text when it has none; with ``text``: the whole text."""
    if target == "code_block":
        found = FENCE.search(text)
        if found is not None:
            return found.group(2)
    return text


def normalized(text: str) -> str:
    """The text that exact dedup compares: lower-cased, every run of whitespace one space, trimmed."""
    return SPACE.sub(" ", text.lower()).strip()


def words(text: str) -> list[str]:
    """Near-dedup's tokens: the lower-cased words (``\\w+``); punctuation and spacing do not count."""
    return WORD.findall(text.lower())


def tokens(text: str) -> list[str]:
    """Decontamination's tokens: words and single punctuation characters, case kept."""
    return TOKEN.findall(text)


def ngrams(items: list[str], size: int) -> Iterator[str]:
    """The ``size``-grams of ``items`` joined by spaces; a shorter list is one n-gram of all of it."""
    if len(items) <= size:
        if items:
            yield " ".join(items)
        return
    for start in range(len(items) - size + 1):
        yield " ".join(items[start:start + size])
