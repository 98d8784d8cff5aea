"""Preprocessing that never silently throws away a user's examples (issue 10, items 1-4).

The data is the most common real shape: a support router whose examples all share one long
system prompt listing the labels, with distinct customer messages and twelve labels.
"""
from __future__ import annotations

import json
import random

import pytest
from rich.console import Console

from tunesmith.config import DataConfig, load_recipe
from tunesmith.data.coverage import infer_labels
from tunesmith.data.dedup import find_duplicates, near_duplicates
from tunesmith.data.example import Example
from tunesmith.data.prepare import build_splits, data_warnings, removal_summary
from tunesmith.data.validate import render_report, validate
from tunesmith.errors import TunesmithError
from tunesmith.eval import contamination

SYSTEM = ("You are the customer support router for Northwind Outfitters, an online store selling outdoor "
          "gear. Read the customer's message and answer with exactly one label from this list: "
          "billing, shipping_delay, return_request, damaged_item, wrong_item, account_access, "
          "product_question, order_change, cancellation, warranty_claim, gift_card, loyalty_points. "
          "Answer with the label only, in lower case, without punctuation or explanation. If several "
          "labels could apply, pick the one that needs action first. Never reply to the customer directly.")
PRODUCTS = ["hiking boots", "rain jacket", "two-person tent", "sleeping bag", "trekking poles", "camping stove",
            "headlamp", "water filter", "daypack", "fleece hoodie", "kayak paddle", "climbing harness",
            "insulated bottle", "trail runners", "down vest", "camp chair"]
CITIES = ["Oslo", "Lyon", "Austin", "Pune", "Leeds", "Kyoto", "Porto"]
NAMES = ["Maria", "Tom", "Aisha", "Jonas", "Priya", "Luis", "Chen", "Fatima", "Olek", "Grace", "Ravi", "Ingrid"]
OPEN = ["Hi,", "Hello there.", "Good morning!", "Hey support team,", "Dear Northwind,", "", "Quick question:",
        "Hi again,", "Hello,", "Urgent:"]
CLOSE = ["Thanks.", "Thank you so much!", "Please help.", "Appreciate it.", "Cheers,", "", "Regards,",
         "Looking forward to your reply.", "Thanks in advance!", "This is really frustrating."]
WHEN = ["yesterday", "last Tuesday", "two weeks ago", "on the 3rd", "this morning", "over the weekend",
        "about ten days ago", "last month"]
TEMPLATES = {
    "billing": ["I was charged twice for order #{n} and my card shows {k} separate payments for the {p}.",
                "Why does my statement show a charge of ${m} when the {p} was listed at a lower price {w}?",
                "The invoice for order #{n} lists tax I should not pay as a business customer."],
    "shipping_delay": ["My {p} (order #{n}) was supposed to arrive {w} and tracking has not moved since.",
                       "Tracking for #{n} says 'label created' for days now; where is my {p}?",
                       "I paid for express delivery {w} but the {p} still has not shipped."],
    "return_request": ["I'd like to return the {p} from order #{n}; it is unused and still in the box.",
                       "The {p} I bought {w} doesn't fit, how do I send it back for a refund?",
                       "Can I return the {p} after {k} weeks if I only tried it on indoors?"],
    "damaged_item": ["The {p} arrived with a torn seam and the box was crushed, order #{n}.",
                     "When I opened the package {w} the {p} was cracked in {k} places.",
                     "My {p} came soaking wet and smells of mould."],
    "wrong_item": ["I ordered the {p} but received a completely different product in order #{n}.",
                   "You sent me {k} units of the {p} instead of the single one I ordered {w}.",
                   "The size on the {p} I received is not the size in my confirmation email."],
    "account_access": ["I can't log in since {w}; the password reset email never arrives.",
                       "My account got locked after {k} login attempts, can you unlock it?",
                       "Someone changed the email on my account {w} and I can no longer sign in."],
    "product_question": ["Is the {p} suitable for temperatures below minus {k} degrees?",
                         "Does the {p} come with a carrying case, and what does it weigh?",
                         "What's the difference between the {p} and last year's model?"],
    "order_change": ["Can I change the shipping address for order #{n}? I moved {w}.",
                     "Please add a second {p} to order #{n} before it ships.",
                     "I picked the wrong colour for the {p}; can I switch it to green on #{n}?"],
    "cancellation": ["Please cancel order #{n}, I ordered the {p} by mistake {w}.",
                     "I want to cancel my {p} order before it leaves the warehouse.",
                     "Cancel everything on #{n}, I found the {p} cheaper locally."],
    "warranty_claim": ["The zipper on my {p} broke after {k} months of normal use; is this covered?",
                       "My {p} from {w} stopped working and I believe it's still under warranty.",
                       "The sole of my {p} is peeling off after {k} hikes; warranty please."],
    "gift_card": ["My gift card code is not accepted at checkout for the {p}.",
                  "I received a gift card {w} but the balance shows zero.",
                  "Can I use {k} gift cards on one order for the {p}?"],
    "loyalty_points": ["My loyalty points from order #{n} were never added to my account.",
                       "How many points do I need to get the {p} for free?",
                       "My points balance dropped by {k}00 {w} without any purchase."],
}
LABELS = sorted(TEMPLATES)


