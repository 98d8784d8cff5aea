"""Regex-based PII detection and anonymisation with typed placeholders."""
from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from urllib.parse import unquote

from tunesmith.data.example import Example

URL_SECRET = "URL_SECRET"
EMAIL = "EMAIL"
IBAN = "IBAN"
CREDIT_CARD = "CREDIT_CARD"
SSN = "SSN"
IP_ADDRESS = "IP_ADDRESS"
PHONE = "PHONE"

#: Kinds from most to least specific: the earlier kind wins when two hits overlap.
PRIORITY: tuple[str, ...] = (URL_SECRET, EMAIL, IBAN, CREDIT_CARD, SSN, IP_ADDRESS, PHONE)

PLACEHOLDERS: dict[str, str] = {
    URL_SECRET: "<SECRET>",
    EMAIL: "<EMAIL>",
    IBAN: "<IBAN>",
    CREDIT_CARD: "<CREDIT_CARD>",
    SSN: "<SSN>",
    IP_ADDRESS: "<IP_ADDRESS>",
    PHONE: "<PHONE>",
}


@dataclass(frozen=True)
class PiiHit:
    """One detected PII span: ``text[start:end]`` is of the given kind."""

    kind: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------- validators

def luhn_valid(digits: str) -> bool:
    """True if the digit string passes the Luhn checksum."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """True if ``iban`` (spaces allowed) has a plausible length and passes the mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isalnum() and compact.isascii()):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


# ---------------------------------------------------------------- patterns

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)
# Country code, check digits, then groups of four (optionally space separated).
_IBAN_RE = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])")
# A whole run of digit groups; the card is the longest Luhn-valid prefix of it (see _cards).
_CARD_RE = re.compile(r"(?<![\w.,])(?<!\d[ -])\d(?:[ -]?\d){12,}(?!\w)")
_SSN_RE = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w]|-\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)"
)
_PHONE_RE = re.compile(
    r"(?<![\w.+])(?<!\d[ ./-])(?:"
    # International: +CC then digit groups, "(0)" trunk and "(area)" allowed.
    r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
    # US: optional 1, (555) 123-4567 / 555-123-4567 / 555.123.4567 / 555 123 4567.
    r"|(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    # European national (trunk 0 + area code) or 00-prefixed international, then groups.
    r"|(?:\(0\d{1,4}\)|0(?:0[1-9]|[1-9])\d{0,3})(?:[ ./-]?\d{2,8}){1,4}"
    r")(?![\w]|[.-]\d)"
)
_DATE_PREFIX_RE = re.compile(r"\d{1,2}([./-])\d{1,2}\1(?:19|20)\d{2}|(?:19|20)\d{2}([./-])\d{1,2}\2\d{1,2}")
_URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s<>\"'`]+")
_URL_USERINFO_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^/?#@\s:]*:([^/?#@\s]+)@")
_URL_PARAM_RE = re.compile(r"[?&;#]([^=&;#?]+)=([^&;#]*)")

_SECRET_PARAMS = frozenset({
    "token", "key", "api_key", "apikey", "secret", "password", "passwd", "pwd",
    "access_token", "auth", "signature", "sig",
})
_SECRET_SUFFIXES = frozenset({
    "token", "key", "apikey", "secret", "password", "passwd", "pwd", "auth", "signature", "sig",
})


def _is_secret_param(name: str) -> bool:
    """True for query parameter names that usually carry credentials (``api_key``, ``X-Amz-Signature``)."""
    lowered = unquote(name).strip().lower()
    return lowered in _SECRET_PARAMS or re.split(r"[_.\-]", lowered)[-1] in _SECRET_SUFFIXES


# ---------------------------------------------------------------- detectors

Span = tuple[int, int]


def _url_secrets(text: str) -> Iterator[Span]:
    for url_match in _URL_RE.finditer(text):
        url = url_match.group().rstrip(".,;:!?)]}")
        base = url_match.start()
        userinfo = _URL_USERINFO_RE.match(url)
        if userinfo:
            yield base + userinfo.start(1), base + userinfo.end(1)
        params_at = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
        if params_at < 0:
            continue
        for param in _URL_PARAM_RE.finditer(url, params_at):
            if param.group(2) and _is_secret_param(param.group(1)):
                yield base + param.start(2), base + param.end(2)


def _regex_spans(pattern: re.Pattern[str], valid: Callable[[str], bool]) -> Callable[[str], Iterator[Span]]:
    def detect(text: str) -> Iterator[Span]:
        for m in pattern.finditer(text):
            if valid(m.group()):
                yield m.span()
    return detect


