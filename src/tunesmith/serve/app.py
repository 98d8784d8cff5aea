"""The OpenAI-compatible FastAPI app: models, chat and text completions (SSE streaming), health, metrics."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack, asynccontextmanager

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import TunesmithError
from ..train.precision import choose as choose_precision
from .engine import Engine, Event, GenerationRequest, InvalidParameter, SamplingParams, TokenLogprob
from .limits import BodyLimitMiddleware
from .metrics import Metrics
from .registry import ModelInfo, ModelSource, Registry
from .requestlog import attach_request_log
from .schema import ERROR_RESPONSES, ChatCompletionRequest, CompletionRequest, OpenAIError, bad_request
from .settings import ServeSettings
from .tokens import TokenText

MAX_CHOICES = 128
NESTED = "The JSON body is nested too deeply."


# ---- errors ----------------------------------------------------------------------------------------------

def _as_openai(err: BaseException) -> OpenAIError:
    if isinstance(err, OpenAIError):
        return err
    if isinstance(err, TunesmithError):
        return bad_request(str(err))
    if isinstance(err, RecursionError):        # a deeply nested body reached recursive code
        return bad_request(NESTED, code="invalid_json")
    return OpenAIError(500, f"The server had an error while processing your request: {type(err).__name__}: {err}",
                       type="server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return ("We could not parse the JSON body of your request. The server expects a JSON payload "
                f"({first.get('ctx', {}).get('error', 'invalid JSON')})."), None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # drop pydantic's union-branch markers like "str" / "list[str]" / "function-after[...]"
    loc = [p for p in loc if not (p.startswith(("list[", "function-", "dict[")) or p in {"str", "int", "float"})]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    value = first.get("input")
    shown = f" (got {json.dumps(value)[:200]})" if isinstance(value, (str, int, float, bool)) else ""
    return f"Invalid value for '{param}': {msg}{shown}.", param


def _install_errors(app: FastAPI, metrics: Metrics) -> None:
    def respond(err: OpenAIError, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind=err.code or err.type).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return respond(exc, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return respond(OpenAIError(400, message, param=param, code="invalid_value" if param else None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if isinstance(detail, dict) and "error" in detail:
            err = detail["error"]
            return respond(OpenAIError(exc.status_code, err.get("message", ""), type=err.get("type", "invalid_request_error"),
                                       code=err.get("code"), param=err.get("param")), exc.headers)
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):   # json.loads gave up
            return respond(bad_request(NESTED, code="invalid_json"), exc.headers)
        if exc.status_code == 404 and detail in (None, "Not Found"):
            message, code = f"Invalid URL ({request.method} {request.url.path})", "not_found"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed for {request.url.path}", "method_not_allowed"
        else:
            message, code = str(detail), None
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return respond(OpenAIError(exc.status_code, message, type=kind, code=code), exc.headers)

    @app.exception_handler(TunesmithError)
    async def _user(request: Request, exc: TunesmithError):
        return respond(bad_request(str(exc)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return respond(_as_openai(exc))


def _auth(keys: Sequence[str]):
    accepted = [k.encode() for k in keys]

    async def check(request: Request) -> None:
        if not accepted:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(401, "You didn't provide an API key. Provide it in the Authorization header "
                                   "(Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        given = token.strip().encode()
        if not any(secrets.compare_digest(given, k) for k in accepted):
            shown = token.strip()[:3] + "***" + token.strip()[-2:] if len(token.strip()) > 6 else "***"
            raise OpenAIError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")
    return check


class _CountRequests:
    """Counts answered requests by route and status (pure ASGI middleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if status:
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(endpoint=route, status=str(status[0])).inc()


# ---- the bridge between the engine thread and asyncio ------------------------------------------------------

class _Sink:
    """Thread-safe event sink feeding an asyncio queue on the app's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:      # the loop is closed (server shutting down)
            pass


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _chat_logprobs(entries: list[TokenLogprob]) -> dict:
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e.top]}
                        for e in entries], "refusal": None}


def _completion_logprobs(entries: list[TokenLogprob], shift: int = 0) -> dict:
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for t, lp, _ in e.top} for e in entries],
            "text_offset": [e.offset + shift for e in entries]}


class _Job:
    """One submitted request with its sink, timing and metric bookkeeping."""

    def __init__(self, state, endpoint: str, model_id: str, prompts: list[list[int]], params: SamplingParams, n: int):
        self.state, self.endpoint, self.model_id = state, endpoint, model_id
        self.t0 = time.perf_counter()
        self.sink = _Sink(asyncio.get_running_loop())
        self.request = GenerationRequest(model_id, prompts, params, self.sink, n=n)
        self.total = len(self.request.sequences)
        self.completion_tokens = 0
        self.started_at: float | None = None
        self.recorded = False

    async def start(self) -> None:
        """Queue the request and wait for its batch to start (errors raised here become HTTP errors)."""
        try:
            self.state.engine.submit(self.request)
        except RuntimeError as e:
            raise OpenAIError(503, str(e), type="server_error", code="unavailable") from None
        try:
            first = await self.sink.queue.get()
        except BaseException:
            self.request.cancel()
            raise
        if first.kind == "error":
            raise _as_openai(first.error)
        self.started_at = time.perf_counter()

    def finish_metrics(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        m, model, end = self.state.metrics, self.model_id, time.perf_counter()
        m.request_latency.labels(endpoint=self.endpoint, model=model).observe(end - self.t0)
        m.prompt_tokens.labels(model=model).inc(self.request.prompt_tokens)
        m.generated_tokens.labels(model=model).inc(self.completion_tokens)
        if self.started_at is not None:
            m.queue_time.labels(model=model).observe(self.started_at - self.t0)
        first = self.request.first_token_at
        if first is not None:
            m.ttft.labels(model=model).observe(max(0.0, first - self.request.enqueued_at))
            if self.completion_tokens > 1 and end > first:
                m.tokens_per_second.labels(model=model).observe((self.completion_tokens - 1) / (end - first))

    async def collect(self) -> dict[int, dict]:
        out = {i: {"text": [], "logprobs": [], "finish_reason": None} for i in range(self.total)}
        done = 0
        try:
            while done < self.total:
                ev = await self.sink.queue.get()
                if ev.kind == "delta":
                    out[ev.index]["text"].append(ev.text)
                    out[ev.index]["logprobs"].extend(ev.logprobs)
                elif ev.kind == "finish":
                    out[ev.index]["finish_reason"] = ev.finish_reason
                    self.completion_tokens += ev.completion_tokens
                    done += 1
                elif ev.kind == "error":
                    raise _as_openai(ev.error)
        finally:
            self.request.cancel()
            self.finish_metrics()
        return out

    def usage(self) -> dict:
        p = self.request.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": self.completion_tokens, "total_tokens": p + self.completion_tokens}


# ---- request checks shared by both endpoints ---------------------------------------------------------------

def _choices(dec: TokenText, choices: list[str]) -> tuple[tuple[int, ...], ...]:
    """``guided_choice`` as token sequences, each ending with the end-of-turn token (400 when two are alike)."""
    from ..constrained import label_token_ids
    try:
        return tuple(tuple(c) for c in label_token_ids(dec.tokenizer, choices))
    except ValueError as e:
        raise bad_request(f"Invalid 'guided_choice': {e}", param="guided_choice", code="invalid_value") from None


def _sampling(body, info: ModelInfo, dec: TokenText, max_tokens: int, logprobs: bool, top: int,
              choices: tuple[tuple[int, ...], ...] = ()) -> SamplingParams:
    """The request's sampling parameters, every one checked (400 naming it) before it may join a batch."""
    if info.kind == "gguf" and (logprobs or body.logit_bias or choices):
        raise bad_request("logprobs, logit_bias and guided_choice are not available for GGUF models (llama.cpp "
                          "backend)", param="logprobs" if logprobs else "logit_bias" if body.logit_bias
                          else "guided_choice")
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stops(),
                            logprobs=logprobs, top_logprobs=top, presence_penalty=body.presence_penalty or 0.0,
                            frequency_penalty=body.frequency_penalty or 0.0, logit_bias=body.bias(), choices=choices)
    try:
        params.check(dec.vocab_size())
    except InvalidParameter as e:
        raise bad_request(str(e), param=e.param, code="invalid_value") from None
    return params


