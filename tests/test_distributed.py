"""train.nproc: two CPU processes (gloo) train the same weights as one process with the same batch, only rank 0
writes, a killed two-process run resumes, and what N processes do not combine with is one error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import make_model
from tunesmith import pipeline
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.rundir import Run, read_jsonl
from tunesmith.train import distributed, fsdp

STEPS = 4
# sharding changes only the order of float sums (each rank's part, then the all-reduce): Adam's first steps
# amplify such differences a little, so the weights agree closely but not bit for bit
ATOL = 2e-5


def _recipe(recipe_file, nproc: int, model: dict | None = None, **train):
    return recipe_file(method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, **({"model": model} if model else {}),
                       train={"max_steps": STEPS, "batch_size": 4, "eval_every": 2, "save_every": 2,
                              "threads": 1, "nproc": nproc, "seed": 7, "precision": "fp32", **train})


def _adapter(run: Run) -> dict:
    [weights] = run.model_dir.glob("*.safetensors")
    return load_file(weights)


def _tied_model_dir(tokenizer, path: Path) -> Path:
    """The tiny model with its output head tied to the input embeddings (as in SmolLM2)."""
    model = make_model(tokenizer)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("strategy, batch_size, tied", [("ddp", 4, False), ("fsdp", 4, False),
                                                        ("fsdp", 1, True)])   # rank 1 runs weightless copies
def test_two_processes_train_what_one_process_trains(recipe_file, tmp_path, tokenizer, strategy, batch_size, tied):
    model = {"model": {"name": str(_tied_model_dir(tokenizer, tmp_path / "tied"))}} if tied else {}
    one = pipeline.prepare(_recipe(recipe_file, 1, batch_size=batch_size, **model))
    pipeline.train(one)
    two = pipeline.prepare(_recipe(recipe_file, 2, strategy=strategy, batch_size=batch_size, **model))
    _run, result = pipeline.train(two)
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=ATOL, rtol=0), (k, (a[k] - b[k]).abs().max())
    info = two.load_json("train.json")
    assert info["distributed"]["nproc"] == 2 and info["distributed"]["backend"] == "gloo"
    assert info["distributed"]["strategy"] == strategy
    if strategy == "ddp":
        assert info["distributed"]["rank_weight_spread"] == 0.0          # every rank holds the same weights
    else:                                        # each rank held half of every weight; the settings are kept
        assert info["distributed"]["rank_weight_spread"] is None
        config = yaml.safe_load((two.path / fsdp.CONFIG_FILE).read_text())
        assert config["fsdp_config"]["fsdp_version"] == 2 and config["num_processes"] == 2
    assert info["steps"] == STEPS and result.steps == STEPS
    # rank 0 alone wrote the metrics: each step once, losses as one process saw them
    rows1 = [r for r in read_jsonl(one.metrics_path) if r["type"] == "train"]
    rows2 = [r for r in read_jsonl(two.metrics_path) if r["type"] == "train"]
    assert [r["step"] for r in rows2] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in rows2] == [r["tokens"] for r in rows1]
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], abs=1e-4)
    # the gradients themselves (Adam would hide a constant factor in the weights): as one process's
    assert [r["grad_norm"] for r in rows2] == pytest.approx([r["grad_norm"] for r in rows1], rel=1e-3)
    assert [r["step"] for r in read_jsonl(two.metrics_path) if r["type"] == "eval"] == [2, 4]
    assert (two.path / distributed.RANK_LOG).is_file()
    assert two.stages()["train"]["steps"] == STEPS


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes(recipe_file, tmp_path, strategy):
    recipe = _recipe(recipe_file, 2, max_steps=40, save_every=2, eval_every=40, strategy=strategy)
    run = pipeline.prepare(recipe)
    env = {**os.environ, "PYTHONPATH": str(Path(pipeline.__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", str(run.path)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.checkpoints.glob("step-*")) and p.poll() is None:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)      # the launcher and both ranks, mid-training
    p.wait()
    assert list(run.checkpoints.glob("step-*")) and not run.model_dir.exists(), "killed before finishing"
    _run, result = pipeline.train(run, resume=True)
    assert result.steps == 40 and run.model_dir.is_dir()
    steps = [r["step"] for r in read_jsonl(run.metrics_path) if r["type"] == "train"]
    assert steps == list(range(1, 41))          # replayed from the checkpoint, nothing twice
    assert run.load_json("train.json")["distributed"]["rank_weight_spread"] == (0.0 if strategy == "ddp" else None)


@pytest.mark.parametrize("train, callbacks, field", [({"time_budget": "1m"}, False, "train.nproc"),
                                                      ({}, True, "train.nproc")])
def test_what_n_processes_do_not_combine_with(recipe_file, train, callbacks, field):
    cfg = load_recipe(_recipe(recipe_file, 2, **train)).train
    with pytest.raises(TunesmithError) as e:
        distributed.check_settings(cfg, callbacks=callbacks)
    assert e.value.field == field and "\n" not in str(e.value)
    distributed.check_settings(load_recipe(_recipe(recipe_file, 1, **train)).train, callbacks=callbacks)


def test_sharding_splits_every_micro_batch():
    two = [distributed.Ranks(0, 2), distributed.Ranks(1, 2)]
    assert [distributed.shard([5, 6, 7], r) for r in two] == [[5, 7], [6]]
    assert [distributed.shard([5], r) for r in two] == [[5], []]        # a rank may sit a step out
    assert distributed.shard([1, 2], distributed.Ranks()) == [1, 2]


def test_a_failing_rank_is_one_error_naming_its_log(recipe_file, tmp_path):
    run = pipeline.prepare(_recipe(recipe_file, 2))
    (run.data_dir / "train.jsonl").write_text("{not json\n")         # the ranks read the prepared data
    with pytest.raises(TunesmithError) as e:
        pipeline.train(run)
    assert "2 processes failed" in str(e.value) and distributed.RANK_LOG in str(e.value)
    assert not run.model_dir.exists()


def test_the_fsdp_settings_are_an_accelerate_fsdp2_config(recipe_file, tokenizer, tmp_path, monkeypatch):
    """The sharding generated from the recipe is a config file accelerate's launcher accepts, and it gives
    accelerate's FSDP2 plugin the same settings: one unit per decoder block, found through peft's wrapper."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from tunesmith.config import MethodConfig
    from tunesmith.methods import get
    cfg = load_recipe(_recipe(recipe_file, 2, strategy="fsdp", gradient_checkpointing=True)).train
    model = get("lora").apply(make_model(tokenizer), MethodConfig(r=4, alpha=8))
    assert fsdp.block_classes(model) == ["LlamaDecoderLayer"]
    path = fsdp.write_config(tmp_path, fsdp.accelerate_config(cfg, model))
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "x.py"]))
    assert args.use_fsdp and args.num_processes == 2
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.reshard_after_forward is True and plugin.activation_checkpointing is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_without_declared_blocks_the_layer_stack_is_sharded():
    stack = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)] * 3))
    assert fsdp.block_classes(stack) == ["Linear"]


@pytest.mark.parametrize("sections, message", [
    ({"train": {"strategy": "fsdp"}}, "set train.nproc to 2 or more"),
    ({"train": {"strategy": "fsdp", "nproc": 2}, "continue": {"strategy": "regularize"}}, "continue.strategy")])
def test_what_fsdp_does_not_combine_with(recipe_file, sections, message):
    recipe = load_recipe(recipe_file(**sections))
    with pytest.raises(TunesmithError) as e:
        distributed.check_settings(recipe.train, callbacks=False, continuing=recipe.continue_)
    assert e.value.field == "train.strategy" and message in str(e.value)
