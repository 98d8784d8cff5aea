"""Named model versions: register with lineage, resolve by alias/number, MLflow and JSON-only round trips,
promotion gates, promote/rollback, the CLI's one-line errors, and the server following an alias move."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny import tiny_recipe, write_sentiment
from tunesmith.cli.main import main
from tunesmith.errors import TunesmithError
from tunesmith.fsutil import sha256_file
from tunesmith.lifecycle import promote, register, resolve, rollback, set_alias, versions
from tunesmith.rundir import Layout, read_json

USER = [{"role": "user", "content": "The movie was wonderful and the actors were great."}]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    """Two finished runs made by the pipeline: ``tiny-001`` (trained + evaluated) and ``tiny-002`` (its
    copy with strong seeded random LoRA B matrices, so its greedy answers clearly differ)."""
    from tunesmith import pipeline
    root = tmp_path_factory.mktemp("lifecycle")
    data = write_sentiment(root / "sentiment.jsonl")
    recipe = tiny_recipe(root, tiny_model_dir, data, train={"max_steps": 2, "epochs": 1},
                         eval={"baselines": [], "max_examples": 8}, export={"merged": False, "verify": False},
                         promote={"min_gain": 0.0, "non_inferiority": 0.02, "max_perplexity_rise": 0.05})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESMITH_HOME", str(root / "tunesmith-home"))
        v1 = Path(pipeline.run(str(recipe)))
    v2 = v1.parent / "tiny-002"
    shutil.copytree(v1, v2)
    weights = v2 / "model" / "adapter_model.safetensors"
    gen = torch.Generator().manual_seed(7)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 if "lora_B" in k else v)
             for k, v in load_file(str(weights)).items()}
    save_file(state, str(weights))
    return v1.parent


@pytest.fixture
def runs(built, tmp_path):
    """A private copy of the runs folder (no registry yet)."""
    dst = tmp_path / "runs"
    shutil.copytree(built, dst)
    return dst


def set_metrics(run_dir: Path, tuned: float, base: float = 0.5) -> None:
    summary = read_json(Layout(run_dir).summary_json)
    summary["tuned"]["metrics"]["accuracy"], summary["base"]["metrics"]["accuracy"] = tuned, base
    Layout(run_dir).summary_json.write_text(json.dumps(summary))


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def registered(runs: Path):
    v1 = register(runs / "tiny-001", "senti")
    v2 = register(runs / "tiny-002", "senti", parent="senti@v1", strategy="replay")
    return v1, v2


# ---- register, lineage, resolve -------------------------------------------------------------------------

def test_register_writes_lineage_and_resolves(runs):
    v1, v2 = registered(runs)
    assert (v1.number, v2.number, v2.parent, v1.parent) == (1, 2, "senti@v1", None)
    lin = read_json(runs / "tiny-002" / "lineage.json")
    manifest = read_json(runs / "tiny-002" / "data" / "manifest.json")
    assert lin["name"] == "senti" and lin["version"] == 2 and lin["parent"] == "senti@v1"
    assert lin["strategy"] == "replay" and lin["method"] == "lora" and lin["objective"] == "sft"
    assert lin["base_model"]["hash"].startswith("dir:") and len(lin["base_model"]["hash"]) == 68
    assert lin["data"]["files"]["train"]["sha256"] == manifest["files"]["train"]["sha256"]
    assert lin["data"]["split_files"] == manifest["split_files"]
    assert lin["recipe"]["sha256"] == sha256_file(runs / "tiny-002" / "recipe.yaml")
    assert lin["metrics"]["headline"]["metric"] == "accuracy"
    assert lin["registry"]["tracking_uri"] == f"sqlite:///{runs.resolve() / 'mlflow.db'}"
    # resolve: number, default (latest without champion), alias
    assert resolve("senti@v1", root=runs).run_dir == (runs / "tiny-001").resolve()
    assert resolve("senti", root=runs).number == 2
    set_alias("senti", "champion", 1, root=runs)
    assert resolve("senti", root=runs).number == 1 and resolve("senti@champion", root=runs).aliases == ["champion"]
    for bad in ("senti@v9", "senti@nosuch", "other@champion"):
        with pytest.raises(TunesmithError) as e:
            resolve(bad, root=runs)
        assert bad in str(e.value) and "\n" not in str(e.value)
    assert "known: v1, v2" in str(pytest.raises(TunesmithError, resolve, "senti@v9", root=runs).value)
    with pytest.raises(TunesmithError, match="already registered as senti@v1"):
        register(runs / "tiny-001", "senti")


def test_lineage_round_trips_through_mlflow_and_through_json_alone(runs):
    registered(runs)
    set_alias("senti", "champion", 2, root=runs)
    set_alias("senti", "previous", 1, root=runs)
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}", registry_uri=f"sqlite:///{runs / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("senti", "champion").version) == 2
    mv = client.get_model_version("senti", "2")
    assert mv.source == (runs / "tiny-002").resolve().as_uri() and mv.tags["parent"] == "senti@v1"
    assert json.loads(mv.tags["tunesmith.lineage"])["data"]["files"]["train"]["sha256"]
    via_mlflow = [(v.number, v.parent, v.aliases, v.lineage["base_model"]["hash"]) for v in versions("senti", root=runs)]
    # the registry is deleted: the lineage.json copies answer alone
    (runs / "mlflow.db").unlink()
    via_json = [(v.number, v.parent, v.aliases, v.lineage["base_model"]["hash"]) for v in versions("senti", root=runs)]
    assert via_json == via_mlflow == [(1, None, ["previous"], via_mlflow[0][3]), (2, "senti@v1", ["champion"],
                                                                                 via_mlflow[0][3])]
    assert resolve("senti@champion", root=runs).run_dir == (runs / "tiny-002").resolve()
    from tunesmith.lifecycle.source import VersionsSource
    served = {m.id: m.run_dir for m in VersionsSource([runs]).models()}
    assert served == {"senti@v1": (runs / "tiny-001").resolve(), "senti@previous": (runs / "tiny-001").resolve(),
                      "senti@v2": (runs / "tiny-002").resolve(), "senti@champion": (runs / "tiny-002").resolve()}
    assert not (runs / "mlflow.db").exists()      # reading never creates a registry
    # alias moves without MLflow update the JSON copies
    set_alias("senti", "champion", 1, root=runs)
    assert resolve("senti", root=runs).number == 1
    # registering into a fresh registry would number v1 again: refused, nothing written
    shutil.copytree(runs / "tiny-002", runs / "tiny-003")
    (runs / "tiny-003" / "lineage.json").unlink()
    with pytest.raises(TunesmithError, match="does not hold senti@v1, senti@v2"):
        register(runs / "tiny-003", "senti")
    assert not (runs / "tiny-003" / "lineage.json").exists()


# ---- gates, promote, rollback -------------------------------------------------------------------------------

def test_gate_rejects_a_degraded_version_and_moves_nothing(runs):
    set_metrics(runs / "tiny-001", tuned=0.6)
    set_metrics(runs / "tiny-002", tuned=0.3)       # degraded: worse than its parent
    forgetting = read_json(runs / "tiny-002" / "eval" / "forgetting.json") or {}
    forgetting["comparison"] = {"perplexity_change": 0.2}
    (runs / "tiny-002" / "eval" / "forgetting.json").write_text(json.dumps(forgetting))
    registered(runs)
    lin = read_json(runs / "tiny-002" / "lineage.json")
    lin["backward"] = {"version": "senti@v2",      # the shape tunesmith.eval.backward writes
                       "suites": {"senti@v2": {"metric": "accuracy", "ancestor_score": 0.9, "child_score": 0.3},
                                  "v1-test": {"metric": "accuracy", "ancestor_score": 0.6, "child_score": 0.5},
                                  "v0-test": {"metric": "accuracy", "reference": 0.4, "value": 0.41}}}
    (runs / "tiny-002" / "lineage.json").write_text(json.dumps(lin))
    assert promote("senti@v1", root=runs)["champion"] == "senti@v1"
    with pytest.raises(TunesmithError) as e:
        promote("senti@v2", root=runs)
    msg = str(e.value)
    assert "\n" not in msg and "nothing moved" in msg
    assert "min_gain: accuracy 0.3 vs 0.6 (senti@v1): gain -0.3 < min_gain 0" in msg
    assert "non_inferiority: v1-test accuracy 0.6 -> 0.5 (drop +0.1) > margin 0.02" in msg
    assert "v0-test" not in msg and "senti@v2 accuracy" not in msg     # within the margin; the own suite
    assert "max_perplexity_rise: general perplexity change +20.00% > 5%" in msg
    assert {v.number: v.aliases for v in versions("senti", root=runs)} == {1: ["champion"], 2: []}
    assert read_json(runs / "tiny-002" / "lineage.json")["gate"]["passed"] is False
    # the same version with its metrics repaired passes
    set_metrics(runs / "tiny-002", tuned=0.8)
    (runs / "tiny-002" / "eval" / "forgetting.json").write_text(json.dumps({"comparison": {"perplexity_change": 0.01}}))
    lin = read_json(runs / "tiny-002" / "lineage.json")
    lin["backward"]["suites"]["v1-test"]["child_score"] = 0.59
    (runs / "tiny-002" / "lineage.json").write_text(json.dumps(lin))
    out = promote("senti@v2", root=runs)
    assert out["verdict"]["passed"] and (out["champion"], out["previous"]) == ("senti@v2", "senti@v1")


def test_promote_force_rollback_and_cli(runs, capsys):
    set_metrics(runs / "tiny-001", tuned=0.6)
    set_metrics(runs / "tiny-002", tuned=0.3)
    registered(runs)
    assert main(["promote", "senti@v1", "--root", str(runs)]) == 0
    capsys.readouterr()
    assert main(["promote", "senti@v2", "--root", str(runs)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and "min_gain" in err and "-0.3" in err
    assert resolve("senti@champion", root=runs).number == 1
    assert main(["promote", "senti@v2", "--force", "--root", str(runs)]) == 0
    assert "forced" in capsys.readouterr().out
    lin = read_json(runs / "tiny-002" / "lineage.json")
    assert lin["overrides"][0]["forced"] and lin["overrides"][0]["failed"][0]["rule"] == "min_gain"
    from mlflow import MlflowClient
    uri = f"sqlite:///{runs.resolve() / 'mlflow.db'}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("senti", "2")
    assert mv.tags["gate"] == "failed" and json.loads(mv.tags["tunesmith.lineage"])["overrides"][0]["forced"]
    assert {v.number: v.aliases for v in versions("senti", root=runs)} == {1: ["previous"], 2: ["champion"]}
    assert main(["rollback", "senti", "--root", str(runs)]) == 0
    assert {v.number: v.aliases for v in versions("senti", root=runs)} == {1: ["champion"], 2: ["previous"]}
    capsys.readouterr()
    assert main(["versions", "senti", "--root", str(runs), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["ref"], r["parent"], r["aliases"]) for r in rows] == [("senti@v1", None, ["champion"]),
                                                                      ("senti@v2", "senti@v1", ["previous"])]
    assert main(["versions", "senti", "--root", str(runs)]) == 0
    tree = capsys.readouterr().out
    assert "v1 [champion]" in tree and "v2 [previous]" in tree and "gate: failed (forced)" in tree
    assert tree.index("v2") > tree.index("v1")


BAD_INPUT = [
    (["promote", "senti@v9"], "senti@v9"),
    (["promote", "senti@latest"], "invalid alias"),
    (["rollback", "senti"], "no previous version"),
    (["versions", "nosuch"], "unknown model 'nosuch'"),
    (["register", "{runs}/nosuch", "--as", "x"], "not a finished tunesmith run"),
    (["register", "{runs}/tiny-001", "--as", "bad name"], "invalid model name"),
    (["register", "{runs}/tiny-001", "--as", "senti"], "already registered as senti@v1"),
    (["register", "{runs}/tiny-002", "--as", "senti", "--parent", "senti@v7"], "senti@v7"),
]


def test_bad_input_is_one_line_exit_2_and_changes_nothing(runs, capsys):
    register(runs / "tiny-001", "senti")
    set_alias("senti", "champion", 1, root=runs)
    capsys.readouterr()
    for argv, needle in BAD_INPUT:
        argv = [a.replace("{runs}", str(runs)) for a in argv]
        if argv[0] != "register":
            argv += ["--root", str(runs)]
        before = {p: p.read_bytes() for p in runs.rglob("lineage.json")}
        assert main(argv) == 2, argv
        err = one_line(capsys.readouterr().err)
        assert err.startswith("error: ") and needle in err, (argv, err)
        assert {p: p.read_bytes() for p in runs.rglob("lineage.json")} == before
    assert [(v.number, v.aliases) for v in versions("senti", root=runs)] == [(1, ["champion"])]


def test_unknown_gate_key_is_a_recipe_error(runs, capsys):
    registered(runs)
    recipe = runs / "tiny-002" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("  min_gain: 0.0\n", "  min_gian: 0.0\n"))
    assert "min_gian" in recipe.read_text()
    assert main(["promote", "senti@v2", "--root", str(runs)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "promote.min_gian" in err
    assert all(not v.aliases for v in versions("senti", root=runs))


# ---- the server follows an alias move ---------------------------------------------------------------------

def test_server_answers_champion_with_the_promoted_version_then_the_rolled_back_one(runs, tiny_model_dir):
    from tunesmith.serve import create_app
    from tunesmith.serve.background import BackgroundServer
    from tunesmith.serve.settings import ServeSettings
    set_metrics(runs / "tiny-001", tuned=0.6)
    set_metrics(runs / "tiny-002", tuned=0.8)
    registered(runs)
    promote("senti@v1", root=runs)
    promote("senti@v2", root=runs)
    settings = ServeSettings(model=str(tiny_model_dir), model_id="tiny-base", runs=[runs], api_keys=[],
                             batch_wait_ms=0, default_max_tokens=8)
    with BackgroundServer(create_app(settings)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        ids = {m.id for m in client.models.list().data}
        assert {"senti@v1", "senti@v2", "senti@champion", "senti@previous"} <= ids

        def answer(model):
            return client.chat.completions.create(model=model, messages=USER, temperature=0,
                                                  max_tokens=8).choices[0].message.content
        a1, a2 = answer("senti@v1"), answer("senti@v2")
        assert a1 != a2                                   # the two versions are told apart by their replies
        assert answer("senti@champion") == a2
        rollback("senti", root=runs)
        assert answer("senti@champion") == a1             # no restart: the next request follows the alias
        assert answer("senti@previous") == a2
        with pytest.raises(openai.NotFoundError):
            answer("senti@v9")
