"""Knowledge distillation: half student, KD loss, response/feature training, evaluation hook, end to end."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tunesmith.config import MethodConfig, TrainConfig, load_recipe
from tunesmith.data.example import Example
from tunesmith.data.tokenize import IGNORE, collate, tokenize_all
from tunesmith.errors import TunesmithError
from tunesmith.methods import get as get_method
from tunesmith.objectives import from_recipe
from tunesmith.objectives.distill import (DistillObjective, deployable_parameters, kd_kl, kept_layers,
                                          projection_of, uniform_layer_map)
from tunesmith.objectives.sft import SFTObjective
from tunesmith.train.loop import train

LAYERS = "model.layers"


def make_teacher(tokenizer, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """Like tests/tiny.make_model, but deeper."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


def recipe(**objective):
    return load_recipe({"data": {"train": "x.jsonl"}, "objective": {"name": "distill", **objective},
                        "eval": {"metrics": ["exact_match"], "max_new_tokens": 4, "batch_size": 8}})


@pytest.fixture
def data(tokenizer):
    words = ["great", "bland", "wonderful", "cold"]
    exs = [Example(messages=[{"role": "user", "content": f"review {i}: the movie was {words[i % 4]}"},
                             {"role": "assistant", "content": "positive" if i % 4 in (0, 2) else "negative"}])
           for i in range(40)]
    seqs, _ = tokenize_all(exs, tokenizer, 64)
    return exs, seqs[:32], seqs[32:]


def cfg(**kw):
    return TrainConfig(**{**dict(epochs=3, batch_size=4, lr=5e-3, eval_every=100, save_every=100,
                                 early_stopping_patience=None, seed=0, threads=1), **kw})


def mean_kl(obj: DistillObjective, student, seqs, tokenizer, temperature: float = 1.0) -> float:
    batch = collate(seqs, tokenizer.pad_token_id)
    keep = batch["labels"][:, 1:] != IGNORE
    with torch.no_grad():
        s, _ = obj._forward(student, batch, keep, False)
        t, _ = obj._forward(obj.teacher, batch, keep, False)
    return float(kd_kl(s, t, temperature).mean())


def test_half_student_keeps_every_other_block_and_reloads(tokenizer, tmp_path):
    teacher = make_teacher(tokenizer)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    obj = from_recipe(recipe(kd="response"))
    student = obj.attach(teacher, tokenizer, recipe())
    assert isinstance(student, LlamaForCausalLM) and student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4
    assert obj.layer_map == kept_layers(4) == [1, 3]          # student block i = teacher block 2i+1
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate([1, 3]):
        for rest in ["self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"]:
            assert torch.equal(s[f"{LAYERS}.{i}.{rest}"], t[f"{LAYERS}.{j}.{rest}"])
    for key in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]:
        assert torch.equal(s[key], t[key])
    # the teacher is frozen, unchanged, in eval mode, and not part of the student
    assert obj.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not ({id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()})
    # deterministic: a second attach on a fresh copy of the base builds the same student
    again = from_recipe(recipe()).attach(make_teacher(tokenizer), tokenizer, recipe())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in s.items())
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 6, 7, 8]])
    student.eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5)
    assert deployable_parameters(student)[0] < deployable_parameters(teacher)[0]


def test_layer_maps():
    assert kept_layers(30)[:3] == [1, 3, 5] and kept_layers(30)[-1] == 29 and len(kept_layers(30)) == 15
    assert kept_layers(5) == [0, 2, 4]
    assert uniform_layer_map(4, 2) == [1, 3] and uniform_layer_map(6, 3) == [1, 3, 5]
    assert uniform_layer_map(5, 2)[-1] == 4


def test_kd_kl_equals_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    expected = []
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs, zt = sum(math.exp(x / T) for x in srow), sum(math.exp(x / T) for x in trow)
        ps, pt = [math.exp(x / T) / zs for x in srow], [math.exp(x / T) / zt for x in trow]
        expected.append(sum(q * math.log(q / p) for q, p in zip(pt, ps)))
    assert torch.allclose(kd_kl(s, t, T), torch.tensor(expected), atol=1e-6)
    assert float(kd_kl(t, t, T).abs().max()) < 1e-6


