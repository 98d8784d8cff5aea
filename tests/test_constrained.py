"""Label-safe decoding: only label strings, batched = single, probabilities over the labels sum to 1 and equal
a full teacher-forced scoring of each label, with plain, LoRA and prompt-tuned models."""
from __future__ import annotations

import pytest
import torch

from tiny import make_model, make_tokenizer
from tunesmith.constrained import choose_labels, label_token_ids
from tunesmith.generation import render_prompt

LABELS = ["positive", "negative", "mixed feelings", "pos"]     # "pos" is a prefix of "positive"
PROMPTS = [[{"role": "system", "content": "Classify the review."}, {"role": "user", "content": "good " * k + "film"}]
           for k in range(1, 8)]
# a system prompt long enough that a batch computes it once (generation.SHARED_PREFIX_MIN)
LONG = [[{"role": "system", "content": "Classify the review as one of the four labels listed. " * 4}, p[1]]
        for p in PROMPTS]


def brute_force(model, tokenizer, messages, labels) -> torch.Tensor:
    """Softmax over labels of the summed log-probability of each label's tokens + end-of-turn, one full pass each."""
    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    scores = []
    with torch.no_grad():
        for seq in label_token_ids(tokenizer, labels, model):
            logp = model(torch.tensor([prompt + seq])).logits.log_softmax(-1)[0]
            scores.append(sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(seq)))
    return torch.softmax(torch.tensor(scores), 0)


def models():
    tok = make_tokenizer()
    plain = make_model(tok, seed=1)
    import peft
    lora = peft.get_peft_model(make_model(tok, seed=2), peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                        target_modules=["q_proj", "v_proj"]))
    prompt_tuned = peft.get_peft_model(make_model(tok, seed=3),
                                       peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    return tok, {"plain": plain, "lora": lora, "prompt_tuning": prompt_tuned}


TOK, MODELS = models()


def test_the_long_prompts_take_the_shared_prefix_path_and_the_short_ones_do_not():
    from tunesmith.generation import SHARED_PREFIX_MIN, common_prefix
    rows = lambda prompts: [TOK(render_prompt(TOK, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert common_prefix(rows(LONG)) - 1 >= SHARED_PREFIX_MIN > common_prefix(rows(PROMPTS)) - 1


@pytest.mark.parametrize("prompts", [PROMPTS, LONG], ids=["short", "shared-prefix"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_only_labels_batched_equals_single_and_probabilities_sum_to_one(kind, prompts):
    model = MODELS[kind]
    batched = choose_labels(model, TOK, prompts, LABELS, batch_size=4)
    single = [choose_labels(model, TOK, [p], LABELS, batch_size=1)[0] for p in prompts]
    for b, s in zip(batched, single):
        assert b.label in LABELS and b.label == s.label
        assert sum(b.probs) == pytest.approx(1.0, abs=1e-5)
        assert b.probs == pytest.approx(s.probs, abs=1e-4)
        assert b.label == LABELS[max(range(len(LABELS)), key=b.probs.__getitem__)]


@pytest.mark.parametrize("prompts", [PROMPTS, LONG], ids=["short", "shared-prefix"])
@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_probabilities_equal_a_full_scoring_of_each_label(kind, prompts):
    model = MODELS[kind]
    got = choose_labels(model, TOK, prompts[:3], LABELS, batch_size=3)
    for choice, messages in zip(got, prompts[:3]):
        assert choice.probs == pytest.approx(brute_force(model, TOK, messages, LABELS).tolist(), abs=1e-4)


def test_a_trained_preference_shows_in_the_label_probabilities():
    """Push the model toward one label's tokens: constrained decoding must pick it with a high probability."""
    model = make_model(TOK, seed=4)
    target = label_token_ids(TOK, LABELS, model)[1]          # "negative" + end of turn
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompt = TOK(render_prompt(TOK, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    model.train()
    for _ in range(30):
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    choice = choose_labels(model, TOK, PROMPTS[:1], LABELS)[0]
    assert choice.label == "negative" and choice.probs[1] > 0.9
    assert choice.top(LABELS)[0] == ("negative", choice.probs[1])


def test_labels_that_tokenise_alike_are_refused():
    with pytest.raises(ValueError, match="tokenise the same"):
        label_token_ids(TOK, ["yes", "yes"])
    with pytest.raises(ValueError, match="at least one label"):
        label_token_ids(TOK, [])
