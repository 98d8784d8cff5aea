"""An honest systems table and recommendation: majority baseline, paired bootstrap intervals, collapse
flags, verify's per-artifact outcomes and one self-consistent advise answer (pure functions, fast)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tunesmith.advise import choose_method, recommendation
from tunesmith.config import load_recipe
from tunesmith.eval import decide, metrics, stats
from tunesmith.eval.report import write_reports
from tunesmith.verify import summarize, summary_lines

LABELS = ["negative", "positive"]


def _recipe(task="classification", **eval_cfg):
    return load_recipe({"task": task, "data": {"train": "x.jsonl"}, "eval": eval_cfg})


def _result(preds, refs, recipe, labels=LABELS):
    return {"metrics": metrics.compute(recipe.metrics(), preds, refs, labels),
            "generation": {"prompt_tokens": 40.0, "per_example_s": 0.05},
            "predictions": [{"prompt": [{"role": "user", "content": f"q{i}"}], "prediction": p, "reference": r,
                             "correct": metrics.per_example_correct("exact_match", p, r, labels)}
                            for i, (p, r) in enumerate(zip(preds, refs))]}


def _half(n=92):
    return ["positive" if i % 2 else "negative" for i in range(n)]


def _report_data(table, rec):
    return {"name": "honest", "model": "tiny", "method": "lora", "task": "classification", "systems": table,
            "recommendation": rec, "metrics": {}, "loss": {}}


# ---- the collapsed model -------------------------------------------------------------------------

def test_collapsed_model_leads_the_report_and_is_never_recommended(tmp_path):
    """A tuned model answering "positive" 92 of 92 times on a 50/50 test set, against a base model that
    answers nothing usable: +50 points over the base, and still no fine-tune recommendation."""
    r = _recipe()
    refs = _half()
    results = {"base": _result(["I am not sure"] * 92, refs, r), "tuned": _result(["positive"] * 92, refs, r)}
    table = decide.systems_table(results, r, LABELS, {"wall_s": 60}, train_references=_half(200))
    rows = {row["system"]: row for row in table["rows"]}
    assert rows["majority"]["metrics"]["accuracy"] == 0.5 and rows["majority"]["answer"] == "negative"
    assert rows["tuned"]["training_s"] == 60 and rows["base"]["training_s"] == 0.0
    staged = decide.systems_table(results, r, LABELS, {"wall_s": 60, "stage_s": 300}, train_references=_half(200))
    assert [row["training_s"] for row in staged["rows"] if row["system"] == "tuned"] == [300]   # the whole stage
    assert rows["tuned"]["answers"] == {"negative": 0, "positive": 92, "unparsed": 0}
    assert rows["base"]["answers"]["unparsed"] == 92
    why = rows["tuned"]["collapsed"]
    assert "92 of 92" in why and "not above always answering 'negative'" in why
    rec = decide.recommend(table)
    assert rec["decision"] == "collapsed" and rec["collapsed"] and rec["verdict"] != "fine-tune"
    assert "worth it" not in rec["text"] and "Do not deploy" in rec["text"]
    assert rec["gain_over_best_alternative"] == pytest.approx(0.5)       # the +50 points that used to win

    md, html = write_reports(tmp_path, _report_data(table, rec))
    text = md.read_text()
    assert text.index("> **🛑 COLLAPSED MODEL") < text.index("\n## ")      # before the first section
    assert "worth it" not in text
    page = html.read_text()
    flag, recommendation_h2 = page.index('class="flag red"'), page.index("<h2>Recommendation</h2>")
    assert flag < recommendation_h2 and "COLLAPSED MODEL" in page[flag:recommendation_h2]
    assert "#cf222e" in page[flag - 200:recommendation_h2]          # drawn in red
    assert "<tfoot>" in page and "majority class (always &#x27;negative&#x27;)" in page
    # the paired differences under their own header (not a continued version's lineage header)
    assert "| comparison | metric | difference | 95% CI |\n| --- | --- | --- | --- |\n| fine-tuned − " in text
    assert "test suite" not in text and "<th>comparison</th>" in page and "test suite" not in page


def test_one_answer_is_not_a_collapse_when_the_references_are_that_skewed():
    r = _recipe()
    refs = ["positive"] * 95 + ["negative"] * 5
    preds = ["positive"] * 93 + ["negative"] * 5 + ["positive"] * 2         # 98% correct, 95% positive
    table = decide.systems_table({"base": _result(["negative"] * 100, refs, r), "tuned": _result(preds, refs, r)},
                                 r, LABELS, None, train_references=refs)
    rows = {row["system"]: row for row in table["rows"]}
    assert rows["tuned"]["collapsed"] is None
    assert rows["base"]["collapsed"]                  # 100% "negative" where the references have 5%
    assert not [f for f in table["flags"] if f["system"] == "tuned"]


def test_majority_row_falls_back_to_the_test_answers_without_training_labels():
    r = _recipe()
    refs = ["positive"] * 6 + ["negative"] * 4
    table = decide.systems_table({"tuned": _result(refs, refs, r)}, r, LABELS, None)
    floor = table["rows"][0]
    assert floor["system"] == "majority" and floor["answer"] == "positive" and floor["source"] == "test"


def test_non_label_tasks_have_no_majority_row_but_count_degenerate_output():
    r = _recipe("summarization")
    refs = [f"the meeting moved to day {i} because of the storm" for i in range(20)]
    tuned = refs[:14] + [""] * 3 + ["and then and then and then and then and then"] * 3
    results = {"base": _result([x.upper() for x in refs], refs, r, None), "tuned": _result(tuned, refs, r, None)}
    table = decide.systems_table(results, r, None, None)
    rows = {row["system"]: row for row in table["rows"]}
    assert "majority" not in rows and "answers" not in rows["tuned"]
    assert rows["tuned"]["degenerate"] == {"empty": 3, "repetition": 3, "total": 20}
    assert rows["base"]["degenerate"] == {"empty": 0, "repetition": 0, "total": 20}
    [flag] = table["flags"]
    assert flag["level"] == "red" and "3 empty answers and 3 stuck in a repetition loop, of 20" in flag["text"]
    assert set(rows["tuned"]["intervals"]) == {"rouge1", "rouge2", "rougeL", "bleu"}
    lo, hi = rows["tuned"]["intervals"]["bleu"]
    assert lo <= rows["tuned"]["metrics"]["bleu"] <= hi


@pytest.mark.parametrize("text,loop", [("no no no no no no no no", True), ("", False),
                                       ("I think so. I think so. I think so.", True),
                                       ("A tense, funny and moving film that never repeats itself.", False),
                                       ("very very good", False)])
def test_repetition_loops(text, loop):
    assert stats.is_repetition_loop(text) is loop


# ---- intervals -----------------------------------------------------------------------------------

def test_all_right_vs_all_wrong_is_a_delta_of_100_points_with_a_degenerate_interval():
    r = _recipe()
    refs = _half(40)
    flipped = ["negative" if x == "positive" else "positive" for x in refs]
    table = decide.systems_table({"base": _result(flipped, refs, r), "tuned": _result(refs, refs, r)},
                                 r, LABELS, None, train_references=refs)
    d = next(d for d in table["deltas"] if (d["from"], d["to"]) == ("base", "tuned"))
    assert d["delta"] == 1.0 and d["ci"] == [1.0, 1.0] and d["metric"] == "accuracy"
    rows = {row["system"]: row for row in table["rows"]}
    assert rows["tuned"]["intervals"]["accuracy"] == [1.0, 1.0]
    assert rows["base"]["intervals"]["accuracy"] == [0.0, 0.0]
    rec = decide.recommend(table)
    assert rec["decision"] == "fine-tune" and "+100.0 points" in rec["text"] and "+100.0 to +100.0" in rec["text"]


def test_identical_systems_have_an_interval_around_zero_and_are_inconclusive():
    r = _recipe()
    refs = _half(60)
    rng = np.random.default_rng(3)
    preds = [x if rng.random() < 0.7 else ("negative" if x == "positive" else "positive") for x in refs]
    table = decide.systems_table({"base": _result(preds, refs, r), "rag": _result(preds, refs, r),
                                  "tuned": _result(preds, refs, r)}, r, LABELS, None, train_references=refs)
    for d in table["deltas"]:
        if d["from"] in ("base", "rag"):
            assert d["delta"] == 0 and d["ci"][0] <= 0 <= d["ci"][1]
    rec = decide.recommend(table)
    assert rec["decision"] == "inconclusive" and rec["verdict"] in ("base", "rag")
    assert "Inconclusive on 60 held-out items" in rec["text"] and "includes no difference" in rec["text"]


def test_a_small_real_gain_on_few_items_is_inconclusive_and_the_same_gain_on_many_is_not():
    r = _recipe()

    def table(n):
        refs = _half(n)
        base = [x if i % 10 < 6 else "neither" for i, x in enumerate(refs)]        # 60% right
        tuned = [x if i % 10 < 8 else "neither" for i, x in enumerate(refs)]       # 80% right, a superset
        return decide.systems_table({"base": _result(base, refs, r), "tuned": _result(tuned, refs, r)},
                                    r, LABELS, None, train_references=refs)
    small, large = decide.recommend(table(10)), decide.recommend(table(400))
    assert small["gain_over_best_alternative"] == pytest.approx(0.2) == large["gain_over_best_alternative"]
    assert small["decision"] == "inconclusive" and small["interval"][0] <= 0
    assert any("only 10 test items" in f for f in small["facts"])
    assert large["decision"] == "fine-tune" and large["interval"][0] > 0


def test_bootstrap_is_seeded_and_paired():
    r = _recipe()
    refs = _half(50)
    rng = np.random.default_rng(0)
    a = [x if rng.random() < 0.6 else "x" for x in refs]
    b = [x if rng.random() < 0.7 else "x" for x in refs]
    results = {"base": _result(a, refs, r), "tuned": _result(b, refs, r)}
    one = decide.systems_table(results, r, LABELS, None, train_references=refs)
    two = decide.systems_table(results, r, LABELS, None, train_references=refs)
    other = decide.systems_table(results, r, LABELS, None, train_references=refs, seed=7)
    assert one["deltas"] == two["deltas"] and one["rows"][1]["intervals"] == two["rows"][1]["intervals"]
    assert one["deltas"] != other["deltas"]
    assert one["bootstrap"] == {"method": stats.METHOD, "level": 0.95, "resamples": 2000, "seed": 0}
    w = stats.resample_weights(50)
    assert w.shape == (2000, 50) and (w.sum(axis=1) == 50).all()


def test_every_metric_rebuilt_from_items_matches_the_library_numbers():
    rng = np.random.default_rng(1)
    labels = ["neg", "neu", "pos"]
    refs = [str(rng.choice(labels)) for _ in range(40)]
    preds = [str(rng.choice(labels + ["no idea"])) for _ in range(40)]
    expected = metrics.compute(["accuracy", "exact_match", "rouge", "bleu"], preds, refs, labels)
    for key, value in expected.items():
        assert stats.item_stat(key, preds, refs, labels).point() == pytest.approx(value), key


# ---- verify --------------------------------------------------------------------------------------

def _artifact(identical, prompts=4):
    return {"kind": "transformers", "path": "p", "status": "compared", "prompts": prompts, "identical": identical,
            "mismatches": [{}] * (prompts - identical), "stop_differences": []}


def test_verify_summary_never_calls_a_partial_check_all_identical():
    skipped = {"kind": "llama.cpp", "path": "x.gguf", "status": "skipped", "reason": "llama_cpp is not installed"}
    s = summarize({"merged": _artifact(4), "x-f16.gguf": skipped, "x-q8_0.gguf": dict(skipped)})
    assert (s["identical"], s["different"], s["skipped"], s["complete"]) == (1, 0, 2, False)
    assert s["artifacts"]["x-f16.gguf"] == {"outcome": "skipped", "reason": "llama_cpp is not installed"}
    assert not re.search(r"\ball\b", s["text"]) and "2 skipped and not checked: x-f16.gguf, x-q8_0.gguf" in s["text"]
    lines = summary_lines(s)
    assert lines[1] == ("  x-f16.gguf: skipped (llama_cpp is not installed)", "skipped")
    assert lines[-1][1] == "skipped" and not any(re.search(r"\ball\b", text) for text, _ in lines)

    everything = summarize({"merged": _artifact(4), "server": _artifact(4)})
    assert everything["complete"] and everything["text"] == "all 2 artifacts identical"
    broken = summarize({"merged": _artifact(4), "server": _artifact(1), "x.gguf": skipped})
    assert broken["artifacts"]["server"]["outcome"] == "different" and "1/4 prompts identical" in \
        broken["artifacts"]["server"]["detail"]
    assert broken["text"].startswith("differences found: server") and summary_lines(broken)[-1][1] == "different"
    nothing = summarize({"merged": {"kind": "transformers", "path": "m", "status": "skipped", "reason": "none"}})
    assert nothing["text"] == "nothing compared: every artifact was skipped" and not nothing["complete"]


# ---- advise --------------------------------------------------------------------------------------

GiB = 1 << 30


@pytest.mark.parametrize("scores,n_train,memory", [
    ({"base": 0.5, "few_shot": 0.6, "rag": 0.55}, 20, 24 * GiB),        # too little data, room to improve
    ({"base": 0.5, "few_shot": 0.6, "rag": 0.55}, 1000, 24 * GiB),      # the ordinary yes
    ({"base": 0.97, "few_shot": 0.9, "rag": 0.9}, 1000, 24 * GiB),      # the baseline is already there
    ({"base": 0.97, "few_shot": 0.9, "rag": 0.9}, 20, 24 * GiB),        # both reasons say no
    ({"base": 0.4, "few_shot": 0.45, "rag": 0.8}, 30, 24 * GiB),        # RAG helps a lot, little data
    ({"base": 0.4, "few_shot": 0.45, "rag": 0.8}, 20000, 2 * GiB),      # RAG helps a lot, tight memory
])
def test_advise_gives_one_answer_that_agrees_with_itself(scores, n_train, memory):
    method = choose_method(n_train, 135_000_000, memory, {"peak_rss_bytes": GiB})
    rec = recommendation(scores, "accuracy", method, sample=64)
    text = " ".join([rec["text"], *rec["reasons"]]).lower()
    if rec["fine_tune"]:
        assert rec["method"] and rec["family"] != "none (prompting)" and rec["deploy"] is None
        assert rec["text"].startswith("fine-tune with") and "would overfit" not in text
        assert "little room" not in text
    else:
        assert rec["method"] is None and rec["family"] == "none (prompting)" and rec["deploy"] in scores
        assert rec["text"].startswith("do not fine-tune") and "worth trying" not in text
        assert "fine-tune for" not in text and "fine-tuning to help" not in text
    expected_yes = n_train >= 50 and max(scores.values()) < 0.95
    assert rec["fine_tune"] is expected_yes
    assert rec["best_baseline"] == max(scores, key=scores.get)
