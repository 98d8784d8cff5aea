"""`/v1/files`: multipart upload with a size limit and JSONL validation, list, get, delete (not while
an unfinished fine-tuning job uses the file), content."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import delete, select
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ..errors import TunesmithError
from ..serve.limits import BodyTooLarge, limited_request
from ..serve.schema import ERROR_RESPONSES
from .db import FileRow, after_cursor, file_in_use, jobs_using, new_id, now, page
from .errors import APIError, ErrorRoute, bad_request, conflict, not_found
from .settings import JobsContext

PURPOSES = ("fine-tune", "batch", "assistants", "vision", "user_data", "evals")
# data formats a fine-tuning job can train on, as tunesmith's data layer names them
FINE_TUNE_FORMATS = {"chat": "supervised", "prompt_completion": "supervised", "preference": "dpo"}
EXPECTED_FORMATS = ("chat 'messages', 'prompt'+'completion', or preference "
                    "'input'+'preferred_output'+'non_preferred_output'")
MAX_REPORTED = 5          # bad lines named in one error message
_MULTIPART_SLACK = 64 * 1024
# the upload form as OpenAI documents it (the route reads the multipart body itself, under its own limit)
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": list(PURPOSES)},
                   "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                   "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000}}}}}}
RAW_BYTES = {200: {"description": "The file's bytes",
                   "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def file_object(row: FileRow) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": row.status,
            "status_details": row.status_details, "expires_at": row.expires_at}


def validate_fine_tune_file(path: Path, filename: str) -> tuple[str, int]:
    """Check every line of an uploaded fine-tuning JSONL; returns (format, examples) or raises 400.

    Each line must be a JSON object in one of the formats tunesmith trains jobs on (chat
    messages, prompt/completion, DPO preference pairs), all lines in the same format.
    """
    from ..config import DataConfig
    from ..data.formats import parse_file
    spec = str(path)
    try:
        result = parse_file(DataConfig(train=spec), spec, sample=False)
    except TunesmithError as e:
        raise bad_request(f"Invalid file format for fine-tune: {str(e).replace(spec, filename)}",
                          param="file", code="invalid_file_format") from None
    except RecursionError:
        raise bad_request(f"Invalid file format for fine-tune in {filename}: a line holds JSON nested too "
                          "deeply", param="file", code="invalid_file_format") from None
    if result.errors:
        shown = "; ".join(f"line {e['line']}: {e['message']}" for e in result.errors[:MAX_REPORTED])
        more = len(result.errors) - MAX_REPORTED
        raise bad_request(
            f"Invalid file format for fine-tune in {filename}: every line must be a JSON object with "
            f"{EXPECTED_FORMATS}. {shown}" + (f" (and {more} more bad lines)" if more > 0 else ""),
            param="file", code="invalid_file_format")
    if not result.examples:
        raise bad_request(f"Invalid file format for fine-tune: {filename} has no examples; expected one "
                          "JSON object per line", param="file", code="invalid_file_format")
    if result.format not in FINE_TUNE_FORMATS:
        first = result.examples[0].line
        raise bad_request(f"Invalid file format for fine-tune in {filename}: line {first} is a "
                          f"'{result.format}' record; expected {EXPECTED_FORMATS}",
                          param="file", code="invalid_file_format")
    return result.format, len(result.examples)


def _store(ctx: JobsContext, upload: UploadFile, purpose: str, expires_at: int | None) -> dict:
    """Copy the upload into the file store (validated, hashed, renamed into place), add the row."""
    limit = ctx.settings.max_upload_bytes
    file_id = new_id("file-")
    suffix = ".jsonl" if purpose == "fine-tune" else \
        (re.sub(r"[^A-Za-z0-9.]", "", Path(upload.filename or "").suffix)[:16] or ".bin")
    final = ctx.files_dir / f"{file_id}{suffix}"
    fd, tmp = tempfile.mkstemp(dir=ctx.files_dir, prefix=".upload-", suffix=suffix)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            while block := upload.file.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise _too_large(size, limit)
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        filename = upload.filename or file_id
        fmt = examples = None
        if purpose == "fine-tune":
            fmt, examples = validate_fine_tune_file(Path(tmp), filename)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    row = FileRow(id=file_id, created_at=now(), bytes=size, filename=filename, purpose=purpose,
                  status="processed", status_details=None, expires_at=expires_at, path=str(final),
                  sha256=digest.hexdigest(), format=fmt, examples=examples)
    try:
        with ctx.db.session() as s:
            s.add(row)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return file_object(row)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"File is too large ({size} bytes or more); the limit is {limit} bytes.",
                    param="file", code="file_too_large", headers={"x-should-retry": "false"})


def _expiry(form, created: int) -> int | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'", param="expires_after.anchor")
    try:
        secs = int(seconds)
    except (TypeError, ValueError):
        raise bad_request("expires_after[seconds] must be an integer", param="expires_after.seconds") from None
    if not 3600 <= secs <= 2592000:
        raise bad_request("expires_after[seconds] must be between 3600 and 2592000",
                          param="expires_after.seconds")
    return created + secs


def get_file(ctx: JobsContext, file_id: str, param: str | None = None) -> FileRow:
    """The file row, or 404; an expired file is removed on sight (kept while an unfinished job uses it)."""
    with ctx.db.session() as s:
        row = s.scalar(select(FileRow).where(FileRow.id == file_id))
    if row is not None and row.expires_at is not None and row.expires_at <= now() and _remove(ctx, row):
        row = None
    if row is None:
        raise not_found(f"No such File object: {file_id}", param=param)
    return row


def _remove(ctx: JobsContext, row: FileRow) -> bool:
    """Delete the file's row and bytes unless an unfinished job uses it (one statement: a job that
    starts using it meanwhile either sees it or fails its file validation); returns whether it went."""
    with ctx.db.session() as s:
        gone = s.execute(delete(FileRow).where(FileRow.id == row.id, ~file_in_use(FileRow.id))).rowcount == 1
    if gone:
        Path(row.path).unlink(missing_ok=True)
    return gone


def _purge_expired(ctx: JobsContext) -> None:
    with ctx.db.session() as s:
        expired = list(s.scalars(select(FileRow).where(FileRow.expires_at.is_not(None),
                                                       FileRow.expires_at <= now())))
    for row in expired:
        _remove(ctx, row)


def files_router(ctx: JobsContext, *, dependencies=()) -> APIRouter:
    """The `/v1/files` endpoints over ``ctx`` (errors in OpenAI's envelope)."""
    router = APIRouter(route_class=ErrorRoute, dependencies=list(dependencies), tags=["files"],
                       responses=ERROR_RESPONSES)

    @router.post("/v1/files", openapi_extra={"requestBody": UPLOAD_BODY})
    async def create_file(request: Request):
        limit = ctx.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
            raise _too_large(int(declared), limit)
        request = limited_request(request, limit + _MULTIPART_SLACK)    # chunked bodies: counted as read
        try:
            form = await request.form(max_files=1, max_fields=16)
        except BodyTooLarge as e:
            raise _too_large(e.seen, limit) from None
        except (HTTPException, MultiPartException, AssertionError) as e:   # not multipart, or malformed
            raise bad_request(f"Expected a multipart/form-data body with 'file' and 'purpose' ({e})",
                              param="file") from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise bad_request("Missing required parameter: 'file' (a file part)", param="file")
            if purpose not in PURPOSES:
                raise bad_request(f"Invalid value for 'purpose': {purpose!r}; expected one of "
                                  f"{', '.join(PURPOSES)}", param="purpose")
            expires_at = _expiry(form, now())
            return await run_in_threadpool(_store, ctx, upload, purpose, expires_at)
        finally:
            await form.close()

    @router.get("/v1/files")
    def list_files(purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                   order: Literal["asc", "desc"] = "desc", after: str | None = None):
        _purge_expired(ctx)
        filters = [FileRow.purpose == purpose] if purpose else []
        with ctx.db.session() as s:
            after_seq = after_cursor(s, FileRow, after, "file")
            rows, more = page(s, FileRow, *filters, after_seq=after_seq, limit=limit,
                              descending=order == "desc")
        data = [file_object(r) for r in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @router.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str):
        return file_object(get_file(ctx, file_id))

    @router.delete("/v1/files/{file_id}")
    def delete_file(file_id: str):
        row = get_file(ctx, file_id)
        if not _remove(ctx, row):
            with ctx.db.session() as s:
                users = jobs_using(s, file_id)
            if users:
                raise conflict(f"File {file_id} cannot be deleted: the unfinished fine-tuning job"
                               f"{'s' if len(users) > 1 else ''} {', '.join(users[:5])} "
                               f"{'use' if len(users) > 1 else 'uses'} it. Cancel the job or wait for it to "
                               "finish, then delete the file.", param="file_id", code="file_in_use")
            raise not_found(f"No such File object: {file_id}")
        return {"id": file_id, "object": "file", "deleted": True}

    @router.get("/v1/files/{file_id}/content", response_class=FileResponse, responses=RAW_BYTES)
    def file_content(file_id: str):
        row = get_file(ctx, file_id)
        if not Path(row.path).is_file():
            raise APIError(500, f"The stored bytes of {file_id} are missing on the server.")
        return FileResponse(row.path, media_type="application/octet-stream")

    return router
