"""`/v1/fine_tuning/jobs`: create, list, get, cancel, pause, resume, events and checkpoints."""
from __future__ import annotations

import json
import re
import secrets

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from .. import models as model_catalogue
from ..errors import TunesmithError
from ..serve.schema import ERROR_RESPONSES
from .db import (CANCELLED, PAUSED, QUEUED, RUNNING, SUCCEEDED, VALIDATING, CheckpointRow, EventRow, JobRow,
                 add_event, after_cursor, new_id, now, page, transition)
from .errors import APIError, ErrorRoute, bad_request, not_found
from .files import FINE_TUNE_FORMATS, get_file
from .recipe import JOB_HYPERPARAMETERS, check_hyperparameters, job_recipe, parse_method, resolve
from .settings import JobsContext

SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_SEED = 2147483647
MAX_DEPTH = 8             # nesting of free-form JSON a job stores and returns (integrations)
_AUTO_OR = {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "number", "exclusiveMinimum": 0}]}
_HYPERPARAMETERS = {"type": "object", "properties": {"batch_size": _AUTO_OR, "learning_rate_multiplier": _AUTO_OR,
                                                     "n_epochs": _AUTO_OR, "beta": _AUTO_OR}}
# the create body as OpenAI documents it (the route parses the JSON itself: unknown fields ignored)
CREATE_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "training_file"],
    "properties": {
        "model": {"type": "string", "minLength": 1}, "training_file": {"type": "string", "minLength": 1},
        "validation_file": {"type": ["string", "null"]},
        "suffix": {"type": ["string", "null"], "pattern": SUFFIX.pattern},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
        "metadata": {"type": ["object", "null"], "maxProperties": 16,
                     "additionalProperties": {"type": "string", "maxLength": 512}},
        "integrations": {"type": ["array", "null"], "maxItems": 16,
                         "items": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}},
        "hyperparameters": _HYPERPARAMETERS,
        "method": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["supervised", "dpo", "reinforcement"]},
            "supervised": {"type": "object", "properties": {"hyperparameters": _HYPERPARAMETERS}},
            "dpo": {"type": "object", "properties": {"hyperparameters": _HYPERPARAMETERS}}}}}}}}}


def fine_tuned_name(base: str, org: str, suffix: str | None, job_id: str) -> str:
    """``ft:{base}:{org}:{suffix}:{short id}`` (the suffix segment is empty without a suffix); a job that
    continues ``ft:{base}:…`` keeps that base, as OpenAI names it."""
    if base.startswith("ft:"):
        base = base.split(":")[1]
    return f"ft:{base}:{org}:{suffix or ''}:{job_id[-8:]}"


def job_object(row: JobRow) -> dict:
    hp = row.hyperparameters or {}
    top = {k: hp.get(k, "auto") for k in JOB_HYPERPARAMETERS}
    method_hp = {**top, **({"beta": hp.get("beta", "auto")} if row.method_type == "dpo" else {})}
    return {
        "object": "fine_tuning.job", "id": row.id, "created_at": row.created_at, "error": row.error,
        "fine_tuned_model": row.fine_tuned_model, "finished_at": row.finished_at, "hyperparameters": top,
        "model": row.model, "organization_id": row.organization_id, "result_files": list(row.result_files or []),
        "seed": row.seed, "status": row.status, "trained_tokens": row.trained_tokens,
        "training_file": row.training_file, "validation_file": row.validation_file,
        "estimated_finish": row.estimated_finish if row.status == RUNNING else None,
        "integrations": row.integrations, "metadata": row.meta,
        "method": {"type": row.method_type, row.method_type: {"hyperparameters": method_hp}},
        "user_provided_suffix": row.suffix,
    }


def event_object(row: EventRow) -> dict:
    return {"object": "fine_tuning.job.event", "id": row.id, "created_at": row.created_at, "level": row.level,
            "message": row.message, "type": row.type, "data": row.data}


def checkpoint_object(row: CheckpointRow) -> dict:
    return {"object": "fine_tuning.job.checkpoint", "id": row.id, "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint, "fine_tuning_job_id": row.job_id,
            "step_number": row.step_number, "metrics": row.metrics}


def _resolve_model(ctx: JobsContext, name) -> str:
    """The recipe `model.name` for the model a client asked for, or 400."""
    if not isinstance(name, str) or not name:
        raise bad_request("Missing required parameter: 'model'", param="model")
    aliases = ctx.settings.models
    if name in aliases:
        return aliases[name]
    if name in model_catalogue.CATALOGUE or ctx.settings.allow_any_model:
        return name
    known = sorted({*aliases, *model_catalogue.CATALOGUE})
    raise bad_request(f"The model `{name}` does not exist or is not available for fine-tuning; available: "
                      f"{', '.join(known)}", param="model", code="model_not_found")


