"""The server's training queue: fine-tuning runs (a TrainRequest on a dataset) queued, run one at a time,
followed step by step, cancelled, and never lost.

* `submit` checks what it can before anything runs (the dataset, the base, the output's name, the limits) and
  commits the job to SQLite (`data_dir/training.sqlite3`) before it returns.
* One worker thread of its own runs the oldest queued job: training takes minutes to hours, so it does not hold
  up the picture queue's worker; the two share the device.
* Each run trains in `data_dir/training/<job id>/` on a private copy of its base model (a trainer changes the
  weights it trains), then moves the finished file into the models folder (`Lora/`, `embeddings/` or
  `Stable-diffusion/`), where every other job can use it at once.
* A job the server was running when it stopped (or was killed) goes back to the queue and resumes from its last
  checkpoint: the trainers' state folders make the result the same as an uninterrupted run's. Its loss curve is
  saved with each checkpoint, so the resumed job's curve goes on from the checkpoint's step.
* Cancelling a running job stops it after its current step; its samples and curation report stay, its
  optimizer state is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError

from brushwork.errors import BrushworkError
from brushwork.models.single_file import sibling_yaml
from brushwork.models.store import FOLDERS, ModelStore
from brushwork.train.controlnet import CONDITIONING
from brushwork.recipe import describe_validation_error
from brushwork.serve.gallery import now
from brushwork.serve.jobs import JobState
from brushwork.serve.limits import NotFound
from brushwork.serve.queue import failure_reason, one_line
from brushwork.serve.settings import Limits
from brushwork.train.dataset import scan_folder
from brushwork.train.jobs import MODEL_KIND, SAFE_NAME, TrainRequest, fine_tune
from brushwork.train.loop import TrainingInterrupted
from brushwork.train.state import state_dir_for

log = logging.getLogger(__name__)

DATABASE_NAME = "training.sqlite3"
DATASETS_NAME = "datasets"  # data_dir/datasets/<name>/: the folders training may read
RUNS_NAME = "training"  # data_dir/training/<job id>/: each run's file, state, samples and report
MAX_CURVE_POINTS = 2000  # losses kept for the curve; longer runs keep every n-th

SCHEMA = """
CREATE TABLE IF NOT EXISTS training_jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    dataset TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    error TEXT,
    output TEXT,
    losses TEXT
);
CREATE INDEX IF NOT EXISTS training_jobs_state ON training_jobs (state, created);
"""


class TrainingSubmission(TrainRequest):
    """A TrainRequest and the dataset it trains on: a folder below the data folder's `datasets/`."""

    dataset: str = Field(min_length=1, max_length=255)


class TrainingJob(BaseModel):
    id: str
    owner: str
    dataset: str
    request: TrainRequest
    state: JobState
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    output: str | None = Field(None, description="The finished file, below the models folder.")
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    losses: list[float] = Field(default_factory=list, description="Loss per step (every n-th on long runs).")
    loss_every: int = Field(1, description="Steps between the points of `losses`.")
    samples: list[str] = Field(default_factory=list, description="Sample pictures so far, oldest first.")
    position: int | None = None


class _Live:
    """The running job's progress (kept in memory; the database has the rest, and the curve as of the job's
    last checkpoint). A resumed job starts from the curve its earlier runs saved."""

    def __init__(self, job: TrainingJob):
        self.total = job.total
        self.step = job.step
        self.first_step: int | None = None
        self.started = time.monotonic()
        self.losses: list[float] = list(job.losses)
        self.every = job.loss_every
        self.cancelled = False
        self.shutdown = False

    def add(self, step: int, loss: float) -> None:
        if self.first_step is None:
            # This run's first step follows the checkpoint it resumed from (step 1: none). A killed run may have
            # saved points past that checkpoint; this run computes those steps again, so they go.
            del self.losses[(step - 1) // self.every:]
            self.first_step, self.started = step, time.monotonic()
        self.step = step
        if step % self.every == 0:
            self.losses.append(loss)
        if len(self.losses) > MAX_CURVE_POINTS:
            self.losses, self.every = self.losses[1::2], self.every * 2

    def eta(self) -> float | None:
        done = self.step - (self.first_step or 0)
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total - self.step)

    def curve(self) -> str:
        """The `losses` column: point i is the loss of step (i + 1) * every."""
        return json.dumps({"losses": self.losses, "every": self.every, "step": self.step})


