"""The contract between the server's front ends (native API, /sdapi/v1, web UI) and its job queue.

Front ends submit Recipes and read job state, events and results through `JobService`; only the
queue's worker calls the Engine. Types here are plain data (pydantic), safe to return from routes.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Iterator, Protocol

from pydantic import BaseModel, Field

from brushwork.recipe import Recipe

INTERNAL_ERROR = "internal error"
"""How a failed job's `error` begins when a bug failed it, not the request; front ends answer those with
a 500 and every other failure (a user error, in its own words) with a 4xx."""


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


class JobProgress(BaseModel):
    step: int = 0  # steps done in the whole job (all batches, all passes)
    total: int = 0
    eta_seconds: float | None = None
    preview_png: bytes | None = Field(None, exclude=True)  # latest cheap preview, PNG bytes


class ImageRecord(BaseModel):
    """One finished picture, as the gallery indexes it."""

    id: str
    job_id: str
    path: str  # relative to the data folder's outputs
    seed: int
    width: int
    height: int
    infotext: str
    created: datetime


class Job(BaseModel):
    id: str
    owner: str  # the user or API key that submitted it; fairness interleaves owners
    recipe: Recipe
    state: JobState
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    position: int | None = None  # place in the queue while queued (0 = next)
    progress: JobProgress = Field(default_factory=JobProgress)
    error: str | None = None  # one line, for failed jobs: the user's error, or INTERNAL_ERROR + ": ..." for a bug
    images: list[ImageRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class JobEvent(BaseModel):
    """What an event stream (Server-Sent Events) carries: one of queued/progress/done/failed/cancelled."""

    job_id: str
    kind: str
    state: JobState
    position: int | None = None
    step: int | None = None
    total: int | None = None
    eta_seconds: float | None = None
    preview_png_base64: str | None = None
    images: list[ImageRecord] = Field(default_factory=list)
    error: str | None = None


class JobService(Protocol):
    def submit(self, recipe: Recipe, owner: str) -> Job:
        """Validate, persist (SQLite, committed) and enqueue; the returned id survives a crash."""

    def get(self, job_id: str) -> Job | None: ...

    def cancel(self, job_id: str) -> bool:
        """Queued: never runs, ends as cancelled (still listed). Running: stopped between steps,
        finished pictures kept. False if unknown or already finished."""

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """Blocking iterator of the job's events until it finishes. The first event is its current
        state; `timeout` ends the stream after that many seconds without news for this job."""

    def list_jobs(self, *, owner: str | None = None, limit: int = 50) -> list[Job]: ...

    def current(self) -> Job | None:
        """The running job, if any (A1111's /progress)."""

    def interrupt(self) -> None:
        """Stop the running job (A1111 'interrupt'): it ends as cancelled with the pictures made so far."""

    def skip(self) -> None:
        """Skip the running batch (A1111 'skip'): the job continues with its next batch."""

    def gallery(self, *, page: int = 0, per_page: int = 50) -> list[ImageRecord]:
        """Finished pictures, newest first."""

    def image_path(self, image_id: str) -> Path | None:
        """The PNG of a gallery image, never a path outside the outputs folder."""
