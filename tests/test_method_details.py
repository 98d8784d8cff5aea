"""Method-specific behaviour beyond the shared contract: selection rules, init, errors, on-disk form."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tiny import make_model
from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError
from tunesmith.generation import generate
from tunesmith.methods import get
from tunesmith.methods.base import block_linears
from tunesmith.methods.ia3 import ia3_targets
from tunesmith.methods.sparse import budget


def from_dir(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sparse_indices(model) -> dict[str, torch.Tensor]:
    return {n: m.parametrizations.weight[0].indices for n, m in model.named_modules()
            if hasattr(m, "parametrizations")}


# ---- sparse -------------------------------------------------------------------------------------

def test_sparse_gradient_selection_needs_calibration(tokenizer):
    with pytest.raises(TunesmithError, match="sparse_selection.*calibration"):
        get("sparse").apply(make_model(tokenizer), MethodConfig(name="sparse", sparse_selection="gradient"))


def test_sparse_magnitude_picks_the_largest_weights(tokenizer):
    base = make_model(tokenizer)
    weights = {n: m.weight.detach().clone() for n, m in block_linears(base)}
    model = get("sparse").apply(base, MethodConfig(name="sparse", sparse_selection="magnitude",
                                                   sparse_fraction=0.1))
    for name, idx in sparse_indices(model).items():
        flat = weights[name].abs().reshape(-1)
        assert idx.numel() == budget(flat.numel(), 0.1)
        assert flat[idx].min() >= flat[~torch.isin(torch.arange(flat.numel()), idx)].max()


def test_sparse_random_selection_is_seeded_and_differs_from_magnitude(tokenizer):
    cfg = MethodConfig(name="sparse", sparse_selection="random", sparse_fraction=0.1)
    a = sparse_indices(get("sparse").apply(make_model(tokenizer), cfg))
    torch.manual_seed(123)                        # the global RNG does not affect the choice
    b = sparse_indices(get("sparse").apply(make_model(tokenizer), cfg))
    m = sparse_indices(get("sparse").apply(make_model(tokenizer), cfg.model_copy(
        update={"sparse_selection": "magnitude"})))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], m[n]) for n in a)


def test_sparse_changes_only_selected_entries_and_saves_a_small_delta(tokenizer, tmp_path):
    base = make_model(tokenizer)
    original = {n: m.weight.detach().clone() for n, m in block_linears(base)}
    method = get("sparse")
    model = method.apply(base, MethodConfig(name="sparse", sparse_selection="random", sparse_fraction=0.05))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.5)                           # a "trained" delta on every selected entry
    chosen = sparse_indices(model)
    method.save(model, tmp_path)
    entries = sum(i.numel() for i in chosen.values())
    assert json.loads((tmp_path / "sparse_delta.json").read_text())["entries"] == entries
    # int32 index + float32 value per entry, plus the safetensors header
    assert (tmp_path / "sparse_delta.safetensors").stat().st_size < entries * 8 + 4096
    merged = method.merge(model)
    for name, m in block_linears(merged):
        changed = (m.weight.detach() != original[name]).reshape(-1).nonzero().reshape(-1)
        assert torch.equal(changed, chosen[name]), name


def test_sparse_load_rejects_a_delta_for_another_shape(tokenizer, tmp_path):
    method = get("sparse")
    method.save(method.apply(make_model(tokenizer), MethodConfig(name="sparse", sparse_selection="magnitude")),
                tmp_path)
    cfg = json.loads((tmp_path / "sparse_delta.json").read_text())
    cfg["layers"]["model.layers.0.mlp.down_proj"] = [64, 64]
    (tmp_path / "sparse_delta.json").write_text(json.dumps(cfg))
    with pytest.raises(TunesmithError, match="does not fit.*down_proj"):
        method.load(make_model(tokenizer), tmp_path, MethodConfig(name="sparse"))


# ---- adapter ------------------------------------------------------------------------------------

def test_adapter_wraps_attention_and_mlp_outputs_and_rejects_a_mismatched_base(tokenizer, tmp_path):
    method = get("adapter")
    model = method.apply(make_model(tokenizer), MethodConfig(name="adapter", adapter_size=4))
    wrapped = sorted(n for n, m in model.named_modules() if type(m).__name__ == "AdapterLinear")
    assert wrapped == [f"model.layers.{i}.{p}" for i in range(2) for p in ("mlp.down_proj", "self_attn.o_proj")]
    method.save(model, tmp_path)
    cfg = json.loads((tmp_path / "bottleneck_adapters.json").read_text())
    assert cfg["adapter_size"] == 4 and len(cfg["targets"]) == 4
    cfg["adapter_size"] = 5                       # file and config disagree on the shapes
    (tmp_path / "bottleneck_adapters.json").write_text(json.dumps(cfg))
    with pytest.raises(TunesmithError, match="does not fit") as err:
        method.load(make_model(tokenizer), tmp_path, MethodConfig(name="adapter"))
    assert "\n" not in str(err.value)
    config = make_model(tokenizer).config
    config.num_hidden_layers = 1
    one_layer = AutoModelForCausalLM.from_config(config)
    cfg["adapter_size"] = 4
    (tmp_path / "bottleneck_adapters.json").write_text(json.dumps(cfg))
    with pytest.raises(TunesmithError, match="layers.1.*missing"):
        method.load(one_layer, tmp_path, MethodConfig(name="adapter"))


# ---- bitfit -------------------------------------------------------------------------------------

def test_bitfit_saves_only_biases_and_norms_and_merge_sets_the_config_flags(tokenizer, tmp_path):
    method = get("bitfit")
    model = method.apply(make_model(tokenizer), MethodConfig(name="bitfit"))
    method.save(model, tmp_path)
    keys = load_file(tmp_path / "tuned_weights.safetensors").keys()
    assert keys and all(k.endswith(".bias") or "norm" in k for k in keys)
    assert len([k for k in keys if k.endswith(".bias")]) == 2 * 7
    merged = method.merge(model)
    assert merged.config.attention_bias is True and merged.config.mlp_bias is True


# ---- ia3 ----------------------------------------------------------------------------------------

def test_ia3_targets_keys_values_and_down_projection(tokenizer):
    targets, feedforward = ia3_targets(make_model(tokenizer), "auto")
    assert sorted(targets) == ["down_proj", "k_proj", "v_proj"] and feedforward == ["down_proj"]
    assert ia3_targets(make_model(tokenizer), ["q_proj", "down_proj"]) == (["q_proj", "down_proj"], ["down_proj"])


# ---- prompt learning ----------------------------------------------------------------------------

def test_prompt_tuning_starts_from_the_init_text(tokenizer, tiny_model_dir):
    text = "positive or negative"
    model = get("prompt_tuning").apply(from_dir(tiny_model_dir), MethodConfig(
        name="prompt_tuning", num_virtual_tokens=6, prompt_init_text=text))
    ids = tokenizer(text)["input_ids"]
    ids = (ids * 6)[:6]
    embeds = model.get_base_model().get_input_embeddings().weight[ids]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, embeds)


def test_prompt_tuning_text_init_without_a_tokenizer_source_is_a_clear_error(tokenizer):
    cfg = MethodConfig(name="prompt_tuning", num_virtual_tokens=4, prompt_init_text="hello")
    with pytest.raises(TunesmithError, match="prompt_init_text"):
        get("prompt_tuning").apply(make_model(tokenizer), cfg)      # built in memory: no folder
    random_init = get("prompt_tuning").apply(make_model(tokenizer), cfg.model_copy(update={"prompt_init_text": None}))
    assert random_init.prompt_encoder["default"].embedding.weight.shape == (4, 64)


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_generates_the_same_batched_or_alone(name, tokenizer):
    """Left-padded batched generation (KV cache + virtual tokens) matches one prompt at a time."""
    model = get(name).apply(make_model(tokenizer), MethodConfig(name=name, num_virtual_tokens=4))
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 1.0)
    prompts = [[{"role": "user", "content": "the movie was wonderful and great"}],
               [{"role": "user", "content": "cold"}]]
    batched = generate(model, tokenizer, prompts, 6, batch_size=2)
    alone = [generate(model, tokenizer, [p], 6)[0] for p in prompts]
    assert batched == alone
    assert batched != generate(make_model(tokenizer), tokenizer, prompts, 6, batch_size=2)


def greedy_without_cache(model, input_ids, steps: int) -> list[int]:
    """Reference decoding: a full forward over the whole sequence (virtual tokens added by peft) per token."""
    ids = input_ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_generate_matches_full_forward_decoding(name, tokenizer, tmp_path):
    """generate() with the KV cache gives what the trained forward pass predicts, freshly applied
    and reloaded: the soft prompt / prefix is used once, at the start, not dropped nor repeated
    (transformers 5.24 renamed generate's cache, which peft 0.21.2 did not follow)."""
    cfg = MethodConfig(name=name, num_virtual_tokens=4)
    method = get(name)
    model = method.apply(make_model(tokenizer), cfg).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 1.0)
    method.save(model, tmp_path)
    ids = tokenizer("the movie was wonderful", return_tensors="pt")["input_ids"]
    expected = greedy_without_cache(model, ids, 6)
    for m in (model, method.load(make_model(tokenizer), tmp_path, cfg).eval()):
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=6, min_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        assert out[0, ids.shape[1]:].tolist() == expected
    assert expected != greedy_without_cache(make_model(tokenizer), ids, 6)
