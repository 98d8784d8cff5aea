"""Evaluation helpers: fast merged inference restores the exact weights; flips and differing examples."""
import torch

from tiny import make_model
from tunesmith.config import MethodConfig, load_recipe
from tunesmith.eval.evaluate import compare
from tunesmith.generation import generate, merged_for_inference
from tunesmith.methods import get


def test_merged_inference_gives_the_same_answers_and_restores_weights(tokenizer):
    model = get("lora").apply(make_model(tokenizer), MethodConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompts = [[{"role": "user", "content": "the movie was great"}], [{"role": "user", "content": "cold food"}]]
    plain = generate(model, tokenizer, prompts, 8)
    with merged_for_inference(model):
        merged = generate(model, tokenizer, prompts, 8)
    assert merged == plain
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_compare_counts_flips_and_orders_fixes_first(tmp_path):
    recipe = load_recipe({"task": "classification", "data": {"train": "x.jsonl"}})
    p = [{"role": "user", "content": "q"}]
    mk = lambda preds: {"predictions": [{"prompt": p, "reference": r, "prediction": x}
                                        for r, x in zip(["positive", "negative", "positive"], preds)]}
    base = mk(["positive", "positive", "negative"])
    tuned = mk(["negative", "negative", "positive"])
    out = compare(base, tuned, recipe, ["negative", "positive"])
    assert out["flips"] == {"base_wrong_tuned_right": 2, "base_right_tuned_wrong": 1}
    assert [e["tuned_correct"] for e in out["examples"]] == [True, True, False]