def _parent_job(ctx: JobsContext, name: str, kind: str, method: str) -> str:
    """A job's model ``ft:…`` continues that succeeded job's run (its adapter, with replay of its data): the base
    model the new job trains on, or 400 when there is no such model or it cannot be continued."""
    from ..lifecycle.continuation import check_parent
    from ..rundir import Run, is_run_dir
    with ctx.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.fine_tuned_model == name, JobRow.status == SUCCEEDED))
    if row is None or not row.run_dir or not is_run_dir(row.run_dir):
        raise bad_request(f"The model `{name}` does not exist: no succeeded fine-tuning job made it", param="model",
                          code="model_not_found")
    if kind != "supervised" or row.method_type != "supervised":
        raise bad_request(f"Continuing a fine-tuned model is supported for supervised jobs on supervised models; "
                          f"`{name}` is {row.method_type} and this job is {kind}", param="model",
                          code="model_not_supported")
    try:
        check_parent(row.run_dir, name, "replay", method=method)
    except TunesmithError as e:
        raise bad_request(f"The model `{name}` cannot be continued: {e}", param="model",
                          code="model_not_supported") from None
    return Run(row.run_dir).recipe.model.name


def _training_input(ctx: JobsContext, file_id, param: str, kind: str):
    if not isinstance(file_id, str) or not file_id:
        raise bad_request(f"Missing required parameter: '{param}'", param=param)
    try:
        row = get_file(ctx, file_id)
    except APIError:
        raise bad_request(f"Invalid {param}: no such file {file_id}", param=param,
                          code="file_not_found") from None
    if row.purpose != "fine-tune":
        raise bad_request(f"Invalid {param}: file {file_id} has purpose '{row.purpose}'; expected 'fine-tune'",
                          param=param, code="invalid_file_purpose")
    wants = FINE_TUNE_FORMATS.get(row.format or "")
    if wants != kind:
        shown = {"supervised": "chat 'messages' or 'prompt'+'completion' examples",
                 "dpo": "preference pairs ('input', 'preferred_output', 'non_preferred_output')"}[kind]
        raise bad_request(f"Invalid {param}: file {file_id} holds '{row.format}' examples; method '{kind}' "
                          f"needs {shown}", param=param, code="invalid_file_format")
    return row