def message(rng: random.Random, label: str) -> str:
    body = rng.choice(TEMPLATES[label]).format(n=rng.randint(10000, 99999), p=rng.choice(PRODUCTS),
                                               w=rng.choice(WHEN), k=rng.randint(2, 9), m=rng.randint(20, 400))
    parts = [rng.choice(OPEN), body]
    if rng.random() < 0.5:
        parts.append(f"This is {rng.choice(NAMES)} from {rng.choice(CITIES)}.")
    return " ".join(p for p in parts + [rng.choice(CLOSE)] if p)


def chat(user: str, label: str, system: str | None = SYSTEM) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": label}]}


def grams(text: str) -> set[str]:
    text = " ".join(text.lower().split())
    return {text[i:i + 5] for i in range(len(text) - 4)}


def chats(n: int, seed: int = 0, labels: list[str] = LABELS, avoid: set[str] | None = None) -> list[dict]:
    """``n`` distinct support chats (no two user messages share 60% of their character 5-grams,
    nor one of ``avoid``), the labels roughly balanced."""
    rng, out = random.Random(seed), []
    seen = [grams(a) for a in avoid or ()]
    while len(out) < n:
        label = labels[len(out) % len(labels)]
        user = message(rng, label)
        g = grams(user)
        if all(len(g & h) < 0.6 * len(g | h) for h in seen):
            seen.append(g)
            out.append(chat(user, label))
    return out


def user(row: dict) -> str:
    return row["messages"][-2]["content"]


def label(row: dict) -> str:
    return row["messages"][-1]["content"]


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe(train: str, **data):
    clean = data.pop("clean", {})
    return load_recipe({"name": "router", "data": {"train": train, "clean": clean, **data}})


def lines_of(exs: list[Example]) -> list[int]:
    return sorted(ex.line for ex in exs)


def planted(rows: list[dict]) -> tuple[list[dict], dict]:
    """``rows`` plus 4 exact copies (spacing/case changed), 4 near copies (a few words added) and 3
    near-identical prompts with another label; returns the rows and {kind: [(line, original line)]}."""
    long_ones = [i for i, r in enumerate(rows) if len(user(r)) >= 100]
    out, where = list(rows), {"exact": [], "near": [], "conflict": []}
    for i in long_ones[:4]:
        out.append(chat("  " + user(rows[i]).replace(" ", "   ").upper(), label(rows[i])))
        where["exact"].append((len(out), i + 1))
    for i in long_ones[4:8]:
        out.append(chat(user(rows[i]) + " Thanks!", label(rows[i])))
        where["near"].append((len(out), i + 1))
    for i in long_ones[8:11]:
        other = LABELS[(LABELS.index(label(rows[i])) + 5) % len(LABELS)]
        out.append(chat(user(rows[i]).replace(".", "!", 1), other))
        where["conflict"].append((len(out), i + 1))
    return out, where


# ---- (a) a shared long system prompt removes nothing ------------------------------------------

