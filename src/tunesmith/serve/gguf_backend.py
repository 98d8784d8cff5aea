"""GGUF models through llama-cpp-python (optional): same prompts, stop handling and events as transformers."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from .engine import TokenText


def available() -> bool:
    """Whether llama-cpp-python is importable."""
    return importlib.util.find_spec("llama_cpp") is not None


class GGUFRunner:
    """Generates with ``llama_cpp.Llama`` one sequence at a time (llama.cpp contexts are not shared).

    Prompts are the token ids rendered with the run's training tokenizer and chat template; tokens
    come from ``Llama.generate`` with plain OpenAI sampling (temperature, top_p, seed; no top-k,
    min-p or repeat penalty) and are detokenised, stopped and streamed by the same code as the
    transformers path. Stops on llama.cpp's end-of-generation tokens and the tokenizer's eos.
    Logprobs and logit_bias are not offered (the server answers 400 for them).
    """

    def __init__(self, path: Path, decoder: TokenText, n_ctx: int = 4096, threads: int | None = None):
        import llama_cpp
        self._lib = llama_cpp
        self.path = Path(path)
        self.decoder = decoder
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or None
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.eos = {int(decoder.tokenizer.eos_token_id)} if decoder.tokenizer.eos_token_id is not None else set()

    def _is_eos(self, token: int) -> bool:
        return token in self.eos or bool(self._lib.llama_vocab_is_eog(self.llm._model.vocab, token))

    def run(self, seqs, admit=None) -> int:
        """Sequentially; ``admit`` (joining a running batch) does not apply here."""
        generated = 0
        for s in seqs:
            if s.request.cancelled:
                s.abort()
                continue
            p = s.params
            self.llm.set_seed(s.seed & 0x7FFFFFFF)
            stream = self.llm.generate(s.prompt_ids, top_k=0, top_p=p.top_p, min_p=0.0, typical_p=1.0,
                                       temp=p.temperature, repeat_penalty=1.0,
                                       frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty)
            for token in stream:
                if s.request.first_token_at is None:
                    s.request.first_token_at = time.perf_counter()
                generated += 1
                if s.request.cancelled:
                    s.abort()
                    break
                if s.accept(int(token), self._is_eos(int(token)), self.decoder, None):
                    break
        return generated

    def close(self) -> None:
        self.llm.close()
