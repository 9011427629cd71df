"""Content filter (``messages.filter``) on ``data.content``: a word list and regular expressions,
case-insensitive. ``reject`` refuses the frame with MESSAGE_FILTERED; ``mask`` delivers it with
every character of every match replaced by ``mask_char`` and nothing else changed.

Words match whole words only: not inside a longer word, whatever characters they start or end
with (``c++``, ``f*ck``). A word character is one of ``\\w`` or a combining mark, so a word
does not match the start of a Devanagari word or of a decomposed ``café``; a word is looked for
in both its composed and decomposed Unicode forms. Next to a letter of a script written without
spaces (Chinese, Japanese, Korean, Thai, Lao, Khmer, Myanmar) there is no boundary to find, so
on that side a word matches anywhere. Patterns match wherever they match; an empty match is
ignored.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import TYPE_CHECKING, Any, Iterator

from pydantic import BaseModel

from ..config import FilterConfig
from ..errors import MessageRejected
from ..protocol import Envelope, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection

_SPACELESS = ("CJK ", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "HANGUL", "THAI", "LAO",
              "KHMER", "MYANMAR")


@functools.cache
def _word_char() -> str:
    """A class of the characters words are made of: ``\\w``, every combining mark (category
    M, which ``\\w`` leaves out) and the zero-width (non-)joiners."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    marks = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)
    return f"[\\w{marks}\u200c\u200d]"


def _bounded(char: str) -> bool:
    """Whether a word that starts or ends with ``char`` needs a boundary on that side."""
    return not unicodedata.name(char, "").startswith(_SPACELESS)


def _word_groups(words: list[str]) -> dict[tuple[bool, bool], list[str]]:
    """The words' composed and decomposed forms, escaped, by kind of edge (bounded or not on
    each side), longest words first so that the longest match wins."""
    groups: dict[tuple[bool, bool], list[str]] = {}
    for word in sorted(set(words), key=len, reverse=True):
        forms = dict.fromkeys(unicodedata.normalize(f, word) for f in ("NFC", "NFD"))
        groups.setdefault((_bounded(word[0]), _bounded(word[-1])), []).extend(map(re.escape, forms))
    return groups


def _word_patterns(groups: dict[tuple[bool, bool], list[str]]) -> list[str]:
    """One alternation per kind of edge, with its boundaries."""
    word_char = _word_char()
    return [(f"(?<!{word_char})" if left else "") + "(?:" + "|".join(alts) + ")"
            + (f"(?!{word_char})" if right else "") for (left, right), alts in groups.items()]


class FilterStage:
    name = "filter"

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        groups = _word_groups([w for w in config.words if w]) if config.enabled else {}
        #: every form of every word in one alternation, without the boundaries: where it finds
        #: nothing no word can match, so the word patterns (whose look-behind is tried at every
        #: position, ten times the cost) only run on text that holds one of the words
        self.hint = (re.compile("|".join(a for alts in groups.values() for a in alts), re.IGNORECASE)
                     if groups else None)
        self.words = [re.compile(source, re.IGNORECASE) for source in _word_patterns(groups)]
        #: each regular expression on its own (so it keeps its inline flags)
        self.patterns = ([re.compile(p, re.IGNORECASE) for p in config.patterns if p]
                         if config.enabled else [])

    def _matches(self, text: str) -> Iterator[tuple[int, int]]:
        patterns = self.patterns
        if self.hint is not None and self.hint.search(text) is not None:
            patterns = self.words + patterns
        for pattern in patterns:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    yield match.span()

    def mask(self, text: str) -> str:
        """``text`` with every character inside a match replaced by ``mask_char``."""
        pieces: list[str] = []
        done = 0
        for start, end in sorted(self._matches(text)):
            start = max(start, done)
            if end > start:
                pieces += [text[done:start], self.config.mask_char * (end - start)]
                done = end
        return "".join(pieces) + text[done:]

    def process(self, conn: "Connection", env: Envelope) -> Envelope | None:
        content = env.data.get("content")
        if (self.hint is None and not self.patterns) or not isinstance(content, str):
            return env
        if self.config.action == "reject":
            if next(self._matches(content), None) is not None:
                conn.log.info("message_filtered", type=env.type, action="reject")
                raise MessageRejected(ErrorCode.MESSAGE_FILTERED, "the message contains filtered content")
            return env
        masked = self.mask(content)
        if masked != content:
            conn.log.info("message_filtered", type=env.type, action="mask")
            env.data["content"] = masked
            env.payload = _with_content(env.payload, masked)
            env.filtered = True
        return env


def _with_content(payload: Any, value: str) -> Any:
    """The validated payload with its ``content`` replaced (a dict payload is ``env.data``)."""
    if isinstance(payload, BaseModel) and ("content" in type(payload).model_fields
                                           or "content" in (payload.model_extra or {})):
        return payload.model_copy(update={"content": value})
    return payload
