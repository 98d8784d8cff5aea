"""Prometheus metrics of one server app, in its own CollectorRegistry (several apps per process are fine)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
_RATE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    """Request latency, time to first token, tokens, tokens/s, errors by kind, queue depth,
    running sequences, batch sizes and loaded fine-tuned models (count and bytes)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_latency = Histogram("tunesmith_request_latency_seconds",
                                         "End-to-end latency of generation requests.",
                                         ["endpoint", "model"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram("tunesmith_time_to_first_token_seconds",
                              "Time from a request's arrival to its first generated token.",
                              ["model"], buckets=_LATENCY, registry=r)
        self.queue_time = Histogram("tunesmith_queue_time_seconds", "Time a request waited for its batch.",
                                    ["model"], buckets=_LATENCY, registry=r)
        self.generated_tokens = Counter("tunesmith_generated_tokens", "Tokens generated (completion tokens).",
                                        ["model"], registry=r)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.tokens_per_second = Histogram("tunesmith_request_tokens_per_second",
                                           "Completion tokens per second of each request (after its first token).",
                                           ["model"], buckets=_RATE, registry=r)
        self.batch_throughput = Gauge("tunesmith_batch_tokens_per_second",
                                      "Tokens per second of the last finished batch (all its sequences).",
                                      registry=r)
        self.requests = Counter("tunesmith_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("tunesmith_errors", "Errors answered, by kind (OpenAI error type or code).",
                              ["kind"], registry=r)
        self.queue_depth = Gauge("tunesmith_queue_depth", "Sequences waiting for a batch.", registry=r)
        self.running = Gauge("tunesmith_running_sequences", "Sequences in the batch being generated.", registry=r)
        self.batch_size = Histogram("tunesmith_batch_size", "Sequences generated together per batch.",
                                    buckets=_BATCH, registry=r)
        self.loaded_adapters = Gauge("tunesmith_loaded_adapters",
                                     "Fine-tuned models loaded (LoRA adapters on the shared base and separate models).",
                                     registry=r)
        self.loaded_bytes = Gauge("tunesmith_loaded_adapter_bytes",
                                  "Bytes of loaded fine-tuned models counted against the budget.", registry=r)
        self.evictions = Counter("tunesmith_adapter_evictions", "Fine-tuned models evicted (LRU, over budget).",
                                 registry=r)
        self.mixed_batches = Counter("tunesmith_mixed_adapter_batches", "Forward passes whose rows belong to "
                                     "several models of one base (mixed-adapter batches).", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
