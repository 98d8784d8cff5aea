"""Tests for regex-based PII detection and anonymisation."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from tunesmith.data.example import Example
from tunesmith.data.pii import (
    PiiHit,
    anonymize,
    anonymize_example,
    find_pii,
    iban_valid,
    luhn_valid,
)


def test_luhn_validator():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111x1111111111")


def test_iban_validator():
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82")


def test_email():
    text, counts = anonymize("Mail john.doe+news@mail.example.co.uk or a@b please.")
    assert text == "Mail <EMAIL> or a@b please."
    assert counts == Counter({"EMAIL": 1})


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111",
                                  "4111111111111111", "3782 822463 10005"])
def test_valid_credit_cards_replaced(card):
    assert anonymize(f"Card: {card}.") == ("Card: <CREDIT_CARD>.", Counter({"CREDIT_CARD": 1}))


def test_card_followed_by_expiry_and_other_numbers():
    assert anonymize("4111 1111 1111 1111 12/25")[0] == "<CREDIT_CARD> 12/25"
    assert anonymize("pay 5500 0000 0000 0004 cvv 123")[0] == "pay <CREDIT_CARD> cvv 123"


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "4111111111111112",
                                    "1234 5678 9012 3456 7890 1234"])
def test_luhn_invalid_or_too_long_numbers_untouched(number):
    assert anonymize(f"Ref {number} end") == (f"Ref {number} end", Counter())


def test_iban_valid_and_invalid():
    text = "Pay GB82 WEST 1234 5698 7654 32 or DE89 3704 0044 0532 0130 00, not DE88 3704 0044 0532 0130 00."
    out, counts = anonymize(text)
    assert out == "Pay <IBAN> or <IBAN>, not DE88 3704 0044 0532 0130 00."
    assert counts == Counter({"IBAN": 2})
    assert anonymize("GB82WEST12345698765432")[0] == "<IBAN>"
    # A following capitalised word is not swallowed into the IBAN.
    assert anonymize("GB82 WEST 1234 5698 7654 32 ABCD")[0] == "<IBAN> ABCD"


def test_ipv4():
    out, counts = anonymize("hosts 192.168.0.1, 10.0.0.255 but not 256.1.1.1 or 1.2.3 or 1.2.3.4.5")
    assert out == "hosts <IP_ADDRESS>, <IP_ADDRESS> but not 256.1.1.1 or 1.2.3 or 1.2.3.4.5"
    assert counts == Counter({"IP_ADDRESS": 2})


def test_ipv6():
    out, counts = anonymize("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334, 2001:db8::1 and ::1.")
    assert out == "v6 <IP_ADDRESS>, <IP_ADDRESS> and <IP_ADDRESS>."
    assert counts["IP_ADDRESS"] == 3


def test_ipv6_lookalikes_untouched():
    text = "at 12:30:45 use std::vector, MAC 00:1A:2B:3C:4D:5E"
    assert anonymize(text) == (text, Counter())


def test_ssn():
    out, counts = anonymize("SSN 123-45-6789; invalid 000-12-3456 666-12-3456 912-12-3456 123-00-4567")
    assert out == "SSN <SSN>; invalid 000-12-3456 666-12-3456 912-12-3456 123-00-4567"
    assert counts == Counter({"SSN": 1})


@pytest.mark.parametrize("phone", [
    "+44 20 7946 0958", "+1 (555) 123-4567", "+14155552671", "+44 (0)20 7946 0958",
    "+33 1 23 45 67 89", "(555) 123-4567", "555-123-4567", "555.123.4567", "1-800-555-1234",
    "020 7946 0958", "06 12 34 56 78", "0171 1234567", "030/1234567",
])
def test_phones(phone):
    assert anonymize(f"Call {phone} now") == ("Call <PHONE> now", Counter({"PHONE": 1}))


@pytest.mark.parametrize("text", [
    "In 2024 we met.", "Due 2024-01-05 or 05.01.2024 or 01/05/2024 12:00.",
    "pi is 3.14159265358979", "years 1999 2000 2001", "order 123456789012", "short 555-1234",
    "total 1,234,567.89",
])
def test_non_phones_untouched(text):
    assert anonymize(text) == (text, Counter())


def test_url_query_secret_only_value_replaced():
    out, counts = anonymize("GET https://api.example.com/v1/items?api_key=abc123&page=2 now")
    assert out == "GET https://api.example.com/v1/items?api_key=<SECRET>&page=2 now"
    assert counts == Counter({"URL_SECRET": 1})


def test_url_userinfo_and_params():
    text = ("See https://bob:hunter2@example.com/x?token=t0k&Signature=s1g&sort=asc. "
            "Also https://x.io/cb#access_token=zzz&state=1 and "
            "https://s3.example.com/o?X-Amz-Signature=ffee&X-Amz-Date=20240101")
    out, counts = anonymize(text)
    assert out == ("See https://bob:<SECRET>@example.com/x?token=<SECRET>&Signature=<SECRET>&sort=asc. "
                   "Also https://x.io/cb#access_token=<SECRET>&state=1 and "
                   "https://s3.example.com/o?X-Amz-Signature=<SECRET>&X-Amz-Date=20240101")
    assert counts == Counter({"URL_SECRET": 5})


def test_url_without_secrets_untouched():
    text = "Docs at https://example.com/search?q=keyword&page=3&monkey=1"
    assert anonymize(text) == (text, Counter())


def test_find_pii_ordered_non_overlapping_with_priority():
    text = "x https://u:pw@host.com y, mail me@ex.org, ip 8.8.8.8"
    hits = find_pii(text)
    assert hits == [
        PiiHit("URL_SECRET", 12, 14, "pw"),
        PiiHit("EMAIL", 32, 41, "me@ex.org"),
        PiiHit("IP_ADDRESS", 46, 53, "8.8.8.8"),
    ]
    for hit in hits:
        assert text[hit.start:hit.end] == hit.text


def test_iban_beats_phone_and_card_on_overlap():
    hits = find_pii("DE89 3704 0044 0532 0130 00")
    assert [h.kind for h in hits] == ["IBAN"]


def test_mixed_counts():
    text = "Email a.b@c.com or x@y.io, call +1 555 123 4567, card 4111 1111 1111 1111, ssn 123-45-6789"
    out, counts = anonymize(text)
    assert out == "Email <EMAIL> or <EMAIL>, call <PHONE>, card <CREDIT_CARD>, ssn <SSN>"
    assert counts == Counter({"EMAIL": 2, "PHONE": 1, "CREDIT_CARD": 1, "SSN": 1})


def test_anonymize_example_sums_counts_and_keeps_fields():
    ex = Example(
        messages=[
            {"role": "user", "content": "My email is jo@ex.com"},
            {"role": "assistant", "content": "Noted jo@ex.com and 10.1.2.3", "weight": 1},
        ],
        label="x", source="f.jsonl", line=3,
    )
    out, counts = anonymize_example(ex)
    assert out.messages == [
        {"role": "user", "content": "My email is <EMAIL>"},
        {"role": "assistant", "content": "Noted <EMAIL> and <IP_ADDRESS>", "weight": 1},
    ]
    assert counts == Counter({"EMAIL": 2, "IP_ADDRESS": 1})
    assert (out.label, out.source, out.line) == ("x", "f.jsonl", 3)
    assert ex.messages[0]["content"] == "My email is jo@ex.com"

    text_out, text_counts = anonymize_example(Example(text="ssn 123-45-6789"))
    assert text_out.text == "ssn <SSN>" and text_counts == Counter({"SSN": 1})


def test_hits_are_ordered_non_overlapping_and_exact_on_noisy_text():
    rng = random.Random(0)
    alphabet = "0123456789 -.:+@/?=&abcdefxyzABZ"
    samples = ["+44 20 7946 0958", "4111 1111 1111 1111", "192.168.1.1", "a@b.io",
               "https://u:p@h.io/?key=v", "GB82 WEST 1234 5698 7654 32", "123-45-6789", "::1"]
    for _ in range(200):
        parts = [rng.choice(samples) if rng.random() < 0.3 else
                 "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                 for _ in range(rng.randint(1, 8))]
        text = "".join(parts)
        hits = find_pii(text)
        for hit in hits:
            assert text[hit.start:hit.end] == hit.text and hit.start < hit.end
        for a, b in zip(hits, hits[1:]):
            assert a.end <= b.start