def test_distinct_chats_sharing_a_long_system_prompt_lose_nothing(tmp_path):
    rows = chats(200)
    assert len(SYSTEM) >= 450 and len({user(r) for r in rows}) == 200
    # the old comparison (whole text) takes the shared prompt for similarity and drops many
    texts = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
    assert len(near_duplicates(texts, threshold=0.85)) > 40
    splits, manifest = build_splits(recipe(write(tmp_path / "train.jsonl", rows)))
    assert sum(len(v) for v in splits.values()) == 200
    pre = manifest["preprocessing"]
    assert pre["removed_total"] == 0 and pre["removed"] == {"train": {}, "validation": {}, "test": {}}
    assert manifest["duplicates"]["train"]["shared_text"]["lines"] == 1      # the system prompt, left out
    assert removal_summary(manifest).startswith("removed 0 of 200 examples")
    # contamination between the splits is not inflated by the shared prompt either
    assert contamination.check(splits["train"], splits["test"])["contaminated"] == 0


def test_a_question_template_around_a_varying_name_is_not_a_duplicate(tmp_path):
    """Documentation QA: every question is one sentence template around a different API name (the template
    shares its line with the name, so it is not a shared line). Only the name and the answer distinguish
    the examples; a real repeat of one question with a reworded answer is still a near duplicate."""
    mods = ["os.path", "json", "shutil", "string", "textwrap", "random", "statistics", "pathlib"]
    verbs = ["Return", "Compute", "Split", "Join", "Copy", "Read", "Write", "Format", "Parse", "Test"]
    objects = ["the path", "a string", "the file", "the number", "a list", "the mapping", "the value", "the text"]
    rows = []
    for i in range(120):
        name = f"{mods[i % 8]}.{['get', 'set', 'load', 'dump', 'find', 'make'][i % 6]}_{verbs[i % 10].lower()}{i}"
        answer = f"{verbs[i % 10]} {objects[(i * 7) % 8]} {['once', 'quickly', 'safely', 'lazily'][i % 4]} for item {i}."
        rows.append({"messages": [
            {"role": "user", "content": f"In Python's standard library, what does the function `{name}` do? "
                                        "Answer in one sentence."},
            {"role": "assistant", "content": answer}]})
    repeat = dict(rows[5], messages=[rows[5]["messages"][0],
                                     {"role": "assistant", "content": rows[5]["messages"][1]["content"][:-1] + "!"}])
    splits, manifest = build_splits(recipe(write(tmp_path / "train.jsonl", rows + [repeat]),
                                           split={"validation": 0.1, "test": 0.2}))
    pre = manifest["preprocessing"]
    assert pre["removed"]["train"] == {"near_duplicate": 1}
    assert [(e["line"], e["kept_line"]) for e in pre["removal_examples"]["train"]["near_duplicate"]] == [(121, 6)]
    assert manifest["conflicts"]["count"] == 0
    assert contamination.check(splits["train"], splits["test"])["contaminated"] == 0


# ---- (b) planted duplicates are removed and reported with line numbers --------------------------

def test_planted_exact_and_near_duplicates_are_removed_with_line_numbers(tmp_path):
    rows, where = planted(chats(200, seed=1))
    splits, manifest = build_splits(recipe(write(tmp_path / "train.jsonl", rows),
                                           clean={"conflicts": "keep_both"}))
    kept = {ex.line for v in splits.values() for ex in v}
    for line, original in where["exact"] + where["near"]:
        assert line not in kept and original in kept
    pre = manifest["preprocessing"]
    assert pre["removed"]["train"] == {"exact_duplicate": 4, "near_duplicate": 4}
    listed = pre["removal_examples"]["train"]
    assert sorted((e["line"], e["kept_line"]) for e in listed["exact_duplicate"]) == sorted(where["exact"])
    assert sorted((e["line"], e["kept_line"]) for e in listed["near_duplicate"]) == sorted(where["near"])
    assert all(e["text"] and "→" in e["text"] and e["kept_text"] for e in listed["near_duplicate"])
    found = manifest["duplicates"]["train"]
    assert sorted(map(tuple, found["exact_pairs"])) == sorted(where["exact"])
    assert sorted(map(tuple, found["near_pairs"])) == sorted(where["near"])


