"""`/api/v1/jobs`: submit a Recipe, follow it (state, Server-Sent Events), cancel it, get its pictures.

A job is visible only to its owner (the authenticated user or API key); others get 404.
"""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any, Iterator

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from brushwork.errors import BrushworkError
from brushwork.recipe import Recipe
from brushwork.serve.api.sse import KEEPALIVE, KEEPALIVE_SECONDS, sse_message, sse_response
from brushwork.serve.api.views import ImageView, JobSummary, JobView, image_view, job_summary, job_view
from brushwork.serve.deps import ImageUpscalers, Jobs, ServerLimits, Shutdown, Store, User
from brushwork.serve.jobs import Job, JobEvent, JobService, JobState
from brushwork.serve.limits import NotFound, TooLarge, admit, image_data_url
from brushwork.serve.settings import Limits

router = APIRouter(tags=["jobs"])

IMAGE_FIELDS = ("init_image", "mask")

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Recipe"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["recipe"],
                    "properties": {
                        "recipe": {"type": "string", "description": "The Recipe as JSON."},
                        "init_image": {"type": "string", "format": "binary"},
                        "mask": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


class JobSubmitted(BaseModel):
    id: str
    state: JobState
    position: int | None = None


class CancelResult(BaseModel):
    id: str
    cancelled: bool
    state: JobState


@router.post("/jobs", status_code=202, response_model=JobSubmitted, openapi_extra=_SUBMIT_BODY)
async def submit_job(request: Request, jobs: Jobs, store: Store, limits: ServerLimits, user: User,
                     upscalers: ImageUpscalers) -> JobSubmitted:
    """Queue a Recipe. Send it as JSON (pictures as base64 or data URLs), or as a multipart form with a
    `recipe` JSON field and `init_image` / `mask` files. Answers 202 with the job's id and queue position."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        fields = await _read_form(request, limits)
    else:
        fields = _json_object(await request.body())
    recipe = _recipe(fields)
    recipe = await run_in_threadpool(admit, recipe, limits, store, upscalers.names())
    job = await run_in_threadpool(jobs.submit, recipe, user)
    return JobSubmitted(id=job.id, state=job.state, position=job.position)


@router.get("/jobs", response_model=list[JobSummary])
def list_jobs(jobs: Jobs, user: User, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[JobSummary]:
    """Your jobs, newest first."""
    return [job_summary(job) for job in jobs.list_jobs(owner=user, limit=limit)]


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(job_id: str, jobs: Jobs, user: User) -> JobView:
    return job_view(own_job(jobs, job_id, user))


@router.get("/jobs/{job_id}/images", response_model=list[ImageView])
def job_images(job_id: str, jobs: Jobs, user: User) -> list[ImageView]:
    return [image_view(record) for record in own_job(jobs, job_id, user).images]


@router.post("/jobs/{job_id}/cancel", response_model=CancelResult)
def cancel_job(job_id: str, jobs: Jobs, user: User) -> CancelResult:
    """Queued: removed. Running: stopped before its next step, finished pictures kept. Finished: 409."""
    job = own_job(jobs, job_id, user)
    if job.state.finished:
        raise HTTPException(409, f"job {job_id} already {job.state.value}; nothing to cancel")
    cancelled = jobs.cancel(job_id)
    current = jobs.get(job_id) or job
    return CancelResult(id=job_id, cancelled=cancelled, state=current.state)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JobEvent objects as Server-Sent Events"}},
)
def job_events(job_id: str, jobs: Jobs, user: User, shutdown: Shutdown) -> StreamingResponse:
    """Server-Sent Events until the job ends: `queued` (position), `progress` (step, total, eta_seconds,
    preview_png_base64), then one of `done` (images), `failed` (error) or `cancelled`. Each event's
    `data` is a JobEvent as JSON; `: keep-alive` comments fill quiet stretches."""
    own_job(jobs, job_id, user)
    return sse_response(event_stream(jobs, job_id, shutdown))


def own_job(jobs: JobService, job_id: str, user: str) -> Job:
    """The caller's job, or NotFound: other owners' jobs are not even said to exist."""
    job = jobs.get(job_id)
    if job is None or job.owner != user:
        raise NotFound(f"no job {job_id!r}")
    return job


def event_stream(jobs: JobService, job_id: str, shutdown: threading.Event) -> Iterator[str]:
    """JobService.events as SSE text; re-joined after each quiet stretch until the job has finished."""
    while not shutdown.is_set():
        for event in jobs.events(job_id, timeout=KEEPALIVE_SECONDS):
            yield format_event(event)
            if event.state.finished:
                return
        job = jobs.get(job_id)
        if job is None or job.state.finished:  # ended between two calls: its last event was sent above
            return
        yield KEEPALIVE


def format_event(event: JobEvent) -> str:
    data: dict[str, Any] = event.model_dump(mode="json", exclude={"images"})
    data["images"] = [image_view(record).model_dump(mode="json") for record in event.images]
    return sse_message(event.kind, data)


def _json_object(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestValidationError([{"loc": ("body",), "msg": f"not valid JSON: {error}", "type": "json_invalid"}]) from None


def _recipe(fields: Any) -> Recipe:
    """The Recipe the fields describe, or a 422 naming each bad field (as FastAPI does for a JSON body)."""
    if not isinstance(fields, dict):
        raise RequestValidationError([{"loc": ("body",), "msg": "expected a Recipe (a JSON object)", "type": "dict_type"}])
    try:
        return Recipe.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError(
            [{"loc": ("body", *item["loc"]), "msg": item["msg"], "type": item["type"]} for item in error.errors()]
        ) from None


async def _read_form(request: Request, limits: Limits) -> dict[str, Any]:
    """A multipart submission as Recipe fields, its files inlined as data URLs (`admit` decodes them)."""
    async with request.form(max_files=len(IMAGE_FIELDS), max_fields=8, max_part_size=limits.max_body_bytes) as form:
        unknown = sorted(set(form.keys()) - {"recipe", *IMAGE_FIELDS})
        if unknown:
            raise BrushworkError(f"unexpected form fields {unknown}; send `recipe` (JSON) and files init_image, mask")
        text = form.get("recipe")
        if not isinstance(text, str):
            raise RequestValidationError([{"loc": ("body", "recipe"), "msg": "the `recipe` field (JSON text) is required",
                                           "type": "missing"}])
        fields = _json_object(text.encode())
        if not isinstance(fields, dict):
            raise RequestValidationError([{"loc": ("body", "recipe"), "msg": "expected a JSON object", "type": "dict_type"}])
        for name in IMAGE_FIELDS:
            upload = form.get(name)
            if upload is None:
                continue
            if not isinstance(upload, UploadFile):
                raise BrushworkError(f"{name}: send the picture as a file in the form (or base64 inside `recipe`)")
            if fields.get(name) is not None:
                raise BrushworkError(f"{name}: given both as a file and inside `recipe`; send it once")
            if upload.size is not None and upload.size > limits.max_upload_bytes:
                raise TooLarge(f"{name} is over this server's upload limit of "
                               f"{limits.max_upload_bytes / 2**20:.1f} MiB (--max-upload-mb)")
            fields[name] = image_data_url(await upload.read(limits.max_upload_bytes + 1))
    return fields
