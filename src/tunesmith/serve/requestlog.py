"""Opt-in request logging (``--log-dir``) and ``POST /v1/feedback``: the production half of keep-learning.

Every completed chat completion (streamed or not) appends one JSON line to ``<log_dir>/requests.jsonl``: the
response id the API returned, the time, the model id as requested (``senti@champion``) and the version and run
it resolved to, the prompt messages and the answer. Prompts, answers and feedback texts go through the PII
scrubber (:func:`tunesmith.data.pii.anonymize`) *before* they are written: raw e-mail addresses, phone numbers,
card numbers... never reach the disk. Feedback on a logged response (a thumbs up/down, a corrected answer, a
preferred/rejected pair) is appended to ``feedback.jsonl`` beside it; ``tunesmith harvest`` turns both into
training data and ``tunesmith drift`` compares the logged prompts with a version's training prompts.

Each file is capped (``log_max_mb``): a write that would take it past the cap first rotates it
(``requests.jsonl`` -> ``requests.1.jsonl`` -> ...), and only ``log_keep`` files are kept. Appends hold a lock
and write one whole line with one ``O_APPEND`` write, so concurrent requests never interleave lines.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ..data.pii import anonymize
from ..errors import TunesmithError
from ..lifecycle.feedback import FEEDBACK, REQUESTS, log_files, rotated_path
from ..rundir import Layout, read_json, read_jsonl
from .schema import OpenAIError, bad_request

MAX_TEXT = 100_000        # longest accepted feedback text, characters
log = logging.getLogger("tunesmith.serve")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class JsonlLog:
    """One append-only JSONL stream ``<dir>/<stem>.jsonl`` with size-capped rotation."""

    def __init__(self, directory: Path, stem: str, max_bytes: int, keep: int):
        self.directory, self.stem, self.max_bytes, self.keep = directory, stem, max_bytes, keep
        self.path = directory / f"{stem}.jsonl"
        self.lock = threading.Lock()
        self.rotations = 0

    def append(self, record: dict) -> bool:
        """Append ``record`` as one line (rotating first when it would pass the cap); True when it rotated."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self.lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            rotated = bool(size) and size + len(line) > self.max_bytes
            if rotated:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return rotated

    def _rotate(self) -> None:
        self.rotations += 1
        if self.keep <= 1:
            self.path.unlink(missing_ok=True)
            return
        rotated_path(self.directory, self.stem, self.keep - 1).unlink(missing_ok=True)
        for i in range(self.keep - 2, 0, -1):
            src = rotated_path(self.directory, self.stem, i)
            if src.exists():
                os.replace(src, rotated_path(self.directory, self.stem, i + 1))
        os.replace(self.path, rotated_path(self.directory, self.stem, 1))


def scrub(text: str, counts: Counter) -> str:
    clean, found = anonymize(text)
    counts.update(found)
    return clean


def _version_of(run_dir: Path | None) -> tuple[str | None, str | None]:
    """(name, ``name@vN``) of a registered run, from its lineage.json; (None, None) otherwise."""
    if run_dir is None:
        return None, None
    rec = read_json(Layout(run_dir).lineage_json) or {}
    name, number = rec.get("name"), rec.get("version")
    if isinstance(name, str) and isinstance(number, int):
        return name, f"{name}@v{number}"
    return None, None


