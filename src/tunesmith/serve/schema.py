"""OpenAI request bodies (unknown fields ignored, ranges checked) and the OpenAI error type."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sampling import MAX_LOGIT_BIAS, MAX_STOP_CHARS, MAX_STOPS, SEED_RANGE

_TOKEN_ID = re.compile(r"-?[0-9]{1,19}")


class OpenAIError(Exception):
    """An error answered with OpenAI's envelope ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# documents OpenAI's error envelope for every 4xx/5xx of a route (FastAPI's `responses=`); it also
# replaces FastAPI's default 422 entry: validation errors are answered 400 in the envelope
ERROR_RESPONSES: dict = {"4XX": {"model": ErrorResponse, "description": "Client error (OpenAI error envelope)"},
                         "5XX": {"model": ErrorResponse, "description": "Server error (OpenAI error envelope)"}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model_id: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                       code="model_not_found", param="model")


class _Lenient(BaseModel):
    """Unknown fields (clients' ``extra_body``) are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message text; content parts other than text are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise bad_request(f"content part type '{part.type}' is not supported; only text",
                                  param="messages")
            out.append(part.text)
        return "".join(out)


Stop = str | list[str] | None


def _check_stop(value: Stop) -> Stop:
    if isinstance(value, list):
        if len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
    elif isinstance(value, str) and not value:
        return None
    if any(len(s) > MAX_STOP_CHARS for s in ([value] if isinstance(value, str) else value or [])):
        raise ValueError(f"stop sequences may have at most {MAX_STOP_CHARS} characters")
    return value


class _Sampling(_Lenient):
    model: str = Field(..., min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: Stop = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Stop) -> Stop:
        return _check_stop(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        if value is not None and len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries are allowed, got {len(value)}")
        for k, v in (value or {}).items():
            if not _TOKEN_ID.fullmatch(k):
                raise ValueError(f"logit_bias keys must be token ids, got {k[:40]!r}")
            if int(k) < 0:
                raise ValueError(f"logit_bias token id {k} is not in the model's vocabulary")
            if not -100 <= v <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {v}")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def bias(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict | None = None
    parallel_tool_calls: bool | None = None
    guided_choice: list[str] | None = Field(
        None, min_length=1, max_length=256, description="Label-safe decoding (vLLM's extra parameter): the reply is "
        "exactly one of these strings, chosen token by token among the continuations of the choices.")

    @field_validator("response_format")
    @classmethod
    def _format(cls, value):
        if value is not None and not isinstance(value.get("type", "text"), str):
            raise ValueError("response_format.type must be a string")
        return value


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=128)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("token prompts must not be empty")
        return value
