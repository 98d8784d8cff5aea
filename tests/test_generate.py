"""Tests for batched greedy generation and streamed chat on a tiny random Llama."""
from __future__ import annotations

import pytest
import torch

from tiny import make_model, make_tokenizer
from tunesmith.generation import eos_token_ids, generate, render_prompt, stream_chat

QUESTIONS = [
    "hi",
    "What is the capital of France?",
    "Summarise the following text in one sentence. The quick brown fox jumps over the lazy dog.",
    "Was the movie good?",
    "I did not enjoy the food; it was cold and bland. What is the sentiment?",
    "ok",
    "The actors were great and the movie was wonderful, so what is the review sentiment overall?",
]


def chat(question: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer, seed=0)


@pytest.fixture(scope="module")
def prompts():
    return [chat(q, "You are a helpful assistant." if i % 2 else None)
            for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def singles(model, tokenizer, prompts):
    return [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]


def test_prompts_have_different_lengths(tokenizer, prompts):
    lengths = {len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"])
               for p in prompts}
    assert len(lengths) == len(prompts)


@pytest.mark.parametrize("batch_size", [2, 3, 16])
def test_batched_equals_one_by_one(model, tokenizer, prompts, singles, batch_size):
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=batch_size)
    assert batched == singles
    assert len(set(singles)) > 1  # replies differ, so a reordering would be caught


LONG_SYSTEM = "You answer questions about movies, food and travel for a review site. " * 4


@pytest.mark.parametrize("peft_wrapped", [False, True])
def test_a_shared_prompt_is_computed_once_with_the_same_replies(model, tokenizer, peft_wrapped):
    from tunesmith import generation
    prompts = [chat(q, LONG_SYSTEM) for q in QUESTIONS]
    target = model
    if peft_wrapped:       # merged-for-inference callers and the server pass peft wrappers
        peft = pytest.importorskip("peft")
        target = peft.get_peft_model(make_model(tokenizer, seed=0), peft.LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    alone = [generate(target, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    rows = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert generation.common_prefix(rows) > generation.SHARED_PREFIX_MIN
    widths = []
    core = target.get_base_model() if peft_wrapped else target
    hook = core.model.register_forward_pre_hook(
        lambda _m, a, kw: widths.append(tuple((kw.get("input_ids") if kw.get("input_ids") is not None
                                               else kw["inputs_embeds"]).shape[:2])), with_kwargs=True)
    try:
        batched = generate(target, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    finally:
        hook.remove()
    assert batched == alone and len(set(alone)) > 1
    start = generation.common_prefix(rows) - 1
    assert (1, start) in widths                    # the shared prompt ran once per batch, as one row
    assert max(w[1] for w in widths if w[0] > 1) < max(len(r) for r in rows) - start + 1


def test_a_model_with_its_own_cache_implementation_generates_without_the_shared_prefix(tokenizer):
    """generate() refuses a ready cache beside a configured cache implementation: such a model left-pads."""
    from tunesmith import generation
    target = make_model(tokenizer, seed=0)
    prompts = [chat(q, LONG_SYSTEM) for q in QUESTIONS]
    alone = [generate(target, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    target.generation_config.cache_implementation = "static"
    calls = []
    real = generation.shared_prefix_batch
    try:
        generation.shared_prefix_batch = lambda *a, **kw: calls.append(kw.get("share")) or real(*a, **kw)
        batched = generate(target, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    finally:
        generation.shared_prefix_batch = real
    assert calls and all(c is False for c in calls)
    assert batched == alone


def test_order_preserved_under_permutation(model, tokenizer, prompts, singles):
    perm = [3, 0, 6, 2, 5, 1, 4]
    out = generate(model, tokenizer, [prompts[i] for i in perm], max_new_tokens=12, batch_size=3)
    assert out == [singles[i] for i in perm]


def test_progress_and_state_restored(model, tokenizer, prompts):
    seen: list[int] = []
    model.train()
    tokenizer.padding_side = "right"
    try:
        generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=3, progress=seen.append)
        assert model.training
        assert tokenizer.padding_side == "right"
    finally:
        model.eval()
    assert seen == [3, 6, 7]


def test_stops_at_eos(tokenizer, prompts):
    model = make_model(tokenizer, seed=1)
    prompt = prompts[1]
    enc = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        raw = model.generate(**enc, do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)[0, enc["input_ids"].shape[1]:]
    raw = raw.tolist()
    assert eos not in raw[:3]
    # Make the model say eos exactly where it first said a token not seen before, by swapping
    # that token's output row with eos's: earlier argmaxes are unchanged, this one becomes eos.
    k = next(i for i in range(2, len(raw)) if raw[i] not in raw[:i])
    with torch.no_grad():
        head = model.lm_head.weight
        head[[raw[k], eos]] = head[[eos, raw[k]]]
    out = generate(model, tokenizer, [prompt], max_new_tokens=10)[0]
    assert out == tokenizer.decode(raw[:k], skip_special_tokens=True).strip()
    assert len(tokenizer(out, add_special_tokens=False)["input_ids"]) < 10


def test_pad_token_falls_back_to_eos(model, prompts, singles):
    tok = make_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    assert generate(model, tok, prompts, max_new_tokens=12, batch_size=4) == singles
    assert tok.pad_token is None


def test_eos_ids_include_model_generation_config(model, tokenizer):
    assert eos_token_ids(tokenizer) == [tokenizer.eos_token_id]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    try:
        assert eos_token_ids(tokenizer, model) == [tokenizer.eos_token_id, 7]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def test_peft_model(tokenizer, prompts, singles):
    peft = pytest.importorskip("peft")
    base = make_model(tokenizer, seed=0)
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "v_proj"]))
    # LoRA's B matrices start at zero, so the adapter does not change the outputs yet.
    assert generate(wrapped, tokenizer, prompts, max_new_tokens=12, batch_size=4) == singles


def test_stream_chat_matches_generate(model, tokenizer, prompts, singles):
    pieces = list(stream_chat(model, tokenizer, prompts[2], max_new_tokens=12))
    assert pieces
    assert "".join(pieces).strip() == singles[2]


def test_stream_chat_closed_early(model, tokenizer, prompts):
    torch.manual_seed(0)
    stream = stream_chat(model, tokenizer, prompts[0], max_new_tokens=200, temperature=0.7)
    first = next(stream)
    assert isinstance(first, str)
    stream.close()  # stops the worker thread instead of generating 200 tokens
    assert not model.training