class RequestLog:
    """The request log and the feedback store of one server (thread-safe)."""

    def __init__(self, directory: Path | str, max_mb: float = 64.0, keep: int = 5):
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TunesmithError(f"request log folder is not writable ({e.strerror}); expected a writable folder",
                                 file=str(self.directory), field="log_dir") from None
        cap = max(1, int(max_mb * 1024 * 1024))
        self.keep = keep
        self.requests = JsonlLog(self.directory, REQUESTS, cap, keep)
        self.feedback = JsonlLog(self.directory, FEEDBACK, cap, keep)
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, str]] = {}     # response id -> (file generation, model id)
        for number, path in log_files(self.directory, REQUESTS):    # requests.N.jsonl: generation -N
            for rec in read_jsonl(path):
                if isinstance(rec.get("id"), str):
                    self._index[rec["id"]] = (-number, sys.intern(str(rec.get("model"))))

    # ---- requests

    def log_chat(self, response: dict, messages: list[dict], info, *, stream: bool = False) -> dict:
        """Append one completed chat completion (``response`` in the API's shape) with PII anonymised."""
        counts: Counter = Counter()
        prompt = [{"role": m["role"], "content": scrub(m["content"], counts)} for m in messages]
        choices = [scrub(c["message"]["content"] or "", counts) for c in response.get("choices") or []]
        run_dir = getattr(info, "run_dir", None)
        name, version = _version_of(run_dir)
        record = {"id": response["id"], "object": "chat.completion", "time": now_iso(),
                  "created": response.get("created"), "model": response.get("model"), "name": name,
                  "version": version, "run_dir": str(run_dir) if run_dir else None, "kind": getattr(info, "kind", None),
                  "stream": stream, "messages": prompt, "answer": choices[0] if choices else "",
                  "finish_reason": ((response.get("choices") or [{}])[0]).get("finish_reason"),
                  "usage": response.get("usage"), "pii": dict(sorted(counts.items()))}
        if len(choices) > 1:
            record["choices"] = choices
        with self._lock:
            try:
                rotated = self.requests.append(record)
            except OSError as e:        # a full or vanished disk must not fail the answered request
                log.warning("request %s not logged to %s: %s", record["id"], self.requests.path, e)
                return record
            if rotated:
                gone = self.requests.rotations - self.keep      # generations at or below this were deleted
                self._index = {k: v for k, v in self._index.items() if v[0] > gone}
            self._index[record["id"]] = (self.requests.rotations, sys.intern(str(record["model"])))
        return record

    async def logged_stream(self, stream, response_id: str, created: int, model: str, messages: list[dict], info):
        """Pass a chat completion's SSE stream through, assembling the answer; log it when the stream completes
        (``[DONE]`` without an error event; a client that leaves early is not logged)."""
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage, done, failed = None, False, False
        async for chunk in stream:
            if chunk.startswith("data: "):
                payload = chunk[len("data: "):].strip()
                if payload == "[DONE]":
                    done = True
                else:
                    obj = json.loads(payload)
                    failed = failed or "error" in obj
                    usage = obj.get("usage") or usage
                    for c in obj.get("choices") or []:
                        texts.setdefault(c["index"], []).append((c.get("delta") or {}).get("content") or "")
                        if c.get("finish_reason"):
                            finish[c["index"]] = c["finish_reason"]
            yield chunk
        if done and not failed:
            response = {"id": response_id, "created": created, "model": model, "usage": usage,
                        "choices": [{"index": i, "message": {"content": "".join(texts[i])},
                                     "finish_reason": finish.get(i)} for i in sorted(texts)]}
            await asyncio.to_thread(self.log_chat, response, messages, info, stream=True)

    def known(self, response_id: str) -> str | None:
        """The model id a logged response was answered by, or None when it is not in the kept log files."""
        with self._lock:
            hit = self._index.get(response_id)
        return hit[1] if hit else None

    # ---- feedback

    def add_feedback(self, body: "FeedbackRequest") -> dict:
        model = self.known(body.response_id)
        if model is None:
            raise OpenAIError(404, f"No logged response with id '{body.response_id}' (unknown, or rotated out of "
                                   "the request log).", param="response_id", code="response_not_found")
        counts: Counter = Counter()
        record = {"id": f"fb-{uuid.uuid4().hex}", "object": "feedback", "time": now_iso(),
                  "response_id": body.response_id, "model": model, "rating": body.rating}
        for key in ("correction", "preferred", "rejected"):
            value = getattr(body, key)
            record[key] = scrub(value, counts) if value is not None else None
        record["pii"] = dict(sorted(counts.items()))
        self.feedback.append(record)
        return {"object": "feedback", "id": record["id"], "response_id": body.response_id}


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a rating, a corrected answer and/or a preferred/rejected pair for a logged response."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(..., min_length=1, max_length=200, description="The `id` of a chat completion.")
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, max_length=MAX_TEXT, description="A better answer to the same prompt.")
    preferred: str | None = Field(None, max_length=MAX_TEXT, description="The preferred answer of a pair.")
    rejected: str | None = Field(None, max_length=MAX_TEXT, description="The rejected answer of a pair.")

    def check(self) -> None:
        """Cross-field rules, as a 400 naming the field."""
        for key in ("correction", "preferred", "rejected"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise bad_request(f"'{key}' is empty; expected a non-empty answer", param=key, code="invalid_value")
        if (self.preferred is None) != (self.rejected is None):
            missing = "rejected" if self.rejected is None else "preferred"
            raise bad_request(f"'preferred' and 'rejected' come as a pair; '{missing}' is missing", param=missing,
                              code="invalid_value")
        if self.preferred is not None and self.preferred.strip() == self.rejected.strip():
            raise bad_request("'preferred' and 'rejected' are identical; expected two different answers",
                              param="rejected", code="invalid_value")
        if self.rating is None and self.correction is None and self.preferred is None:
            raise bad_request("no feedback given; expected 'rating', 'correction' or 'preferred'+'rejected'",
                              param="rating", code="invalid_value")


def attach_request_log(router: APIRouter, settings) -> RequestLog | None:
    """Open the request log when ``settings.log_dir`` is set, and add ``POST /feedback`` to ``router`` (answering
    404 "feedback is off" when logging is not on)."""
    store = RequestLog(settings.log_dir, settings.log_max_mb, settings.log_keep) if settings.log_dir else None

    @router.post("/feedback")
    async def feedback(body: FeedbackRequest):
        if store is None:
            raise OpenAIError(404, "Feedback is off: this server does not log requests (start it with "
                                   "--log-dir DIR to log chat completions and accept feedback).",
                              code="feedback_disabled")
        body.check()
        return await run_in_threadpool(store.add_feedback, body)

    return store


__all__ = ["RequestLog", "JsonlLog", "FeedbackRequest", "attach_request_log"]