def test_loss_mixes_hard_labels_and_softened_kl(tokenizer, data, tmp_path):
    _, seqs, _ = data
    batch = collate(seqs[:4], tokenizer.pad_token_id)
    teacher = make_teacher(tokenizer)
    obj = DistillObjective(kd="response", kd_weight=0.3, temperature=2.0)
    student = obj.attach(teacher, tokenizer, recipe())
    with torch.no_grad():
        out = obj(student, batch)
        ce = SFTObjective()(student, batch).loss_sum
        kl = mean_kl(obj, student, seqs[:4], tokenizer, 2.0) * out.count
    assert out.count == batch["n_loss"]
    assert torch.allclose(out.loss_sum, 0.7 * ce + 0.3 * 4.0 * torch.tensor(kl), rtol=1e-4)
    # a student identical to the teacher (a named local model) has zero KL: only (1 - w) * CE remains
    teacher.save_pretrained(tmp_path / "same")
    tokenizer.save_pretrained(tmp_path / "same")
    twin = DistillObjective(student=str(tmp_path / "same"), kd="response", kd_weight=0.3)
    copy = twin.attach(make_teacher(tokenizer), tokenizer, recipe())
    assert copy.config.num_hidden_layers == 4 and twin.layer_map == [0, 1, 2, 3]
    with torch.no_grad():
        assert torch.allclose(twin(copy, batch).loss_sum, 0.7 * SFTObjective()(copy, batch).loss_sum, rtol=1e-4)


def test_student_with_another_tokenizer_is_refused(tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(["completely different words here"] * 3,
                            trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    other = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                    chat_template=tokenizer.chat_template)
    make_teacher(other, layers=2).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    obj = DistillObjective(student=str(tmp_path / "other"))
    with pytest.raises(TunesmithError, match="different tokenizer"):
        obj.attach(make_teacher(tokenizer), tokenizer, recipe())


def test_response_kd_brings_the_student_closer_to_the_teacher(tokenizer, data, tmp_path):
    _, train_seqs, held_out = data
    obj = DistillObjective(kd="response", kd_weight=1.0, temperature=1.0)
    student = obj.attach(make_teacher(tokenizer), tokenizer, recipe())
    student = get_method("lora").apply(student, MethodConfig(r=8, alpha=16, dropout=0.0))
    before = mean_kl(obj, student, held_out, tokenizer)
    train(student, train_seqs, held_out, obj, cfg(lr=1e-2), tmp_path, pad_id=tokenizer.pad_token_id)
    after = mean_kl(obj, student, held_out, tokenizer)
    assert after < 0.5 * before, (before, after)


def test_feature_kd_trains_the_projection(tokenizer, data, tmp_path):
    _, train_seqs, held_out = data
    obj = DistillObjective(kd="feature", feature_weight=1.0)
    student = obj.attach(make_teacher(tokenizer), tokenizer, recipe())
    proj = projection_of(student)
    assert torch.equal(proj.weight, torch.eye(64)) and not proj.bias.any()     # identity start
    assert proj in list(student.modules())
    # LoRA freezes everything but its adapters, the projection included; after_method re-enables it
    student = get_method("lora").apply(student, MethodConfig(r=4, alpha=8, dropout=0.0))
    assert not proj.weight.requires_grad
    student = obj.after_method(student)
    assert proj.weight.requires_grad
    batch = collate(held_out, tokenizer.pad_token_id)
    with torch.no_grad():
        feat_before = obj(student, batch).metrics["feature"]
    train(student, train_seqs, [], obj, cfg(lr=5e-3), tmp_path, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        feat_after = obj(student, batch).metrics["feature"]
    assert not torch.allclose(proj.weight, torch.eye(64))
    assert feat_after < feat_before
    # the projection round-trips through save_extra / load_extra onto a rebuilt student
    obj.save_extra(student, tmp_path / "extra")
    fresh = DistillObjective(kd="feature")
    rebuilt = fresh.attach(make_teacher(tokenizer), tokenizer, recipe())
    fresh.load_extra(rebuilt, tmp_path / "extra")
    assert torch.equal(projection_of(rebuilt).weight, proj.weight)
    assert json.loads((tmp_path / "extra" / "distill.json").read_text())["layer_map"] == [1, 3]


def test_feature_projection_maps_between_different_widths(tokenizer, tmp_path):
    narrow = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          vocab_size=len(tokenizer), bos_token_id=None))
    narrow.save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    obj = DistillObjective(student=str(tmp_path / "narrow"), kd="both")
    student = obj.attach(make_teacher(tokenizer), tokenizer, recipe())
    assert tuple(projection_of(student).weight.shape) == (64, 32)
    again = DistillObjective(student=str(tmp_path / "narrow"), kd="both").attach(
        make_teacher(tokenizer), tokenizer, recipe())
    assert torch.equal(projection_of(again).weight, projection_of(student).weight)   # seeded init
    ids = tokenize_all([Example(messages=[{"role": "user", "content": "the movie"},
                                          {"role": "assistant", "content": "great"}])], tokenizer, 64)[0]
    out = obj(student, collate(ids, tokenizer.pad_token_id))
    assert torch.isfinite(out.loss_sum) and out.metrics["feature"] > 0


