"""Tests for the data validation report (errors, duplicates, PII, labels, token lengths, rendering)."""
from __future__ import annotations

import json
import random
import time

import pytest
from rich.console import Console

from tiny import make_tokenizer
from tunesmith.config import DataConfig
from tunesmith.data.clean import normalize_text
from tunesmith.data.example import Example
from tunesmith.data.validate import render_report, save_report, token_lengths, validate


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def chat(user, assistant="Noted.", system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


LONG_A = ("The committee met on Tuesday to discuss the new budget for the public library and agreed "
          "to extend opening hours on weekends.")
LONG_B = LONG_A.replace("on weekends", "at weekends")

LINES = [
    chat("What is the capital of France?", "Paris."),                                      # 1
    chat("Email me at jane.doe@example.com please", "Sure, I will write to jane.doe@example.com."),  # 2
    chat("What  is the capital of   France?", "Paris."),                                   # 3 exact dup of 1
    '{"messages": [',                                                                      # 4 bad JSON
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hey"}]},  # 5 bad role
    chat(LONG_A),                                                                          # 6
    chat(LONG_B),                                                                          # 7 near dup of 6
    chat("Server 192.168.1.20 is down.", "Restart it.", system="You are an admin."),       # 8 IP
    chat("\u200b", "x"),                                                                   # 9 empty once cleaned
    [1, 2],                                                                                # 10 not a dict
    {"messages": [{"role": "user", "content": "Only a question"}]},                       # 11 no assistant
    chat("Summarise the following text in one sentence. " * 20, "Too long."),             # 12 truncated
]


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in LINES) + "\n")
    return str(path)


def test_report_counts(chat_file, tokenizer):
    report = validate(DataConfig(train=chat_file, max_length=200), chat_file, tokenizer)
    assert report["format"] == "chat"
    assert (report["lines"], report["records"], report["valid"], report["invalid"]) == (12, 11, 8, 4)
    assert {k: (v["count"], v["lines"]) for k, v in report["errors"].items()} == {
        "parse_error": (1, [4]), "unknown_role": (1, [5]), "not_a_dict": (1, [10]),
        "no_assistant_turn": (1, [11])}
    assert report["errors"]["unknown_role"]["messages"] == [
        "line 5: field 'messages[1].role': unknown role 'bot'; expected one of system, user, assistant, tool"]
    assert report["empty_after_cleaning"] == {"count": 1, "lines": [9]}
    dups = report["duplicates"]
    assert (dups["exact"], dups["exact_pairs"], dups["near"], dups["near_pairs"]) == (1, [[3, 1]], 1, [[7, 6]])
    assert report["pii"] == {"EMAIL": {"count": 2, "lines": [2]}, "IP_ADDRESS": {"count": 1, "lines": [8]}}
    roles = report["roles"]
    assert (roles["examples"], roles["with_system_prompt"], roles["max_turns"]) == (7, 1, 3)
    assert roles["messages_by_role"] == {"assistant": 7, "system": 1, "user": 7}
    assert report["labels"] is None


def test_token_stats(chat_file, tokenizer):
    report = validate(DataConfig(train=chat_file, max_length=200), chat_file, tokenizer)
    tokens = report["tokens"]
    kept = [[{**m, "content": normalize_text(m["content"])} for m in LINES[i - 1]["messages"]]
            for i in (1, 2, 3, 6, 7, 8, 12)]
    expected = [len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False),
                              add_special_tokens=False).input_ids) for m in kept]
    assert (tokens["min"], tokens["max"]) == (min(expected), max(expected))
    assert tokens["truncated"] == sum(n > 200 for n in expected) == 1
    assert tokens["truncated_lines"] == [12]
    assert sum(b["count"] for b in tokens["histogram"]) == 7 and len(tokens["histogram"]) <= 10
    assert tokens["min"] <= tokens["p50"] <= tokens["p90"] <= tokens["p95"] <= tokens["p99"] <= tokens["max"]
    assert validate(DataConfig(train=chat_file), chat_file)["tokens"] is None


def test_text_token_lengths_count_eos(tokenizer):
    ex = Example(text="The quick brown fox.")
    assert token_lengths([ex], tokenizer) == [len(tokenizer("The quick brown fox.",
                                                            add_special_tokens=False).input_ids) + 1]


def test_labelled_balance_and_where(tmp_path, tokenizer):
    rows = [("good film", "1")] * 7 + [("bad film", "0")] * 2 + [("odd film", "5")] + [("meh", "1")]
    lines = ["text,label,lang"] + [f"{t} {i},{lab},{'fr' if i == 10 else 'en'}"
                                   for i, (t, lab) in enumerate(rows)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(train=str(path), labels={"0": "neg", "1": "pos"}, where={"lang": "en"})
    report = validate(cfg, str(path), tokenizer)
    assert report["format"] == "labelled"
    assert report["labels"] == {"neg": 2, "pos": 7}
    assert report["filtered_out"] == 1
    assert report["errors"]["unknown_label"]["lines"] == [11]
    assert report["duplicates"]["exact"] == 0


def test_render_and_save_do_not_echo_pii(chat_file, tokenizer, tmp_path):
    report = validate(DataConfig(train=chat_file, max_length=200), chat_file, tokenizer)
    console = Console(record=True, width=160)
    console.print(render_report(report))
    text = console.export_text()
    for needle in ("Data check", "parse_error", "unknown_role", "EMAIL", "Token lengths", "> 200"):
        assert needle in text
    assert "jane.doe" not in text and "192.168" not in text
    out = tmp_path / "reports" / "data_report.json"
    save_report(report, out)
    assert json.loads(out.read_text()) == report
    assert "jane.doe" not in out.read_text()


def test_thirty_thousand_records_validate_quickly(tmp_path, tokenizer):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(30_000):
            f.write(json.dumps(chat(f"Q{i} " + " ".join(rng.choices(words, k=6)),
                                    " ".join(rng.choices(words, k=4)))) + "\n")
    start = time.perf_counter()
    report = validate(DataConfig(train=str(path)), str(path), tokenizer)
    assert time.perf_counter() - start < 60
    assert report["valid"] == 30_000 and report["tokens"]["min"] > 0
