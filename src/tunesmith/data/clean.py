"""Text normalisation and HTML stripping for training examples."""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import replace

from tunesmith.data.example import Example

# Zero-width and invisible formatting characters that survive NFKC.
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
_ZERO_WIDTH_RE = re.compile(f"[{_ZERO_WIDTH}]")
_NEWLINES_RE = re.compile(r"\r\n|\r|\u2028|\u2029|\x85|\x0b|\x0c")
_SPACES_RE = re.compile(r"[ \t]+")
_TRAILING_RE = re.compile(r" +\n")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")

# HTML (opening, closing) pairs removed together with everything between them.
_BLOCKS = (
    (re.compile(r"<!--"), re.compile(r"-->")),
    (re.compile(r"<script\b[^<>]*>", re.IGNORECASE), re.compile(r"</script\s*>", re.IGNORECASE)),
    (re.compile(r"<style\b[^<>]*>", re.IGNORECASE), re.compile(r"</style\s*>", re.IGNORECASE)),
)
_BREAK_TAG_RE = re.compile(
    r"<br\b[^<>]*>|</(?:p|div|li|tr|h[1-6]|blockquote|pre|table|ul|ol)\s*>",
    re.IGNORECASE,
)
# Only things that look like tags ("<" + optional "/" + letter) are removed, so "a < b" survives.
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")


def _drop_blocks(text: str, opening: re.Pattern[str], closing: re.Pattern[str]) -> str:
    """Remove each ``opening ... closing`` block; an unclosed opening is left for the tag pass.

    Linear time: once no closing follows an opening, no later opening can have one either.
    """
    parts: list[str] = []
    pos = 0
    while (start := opening.search(text, pos)) is not None:
        end = closing.search(text, start.end())
        if end is None:
            break
        parts.append(text[pos:start.start()])
        pos = end.end()
    parts.append(text[pos:])
    return "".join(parts)


def _strip_html(text: str) -> str:
    """Turn HTML-ish text into plain text: line breaks for block ends, other tags dropped."""
    for opening, closing in _BLOCKS:
        text = _drop_blocks(text, opening, closing)
    text = _BREAK_TAG_RE.sub("\n", text)
    text = _TAG_RE.sub("", text)
    return html.unescape(text)


def _is_removable(ch: str) -> bool:
    """True for control/format characters other than newline and tab."""
    if ch in "\n\t":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def normalize_text(text: str, strip_html: bool = False) -> str:
    """Normalise Unicode and whitespace; optionally strip HTML tags and entities first.

    Steps: HTML stripping (if asked), NFKC, newline normalisation to ``\\n``, removal of
    zero-width/control characters (``\\n`` and ``\\t`` kept), collapsing of space/tab runs,
    removal of trailing spaces, collapsing of 3+ newlines to 2, and stripping the ends.
    """
    if strip_html:
        text = _strip_html(text)
    text = unicodedata.normalize("NFKC", text)
    text = _NEWLINES_RE.sub("\n", text)
    text = _ZERO_WIDTH_RE.sub("", text)
    text = "".join(ch for ch in text if not _is_removable(ch))
    text = _SPACES_RE.sub(" ", text)
    text = _TRAILING_RE.sub("\n", text)
    text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return text.strip()


def clean_example(ex: Example, strip_html: bool, normalize: bool) -> Example:
    """Return a copy of ``ex`` with every message content and its text cleaned.

    With ``normalize`` false and ``strip_html`` true only HTML is removed; with both false
    the example is copied unchanged. Roles, weights, label, source and line are kept.
    """
    def clean(value: str) -> str:
        if normalize:
            return normalize_text(value, strip_html=strip_html)
        return _strip_html(value) if strip_html else value

    messages = [
        {**m, "content": clean(m["content"])} if isinstance(m.get("content"), str) else dict(m)
        for m in ex.messages
    ]
    text = clean(ex.text) if ex.text is not None else None
    rejected = clean(ex.rejected) if getattr(ex, "rejected", None) is not None else None
    return replace(ex, messages=messages, text=text, rejected=rejected)
