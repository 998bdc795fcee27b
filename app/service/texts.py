"""What a text must be, in every protocol: one rule that the published schema and every validator apply alike.

"Has content" is written as an explicit character class, not ``\\S``: JSON Schema tools read a ``pattern`` with
ECMAScript semantics, pydantic with Rust's or Python's, and the three disagree on what white space is (U+0085, U+FEFF,
U+001C-U+001F). A text is blank when every character is in ``BLANK_CHARACTERS``: white space to ECMAScript or to
Python, whichever says so. The pattern spells each code point as a ``\\u`` escape of four hex digits, read alike
by all three engines.
"""

from __future__ import annotations

import re

MAX_TEXT_CHARS = 100_000  # per premise or hypothesis, whatever the protocol; counted in code points, as JSON Schema

# Ranges of code points that count as blank: ECMAScript's WhiteSpace and LineTerminator plus Python's str.isspace().
BLANK_RANGES: tuple[tuple[int, int], ...] = (
    (0x09, 0x0D),
    (0x1C, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
)
BLANK_CHARACTERS = frozenset(chr(code) for low, high in BLANK_RANGES for code in range(low, high + 1))


def _class_item(low: int, high: int) -> str:
    return f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}"


# Search semantics (JSON Schema's ``pattern`` is unanchored): matches where a text has a character that is not blank.
CONTENT_PATTERN = "[^" + "".join(_class_item(low, high) for low, high in BLANK_RANGES) + "]"
_CONTENT = re.compile(CONTENT_PATTERN)


def has_content(text: str) -> bool:
    return _CONTENT.search(text) is not None


def text_problem(text: str) -> str | None:
    """Why ``text`` may not be served (for a protocol's own error), or None."""
    if len(text) > MAX_TEXT_CHARS:
        return f"has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted"
    if not has_content(text):
        return "is empty or blank"
    return None