def _budget(requested: int | None, prompt_len: int, context: int, default: int, param: str,
            prompt_param: str) -> int:
    """How many tokens to generate: the request's limit (400 if it cannot fit) or the default."""
    room = context - prompt_len
    if room < 1:
        raise bad_request(f"This model's maximum context length is {context} tokens, but the prompt has "
                          f"{prompt_len} tokens.", param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return min(default, room)
    if requested > room:
        raise bad_request(f"This model's maximum context length is {context} tokens. However, you requested "
                          f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
                          "completion). Please reduce the prompt or the completion length.",
                          param=param, code="context_length_exceeded")
    return requested


def _check_chars(dec: TokenText, chars: int, context: int, param: str) -> None:
    """400 before tokenising a text that cannot fit in the context (bounds the tokenizer's work)."""
    limit = dec.max_chars(context)
    if chars > limit:
        raise bad_request(f"This model's maximum context length is {context} tokens, but the {param} have "
                          f"{chars:,} characters (at most {limit:,} characters can fit).", param=param,
                          code="context_length_exceeded")


def _render_chat(dec: TokenText, messages: list[dict], context: int) -> list[int]:
    _check_chars(dec, sum(len(m["content"]) for m in messages), context, "messages")
    try:
        text = dec.render_chat(messages)
    except Exception as e:   # jinja errors raised by templates (e.g. role order rules)
        raise bad_request(f"the model's chat template rejected the messages: {e}", param="messages") from None
    _check_chars(dec, len(text), context, "messages")
    return dec.encode(text, add_special_tokens=False)


def _encode_prompts(dec: TokenText, prompt, context: int, echo: bool) -> tuple[list[list[int]], list[str]]:
    """Completions prompts as token lists plus their texts (for echo)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if len(prompt) > MAX_CHOICES:
        raise bad_request(f"at most {MAX_CHOICES} prompts per request", param="prompt")
    ids, texts = [], []
    vocab = dec.vocab_size()
    for p in prompt:
        if isinstance(p, str):
            _check_chars(dec, len(p), context, "prompt")
            toks = dec.encode(p, add_special_tokens=True)
            if not toks:
                raise bad_request("prompt must not be empty", param="prompt")
            ids.append(toks)
            texts.append(p)
        else:
            if len(p) >= context:
                raise bad_request(f"This model's maximum context length is {context} tokens, but the prompt has "
                                  f"{len(p)} tokens.", param="prompt", code="context_length_exceeded")
            if any(not 0 <= t < vocab for t in p):
                raise bad_request(f"token ids in the prompt must be between 0 and {vocab - 1}", param="prompt")
            ids.append(list(p))
            texts.append(dec.tokenizer.decode(p, skip_special_tokens=False) if echo else "")
    return ids, texts


# `stream: true` answers server-sent events; documented beside the JSON body
STREAMED: dict = {200: {"content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}}}


def _streaming_response(gen) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---- the app -----------------------------------------------------------------------------------------------

def create_app(settings: ServeSettings, *, sources: Sequence[ModelSource] = (),
               routers: Sequence[APIRouter] = (), lifespans: Sequence = ()) -> FastAPI:
    """The OpenAI-compatible server for ``settings``.

    ``sources`` add fine-tuned models (queried on every lookup); ``routers`` are mounted under the
    same authentication and error envelope (e.g. the fine-tuning jobs API); ``lifespans`` are
    zero-argument callables returning context managers entered while the server runs (e.g. a jobs
    worker thread: ``lifespans=[parts.worker_running]``).
    """
    metrics = Metrics()
    if settings.runs or settings.registry:     # named versions and their aliases (name@champion, name@v2)
        from ..lifecycle.source import VersionsSource
        sources = [*sources, VersionsSource(settings.runs, settings.registry)]
    registry = Registry(settings, sources, metrics)
    compute = choose_precision(settings.precision, torch.device(settings.resolved_device()), "precision")
    engine = Engine(registry.acquire, max_batch_size=settings.max_batch_size,
                    batch_wait_ms=settings.batch_wait_ms, metrics=metrics, compute=compute.autocast,
                    group=registry.group)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        with ExitStack() as stack:
            try:
                for make in lifespans:
                    stack.enter_context(make())
                yield
            finally:
                await run_in_threadpool(engine.stop)

    app = FastAPI(title="tunesmith", description="OpenAI-compatible inference for tunesmith runs",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings, app.state.registry, app.state.engine, app.state.metrics = settings, registry, engine, metrics
    _install_errors(app, metrics)

    # pure ASGI middleware (no task groups: an error raised while a body is read reaches the handlers
    # as itself). Outermost: every body is counted while it is read; routes with their own limit (file
    # uploads) raise it with `limits.limited_request` before reading.
    app.add_middleware(_CountRequests, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_body_mb * 1024 * 1024))

    state = app.state
    auth = Depends(_auth(settings.api_keys))
    v1 = APIRouter(prefix="/v1", dependencies=[auth], responses=ERROR_RESPONSES)
    reqlog = attach_request_log(v1, settings)     # --log-dir: chat completions logged, POST /v1/feedback

    async def lookup(model_id: str) -> ModelInfo:
        return await run_in_threadpool(registry.get, model_id)

    @v1.get("/models")
    async def list_models():
        infos = await run_in_threadpool(registry.list)
        return {"object": "list", "data": [i.card() for i in infos]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        return (await lookup(model_id)).card()

    @v1.post("/chat/completions", responses=STREAMED)
    async def chat_completions(body: ChatCompletionRequest):
        info = await lookup(body.model)
        if body.tools and body.tool_choice != "none":
            raise bad_request("tools (function calling) are not supported by this server", param="tools")
        fmt = (body.response_format or {}).get("type", "text")
        if fmt != "text":
            raise bad_request(f"response_format type '{fmt}' is not supported; only 'text'", param="response_format")
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        dec = await run_in_threadpool(registry.decoder, info)
        context = await run_in_threadpool(registry.context_length, info)
        prompt = await run_in_threadpool(_render_chat, dec, messages, context)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        choices = await run_in_threadpool(_choices, dec, body.guided_choice) if body.guided_choice else ()
        if choices and requested is None:
            requested = max(len(c) for c in choices)       # room for the longest choice and its end
        max_new = _budget(requested, len(prompt), context, settings.default_max_tokens,
                          "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
                          "messages")
        params = _sampling(body, info, dec, max_new, bool(body.logprobs), body.top_logprobs or 0, choices)
        n = body.n or 1
        job = _Job(state, "/v1/chat/completions", body.model, [prompt], params, n)
        await job.start()
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = _chat_stream(job, cid, created, body.model, usage, params.logprobs)
            return _streaming_response(reqlog.logged_stream(stream, cid, created, body.model, messages, info)
                                       if reqlog else stream)
        out = await job.collect()
        choices = [{"index": i, "message": {"role": "assistant", "content": "".join(c["text"]), "refusal": None},
                    "logprobs": _chat_logprobs(c["logprobs"]) if params.logprobs else None,
                    "finish_reason": c["finish_reason"]} for i, c in sorted(out.items())]
        response = {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
                    "system_fingerprint": None, "choices": choices, "usage": job.usage()}
        if reqlog:
            await run_in_threadpool(reqlog.log_chat, response, messages, info)
        return response

    @v1.post("/completions", responses=STREAMED)
    async def completions(body: CompletionRequest):
        info = await lookup(body.model)
        if body.suffix:
            raise bad_request("suffix (insertion) is not supported", param="suffix")
        n = body.n or 1
        if body.best_of is not None and body.best_of != n:
            raise bad_request("best_of different from n is not supported", param="best_of")
        if body.echo and body.logprobs is not None:
            raise bad_request("echo together with logprobs is not supported", param="echo")
        dec = await run_in_threadpool(registry.decoder, info)
        context = await run_in_threadpool(registry.context_length, info)
        prompts, texts = await run_in_threadpool(_encode_prompts, dec, body.prompt, context, bool(body.echo))
        if len(prompts) * n > MAX_CHOICES:
            raise bad_request(f"at most {MAX_CHOICES} choices (prompts x n) per request", param="n")
        max_new = min(_budget(body.max_tokens, len(p), context, 16, "max_tokens", "prompt") for p in prompts)
        logprobs = body.logprobs is not None
        params = _sampling(body, info, dec, max_new, logprobs, body.logprobs or 0)
        job = _Job(state, "/v1/completions", body.model, prompts, params, n)
        await job.start()
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = [texts[i // n] if body.echo else "" for i in range(job.total)]
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return _streaming_response(_completion_stream(job, cid, created, body.model, usage, logprobs, echo))
        out = await job.collect()
        choices = [{"index": i, "text": echo[i] + "".join(c["text"]),
                    "logprobs": _completion_logprobs(c["logprobs"]) if logprobs else None,
                    "finish_reason": c["finish_reason"]} for i, c in sorted(out.items())]
        return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                "system_fingerprint": None, "choices": choices, "usage": job.usage()}

    app.include_router(v1)
    for router in routers:
        app.include_router(router, dependencies=[auth], responses=ERROR_RESPONSES)
    if settings.ui:             # the web dashboard at /ui (its own sign-in: the same keys, in a cookie)
        from .dashboard import mount
        mount(app, settings)

    @app.get("/health")
    async def health():
        return {"status": "ok", "base_model": settings.base_id, "loaded": registry.loaded(),
                "queue_depth": engine.queue_depth(), "running": engine.running, "precision": compute.as_dict()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        data, ctype = metrics.render()
        return Response(content=data, media_type=ctype)

    return app


# ---- streams --------------------------------------------------------------------------------------------------

async def _events(job: _Job):
    """Yield the job's events until every choice finished; cancel the request if the client leaves."""
    done = 0
    try:
        while done < job.total:
            ev = await job.sink.queue.get()
            if ev.kind == "finish":
                done += 1
                job.completion_tokens += ev.completion_tokens
            yield ev
            if ev.kind == "error":
                return
    finally:
        job.request.cancel()
        job.finish_metrics()


def _chunker(cid: str, created: int, model: str, obj_type: str, include_usage: bool):
    def chunk(choices: list, usage=None) -> str:
        obj = {"id": cid, "object": obj_type, "created": created, "model": model,
               "system_fingerprint": None, "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return _sse(obj)
    return chunk


async def _stream_events(job: _Job, chunk, delta, finish, include_usage: bool):
    """The SSE body after any opening chunks: one chunk per delta and finish, an error event in
    OpenAI's envelope, the usage chunk when asked, then ``[DONE]``."""
    async for ev in _events(job):
        if ev.kind == "delta" and (ev.text or ev.logprobs):
            yield chunk([delta(ev)])
        elif ev.kind == "finish":
            yield chunk([finish(ev)])
        elif ev.kind == "error":
            err = _as_openai(ev.error)
            job.state.metrics.errors.labels(kind=err.code or err.type).inc()
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
            return
    if include_usage:
        yield chunk([], usage=job.usage())
    yield "data: [DONE]\n\n"


async def _chat_stream(job: _Job, cid: str, created: int, model: str, include_usage: bool, logprobs: bool):
    chunk = _chunker(cid, created, model, "chat.completion.chunk", include_usage)
    for i in range(job.total):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    async for line in _stream_events(
            job, chunk,
            lambda ev: {"index": ev.index, "delta": {"content": ev.text},
                        "logprobs": _chat_logprobs(ev.logprobs) if logprobs else None, "finish_reason": None},
            lambda ev: {"index": ev.index, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason},
            include_usage):
        yield line


async def _completion_stream(job: _Job, cid: str, created: int, model: str, include_usage: bool, logprobs: bool,
                             echo: list[str]):
    chunk = _chunker(cid, created, model, "text_completion", include_usage)
    for i, text in enumerate(echo):
        if text:
            yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
    async for line in _stream_events(
            job, chunk,
            lambda ev: {"index": ev.index, "text": ev.text,
                        "logprobs": _completion_logprobs(ev.logprobs) if logprobs else None, "finish_reason": None},
            lambda ev: {"index": ev.index, "text": "", "logprobs": None, "finish_reason": ev.finish_reason},
            include_usage):
        yield line
