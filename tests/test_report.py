"""Tests for the Markdown/HTML run report and the loss-curve picture."""
from __future__ import annotations

import base64
import json
import re

import pytest

from tunesmith.eval.metrics import details
from tunesmith.eval.report import loss_plot_png, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["negative", "positive"]


def write_metrics(path, with_eval=True):
    lines = [{"type": "train", "step": s, "loss": 2.5 - 0.1 * s, "lr": 1e-4} for s in range(1, 11)]
    if with_eval:
        lines += [{"type": "eval", "step": s, "val_loss": 2.4 - 0.08 * s} for s in (5, 10)]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{\"type\": \"train\", \"st"  # torn last line
    path.write_text(text, encoding="utf-8")


def make_results():
    base_preds = ["negative", "The answer is unclear", "negative"]
    tuned_preds = ["positive", "positive", "negative"]
    refs = ["positive", "positive", "negative"]
    return {
        "name": "sentiment <demo>", "model": "tiny/llama", "method": "lora", "task": "classification",
        "metrics": {"base": {"accuracy": 1 / 3, "macro_f1": 0.25},
                    "tuned": {"accuracy": 1.0, "macro_f1": 1.0}},
        "loss": {"base": {"val_loss": 2.5, "perplexity": 12.18, "tokens": 590},
                 "tuned": {"val_loss": 1.25, "perplexity": 3.49, "tokens": 590}},
        "label_details": {"base": details(base_preds, refs, LABELS),
                          "tuned": details(tuned_preds, refs, LABELS)},
        "examples": [{"prompt": "Review: <script>alert('x')</script> & great fun",
                      "reference": "positive", "base": "The answer is unclear",
                      "tuned": "positive", "base_correct": False, "tuned_correct": True}],
        "counts": {"train": 80, "validation": 10, "test": 10, "evaluated": 3},
        "training": {"steps": 10, "train_tokens": 12345, "tokens_per_s": 987.6, "wall_s": 75.2,
                     "best_step": 10, "early_stopped": False},
        "artifacts": {"adapter": "runs/sentiment-001/adapter", "merged": None},
        "flips": {"base_wrong_tuned_right": 2, "base_right_tuned_wrong": 0},
    }


def test_loss_plot_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert loss_plot_png(path) is None  # missing file
    path.write_text('{"type": "config"}\n', encoding="utf-8")
    assert loss_plot_png(path) is None  # no loss records
    write_metrics(path)
    png = loss_plot_png(path)
    assert png and png.startswith(PNG_MAGIC)
    write_metrics(path, with_eval=False)
    assert loss_plot_png(path).startswith(PNG_MAGIC)


@pytest.fixture
def written(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    md_path, html_path = write_reports(tmp_path, make_results())
    return tmp_path, md_path, html_path


def test_files_written(written):
    run_dir, md_path, html_path = written
    assert md_path == run_dir / "report.md" and html_path == run_dir / "report.html"
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_html_self_contained_with_embedded_plot(written):
    run_dir, _, html_path = written
    page = html_path.read_text(encoding="utf-8")
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m, "loss plot is not embedded"
    assert base64.b64decode(m.group(1)) == (run_dir / "loss.png").read_bytes()
    assert "http" not in page.lower()
    assert not re.search(r'<(link|script)\b', page, re.I)
    assert "<style>" in page


def test_html_metric_rows_and_deltas(written):
    page = written[2].read_text(encoding="utf-8")
    row = re.compile(r'<tr><th>([^<]*)</th><td>([^<]*)</td><td>([^<]*)</td>'
                     r'<td class="(\w+)">([^<]*)</td></tr>')
    rows = {m.group(1): m.groups()[1:] for m in row.finditer(page)}
    assert list(rows) == ["Held-out loss", "Perplexity", "Accuracy", "Macro F1"]   # no bookkeeping rows
    assert rows["Held-out loss"] == ("2.5000", "1.2500", "better", "▼ -1.2500")
    assert rows["Perplexity"] == ("12.18", "3.49", "better", "▼ -8.69")
    assert rows["Accuracy"] == ("33.3%", "100.0%", "better", "▲ +66.7 pp")
    assert rows["Macro F1"] == ("25.0%", "100.0%", "better", "▲ +75.0 pp")
    assert 'class="worse"' not in page


def test_html_escapes_user_text(written):
    page = written[2].read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; great fun" in page
    assert "sentiment &lt;demo&gt;" in page and "<demo>" not in page


def test_html_confusion_flips_training_artifacts(written):
    page = written[2].read_text(encoding="utf-8")
    assert page.count("reference \\ predicted") == 2
    # tuned model: all correct -> diagonal 1 (negative) and 2 (positive)
    assert '<tr><th>positive</th><td>0</td><td class="diag">2</td><td>0</td></tr>' in page
    # base model: one positive answer unparsed, one called negative
    assert '<tr><th>positive</th><td>1</td><td class="diag">0</td><td>1</td></tr>' in page
    assert "Base wrong → tuned right</th><td>2" in page
    assert "12,345" in page and "1m 15s" in page
    assert "runs/sentiment-001/adapter" in page and "not exported" in page
    assert "✓ correct" in page and "✗ wrong" in page


def test_markdown(written):
    run_dir, md_path, _ = written
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Tunesmith report: sentiment \\<demo>")  # no raw HTML tag
    assert "| metric | base | tuned | delta |" in md
    assert "| Held-out loss | 2.5000 | 1.2500 | ▼ -1.2500 |" in md
    assert "| Accuracy | 33.3% | 100.0% | ▲ +66.7 pp |" in md
    assert "![Training and validation loss](loss.png)" in md
    assert "| positive | 1 | 0 | 1 |" in md
    assert "Review: <script>alert('x')</script> & great fun" in md  # inside a code block


def test_tuned_only_and_worse_delta(tmp_path):
    results = make_results()
    results["metrics"] = {"tuned": {"rougeL": 40.0, "bleu": 12.5}}
    results["loss"] = {"base": {"val_loss": 1.0}, "tuned": {"val_loss": 1.5}}
    results["label_details"] = None
    results["examples"] = []
    md_path, html_path = write_reports(tmp_path, results)  # no metrics.jsonl: no plot
    page = html_path.read_text(encoding="utf-8")
    assert "data:image/png" not in page and not (tmp_path / "loss.png").exists()
    assert '<td class="worse">▲ +0.5000</td>' in page
    assert "<tr><th>ROUGE-L</th><td>—</td><td>40.00</td>" in page
    assert "Confusion" not in page
    md = md_path.read_text(encoding="utf-8")
    assert "| BLEU | — | 12.50 | — |" in md
    assert "No examples where" in md


def test_a_multi_process_run_says_how_the_processes_shared_the_work(tmp_path):
    results = make_results()
    results["training"]["distributed"] = {"nproc": 2, "backend": "gloo", "strategy": "fsdp",
                                          "rank_weight_spread": None, "rank_peak_rss_mb": 3015.9}
    md_path, html_path = write_reports(tmp_path, results)
    assert "| Processes | 2 (fsdp: weights sharded; gloo), largest peak 3,016 MB |" in md_path.read_text()
    assert "Processes" not in write_reports(tmp_path / "one", make_results())[0].read_text()


@pytest.mark.parametrize("best_step,best_val_loss,kept", [
    (0, None, "| Kept checkpoint | step 10, the last (no validation split) |"),
    (0, 0.59, "| Kept checkpoint | step 0, the fitted start (no training step beat it on validation) |"),
    (10, 0.59, "| Kept checkpoint | step 10 (lowest validation loss) |")])
def test_the_kept_checkpoint_says_what_chose_it(tmp_path, best_step, best_val_loss, kept):
    """A run without validation keeps its last step: it is not called a fitted start that beat training."""
    results = make_results()
    results["training"].update(best_step=best_step, best_val_loss=best_val_loss, selected_on="val_loss")
    assert kept in write_reports(tmp_path, results)[0].read_text()
