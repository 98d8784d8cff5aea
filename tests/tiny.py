"""Tiny local ChatML tokenizer and random Llama model for tests (no network access needed)."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The movie was wonderful and the actors were great.",
    "I did not enjoy the food; it was cold and bland.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarise the following text in one sentence.",
    "positive negative neutral sentiment review answer question",
    "system user assistant You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (lossless round trip) with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE)


def make_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama sized to ``tokenizer``'s vocabulary, float32, in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         initializer_range=0.1)  # wide enough that a frozen head can express confident answers
    return LlamaForCausalLM(config).eval()