# ---- (c) conflicting answers are reported and kept by default ------------------------------------

def test_conflicting_answers_are_reported_and_kept_by_default(tmp_path):
    rows, where = planted(chats(200, seed=2))
    path = write(tmp_path / "train.jsonl", rows)
    splits, manifest = build_splits(recipe(path))
    conflicts = manifest["conflicts"]
    assert conflicts["policy"] == "keep_both" and conflicts["count"] == 3 and conflicts["removed"] == 0
    assert sorted(tuple(p["lines"]) for p in conflicts["pairs"]) == sorted((b, a) for a, b in where["conflict"])
    by_line = {ex.line: name for name, exs in splits.items() for ex in exs}
    for line, original in where["conflict"]:
        assert line in by_line and original in by_line
        assert by_line[line] == by_line[original]          # a conflict group never straddles splits
    assert "conflict" not in manifest["preprocessing"]["removed"]["train"]
    assert "3 pair(s) with conflicting answers (kept)" in removal_summary(manifest)

    _, dropped = build_splits(recipe(path, clean={"conflicts": "drop_both"}))
    assert dropped["preprocessing"]["removed"]["train"]["conflict"] == 6
    assert dropped["conflicts"]["removed"] == 6


def test_keep_majority_keeps_the_answer_given_most_often(tmp_path):
    rows = chats(60, seed=3)
    base = next(r for r in rows if len(user(r)) >= 100)
    wrong = LABELS[(LABELS.index(label(base)) + 1) % len(LABELS)]
    rows += [chat(user(base).upper(), label(base)),                  # line 61: a second vote for the label
             chat(user(base) + " Thanks!", wrong)]                   # line 62: the minority answer
    splits, manifest = build_splits(recipe(write(tmp_path / "t.jsonl", rows),
                                           clean={"conflicts": "keep_majority", "max_removed": 1.0}))
    kept = {ex.line for v in splits.values() for ex in v}
    assert 62 not in kept and rows.index(base) + 1 in kept
    assert manifest["preprocessing"]["removed"]["train"] == {"conflict": 1, "exact_duplicate": 1}


# ---- (d) a user-given test file is evaluated as given ----------------------------------------------

def given_files(tmp_path):
    train = chats(200, seed=4)
    seen = {user(r) for r in train}
    fresh = chats(60, seed=5, avoid=seen)
    validation, test = fresh[:20], fresh[20:]
    test = test + test[:3] + train[:5]                 # 3 duplicates inside, 5 items also in training
    return (write(tmp_path / "train.jsonl", train), write(tmp_path / "val.jsonl", validation),
            write(tmp_path / "test.jsonl", test))


def test_given_test_file_is_kept_in_full_and_its_overlaps_reported(tmp_path):
    train, val, test = given_files(tmp_path)
    splits, manifest = build_splits(recipe(train, validation=val, test=test))
    assert lines_of(splits["test"]) == list(range(1, 49))          # all 48 items, as given
    assert len(splits["validation"]) == 20 and len(splits["train"]) == 200
    info = manifest["given_eval"]["test"]
    assert info["kept_as_given"] and info["items"] == 48 and info["removed"] == 0
    assert info["duplicates"] == 3
    assert sorted(map(tuple, manifest["duplicates"]["test"]["exact_pairs"])) == [(41, 1), (42, 2), (43, 3)]
    overlap = info["train_overlap"]
    assert overlap["count"] == 5 and overlap["same_answer"] == 5
    assert [(o["line"], o["train_line"]) for o in overlap["items"]] == [(44 + i, 1 + i) for i in range(5)]
    assert manifest["given_eval"]["validation"]["train_overlap"]["count"] == 0
    assert manifest["preprocessing"]["removed_total"] == 0
    summary = removal_summary(manifest)
    assert "given test file: 3 duplicate(s) inside and 5 overlap(s) with training kept as given" in summary
    assert any("5 of 48 items of the given test file" in w for w in data_warnings(manifest))


# ---- (e) the manifest counts every removal per split and reason -----------------------------------

