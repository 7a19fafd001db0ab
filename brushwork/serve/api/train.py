"""`/api/v1/train`: fine-tuning as jobs: submit a TrainRequest on a dataset, follow it (loss curve, samples,
Server-Sent Events), cancel it. `/api/v1/datasets` lists the folders it may train on.

A training job is visible only to its owner; others get 404. The finished file lands in the models folder
(`Lora/`, `embeddings/`, `Stable-diffusion/`) under the request's `output` name, usable by the next job.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Iterator

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel

from brushwork.serve.api.sse import KEEPALIVE, KEEPALIVE_SECONDS, sse_message, sse_response
from brushwork.serve.deps import Shutdown, User
from brushwork.serve.jobs import JobState
from brushwork.serve.limits import NotFound
from brushwork.serve.training import TrainingJob, TrainingQueue, TrainingSubmission

router = APIRouter(tags=["training"])


def get_training(request: Request) -> TrainingQueue:
    return request.app.state.training


Training = Annotated[TrainingQueue, Depends(get_training)]


class Dataset(BaseModel):
    name: str
    pictures: int


class TrainingSubmitted(BaseModel):
    id: str
    state: JobState
    position: int | None = None


class TrainingCancelled(BaseModel):
    id: str
    cancelled: bool
    state: JobState


@router.get("/datasets", response_model=list[Dataset])
def list_datasets(training: Training) -> list[Dataset]:
    """The folders below the data folder's `datasets/` (pictures with same-named .txt captions, kohya repeat
    folders, metadata.jsonl), with how many pictures each holds."""
    return [Dataset(**entry) for entry in training.datasets()]


@router.post("/train", status_code=202, response_model=TrainingSubmitted)
async def submit_training(submission: TrainingSubmission, training: Training, user: User) -> TrainingSubmitted:
    """Queue a fine-tuning run: `kind` (lora, embedding, dreambooth), `dataset`, `output` (the file's name),
    and the run's settings. Answers 202 with the job's id; 422 names what is wrong before anything runs."""
    job = await run_in_threadpool(training.submit, submission.model_dump(mode="json"), user)
    return TrainingSubmitted(id=job.id, state=job.state, position=job.position)


@router.get("/train", response_model=list[TrainingJob])
def list_training(training: Training, user: User,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[TrainingJob]:
    """Your training jobs, newest first."""
    return training.list_jobs(user, limit)


@router.get("/train/{job_id}", response_model=TrainingJob)
def get_training_job(job_id: str, training: Training, user: User) -> TrainingJob:
    """State, step, the loss curve so far, the sample pictures' names, and where the file went."""
    return own_training(training, job_id, user)


@router.post("/train/{job_id}/cancel", response_model=TrainingCancelled)
def cancel_training(job_id: str, training: Training, user: User) -> TrainingCancelled:
    """Queued: removed. Running: stops after its current step (samples and report kept). Ended: 409."""
    job = own_training(training, job_id, user)
    if job.state.finished:
        raise HTTPException(409, f"training job {job_id} already {job.state.value}; nothing to cancel")
    cancelled = training.cancel(job_id)
    return TrainingCancelled(id=job_id, cancelled=cancelled, state=(training.get(job_id) or job).state)


@router.get("/train/{job_id}/samples/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def training_sample(job_id: str, name: str, training: Training, user: User) -> FileResponse:
    own_training(training, job_id, user)
    return FileResponse(training.sample_path(job_id, name), media_type="image/png")


@router.get("/train/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "TrainingJob snapshots"}})
def training_events(job_id: str, training: Training, user: User, shutdown: Shutdown) -> StreamingResponse:
    """Server-Sent Events until the job ends: `queued`, `progress` (step, total, loss, eta_seconds, the newest
    loss points and sample names), then `done`, `failed` or `cancelled` with the whole job. `: keep-alive`
    comments fill quiet stretches."""
    own_training(training, job_id, user)
    return sse_response(_stream(training, job_id, shutdown))


def own_training(training: TrainingQueue, job_id: str, user: str) -> TrainingJob:
    job = training.get(job_id)
    if job is None or job.owner != user:
        raise NotFound(f"no training job {job_id!r}")
    return job


def _stream(training: TrainingQueue, job_id: str, shutdown: threading.Event) -> Iterator[str]:
    version, sent_points, last = -1, 0, None
    while not shutdown.is_set():
        job = training.get(job_id)
        if job is None:
            return
        snapshot = (job.state, job.step, len(job.samples))
        if snapshot != last:
            last = snapshot
            kind = "progress" if job.state is JobState.running and job.step else job.state.value
            data: dict[str, Any] = job.model_dump(mode="json")
            if kind == "progress":  # only the points since the last event, from index `losses_from`
                start = sent_points if sent_points <= len(job.losses) else 0  # 0: a long run thinned its curve
                data["losses"], data["losses_from"], sent_points = job.losses[start:], start, len(job.losses)
            yield sse_message(kind, data)
            if job.state.finished:
                return
        new = training.wait(version, KEEPALIVE_SECONDS)
        if new == version:
            yield KEEPALIVE
        version = new