def _depth(value, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _check_integrations(integrations):
    if integrations is None:
        return None
    if not isinstance(integrations, list) or len(integrations) > 16 or not _depth(integrations, MAX_DEPTH) \
            or any(not isinstance(i, dict) or not isinstance(i.get("type"), str) for i in integrations):
        raise bad_request(f"'integrations' must be a list of at most 16 objects with a string 'type' (nested at "
                          f"most {MAX_DEPTH - 1} levels)", param="integrations")
    return integrations


def _check_metadata(meta):
    if meta is None:
        return None
    if not isinstance(meta, dict) or len(meta) > 16:
        raise bad_request("'metadata' must be an object of at most 16 string pairs", param="metadata")
    for k, v in meta.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
            raise bad_request(f"Invalid metadata entry {k!r}: keys are strings of at most 64 characters and "
                              "values strings of at most 512", param=f"metadata.{k}")
    return dict(meta)


def _create(ctx: JobsContext, body: dict) -> dict:
    model_name = body.get("model")
    kind, requested, where = parse_method(body)
    template = ctx.settings.job_template()
    parent = isinstance(model_name, str) and model_name.startswith("ft:")
    if parent:
        recipe_model = _parent_job(ctx, model_name, kind, (template.get("method") or {}).get("name", "lora"))
    else:
        recipe_model = _resolve_model(ctx, model_name)
    hp = check_hyperparameters(requested, kind, where)
    train = _training_input(ctx, body.get("training_file"), "training_file", kind)
    valid = None
    if body.get("validation_file") is not None:
        valid = _training_input(ctx, body["validation_file"], "validation_file", kind)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise bad_request("Invalid 'suffix': expected 1 to 64 letters, digits, '.', '_' or '-'", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise bad_request(f"Invalid 'seed': expected an integer from 0 to {MAX_SEED}", param="seed")
    meta = _check_metadata(body.get("metadata"))
    integrations = _check_integrations(body.get("integrations"))
    job_id = new_id("ftjob-")
    resolved = resolve(template, kind, hp, train.examples or 0)
    recipe = job_recipe(template, job_id=job_id, model=recipe_model, kind=kind, data_format=train.format,
                        hp=resolved, seed=seed, where=where)
    if parent:       # the worker continues that job's run (lifecycle.continuation.prepare_from_run)
        recipe["model"]["from"] = model_name
    row = JobRow(id=job_id, created_at=now(), model=model_name, status=VALIDATING, training_file=train.id,
                 validation_file=valid.id if valid else None, suffix=suffix, seed=seed, method_type=kind,
                 hyperparameters=resolved, meta=meta, integrations=integrations,
                 organization_id=ctx.settings.organization, recipe=recipe, result_files=[])
    with ctx.db.session() as s:
        s.add(row)
        s.flush()
        add_event(s, job_id, f"Created fine-tuning job: {job_id}")
        add_event(s, job_id, f"Validating training file: {train.id}"
                  + (f" and validation file: {valid.id}" if valid else ""))
        if integrations:
            add_event(s, job_id, "Integrations are not supported by this server and are ignored: "
                      + ", ".join(sorted({str(i.get('type')) if isinstance(i, dict) else '?'
                                          for i in integrations})), level="warn")
    return job_object(row)


def _job(ctx: JobsContext, job_id: str) -> JobRow:
    with ctx.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
    if row is None:
        raise not_found(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return row


def _change(ctx: JobsContext, job_id: str, allowed: tuple[str, ...], action: str, to: str, message: str,
            **values) -> dict:
    """Move a job from one of ``allowed`` to ``to`` (atomically) or answer 400 naming its status."""
    _job(ctx, job_id)
    with ctx.db.session() as s:
        changed = transition(s, job_id, allowed, status=to, **values)
        if changed:
            add_event(s, job_id, message)
        # read in the same transaction: the answer is the state this request made, even when a
        # worker claims the job the moment it commits
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
    if not changed:
        done = {"cancel": "cancelled", "pause": "paused", "resume": "resumed"}[action]
        raise bad_request(f"Cannot {action} job {job_id}: its status is '{row.status}'; only "
                          f"{' or '.join(allowed)} jobs can be {done}", param="fine_tuning_job_id",
                          code="invalid_job_state")
    return job_object(row)


def jobs_router(ctx: JobsContext, *, dependencies=()) -> APIRouter:
    """The `/v1/fine_tuning/jobs` endpoints over ``ctx`` (errors in OpenAI's envelope)."""
    router = APIRouter(route_class=ErrorRoute, dependencies=list(dependencies), tags=["fine-tuning"],
                       responses=ERROR_RESPONSES)

    @router.post("/v1/fine_tuning/jobs", openapi_extra={"requestBody": CREATE_BODY})
    async def create_job(request: Request):
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise bad_request("The request body is not valid JSON") from None
        except RecursionError:
            raise bad_request("The request body is JSON nested too deeply") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object")
        return await run_in_threadpool(_create, ctx, body)

    @router.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
        wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                  if k.startswith("metadata[") and k.endswith("]")}
        with ctx.db.session() as s:
            after_seq = after_cursor(s, JobRow, after, "fine-tuning job")
            if not wanted:
                rows, more = page(s, JobRow, after_seq=after_seq, limit=limit)
            else:       # metadata filters: scan newest first in chunks, keep matches
                rows, more, cursor = [], False, after_seq
                while True:
                    chunk, has_more = page(s, JobRow, after_seq=cursor, limit=200)
                    for r in chunk:
                        if all((r.meta or {}).get(k) == v for k, v in wanted.items()):
                            if len(rows) == limit:
                                more = True
                                break
                            rows.append(r)
                    if more or not has_more:
                        break
                    cursor = chunk[-1].seq
        return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}

    @router.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str):
        return job_object(_job(ctx, job_id))

    @router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return _change(ctx, job_id, (VALIDATING, QUEUED, RUNNING, PAUSED), "cancel", CANCELLED,
                       "Fine-tuning job cancelled", finished_at=now())

    @router.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str):
        return _change(ctx, job_id, (QUEUED, RUNNING), "pause", PAUSED,
                       "Pause requested: training stops at its next checkpoint")

    @router.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str):
        return _change(ctx, job_id, (PAUSED,), "resume", QUEUED,
                       "Job resumed: waiting for a worker to continue from the last checkpoint")

    @router.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
        _job(ctx, job_id)
        with ctx.db.session() as s:
            after_seq = after_cursor(s, EventRow, after, "event", EventRow.job_id == job_id, scope=f" in job {job_id}")
            rows, more = page(s, EventRow, EventRow.job_id == job_id, after_seq=after_seq, limit=limit)
        return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}

    @router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=1000)):
        _job(ctx, job_id)
        with ctx.db.session() as s:
            after_seq = after_cursor(s, CheckpointRow, after, "checkpoint", CheckpointRow.job_id == job_id,
                                     scope=f" in job {job_id}")
            rows, more = page(s, CheckpointRow, CheckpointRow.job_id == job_id, after_seq=after_seq, limit=limit)
        data = [checkpoint_object(r) for r in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    return router
