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
    assert "data:image/png;base64," in html and "accuracy" in html
