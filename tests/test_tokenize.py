"""Chat-template masking (only assistant replies + end-of-turn are trained), packing, collation."""
import torch

from tiny import make_model
from tunesmith.data.example import Example
from tunesmith.data.tokenize import IGNORE, batches, collate, pack, tokenize_all, tokenize_example
from tunesmith.objectives.sft import SFTObjective

CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And the fox?"},
        {"role": "assistant", "content": "The quick brown fox jumps."}]


def trained_text(tok, t):
    return tok.decode([i for i in t.labels if i != IGNORE])


def test_labels_decode_to_exactly_the_assistant_replies(tokenizer):
    t = tokenize_example(Example(messages=CHAT), tokenizer, 512)
    assert trained_text(tokenizer, t) == "The capital of France is Paris.<|im_end|>The quick brown fox jumps.<|im_end|>"
    # the rendered conversation is intact and prompt tokens are masked
    assert tokenizer.decode(t.input_ids).startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert t.labels[0] == IGNORE


def test_weight_zero_turns_are_not_trained(tokenizer):
    msgs = [dict(m) for m in CHAT]
    msgs[2]["weight"] = 0
    t = tokenize_example(Example(messages=msgs), tokenizer, 512)
    assert trained_text(tokenizer, t) == "The quick brown fox jumps.<|im_end|>"


def test_text_examples_train_every_token_and_end_with_eos(tokenizer):
    t = tokenize_example(Example(text="The movie was wonderful."), tokenizer, 512)
    assert t.labels == t.input_ids and t.input_ids[-1] == tokenizer.eos_token_id


def test_a_long_prompt_is_shortened_in_the_middle_and_keeps_its_answer(tokenizer):
    user = "Classify this review. " + "the dog " * 200 + "Answer with one word."
    long_prompt = Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": "Paris."}])
    short = Example(messages=CHAT[1:3])
    seqs, stats = tokenize_all([long_prompt, short], tokenizer, 48)
    assert stats == {**stats, "kept": 2, "truncated": 1, "dropped_no_trained_tokens": 0}
    cut = seqs[0]
    assert len(cut.input_ids) == 48 and cut.truncated
    assert trained_text(tokenizer, cut) == "Paris.<|im_end|>"
    text = tokenizer.decode(cut.input_ids)
    assert "Classify this review." in text and "Answer with one word." in text   # both ends survive


def test_truncation_drops_examples_whose_answer_cannot_fit(tokenizer):
    huge_system = Example(messages=[{"role": "system", "content": "the dog " * 200},
                                    {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Paris."}])
    seqs, stats = tokenize_all([huge_system], tokenizer, 32)
    assert seqs == [] and stats["dropped_no_trained_tokens"] == 1


def test_packing_respects_length_and_boundaries(tokenizer):
    exs = [Example(messages=[{"role": "user", "content": f"question {i} " * (i + 1)},
                             {"role": "assistant", "content": "answer " * (3 - i % 3)}]) for i in range(8)]
    seqs, _ = tokenize_all(exs, tokenizer, 128)
    packed = pack(seqs, 128)
    assert len(packed) < len(seqs)
    assert all(len(p.input_ids) <= 128 for p in packed)
    assert sum(p.n_trained for p in packed) == sum(s.n_trained for s in seqs)
    # position ids restart at every example
    starts = sum(p.position_ids.count(0) for p in packed)
    assert starts == len(seqs)


def test_packed_loss_equals_sum_of_separate_losses(tokenizer):
    """Block-diagonal attention: no example sees another inside a packed sequence."""
    model = make_model(tokenizer)
    exs = [Example(messages=[{"role": "user", "content": f"the movie {w}"},
                             {"role": "assistant", "content": w}]) for w in ["great", "bland", "not good at all"]]
    seqs, _ = tokenize_all(exs, tokenizer, 256)
    obj = SFTObjective()
    with torch.no_grad():
        separate = sum(float(obj(model, collate([s], tokenizer.pad_token_id)).loss_sum) for s in seqs)
        packed = pack(seqs, 256)
        assert len(packed) == 1
        together = float(obj(model, collate(packed, tokenizer.pad_token_id)).loss_sum)
    assert abs(separate - together) < 1e-3 * max(1.0, separate)


def test_padded_batch_loss_equals_separate_losses(tokenizer):
    model = make_model(tokenizer)
    seqs, _ = tokenize_all([Example(messages=CHAT), Example(messages=CHAT[1:3])], tokenizer, 256)
    obj = SFTObjective()
    with torch.no_grad():
        separate = sum(float(obj(model, collate([s], tokenizer.pad_token_id)).loss_sum) for s in seqs)
        batch = collate(seqs, tokenizer.pad_token_id)
        together = obj(model, batch)
    assert abs(separate - float(together.loss_sum)) < 1e-3 * separate
    assert together.count == sum(s.n_trained for s in seqs) - 0  # first token is never a target
    assert batch["n_tokens"] == sum(len(s.input_ids) for s in seqs)


def test_batches_cover_every_index_once_and_are_seeded(tokenizer):
    seqs, _ = tokenize_all([Example(text="the dog " * (i + 1)) for i in range(37)], tokenizer, 512)
    a = batches(seqs, 4, seed=1)
    assert sorted(i for b in a for i in b) == list(range(37))
    assert a == batches(seqs, 4, seed=1) and a != batches(seqs, 4, seed=2)
