"""Response models shared by several native routers: jobs and pictures as clients see them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from brushwork.recipe import Recipe
from brushwork.serve.jobs import ImageRecord, Job, JobState

API_PREFIX = "/api/v1"


class ImageView(BaseModel):
    """A finished picture; `url` serves its PNG (with the infotext and recipe in its text chunks)."""

    id: str
    job_id: str
    url: str
    seed: int
    width: int
    height: int
    infotext: str
    created: datetime


class ProgressView(BaseModel):
    step: int
    total: int
    eta_seconds: float | None = None


class JobSummary(BaseModel):
    id: str
    state: JobState
    prompt: str
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    position: int | None = None
    progress: ProgressView
    error: str | None = None
    images: list[ImageView]


class JobView(JobSummary):
    """A job in full: its resolved recipe (seed fixed at submission), notes and owner."""

    owner: str
    recipe: Recipe
    notes: list[str]


def image_view(record: ImageRecord) -> ImageView:
    return ImageView(
        id=record.id, job_id=record.job_id, url=f"{API_PREFIX}/images/{record.id}", seed=record.seed,
        width=record.width, height=record.height, infotext=record.infotext, created=record.created,
    )


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id, state=job.state, prompt=job.recipe.prompt, created=job.created, started=job.started,
        finished=job.finished, position=job.position, error=job.error,
        progress=ProgressView(step=job.progress.step, total=job.progress.total, eta_seconds=job.progress.eta_seconds),
        images=[image_view(record) for record in job.images],
    )


def job_view(job: Job) -> JobView:
    return JobView(**job_summary(job).model_dump(), owner=job.owner, recipe=job.recipe, notes=job.notes)
