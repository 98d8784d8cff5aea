"""The cheap alternatives to fine-tuning on the same held-out prompts: few-shot prompting and RAG."""
from __future__ import annotations

import random
from collections.abc import Sequence

from ..config import Recipe
from ..data.example import Example
from ..errors import TunesmithError
from ..generation import render_prompt
from .retrieval import Embedder, Index

SYSTEMS = {"base": "base zero-shot", "few_shot": "base few-shot", "rag": "base + RAG", "tuned": "fine-tuned",
           "tuned_rag": "fine-tuned + RAG"}


def query_text(ex: Example) -> str:
    """What retrieval matches on: the raw input of labelled data, else the last user message."""
    if ex.text and ex.messages:
        return ex.text
    users = [m["content"] for m in ex.prompt_messages if m["role"] == "user"]
    return users[-1] if users else ex.prompt_key()


def example_document(ex: Example) -> str:
    """A training example as a retrievable passage: its input and its answer."""
    return f"{query_text(ex)}\nAnswer: {ex.reference}"


def load_documents(spec: str, limit: int | None = None) -> list[str]:
    """Passages from a text file (one per non-empty line) or a JSONL/CSV/Parquet file with a `text` field."""
    from ..data.io import read_records, resolve_path
    path = resolve_path(spec) if spec.startswith("package:") else None
    name = (path or spec).__str__().lower()
    docs: list[str] = []
    if name.endswith((".txt", ".cor", ".txt.gz", ".md")):
        import gzip
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path or spec, "rt", encoding="utf-8", errors="replace") as f:
            docs = [line.strip() for line in f if line.strip()]
    else:
        for line, record in read_records(spec):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise TunesmithError("expected a record with a string field `text`", file=spec, line=line,
                                     field="text")
            if record["text"].strip():
                docs.append(record["text"].strip())
    if not docs:
        raise TunesmithError("no documents found; expected one passage per line or records with `text`",
                             file=spec)
    return docs[:limit] if limit else docs


def _split_system(messages: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    system = [m for m in messages if m["role"] == "system"]
    return system, [m for m in messages if m["role"] != "system"]


class PromptBuilder:
    """Builds few-shot and RAG prompts for test examples, within the model's context limit."""

    def __init__(self, recipe: Recipe, tokenizer, train: list[Example], context_limit: int,
                 embedder: Embedder | None = None):
        self.recipe, self.tokenizer, self.limit = recipe, tokenizer, context_limit
        self.shots = [ex for ex in train if ex.messages and ex.reference is not None]
        cfg = recipe.eval
        self._embedder = embedder
        self._shot_index: Index | None = None
        self._doc_index: Index | None = None
        self.documents = load_documents(cfg.rag_documents) if cfg.rag_documents else \
            [example_document(ex) for ex in self.shots]

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.recipe.eval.embedding_model)
        return self._embedder

    def _tokens(self, messages: list[dict]) -> int:
        return len(self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def _fit(self, build, items: list) -> tuple[list[dict], int]:
        """The prompt with as many of ``items`` (best first) as fit the context limit."""
        for n in range(len(items), -1, -1):
            messages = build(items[:n])
            if self._tokens(messages) <= self.limit:
                return messages, n
        return build([]), 0

    def few_shot(self, tests: list[Example]) -> list[list[dict]]:
        cfg = self.recipe.eval
        if not self.shots:
            raise TunesmithError("few-shot needs training examples with answers", field="eval.baselines")
        if cfg.few_shot_selection == "similar":
            if self._shot_index is None:
                self._shot_index = Index([query_text(ex) for ex in self.shots], self.embedder())
            picks = [[i for i, _ in hits] for hits in self._shot_index.search([query_text(t) for t in tests],
                                                                              cfg.few_shot_k)]
        else:
            rng = random.Random(self.recipe.data.split.seed)
            picks = [rng.sample(range(len(self.shots)), min(cfg.few_shot_k, len(self.shots))) for _ in tests]
        out = []
        for test, pick in zip(tests, picks):
            system, rest = _split_system(test.prompt_messages)

            def build(chosen, system=system, rest=rest):
                turns = []
                for i in reversed(chosen):       # the most similar example sits closest to the question
                    shot = self.shots[i]
                    turns += _split_system(shot.prompt_messages)[1] + [
                        {"role": "assistant", "content": shot.reference}]
                return system + turns + rest
            out.append(self._fit(build, pick)[0])
        return out

    def rag(self, tests: list[Example]) -> list[list[dict]]:
        cfg = self.recipe.eval
        if self._doc_index is None:
            self._doc_index = Index(self.documents, self.embedder())
        hits = self._doc_index.search([query_text(t) for t in tests], cfg.rag_k)
        out = []
        for test, found in zip(tests, hits):
            system, rest = _split_system(test.prompt_messages)
            head = system[0]["content"] + "\n\n" if system else ""

            def build(chosen, head=head, rest=rest):
                if not chosen:
                    return ([{"role": "system", "content": head.strip()}] if head else []) + rest
                passages = "\n".join(f"[{n + 1}] {self.documents[i]}" for n, (i, _) in enumerate(chosen))
                context = (f"{head}Use the reference material below when it helps.\n"
                           f"Reference material:\n{passages}")
                return [{"role": "system", "content": context}] + rest
            out.append(self._fit(build, found)[0])
        return out


def context_limit(model, tokenizer, max_new_tokens: int) -> int:
    """Prompt tokens that still leave room for the answer in the model's context window."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return max(limit - max_new_tokens, 16)


def flips(reference: dict, other: dict) -> dict:
    """Per-example changes between two systems' judged predictions on the same prompts."""
    a = [bool(p.get("correct")) for p in reference.get("predictions", [])]
    b = [bool(p.get("correct")) for p in other.get("predictions", [])]
    n = min(len(a), len(b))
    return {"wrong_to_right": sum(1 for i in range(n) if not a[i] and b[i]),
            "right_to_wrong": sum(1 for i in range(n) if a[i] and not b[i]),
            "both_right": sum(1 for i in range(n) if a[i] and b[i]),
            "both_wrong": sum(1 for i in range(n) if not a[i] and not b[i]), "compared": n}