def _ibans(text: str) -> Iterator[Span]:
    """IBAN candidates; a failing candidate is retried without trailing groups (e.g. a next word)."""
    for m in _IBAN_RE.finditer(text):
        candidate = m.group()
        ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 3, -1) if candidate[i] == " "]
        for end in ends:
            if iban_valid(candidate[:end]):
                yield m.start(), m.start() + end
                break


def _cards(text: str) -> Iterator[Span]:
    """Card numbers: the longest prefix of a digit-group run (ending at a group boundary) with
    13-19 digits, a card-like grouping and a valid Luhn checksum, so that
    "4111 1111 1111 1111 12/25" still yields the card."""
    for m in _CARD_RE.finditer(text):
        run = m.group()
        digits = ""
        prefixes: list[tuple[int, str]] = []  # (end in run, digits so far) at group boundaries
        for i, ch in enumerate(run):
            if ch.isdigit():
                digits += ch
                if len(digits) > 19:
                    break
                if i + 1 == len(run) or run[i + 1] in " -":
                    prefixes.append((i + 1, digits))
        for end, number in reversed(prefixes):
            if len(number) >= 13 and _card_layout(run[:end]) and luhn_valid(number):
                yield m.start(), m.start() + end
                break


def _card_layout(candidate: str) -> bool:
    """True for the ways card numbers are written: contiguous, groups of four, or 4-6-4/4-6-5."""
    sizes = [len(group) for group in re.split(r"[ -]", candidate)]
    if len(sizes) == 1 or sizes in ([4, 6, 4], [4, 6, 5]):
        return True
    return all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _ipv6_valid(candidate: str) -> bool:
    if not any(ch.isdigit() for ch in candidate) or candidate.strip(":") == "":
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _phone_valid(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate.replace("(0)", ""))
    if not 9 <= len(digits) <= 15:
        return False
    if candidate.startswith("+"):
        return True
    # National numbers must be written with separators and must not start like a date.
    return bool(re.search(r"[ ./()-]", candidate)) and not _DATE_PREFIX_RE.match(candidate)


def _always(_: str) -> bool:
    return True


_DETECTORS: dict[str, tuple[Callable[[str], Iterator[Span]], ...]] = {
    URL_SECRET: (_url_secrets,),
    EMAIL: (_regex_spans(_EMAIL_RE, _always),),
    IBAN: (_ibans,),
    CREDIT_CARD: (_cards,),
    SSN: (_regex_spans(_SSN_RE, _always),),
    IP_ADDRESS: (_regex_spans(_IPV4_RE, _always), _regex_spans(_IPV6_RE, _ipv6_valid)),
    PHONE: (_regex_spans(_PHONE_RE, _phone_valid),),
}


# ---------------------------------------------------------------- public API

def find_pii(text: str) -> list[PiiHit]:
    """All PII hits in ``text``, non-overlapping and ordered by position.

    Every detector runs over the whole text; on overlap the more specific kind (earlier in
    :data:`PRIORITY`) wins, then the earlier and longer span.
    """
    candidates: list[tuple[int, int, int, str]] = []
    for rank, kind in enumerate(PRIORITY):
        for detect in _DETECTORS[kind]:
            candidates.extend((rank, start, -(end - start), kind) for start, end in detect(text))
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[str] = []
    for _, start, neg_len, kind in sorted(candidates):
        end = start - neg_len
        i = bisect.bisect_left(starts, start)
        if (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
            continue
        starts.insert(i, start)
        ends.insert(i, end)
        kinds.insert(i, kind)
    return [PiiHit(k, s, e, text[s:e]) for k, s, e in zip(kinds, starts, ends)]


def anonymize(text: str) -> tuple[str, Counter[str]]:
    """Replace every PII hit with its placeholder; return the new text and hits per kind."""
    counts: Counter[str] = Counter()
    parts: list[str] = []
    pos = 0
    for hit in find_pii(text):
        parts.append(text[pos:hit.start])
        parts.append(PLACEHOLDERS[hit.kind])
        counts[hit.kind] += 1
        pos = hit.end
    parts.append(text[pos:])
    return "".join(parts), counts


def anonymize_example(ex: Example) -> tuple[Example, Counter[str]]:
    """Anonymise every message content and the text of ``ex``; other fields are kept."""
    counts: Counter[str] = Counter()

    def clean(value: str) -> str:
        new, found = anonymize(value)
        counts.update(found)
        return new

    messages = [
        {**m, "content": clean(m["content"])} if isinstance(m.get("content"), str) else dict(m)
        for m in ex.messages
    ]
    text = clean(ex.text) if ex.text is not None else None
    rejected = clean(ex.rejected) if getattr(ex, "rejected", None) is not None else None
    return replace(ex, messages=messages, text=text, rejected=rejected), counts
