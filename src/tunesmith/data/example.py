"""The one in-memory example shape every data format is normalised to."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    """A normalised training/evaluation example.

    Chat-like formats fill ``messages`` (OpenAI shape: ``{"role", "content"}`` and, on assistant
    turns only, an optional ``"weight"`` of 0 or 1 saying whether the turn is trained).
    Plain text (continued pretraining) fills ``text`` and leaves ``messages`` empty.
    ``label`` holds the label name for labelled-text data (whose raw input text is kept in
    ``text`` too, beside the prompt built from it); ``line`` is the 1-based line (JSONL)
    (CSV counts the header as line 1) or row (Parquet) in ``source``.
    ``rejected`` holds the dispreferred reply of preference data (DPO/ORPO): ``messages`` then
    ends with the preferred (chosen) assistant reply, and ``rejected`` is the alternative reply
    to the same prompt.
    """

    messages: list[dict] = field(default_factory=list)
    text: str | None = None
    label: str | None = None
    source: str = ""
    line: int = 0
    rejected: str | None = None
    task: str | None = None          # task name in multi-task recipes

    @property
    def prompt_messages(self) -> list[dict]:
        """Messages before the last assistant turn: what the model is asked at evaluation."""
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=None)
        return self.messages if last is None else self.messages[:last]

    @property
    def reference(self) -> str | None:
        """The last assistant reply: the reference answer at evaluation."""
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return None

    def prompt_key(self) -> str:
        """Text identifying the prompt, used for leakage checks and split grouping."""
        if not self.messages:
            return self.text or ""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt_messages)

    def full_text(self) -> str:
        """All text of the example (for dedup and PII scans), the rejected reply included."""
        if not self.messages:
            return self.text or ""
        parts = [m["content"] for m in self.messages]
        return "\n".join(parts + [self.rejected] if self.rejected is not None else parts)
