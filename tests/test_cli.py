"""End to end through the CLI on the tiny model: the run directory, stage commands, bad input, no overwrites."""
import hashlib
import io
import json
import os

import pytest

from tunesmith.cli import main


def tree_hash(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def only_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_run_writes_a_complete_self_describing_run(finished_run):
    run = finished_run.path                 # `tunesmith run` on the default recipe_file recipe
    assert run.name == "tiny-001"
    for rel in ["recipe.yaml", "run.json", "data/manifest.json", "data/train.jsonl", "data/test.jsonl",
                "metrics.jsonl", "train.json", "model/adapter_model.safetensors", "eval/base.json",
                "eval/tuned.json", "eval/summary.json", "report.md", "report.html", "loss.png",
                "export/adapter/adapter_model.safetensors", "export/adapter/README.md",
                "export/merged/config.json", "export/merged/model.safetensors", "export/merged/README.md",
                "export/export.json"]:
        assert (run / rel).is_file(), rel
    assert list((run / "checkpoints").glob("step-*"))
    info = json.loads((run / "train.json").read_text())
    assert info["stage_s"] >= info["wall_s"] > 0        # the whole stage includes the optimizer steps' time
    summary = json.loads((run / "eval" / "summary.json").read_text())
    # the toy task is learnable: the tuned model's held-out loss is far below the base's
    assert summary["tuned"]["loss"]["val_loss"] < summary["base"]["loss"]["val_loss"] - 1.0
    assert {"accuracy", "macro_f1"} <= summary["tuned"]["metrics"].keys()
    exported = json.loads((run / "export" / "export.json").read_text())
    assert exported["parity"]["identical"] == exported["parity"]["prompts"] > 0
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert len(manifest["files"]["train"]["sha256"]) == 64
    info = json.loads((run / "run.json").read_text())
    assert {"prepare", "train", "eval", "export", "run"} <= info["stages"].keys()
    out = finished_run.stdout
    assert "report.html" in out and f"tunesmith chat {run}" in " ".join(out.split())
    card = (run / "export" / "merged" / "README.md").read_text()
    assert "sha256" in card and "accuracy" in card


def test_merged_export_reloads_with_plain_transformers(finished_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith import pipeline
    from tunesmith.generation import generate
    from tunesmith.rundir import as_run
    run = as_run(finished_run.path)
    merged = run.path / "export" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(merged)
    session = pipeline.Session(run)
    tuned = session.load_tuned()   # adapter on a fresh base, from disk
    prompts = [ex.prompt_messages for ex in session.splits["test"]]
    assert generate(model, tok, prompts, 6) == generate(tuned, session.tokenizer, prompts, 6)


def test_stage_commands_and_resume(recipe_file, tmp_path, capsys):
    recipe = recipe_file(train={"epochs": 3, "save_every": 4})
    assert main(["data", "prepare", str(recipe)]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    from tunesmith import pipeline
    pipeline.train(run, stop_after=5)                      # interrupted after 5 steps
    assert not os.path.exists(os.path.join(run, "model"))
    assert main(["train", run, "--resume"]) == 0
    assert os.path.exists(os.path.join(run, "model", "adapter_model.safetensors"))
    steps = [json.loads(x)["step"] for x in open(os.path.join(run, "metrics.jsonl")) if '"train"' in x]
    info = json.load(open(os.path.join(run, "train.json")))
    planned = info["steps"]
    assert steps == list(range(1, planned + 1)) and planned > 5
    assert info["stage_s"] >= info["wall_s"] > 0     # at least every call's steps (wall_s counts both calls)
    assert main(["eval", run]) == 0 and main(["export", run]) == 0
    assert os.path.exists(os.path.join(run, "report.html"))
    before = tree_hash(run)
    capsys.readouterr()
    assert main(["train", run]) == 2                       # already trained: refuse, change nothing
    assert "already trained" in only_line(capsys.readouterr().err)
    assert tree_hash(run) == before


def test_second_run_never_overwrites_the_first(recipe_file, tmp_path):
    recipe = recipe_file(train={"max_steps": 2}, eval={"compare_base": False}, export={"merged": False})
    assert main(["run", str(recipe)]) == 0
    first = tmp_path / "runs" / "tiny-001"
    before = tree_hash(first)
    assert main(["run", str(recipe)]) == 0
    assert (tmp_path / "runs" / "tiny-002" / "report.html").is_file()
    assert tree_hash(first) == before


def test_chat_streams_replies(finished_run):
    from tunesmith.chat import chat
    out = io.StringIO()
    chat(finished_run.path, max_new_tokens=5, stdin=io.StringIO("hello there\n/exit\n"), stdout=out)
    text = out.getvalue()
    assert "you> model> " in text and text.count("you> ") == 2


def test_models_and_validate_commands(sentiment_file, tmp_path, capsys, recipe_file):
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    report = tmp_path / "report.json"
    assert main(["data", "validate", str(sentiment_file), "--recipe", str(recipe_file()), "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["valid"] == 80 and data["labels"]


# ---- bad input: one line naming file/line/field, exit 2, nothing lost ------------------------------

def bad(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    return code, only_line(capsys.readouterr().err)


def test_missing_data_file(recipe_file, tmp_path, capsys):
    code, line = bad(capsys, ["run", str(recipe_file(data={"train": str(tmp_path / "nope.jsonl")}))])
    assert code == 2 and "nope.jsonl" in line and "not found" in line


def test_malformed_json_line(recipe_file, tmp_path, capsys):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "a fine movie", "label": 1}\n{"text": "oops", "label": 0\n')
    code, line = bad(capsys, ["run", str(recipe_file(data={"train": str(f)}))])
    assert code == 2 and "broken.jsonl:2" in line


def test_wrong_schema(recipe_file, tmp_path, capsys):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                 '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n')
    code, line = bad(capsys, ["run", str(recipe_file(data={"train": str(f), "format": "auto"}))])
    assert code == 2 and "chat.jsonl:2" in line and "role" in line and "assistant" in line


def test_empty_after_cleaning(recipe_file, tmp_path, capsys):
    f = tmp_path / "empty.jsonl"
    f.write_text('{"text": "<br /><br />", "label": 1}\n{"text": "<p></p>", "label": 0}\n')
    code, line = bad(capsys, ["run", str(recipe_file(data={"train": str(f), "clean": {"strip_html": True}}))])
    assert code == 2 and "empty.jsonl" in line


def test_unknown_and_mistyped_recipe_keys(recipe_file, capsys):
    code, line = bad(capsys, ["run", str(recipe_file(train={"learning_rate": 0.1}))])
    assert code == 2 and "train.learning_rate" in line and "recipe.yaml" in line
    code, line = bad(capsys, ["run", str(recipe_file()), "train.epoch=3"])
    assert code == 2 and "train.epoch" in line


def test_out_of_range_value(recipe_file, capsys):
    code, line = bad(capsys, ["run", str(recipe_file()), "train.batch_size=0"])
    assert code == 2 and "train.batch_size" in line


def test_unknown_model(recipe_file, capsys):
    code, line = bad(capsys, ["run", str(recipe_file(model={"name": "gpt-17"}))])
    assert code == 2 and "gpt-17" in line and "model.name" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the read-only file case")
def test_unwritable_output_dir_permissions(recipe_file, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, line = bad(capsys, ["run", str(recipe_file(output_dir=str(ro / "runs")))])
    assert code == 2 and "not writable" in line


def test_output_dir_that_is_a_file(recipe_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, line = bad(capsys, ["run", str(recipe_file(output_dir=str(blocker / "runs")))])
    assert code == 2 and "not writable" in line


def test_continued_pretraining_reports_domain_perplexity(recipe_file, tmp_path):
    texts = tmp_path / "domain.jsonl"
    texts.write_text("".join(json.dumps({"text": f"the quick brown fox {i} jumps over the lazy dog. " * 3}) + "\n"
                             for i in range(40)))
    recipe = recipe_file(task="pretraining",
                         data={"train": str(texts), "format": "text", "packing": True, "max_length": 128,
                               "labels": None},
                         export={"check_parity": False})
    assert main(["run", str(recipe)]) == 0
    summary = json.loads((tmp_path / "runs" / "tiny-001" / "eval" / "summary.json").read_text())
    base, tuned = summary["base"]["loss"]["perplexity"], summary["tuned"]["loss"]["perplexity"]
    assert tuned < base * 0.5
    assert summary["tuned"]["metrics"] == {}


def test_multi_task_mixes_training_and_evaluates_each_task(recipe_file, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"What is {i} plus zero?", "completion": f"{i}"}) + "\n"
                          for i in range(40)))
    recipe = recipe_file(task="sft", data={"task_name": "sentiment", "weight": 1.0,
                                           "mix": [{"name": "arith", "weight": 3.0, "train": str(qa),
                                                    "format": "prompt_completion"}]},
                         eval={"metrics": ["exact_match"]})
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny-001"
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    tasks = manifest["tasks"]
    assert set(tasks) == {"sentiment", "arith"}
    # the mix follows the weights (1:3) over the tasks' training pools
    assert tasks["arith"]["train_in_mix"] == pytest.approx(3 * tasks["sentiment"]["train_in_mix"], abs=1)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert {"sentiment/exact_match", "arith/exact_match"} <= summary["tuned"]["metrics"].keys()
    assert {"sentiment/val_loss", "arith/val_loss", "val_loss"} <= summary["tuned"]["loss"].keys()
    html = (run / "report.html").read_text()
    assert "arith: Exact match" in html and "sentiment: Exact match" in html


def test_run_resume_finishes_an_interrupted_run(recipe_file, tmp_path):
    from tunesmith import pipeline
    run = pipeline.prepare(recipe_file())
    pipeline.train(run, stop_after=7)                 # checkpoint at step 5, interrupted at 7
    assert main(["run", str(run.path), "--resume"]) == 0
    summary = json.loads((run.path / "eval" / "summary.json").read_text())
    assert summary["tuned"]["metrics"] and (run.path / "export" / "merged" / "config.json").is_file()
    steps = [json.loads(x)["step"] for x in open(run.path / "metrics.jsonl") if '"train"' in x]
    assert steps == list(range(1, steps[-1] + 1))