def test_manifest_counts_removals_per_split_and_reason(tmp_path):
    train_rows, where = planted(chats(200, seed=6))
    train_rows += [chat("\u200b", "billing"), chat("\u200b\u200b", "gift_card")]      # empty once cleaned
    seen = {user(r) for r in train_rows}
    fresh = chats(70, seed=7, avoid=seen)
    val_rows = fresh[:30] + fresh[:2]                                   # 2 duplicates inside validation
    test_rows = fresh[30:] + [train_rows[i] for i in (10, 20, 30)]      # 3 overlaps with training
    r = recipe(write(tmp_path / "train.jsonl", train_rows), validation=write(tmp_path / "v.jsonl", val_rows),
               test=write(tmp_path / "t.jsonl", test_rows), clean={"dedup_given_eval": True})
    splits, manifest = build_splits(r)
    pre = manifest["preprocessing"]
    assert pre["loaded"] == {"train": 213, "validation": 32, "test": 43}
    assert pre["removed"] == {"train": {"empty_after_cleaning": 2, "exact_duplicate": 4, "near_duplicate": 4},
                              "validation": {"exact_duplicate": 2},
                              "test": {"train_overlap": 3}}
    assert pre["removed_total"] == 15
    assert (pre["exact_duplicates_removed"], pre["near_duplicates_removed"], pre["empty_after_cleaning"]) == (6, 4, 2)
    assert manifest["counts"] == {"train": 203, "validation": 30, "test": 40}
    assert [e["line"] for e in pre["removal_examples"]["train"]["empty_after_cleaning"]] == [212, 213]
    assert [(e["line"], e["kept_line"]) for e in pre["removal_examples"]["validation"]["exact_duplicate"]] \
        == [(31, 1), (32, 2)]
    assert [e["kept_line"] for e in pre["removal_examples"]["test"]["train_overlap"]] == [11, 21, 31]
    assert manifest["given_eval"]["test"]["removed"] == 3 and not manifest["given_eval"]["test"]["kept_as_given"]
    summary = removal_summary(manifest)
    assert summary.startswith("removed 15 of 288 examples (5.2%)")
    assert "train: 4 exact duplicates, 4 near duplicates, 2 empty after cleaning" in summary
    assert "validation: 2 exact duplicates" in summary and "test: 3 overlaps with training" in summary


# ---- (f) the removal guard --------------------------------------------------------------------------

def test_removing_more_than_max_removed_stops_with_the_reason(tmp_path):
    rows = chats(150, seed=8)
    rows += [chat(user(r).upper(), label(r)) for r in rows[:45]]          # 45 of 195 (23%) are copies
    path = write(tmp_path / "train.jsonl", rows)
    with pytest.raises(TunesmithError) as err:
        build_splits(recipe(path))
    msg = str(err.value)
    assert "train.jsonl" in msg and "45 of 195" in msg and "exact duplicates" in msg
    assert "data.clean.max_removed" in msg and "data.clean.dedup" in msg and "e.g. line 151 = line 1" in msg
    splits, manifest = build_splits(recipe(path, clean={"max_removed": 0.3}))
    assert sum(len(v) for v in splits.values()) == 150
    assert manifest["preprocessing"]["removed"]["train"] == {"exact_duplicate": 45}
    # the validation report says the same without stopping
    report = validate(DataConfig(train=path), path)
    assert report["removal"]["total"] == 45 and "45 of 195" in report["removal"]["stops"]


# ---- label coverage ----------------------------------------------------------------------------------

def test_label_coverage_flags_labels_missing_or_rare_in_training(tmp_path):
    rare, missing = "gift_card", "loyalty_points"
    train = [r for r in chats(260, seed=9) if label(r) not in (rare, missing)]
    train += [r for r in chats(60, seed=10, avoid={user(r) for r in train}) if label(r) == rare][:2]
    test = chats(48, seed=11, avoid={user(r) for r in train})
    splits, manifest = build_splits(recipe(write(tmp_path / "train.jsonl", train),
                                           test=write(tmp_path / "test.jsonl", test)))
    assert manifest["labels"] is None and manifest["inferred_labels"] == LABELS
    cov = manifest["label_coverage"]
    assert cov["distribution"]["test"][missing] == 4 and cov["distribution"]["train"][missing] == 0
    issues = {(i["label"], i["split"]): (i["kind"], i["count"], i["train_count"]) for i in cov["issues"]}
    assert issues[(missing, "test")] == ("absent", 4, 0)
    n_rare = cov["distribution"]["train"][rare]
    assert issues[(rare, "test")] == ("rare", 4, n_rare) and n_rare <= 2
    n_train = len(splits["train"])
    assert f"'{missing}' is 4x in test but 0x in {n_train} training examples" in cov["warning"]
    assert cov["warning"] in data_warnings(manifest)