class TrainingQueue:
    """SQLite-backed queue of fine-tuning runs with one worker thread."""

    def __init__(self, data_dir: str | Path, store: ModelStore, limits: Limits):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.datasets_dir = self.data_dir / DATASETS_NAME
        self.runs_dir = self.data_dir / RUNS_NAME
        self.store = store
        self.limits = limits
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._db = sqlite3.connect(self.data_dir / DATABASE_NAME, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._running: tuple[str, _Live] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._changed:
            left = self._db.execute("UPDATE training_jobs SET state = 'queued' WHERE state = 'running'").rowcount
            if left:
                log.warning("re-queueing %d training job(s) a stopped server was running; they resume", left)
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="brushwork-training", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the worker; a running job saves its state and goes back to the queue."""
        with self._changed:
            self._stopping = True
            if self._running is not None:
                self._running[1].shutdown = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.stop()
        if self._thread is not None and self._thread.is_alive():
            log.warning("the training worker is still finishing a step; its database stays open")
            return
        with self._lock:
            self._db.close()

    # -- the service ----------------------------------------------------------------------------------

    def datasets(self) -> list[dict]:
        """The folders training may read, with how many captioned pictures each holds (a ControlNet's control
        pictures, in its conditioning/, are not counted)."""
        if not self.datasets_dir.is_dir():
            return []
        found = []
        for folder in sorted(p for p in self.datasets_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                pictures = len(scan_folder(folder, exclude=folder / CONDITIONING))
            except (BrushworkError, OSError, ValueError):  # an unreadable folder is listed, not fatal
                pictures = 0
            found.append({"name": folder.name, "pictures": pictures})
        return found

    def submit(self, fields: dict, owner: str) -> TrainingJob:
        """Validate (BrushworkError, worded for the caller), persist (committed) and enqueue."""
        try:
            submission = TrainingSubmission.model_validate(fields)
        except ValidationError as error:
            raise BrushworkError(describe_validation_error(error)) from None
        self._check(submission)
        request = TrainRequest.model_validate(submission.model_dump(exclude={"dataset"}))
        job_id = uuid.uuid4().hex
        with self._changed:
            clash = self._db.execute(
                "SELECT id, request FROM training_jobs WHERE state IN ('queued', 'running')").fetchall()
            for row in clash:
                other = TrainRequest.model_validate_json(row["request"])
                if (other.kind, other.output) == (request.kind, request.output):
                    raise BrushworkError(f"job {row['id']} is already training {request.kind.value} "
                                         f"{request.output!r}; pick another output name")
            self._db.execute(
                "INSERT INTO training_jobs (id, owner, dataset, request, state, created) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, owner, submission.dataset, request.model_dump_json(), JobState.queued.value,
                 now().isoformat()))
            self._bump()
        return self.get(job_id)

    def get(self, job_id: str) -> TrainingJob | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else self._job(row)

    def list_jobs(self, owner: str, limit: int = 50) -> list[TrainingJob]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM training_jobs WHERE owner = ? ORDER BY created DESC LIMIT ?",
                                    (owner, max(1, min(limit, 1000)))).fetchall()
            return [self._job(row) for row in rows]

    def cancel(self, job_id: str) -> bool:
        """A queued job ends now; a running one after its current step. False when it had already ended."""
        with self._changed:
            if self._finish(job_id, JobState.cancelled, only_from=JobState.queued):
                return True
            if self._running is not None and self._running[0] == job_id:
                self._running[1].cancelled = True
                return True
            return False

    def wait(self, version: int, timeout: float) -> int:
        """Block until anything changed after `version` (or `timeout`); the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._stopping, timeout)
            return self._version

    def sample_path(self, job_id: str, name: str) -> Path:
        job = self.get(job_id)
        if job is None or name not in job.samples:
            raise NotFound(f"no sample {name!r} of training job {job_id!r}")
        return self._samples_dir(job) / name

    # -- checks ---------------------------------------------------------------------------------------

    def _check(self, submission: TrainingSubmission) -> None:
        if self.store.models_dir is None:
            raise BrushworkError("training writes its file into the models folder: start the server with --models-dir")
        if not SAFE_NAME.match(submission.output):
            raise BrushworkError(f"output {submission.output!r}: use letters, digits, spaces and _ . , ( ) < > + - "
                                 "(no folders)")
        self.dataset_path(submission.dataset)
        if submission.steps > self.limits.max_train_steps:
            raise BrushworkError(f"steps {submission.steps} is over this server's limit of {self.limits.max_train_steps}")
        if submission.resolution > self.limits.max_train_resolution:
            raise BrushworkError(f"resolution {submission.resolution} is over this server's limit of "
                                 f"{self.limits.max_train_resolution}")
        if submission.class_images > self.limits.max_class_images:
            raise BrushworkError(f"class_images {submission.class_images} is over this server's limit of "
                                 f"{self.limits.max_class_images}")
        if submission.batch_size * submission.gradient_accumulation > self.limits.max_batch:
            raise BrushworkError(f"batch_size x gradient_accumulation is over this server's limit of "
                                 f"{self.limits.max_batch} pictures per step")
        self._base(submission.base)  # the base exists (ModelLoadError names the choices)
        final = self._final_path(submission)
        if final.exists():
            raise BrushworkError(f"{final.relative_to(self.store.models_dir)} already exists; pick another output name")

    def dataset_path(self, name: str) -> Path:
        """The dataset folder `name` names; never a path outside `datasets/`."""
        plain = not any(c in name for c in "/\\\x00") and not name.startswith(".")
        folder = (self.datasets_dir / name).resolve() if plain else None
        if folder is None or not folder.is_relative_to(self.datasets_dir) or not folder.is_dir():
            known = [d["name"] for d in self.datasets()]
            raise BrushworkError(f"dataset {name!r} not found in {self.datasets_dir} (available: "
                                 f"{', '.join(known) or 'none; put a folder of pictures with .txt captions there'})")
        return folder

    def _base(self, name: str | None) -> Path:
        return self.store.resolve("checkpoint", name) if name else self.store.default_checkpoint()

    def _final_path(self, request: TrainRequest) -> Path:
        return self.store.models_dir / FOLDERS[MODEL_KIND[request.kind]] / f"{request.output}.safetensors"

    # -- the worker -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                if self._stopping:
                    return
                row = self._db.execute("SELECT * FROM training_jobs WHERE state = 'queued' ORDER BY created LIMIT 1"
                                       ).fetchone()
                if row is None:
                    self._changed.wait(2.0)
                    continue
            try:
                self._take(row)
            except Exception as error:  # noqa: BLE001 - the worker outlives any one job
                log.error("training job %s could not be run", row["id"], exc_info=error)
                with self._changed:
                    self._running = None
                self._finish(row["id"], JobState.failed, error=failure_reason(error))

    def _take(self, row: sqlite3.Row) -> None:
        """Run one queued job to its end (or back to the queue, when the server is stopping)."""
        with self._changed:
            job = self._job(row)
            live = _Live(job)
            self._running = (job.id, live)
            self._db.execute("UPDATE training_jobs SET state = 'running', started = ? WHERE id = ?",
                             (now().isoformat(), job.id))
            self._bump()
        ending: dict = {}
        try:
            ending = {"state": JobState.done, "output": self._run(job, live)}
        except TrainingInterrupted:
            # Cancelled: it ends. Else the server is stopping: it resumes from its state folder next time.
            ending = {"state": JobState.cancelled} if live.cancelled else {}
        except Exception as error:  # noqa: BLE001 - any failure ends this job alone
            if isinstance(error, BrushworkError):
                log.info("training job %s failed: %s", job.id, one_line(error))
            else:
                log.error("training job %s failed", job.id, exc_info=error)
            ending = {"state": JobState.failed, "error": failure_reason(error)}
        ended = bool(ending)
        if ended:
            self._drop_optimizer_state(job)  # before the job is seen to end
            self._finish(job.id, ending.pop("state"), losses=live, **ending)
        with self._changed:
            if not ended:  # stopped after saving a checkpoint at its last step: the curve matches it
                self._db.execute("UPDATE training_jobs SET state = 'queued', losses = ? WHERE id = ?",
                                 (live.curve(), job.id))
            self._running = None
            self._bump()

    def _run(self, job: TrainingJob, live: _Live) -> str:
        request = job.request
        work = self.runs_dir / job.id
        output = work / f"{request.output}.safetensors"
        resume = state_dir_for(output).joinpath("run.json").is_file()
        private = ModelStore(self.store.models_dir, device=self.store.device, dtype=torch.float32,
                             allow_pickle=self.store.allow_pickle, allow_paths=True)
        private.hashes = self.store.hashes  # one cache object per file: two would race on its writes
        model = private.load(str(self._base(request.base)))

        def on_step(stage: str, done: int, loss: float) -> None:
            with self._changed:
                live.add(done, loss)
                if done % request.checkpoint_every == 0 or done == request.steps:
                    # The trainer checkpoints after this step (run_steps' rule); a killed server's job resumes
                    # from there and needs the curve up to it.
                    self._db.execute("UPDATE training_jobs SET losses = ? WHERE id = ?", (live.curve(), job.id))
                self._bump()

        fine_tune(request, model, private, self.dataset_path(job.dataset), output, resume=resume, progress=False,
                  should_stop=lambda: live.cancelled or live.shutdown, on_step=on_step)
        final = self._final_path(request)
        if final.exists():
            raise BrushworkError(f"{final.relative_to(self.store.models_dir)} appeared while training; the result "
                                 f"stays in {output}")
        final.parent.mkdir(parents=True, exist_ok=True)
        final.with_suffix(".yaml").unlink(missing_ok=True)  # an orphan would configure the new checkpoint
        config = sibling_yaml(output)  # a checkpoint's own latent scaling and schedule, when it has them
        if config is not None:
            shutil.move(config, final.with_suffix(".yaml"))
        partial = final.with_name(final.name + ".partial")
        shutil.copyfile(output, partial)
        os.replace(partial, final)  # the models folder never shows half a file
        output.unlink()
        return final.relative_to(self.store.models_dir).as_posix()

    def _drop_optimizer_state(self, job: TrainingJob) -> None:
        """An ended run keeps its samples and report; its checkpoints (optimizer state, weights) go."""
        folder = state_dir_for(self.runs_dir / job.id / f"{job.request.output}.safetensors")
        for path in folder.glob("*.pt"):
            path.unlink(missing_ok=True)

    # -- rows -----------------------------------------------------------------------------------------

    def _finish(self, job_id: str, state: JobState, *, only_from: JobState | None = None, error: str | None = None,
                output: str | None = None, losses: _Live | None = None) -> bool:
        with self._changed:
            # Without `losses` (a queued job cancelled, a run that could not start) the curve saved so far stays.
            query = ("UPDATE training_jobs SET state = ?, finished = ?, error = ?, output = ?, "
                     "losses = COALESCE(?, losses) WHERE id = ?")
            params = [state.value, now().isoformat(), error, output, losses.curve() if losses else None, job_id]
            if only_from is not None:
                query += " AND state = ?"
                params.append(only_from.value)
            changed = self._db.execute(query, params).rowcount > 0
            self._bump()
            return changed

    def _samples_dir(self, job: TrainingJob) -> Path:
        return state_dir_for(self.runs_dir / job.id / f"{job.request.output}.safetensors") / "samples"

    def _job(self, row: sqlite3.Row) -> TrainingJob:
        request = TrainRequest.model_validate_json(row["request"])
        job = TrainingJob(id=row["id"], owner=row["owner"], dataset=row["dataset"], request=request,
                          state=JobState(row["state"]), created=row["created"], started=row["started"],
                          finished=row["finished"], error=row["error"], output=row["output"], total=request.steps)
        if self._running is not None and self._running[0] == job.id:
            live = self._running[1]
            job.step, job.losses, job.loss_every, job.eta_seconds = live.step, list(live.losses), live.every, live.eta()
        elif row["losses"]:
            curve = json.loads(row["losses"])
            job.step, job.losses, job.loss_every = curve["step"], curve["losses"], curve["every"]
        job.loss = job.losses[-1] if job.losses else None
        folder = self._samples_dir(job)
        job.samples = sorted(p.name for p in folder.glob("step-*.png")) if folder.is_dir() else []
        if job.state is JobState.queued:
            queued = self._db.execute("SELECT COUNT(*) FROM training_jobs WHERE state = 'queued' AND created < ?",
                                      (row["created"],)).fetchone()[0]
            job.position = int(queued)
        return job

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