def test_evaluate_hook_compares_teacher_and_student(tokenizer, data):
    exs, _, _ = data
    exs = exs[:6]
    items, _ = tokenize_all(exs, tokenizer, 64)
    r = recipe(kd="response")
    teacher = make_teacher(tokenizer)
    obj = from_recipe(r)
    base = obj.evaluate(teacher, tokenizer, exs, items, r, which="base")
    assert "exact_match" in base["metrics"] and len(base["predictions"]) == 6
    student = get_method("lora").apply(obj.attach(teacher, tokenizer, r), MethodConfig(r=4, alpha=8))
    tuned = obj.evaluate(student, tokenizer, exs, items, r, which="tuned")
    d = tuned["distillation"]
    assert d["student"]["parameters"] < d["teacher"]["parameters"]
    assert d["student"]["layers"] == 2 and d["teacher"]["layers"] == 4
    assert d["teacher"]["tokens_per_s"] > 0 and d["student"]["tokens_per_s"] > 0
    assert d["teacher"]["metrics"] == base["metrics"] and d["student"]["metrics"] == tuned["metrics"]
    assert d["compression"] > 1 and d["speedup"] is not None
    assert len(tuned["predictions"]) == 6 and "val_loss" in tuned["loss"]


@pytest.fixture
def deep_model_dir(tmp_path, tokenizer):
    path = tmp_path / "tiny-llama-4"
    make_teacher(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("method,kd", [("lora", "both"), ("full", "feature")])
def test_distill_run_end_to_end(recipe_file, deep_model_dir, tmp_path, method, kd):
    from tunesmith import pipeline
    from tunesmith.cli import main
    recipe = recipe_file(model={"name": str(deep_model_dir)}, method={"name": method},
                         objective={"name": "distill", "kd": kd})
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny-001"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert {"accuracy"} <= summary["tuned"]["metrics"].keys() and summary["base"]["metrics"]
    d = json.loads((run / "eval" / "tuned.json").read_text())["distillation"]
    assert d["student"]["parameters"] < d["teacher"]["parameters"] and d["student"]["tokens_per_s"] > 0
    assert (run / "model" / "distill_projection.safetensors").is_file()
    report = (run / "report.md").read_text()
    assert "## Teacher vs student" in report and "| student | " in report
    merged = run / "export" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert model.config.num_hidden_layers == 2
    assert d["student"]["parameters"] == sum(p.numel() for p in model.parameters())
    with safe_open(str(merged / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "kd_projection" in k]
    exported = json.loads((run / "export" / "export.json").read_text())
    assert exported["parity"]["identical"] == exported["parity"]["prompts"] > 0
    # the reload path (fresh base -> attach -> method.load -> load_extra) rebuilds the trained student
    session = pipeline.Session(pipeline.Run(run))
    tuned = session.load_tuned()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(tuned(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    if method == "full":     # every weight trains under `full`, the projection included
        assert not torch.equal(projection_of(tuned).weight, torch.eye(64))


def test_pipeline_trains_the_projection_under_lora(recipe_file, deep_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tunesmith import pipeline
    recipe = recipe_file(model={"name": str(deep_model_dir)}, objective={"name": "distill", "kd": "feature"},
                         train={"max_steps": 3})
    run, _ = pipeline.train(recipe)
    weight = load_file(str(run.path / "model" / "distill_projection.safetensors"))["weight"]
    assert not torch.equal(weight, torch.eye(64))