def test_label_inference_needs_a_small_set_of_short_repeated_answers():
    def ex(answer):
        return Example(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}])
    assert infer_labels([ex(x) for x in ["yes", "no"] * 10]) == ["no", "yes"]
    assert infer_labels([ex(f"answer number {i}") for i in range(40)]) is None          # free-form answers
    assert infer_labels([ex("A long answer that explains the whole thing at length, " * 2)] * 9 + [ex("no")] * 9) \
        is None
    assert infer_labels([Example(text="plain text")]) is None


# ---- dedup details ------------------------------------------------------------------------------------

def test_labelled_template_is_not_compared(tmp_path):
    """The labelled format's instruction and label list wrap short texts: only the texts are compared."""
    rng = random.Random(12)
    rows = [{"text": message(rng, lab), "label": lab} for lab in LABELS for _ in range(12)]
    path = write(tmp_path / "lab.jsonl", rows)
    labels = {lab: lab for lab in LABELS}
    splits, manifest = build_splits(recipe(path, format="labelled", labels=labels,
                                           instruction="Route this support message to one team. " * 8))
    assert manifest["preprocessing"]["removed_total"] == 0 and manifest["labels"] == LABELS
    assert manifest["inferred_labels"] is None and manifest["label_coverage"]["labels"] == LABELS


def test_shared_lines_inside_messages_and_markers():
    """A fixed instruction block inside each user turn is left out; what differs still differs."""
    rng = random.Random(13)
    header = "Ticket triage form v2\nFill in the label only.\nDo not add commentary."
    exs = [Example(messages=[{"role": "user", "content": f"{header}\n{message(rng, lab)}"},
                             {"role": "assistant", "content": lab}], line=i + 1)
           for i, lab in enumerate(LABELS * 8)]
    dups = find_duplicates(exs)
    assert (dups.exact, dups.near, dups.conflicts) == ({}, {}, [])
    assert dups.compared.shared_summary()["lines"] == 3
    assert all(p.startswith("§") and "ticket triage" not in p for p in dups.compared.prompts)
    same = [Example(messages=[{"role": "user", "content": f"{header}\nhello"},
                              {"role": "assistant", "content": "billing"}])] * 2
    assert find_duplicates(exs + same).exact == {len(exs) + 1: len(exs)}


def test_validation_report_shows_removals_conflicts_overlaps_and_labels(tmp_path):
    rows, where = planted(chats(120, seed=14))
    train = write(tmp_path / "train.jsonl", rows)
    test = write(tmp_path / "test.jsonl", chats(30, seed=15, avoid={user(r) for r in rows}) + rows[:2])
    cfg = DataConfig(train=train, test=test)
    report = validate(cfg, train)
    assert report["removal"]["removed"]["train"] == {"exact_duplicate": 4, "near_duplicate": 4}
    assert report["removal"]["stops"] is None and report["conflicts"]["count"] == 3
    assert report["duplicates"]["conflicts"] == 3
    assert report["given_eval"]["test"]["train_overlap"]["count"] == 2
    assert report["given_files"]["test"] == {"file": test, "valid": 32, "invalid": 0}
    assert set(report["label_coverage"]["distribution"]) == {"train", "validation", "test"}
    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    line, original = where["near"][0]
    for needle in ("Removed by `data prepare`", f"line {line} ≈ line {original}", "Conflicting answers",
                   "given test file: 32 items", "overlap(s) with training", "Labels per split", "shared text"):
        assert needle in text, needle
    assert json.loads(json.dumps(report)) == report
