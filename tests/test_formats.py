"""Tests for data reading (JSONL/CSV/Parquet, compressed, package paths) and format normalisation."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.config import DataConfig
from tunesmith.data.formats import (FormatError, detect_format, label_set, load_examples,
                                    load_examples_strict, to_example)
from tunesmith.data.io import ParseError, read_records, resolve_path
from tunesmith.errors import TunesmithError


def write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def write_csv(path, header, rows, opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def write_parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return str(path)


def cfg(**kw) -> DataConfig:
    return DataConfig(train="unused", **kw)


CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


# ------------------------------------------------------------------ detection

@pytest.mark.parametrize("record, expected", [
    (CHAT, "chat"),
    ({"prompt": "2+2?", "completion": "4"}, "prompt_completion"),
    ({"instruction": "Add", "input": "2 2", "output": "4"}, "alpaca"),
    ({"text": "Plain text."}, "text"),
    ({"text": "great", "label": 1}, "text"),  # no labels mapping: plain text
])
def test_detect_format(record, expected):
    assert detect_format(record, cfg()) == expected


def test_detect_labelled_needs_labels_or_format():
    record = {"review": "great", "stars": "5"}
    assert detect_format(record, cfg(text_field="review", label_field="stars",
                                      labels={"5": "positive"})) == "labelled"
    assert detect_format(record, cfg(text_field="review", label_field="stars", format="labelled")) == "labelled"


def test_detect_unknown_names_fields():
    with pytest.raises(TunesmithError) as e:
        detect_format({"question": "q", "answer": "a"}, cfg(), source="d.jsonl", line=4)
    msg = str(e.value)
    assert msg.startswith("d.jsonl:4: cannot detect the data format from fields (answer, question)")
    assert "'messages' (chat)" in msg and "'prompt'+'completion'" in msg


# ------------------------------------------------------------------ normalisation

def test_alpaca_with_and_without_input():
    c = cfg()
    ex = to_example({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, "alpaca", c, "f", 1)
    assert ex.messages == [{"role": "user", "content": "Translate.\n\nBonjour"},
                           {"role": "assistant", "content": "Hello"}]
    ex = to_example({"instruction": "Say hi.", "input": "", "output": "Hi"}, "alpaca", c, "f", 2)
    assert ex.messages[0] == {"role": "user", "content": "Say hi."}
    assert (ex.source, ex.line) == ("f", 2)


def test_prompt_completion_and_text():
    ex = to_example({"prompt": "2+2?", "completion": "4"}, "prompt_completion", cfg(), "f", 1)
    assert ex.messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ex = to_example({"text": "Once upon a time."}, "text", cfg(), "f", 1)
    assert (ex.text, ex.messages) == ("Once upon a time.", [])


def test_chat_weights_kept_and_system_prompt_added():
    record = {"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "weight": 0},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao", "weight": 1}]}
    ex = to_example(record, "chat", cfg(system_prompt="Be brief."), "f", 1)
    assert ex.messages[0] == {"role": "system", "content": "Be brief."}
    assert ex.messages[2] == {"role": "assistant", "content": "Hey", "weight": 0}
    assert ex.messages[4] == {"role": "assistant", "content": "Ciao", "weight": 1}
    own = {"messages": [{"role": "system", "content": "Mine"}] + CHAT["messages"]}
    ex = to_example(own, "chat", cfg(system_prompt="Be brief."), "f", 1)
    assert [m["content"] for m in ex.messages if m["role"] == "system"] == ["Mine"]


def test_labelled_prompt_uses_label_names():
    c = cfg(labels={"0": "negative", "1": "positive"}, instruction="Classify the sentiment.",
            system_prompt="You label reviews.")
    ex = to_example({"text": "Loved it", "label": 1}, "labelled", c, "f", 3)
    assert ex.label == "positive"
    assert ex.messages == [
        {"role": "system", "content": "You label reviews."},
        {"role": "user", "content": "Classify the sentiment.\n\nText: Loved it\n\n"
                                    "Answer with one of: negative, positive."},
        {"role": "assistant", "content": "positive"}]
    # A label already given by name is accepted; an unknown one is an error.
    assert to_example({"text": "x", "label": "negative"}, "labelled", c, "f", 1).label == "negative"
    with pytest.raises(FormatError) as e:
        to_example({"text": "x", "label": 7}, "labelled", c, "f", 1)
    assert e.value.kind == "unknown_label" and e.value.field == "label"


def test_labelled_without_mapping_uses_distinct_labels(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["body", "tag"], [["a", "spam"], ["b", "ham"], ["c", "spam"]])
    c = cfg(format="labelled", text_field="body", label_field="tag")
    examples, errors = load_examples(c, path)
    assert errors == [] and label_set(examples) == ["ham", "spam"]
    assert examples[0].messages[0]["content"].endswith("Answer with one of: ham, spam.")
    # A test split shares the training label set, and labels outside it are errors.
    test = write_csv(tmp_path / "t.csv", ["body", "tag"], [["d", "spam"], ["e", "eggs"]])
    examples, errors = load_examples(c, test, label_names=["ham", "spam"])
    assert examples[0].messages[0]["content"].endswith("Answer with one of: ham, spam.")
    assert [(e["line"], e["kind"]) for e in errors] == [(3, "unknown_label")]


# ------------------------------------------------------------------ containers

def test_jsonl_lines_skip_blanks_and_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\ufeff" + json.dumps(CHAT) + "\n\n   \n" + json.dumps(CHAT) + "\n", encoding="utf-8")
    assert [line for line, _ in read_records(str(path))] == [1, 4]


def test_csv_line_numbers_count_header_and_multiline_rows(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["prompt", "completion"],
                     [["one", "1"], ["multi\nline\nprompt", "2"], ["three", "3"]])
    records = list(read_records(path))
    assert [line for line, _ in records] == [2, 3, 6]
    assert records[1][1] == {"prompt": "multi\nline\nprompt", "completion": "2"}


def test_csv_huge_field_and_wrong_field_count(tmp_path):
    big = "x" * 300_000
    path = tmp_path / "d.csv"
    path.write_text(f"text\n{big}\n", encoding="utf-8")
    assert list(read_records(str(path))) == [(2, {"text": big})]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")
    assert list(read_records(str(bad), lenient=True)) == [
        (2, {"prompt": "a", "completion": "b"}),
        (3, ParseError("row has 3 fields; expected 2 (the header's columns)"))]
    with pytest.raises(TunesmithError, match=r"bad\.csv:3: row has 3 fields"):
        list(read_records(str(bad)))


def test_parquet_rows_and_labels(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": ["good", "bad", "fine"], "label": [1, 0, 1]})
    assert [line for line, _ in read_records(path)] == [1, 2, 3]
    examples = load_examples_strict(cfg(labels={"0": "neg", "1": "pos"}), path)
    assert [(ex.line, ex.label) for ex in examples] == [(1, "pos"), (2, "neg"), (3, "pos")]


def test_compressed_and_json_array(tmp_path):
    gz = write_jsonl(tmp_path / "d.jsonl.gz", [CHAT, {"prompt": "p", "completion": "c"}], opener=gzip.open)
    assert [line for line, _ in read_records(gz)] == [1, 2]
    bz = write_csv(tmp_path / "d.csv.bz2", ["prompt", "completion"], [["p", "c"]], opener=bz2.open)
    assert list(read_records(bz)) == [(2, {"prompt": "p", "completion": "c"})]
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([CHAT, CHAT]), encoding="utf-8")
    assert [line for line, _ in read_records(str(arr))] == [1, 2]


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(TunesmithError, match=r"unsupported file type \(\.txt\); expected \.jsonl"):
        read_records(str(tmp_path / "d.txt"))  # raised at call time, before iteration
    with pytest.raises(TunesmithError) as e:
        resolve_path(str(tmp_path / "nope.jsonl"))
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'}: file not found; expected a JSONL, CSV or Parquet file"


def test_malformed_json_strict_and_lenient(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, '{"messages": [', CHAT])
    with pytest.raises(TunesmithError, match=r"d\.jsonl:2: invalid JSON \(Expecting value at column 15\)"):
        list(read_records(path))
    lenient = list(read_records(path, lenient=True))
    assert isinstance(lenient[1][1], ParseError) and lenient[1][0] == 2
    assert [type(r) for _, r in lenient] == [dict, ParseError, dict]


def test_package_paths(tmp_path, monkeypatch):
    assert resolve_path("package:pytest/__init__.py").name == "__init__.py"
    pkg = tmp_path / "site" / "mydatapkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    write_jsonl(pkg / "data" / "train.jsonl", [CHAT])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    examples = load_examples_strict(cfg(), "package:mydatapkg/data/train.jsonl")
    assert len(examples) == 1 and "mydatapkg" not in sys.modules
    with pytest.raises(TunesmithError, match="package nosuchpkg_xyz is not installed; install it with pip"):
        resolve_path("package:nosuchpkg_xyz/data.jsonl")
    with pytest.raises(TunesmithError, match="file not found"):
        resolve_path("package:mydatapkg/data/missing.jsonl")


# ------------------------------------------------------------------ errors

def _msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


BAD_RECORDS = [
    (CHAT, None),
    ([1, 2], "not_a_dict"),
    ({"prompt": "p", "completion": "c"}, "missing_messages"),
    ({"messages": "hi"}, "messages_not_list"),
    (_msgs(("user", "Hi"), ("bot", "Hey")), "unknown_role"),
    (_msgs(("user", "  "), ("assistant", "Hey")), "empty_content"),
    (_msgs(("user", "Hi")), "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "x", "weight": 2}]}, "bad_weight"),
    ({"messages": [{"role": "user", "content": "Hi", "weight": 1},
                   {"role": "assistant", "content": "x"}]}, "bad_weight"),
    ({"messages": [{"content": "Hi"}, {"role": "assistant", "content": "x"}]}, "missing_field"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}, "bad_type"),
    ('{"messages": oops}', "parse_error"),
    (CHAT, None),
]


def test_each_error_kind_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [r for r, _ in BAD_RECORDS])
    examples, errors = load_examples(cfg(), path)
    expected = [(i, kind) for i, (_, kind) in enumerate(BAD_RECORDS, start=1) if kind]
    assert [(e["line"], e["kind"]) for e in errors] == expected
    assert [ex.line for ex in examples] == [1, len(BAD_RECORDS)]
    role_error = next(e for e in errors if e["kind"] == "unknown_role")
    assert role_error["message"] == ("field 'messages[1].role': unknown role 'bot'; "
                                     "expected one of system, user, assistant, tool")


def test_missing_field_and_unknown_label_in_other_formats(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["ok", "0"], ["", "1"], ["fine", "9"], ["x", ""]])
    _, errors = load_examples(cfg(labels={"0": "neg", "1": "pos"}), path)
    assert [(e["line"], e["kind"], e["field"]) for e in errors] == [
        (3, "empty_content", "text"), (4, "unknown_label", "label"), (5, "missing_field", "label")]
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i"}])
    _, errors = load_examples(cfg(), alpaca)
    assert [(e["line"], e["kind"], e["field"]) for e in errors] == [(2, "missing_field", "output")]


def test_strict_loader_one_line_message(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        CHAT, CHAT, _msgs(("system", "s"), ("user", "Hi"), ("bot", "Hey"))])
    with pytest.raises(TunesmithError) as e:
        load_examples_strict(cfg(), path)
    assert str(e.value) == (f"{path}:3: field 'messages[2].role': unknown role 'bot'; "
                            "expected one of system, user, assistant, tool")
    assert (e.value.line, e.value.field) == (3, "messages[2].role")
    assert "\n" not in str(e.value)


def test_strict_loader_counts_more_errors_and_empty(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [[1], [2], [3]])
    with pytest.raises(TunesmithError, match=r"d\.jsonl:1: record is a list; expected a JSON object "
                                             r"\(and 2 more bad records; see `tunesmith data validate`\)"):
        load_examples_strict(cfg(), path)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(TunesmithError, match="no examples; expected at least one record"):
        load_examples_strict(cfg(), str(empty))
    chats = write_jsonl(tmp_path / "c.jsonl", [{**CHAT, "lang": "en"}])
    with pytest.raises(TunesmithError, match=r"no examples after the filter data.where=\{'lang': 'de'\}"):
        load_examples_strict(cfg(where={"lang": "de"}), chats)


# ------------------------------------------------------------------ where / max_examples

def test_where_compares_as_strings(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c", "split": i % 3, "lang": "en" if i % 2 else "de"}
            for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    examples = load_examples_strict(cfg(where={"split": "1", "lang": "en"}), path)
    assert [ex.messages[0]["content"] for ex in examples] == ["p1", "p7"]
    pq_path = write_parquet(tmp_path / "d.parquet", {k: [r[k] for r in rows] for k in rows[0]})
    assert len(load_examples_strict(cfg(where={"split": "2"}), pq_path)) == 4


def test_max_examples_seeded_sample_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}"} for i in range(100)])
    c = cfg(max_examples=10)
    a = [ex.line for ex in load_examples_strict(c, path)]
    b = [ex.line for ex in load_examples_strict(c, path)]
    other = [ex.line for ex in load_examples_strict(c, path, limit_seed=1)]
    assert a == b == sorted(a) and len(a) == 10 and len(set(a)) == 10
    assert other != a
    assert len(load_examples_strict(cfg(max_examples=500), path)) == 100


def test_explicit_format_mismatch_reports_per_record(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, CHAT])
    examples, errors = load_examples(cfg(format="prompt_completion"), path)
    assert len(examples) == 1
    assert [(e["line"], e["kind"], e["field"]) for e in errors] == [(2, "missing_field", "prompt")]
