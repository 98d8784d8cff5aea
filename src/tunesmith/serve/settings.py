"""Server settings: base model, runs roots, API keys, adapter memory budget, batching, device, address."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import TunesmithError


def _env_keys() -> list[str]:
    return [k.strip() for k in os.environ.get("TUNESMITH_API_KEYS", "").split(",") if k.strip()]


class ServeSettings(BaseModel):
    """Everything ``create_app`` needs; unknown keys are rejected.

    ``api_keys`` defaults to the comma-separated ``TUNESMITH_API_KEYS`` environment variable; an
    empty list means no authentication. ``adapter_budget_mb`` bounds the memory of loaded
    fine-tuned models (LoRA adapter parameters, or whole separate models); the least recently used
    are evicted beyond it. The base model is loaded once and is not counted.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("smollm2-135m-instruct",
                       description="Base model: catalogue name, local HF folder or .gguf file.")
    model_id: str | None = Field(None, min_length=1, description="Id of the base model in the API (default: `model`).")
    runs: list[Path] = Field(default_factory=list,
                             description="Runs roots (folders of run directories) or run directories.")
    registry: str | None = Field(None, min_length=1, description="MLflow URI of the model registry whose versions "
                                  "are served as NAME@vN and NAME@ALIAS (default: each runs folder's "
                                  "sqlite:///<runs>/mlflow.db, with its lineage.json copies).")
    api_keys: list[str] = Field(default_factory=_env_keys, description="Accepted bearer keys; empty: no auth.")
    adapter_budget_mb: float = Field(1024.0, gt=0, description="Memory for loaded fine-tuned models, MB.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most sequences generated together.")
    batch_wait_ms: float = Field(10.0, ge=0, le=10_000, description="How long the first queued request waits "
                                                                   "for others to batch with.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where models run.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="Compute precision of generation (autocast), chosen as train.precision's; fp32 answers "
                            "exactly as evaluation (eval.precision: fp32) does.")
    default_max_tokens: int = Field(256, ge=1, le=131072, description="Chat reply limit when a request sets none.")
    gguf: bool = Field(True, description="Serve GGUF exports through llama-cpp-python when it is installed.")
    gguf_context: int = Field(4096, ge=64, description="llama.cpp context size for GGUF models.")
    max_body_mb: float = Field(8.0, gt=0, le=4096, description="Largest accepted request body, MB, on every "
                                                                "route but file uploads (their own limit); "
                                                                "larger bodies get HTTP 413.")
    host: str = Field("127.0.0.1", min_length=1, description="Interface to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: a free port).")
    ui: bool = Field(True, description="Serve the web dashboard at /ui (runs, live curves, compare), signed in "
                                       "with the same API keys.")
    log_dir: Path | None = Field(None, description="Log every chat completion (PII anonymised) as JSONL in this "
                                                   "folder and accept POST /v1/feedback (off by default).")
    log_max_mb: float = Field(64.0, gt=0, le=1_000_000, description="Size of one request-log file, MB, beyond which "
                                                                    "it is rotated.")
    log_keep: int = Field(5, ge=1, le=1000, description="Request-log files kept, the current one included (older "
                                                        "ones are deleted).")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        keys = [k.strip() for k in keys]
        if any(not k for k in keys):
            raise ValueError("API keys must not be empty strings")
        return keys

    @property
    def base_id(self) -> str:
        return self.model_id or self.model

    def resolved_device(self) -> str:
        import torch
        if self.device != "auto":
            return self.device
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"


def settings_from(**values) -> ServeSettings:
    """``ServeSettings(**values)`` with a validation failure turned into one clear TunesmithError."""
    try:
        return ServeSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise TunesmithError(f"{first['msg']} (got {first.get('input')!r})", field=field) from None
