"""New methods end to end through the CLI on the tiny model: train, evaluate, export, reload, chat."""
from __future__ import annotations

import io
import json

import pytest

from tunesmith.chat import chat
from tunesmith.cli import main

# method -> (extra overrides, files its saved adapter/weights consist of)
CASES = {
    "ia3": (["train.lr=5e-2"], ["adapter_config.json", "adapter_model.safetensors"]),
    "bitfit": (["train.lr=5e-2"], ["tuned_weights.safetensors"]),
    "sparse": (["method.sparse_fraction=0.05"], ["sparse_delta.json", "sparse_delta.safetensors"]),
    "prompt_tuning": (["train.lr=5e-2", "method.num_virtual_tokens=8", "method.prompt_init_text=positive or negative"],
                      ["adapter_config.json", "adapter_model.safetensors"]),
    "prefix_tuning": (["train.lr=5e-2", "method.num_virtual_tokens=8"],
                      ["adapter_config.json", "adapter_model.safetensors"]),
    "adapter": (["method.adapter_size=8"], ["bottleneck_adapters.json", "bottleneck_adapters.safetensors"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_run_export_and_reload(name, recipe_file, tmp_path):
    from tunesmith.methods import get
    method = get(name)
    overrides, files = CASES[name]
    assert main(["run", str(recipe_file(train={"max_steps": 30})), f"method.name={name}", *overrides]) == 0
    run = tmp_path / "runs" / "tiny-001"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["tuned"]["loss"]["val_loss"] < summary["base"]["loss"]["val_loss"] - 0.5
    for f in files:
        assert (run / "model" / f).is_file(), f
    exported = json.loads((run / "export" / "export.json").read_text())
    if method.mergeable:
        merged = json.loads((run / "export" / "merged" / "config.json").read_text())
        assert exported["parity"]["identical"] == exported["parity"]["prompts"] > 0
        if name == "bitfit":       # the added zero-initialised biases are part of the plain model
            assert merged["attention_bias"] is True and merged["mlp_bias"] is True
    else:                          # the adapter only; nothing transformers could load on its own
        assert exported["merged"] is None and not (run / "export" / "merged").exists()
        assert exported["parity"] is None
    if method.has_adapter or not method.mergeable:
        for f in files:
            assert (run / "export" / "adapter" / f).is_file(), f
    else:
        assert exported["adapter"] is None

    # a new process: the tuned model comes back from run/model through method.load, unchanged
    tuned = json.loads((run / "eval" / "tuned.json").read_text())
    assert main(["eval", str(run)]) == 0
    again = json.loads((run / "eval" / "tuned.json").read_text())
    assert [p["prediction"] for p in again["predictions"]] == [p["prediction"] for p in tuned["predictions"]]
    assert again["loss"]["val_loss"] == pytest.approx(tuned["loss"]["val_loss"], abs=1e-5)

    out = io.StringIO()
    chat(run, max_new_tokens=4, stdin=io.StringIO("the food was cold\n/exit\n"), stdout=out)
    assert f"({name} on" in out.getvalue() and out.getvalue().count("you> ") == 2
