"""The studio's job queue (`JobService`): nothing accepted is lost, owners take turns, and compatible jobs
share one U-Net batch.

* `submit` commits the job to SQLite (`data_dir/queue.sqlite3`, WAL) before it returns. A random seed is
  fixed there, so running the job again makes the same pictures.
* One worker thread owns the Engine and runs one job (or one group of compatible jobs) at a time.
* Crash safety: a job is `running` in the database while the worker has it. `start()` puts jobs a dead
  process left `running` back to `queued`, deletes temp files and pictures written but never indexed,
  and the re-run makes only the pictures the index lacks: each job ends once, with exactly its pictures.
* Fairness: owners take turns (round-robin, the least recently served owner first, ties by oldest job),
  and each owner's jobs run oldest first.
* Failures: whatever raises, each job the worker takes ends (done, failed or cancelled) or goes back to the
  queue, and the worker goes on. A failed job's `error` is one line (a user error's own words, or
  "internal error: ..." for a bug) and its traceback is logged with its id. A job is prepared (its run
  objects built) before it is marked running, so one that cannot be fails alone and never joins a group;
  a group whose run fails goes back to run one job at a time, so only the job that caused it fails.
* Engine tasks (`run_task`): short synchronous work such as upscaling a picture runs on the worker too,
  between jobs and before the next one, so the engine (and its network caches) has one user at a time.
  They are not persisted: the request waiting for one gets an error if the queue stops first.
"""

from __future__ import annotations

import base64
import io
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, TypeVar

from pydantic import ValidationError

from brushwork.engine.engine import Engine, GeneratedImage, Progress, Result
from brushwork.engine.engine import groupable as group_key
from brushwork.engine.passes import steps_run
from brushwork.errors import BrushworkError, Cancelled
from brushwork.recipe import MAX_SEED, Recipe, describe_validation_error
from brushwork.serve.gallery import Gallery, JobTable, claim_folder, job_from_row, now, open_database
from brushwork.serve.jobs import INTERNAL_ERROR, ImageRecord, Job, JobEvent, JobProgress, JobState

log = logging.getLogger(__name__)

DATABASE_NAME = "queue.sqlite3"
OUTPUTS_NAME = "outputs"
GROUP_SCAN = 64  # queued jobs looked at for a group: deeper ones would jump too far ahead
IDLE_POLL_SECONDS = 2.0  # an idle worker also looks for jobs another process (a CLI) added to the file


def compatible(a: Recipe, b: Recipe) -> bool:
    """Whether two recipes can share one U-Net batch (`Engine.generate_group`): both plain txt2img with one
    batch (no img2img, no hires fix), and the same model, VAE, size, sampler, steps and clip skip.

    The engine's own grouping key decides, so the queue never offers a group the engine would refuse.
    """
    key = group_key(a)
    return key is not None and key == group_key(b)


def fair_order(queued: list[tuple[str, str]], last_served: dict[str, int]) -> list[str]:
    """Job ids in the order the worker will take them.

    `queued` is (job id, owner), oldest first; `last_served` is each owner's last turn number. Owners take
    turns, least recently served first (never served before all, ties by oldest queued job), one job each.
    """
    per_owner: dict[str, list[str]] = {}
    for job_id, owner in queued:
        per_owner.setdefault(owner, []).append(job_id)
    rotation = sorted(per_owner, key=lambda owner: last_served.get(owner, -1))  # stable: ties keep age order
    order: list[str] = []
    for turn in range(max((len(jobs) for jobs in per_owner.values()), default=0)):
        order.extend(per_owner[owner][turn] for owner in rotation if turn < len(per_owner[owner]))
    return order


def one_line(error: BaseException) -> str:
    """A failed job's message: the user-facing text of a BrushworkError/ValidationError, on one line."""
    text = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
    return " ".join(text.split())[:500] or type(error).__name__


def failure_reason(error: BaseException) -> str:
    """A failed job's `error`: a user error's own words (BrushworkError, ValidationError); anything else is
    a bug, "internal error: <type>: <message>" (the API answers 500 for those, 422 for the rest)."""
    if isinstance(error, (BrushworkError, ValidationError)):
        return one_line(error)
    return " ".join(f"{INTERNAL_ERROR}: {type(error).__name__}: {error}".split())[:500]


def _log_failure(job_id: str, error: BaseException, when: str) -> None:
    """A failed job's full traceback, with its id: at ERROR for a bug, at INFO for a user error (expected,
    and already told to the user in the job's `error`)."""
    if isinstance(error, (BrushworkError, ValidationError)):
        log.info("job %s failed %s: %s", job_id, when, one_line(error), exc_info=error)
    else:
        log.error("job %s failed %s", job_id, when, exc_info=error)


class _StepCounter:
    """Turns the engine's per-pass step reports into steps of the whole job (all batches, all passes)."""

    def __init__(self, recipe: Recipe, credited_batches: int = 0):
        first = steps_run(recipe.steps, recipe.denoising_strength) if recipe.is_img2img else recipe.steps
        self.passes = [max(1, first)]
        if recipe.hires is not None:
            second = recipe.hires.steps or recipe.steps
            self.passes.append(max(1, steps_run(second, recipe.hires.denoising_strength)))
        self.per_batch = sum(self.passes)
        self.total = self.per_batch * recipe.batch_count
        self.credited = credited_batches * self.per_batch  # steps counted as done without work (re-runs)
        self._batch, self._pass, self._last = -1, 0, 0

    def update(self, batch: int, step: int, total: int) -> int:
        if batch != self._batch:
            self._batch, self._pass = batch, 0
        elif step <= self._last:  # the count restarted: the next pass (hires) began
            self._pass = min(self._pass + 1, len(self.passes) - 1)
        self._last = step
        # Scheduler timesteps (second-order samplers take two per step) scaled to the pass's planned steps.
        within = round(self.passes[self._pass] * step / max(total, 1))
        return min(self.total, batch * self.per_batch + sum(self.passes[: self._pass]) + within)


T = TypeVar("T")


@dataclass
class _Task:
    """Work for the worker's Engine that a request waits on (`JobQueue.run_task`)."""

    work: Callable[[Engine], Any]
    future: Future = field(default_factory=Future)


@dataclass
class _Prepared:
    """A queued job made ready to run, before it is marked running (`JobQueue._prepare`)."""

    job: Job
    steps: _StepCounter
    group: tuple | None  # what jobs must share to join its U-Net batch; None: it runs alone
    images: int


@dataclass
class _Run:
    """What the worker is doing now: one job, or a group sharing one U-Net batch (leader first)."""

    jobs: list[Job]
    seqs: dict[str, int]
    steps: _StepCounter
    progress: JobProgress = field(default_factory=JobProgress)
    started: float = field(default_factory=time.monotonic)
    last_preview: float = float("-inf")
    cancelled: set[str] = field(default_factory=set)
    skip: bool = False
    shutdown: bool = False  # stop() during a run: the jobs go back to the queue

    def should_stop(self) -> bool:
        return bool(self.cancelled) or self.skip or self.shutdown


class JobQueue:
    """SQLite-backed `JobService` with one worker thread that owns `engine`.

    `max_group_images`: most pictures one grouped U-Net batch may hold (1 turns grouping off; grouping
    also needs `engine.generate_group`). `preview_interval`: least seconds between progress previews.
    """

    def __init__(self, data_dir: str | Path, engine: Engine, *, max_group_images: int = 8, preview_interval: float = 0.5):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_path = self.data_dir / DATABASE_NAME
        self.engine = engine
        self.max_group_images = max(1, max_group_images)
        self.preview_interval = preview_interval
        # One lock for the database and the worker's live state; the condition wakes event streams.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._version = self._progress_version = 0
        self._db = open_database(self.database_path)
        self._jobs = JobTable(self._db, self._lock)
        self._images = Gallery(self._db, self._lock, self.data_dir / OUTPUTS_NAME)
        self._running: _Run | None = None
        self._last_served: dict[str, int] = {}
        self._turn = 0
        self._solo: set[str] = set()  # jobs of a group that failed: each runs alone to find the culprit
        self._unrecorded: dict[str, tuple[str, JobState, list[str]]] = {}  # failures the database refused
        self._tasks: deque[_Task] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._folder_lock: IO[str] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Claim the data folder, recover what a killed process left, and start the worker."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._folder_lock is None:
            self._folder_lock = claim_folder(self.data_dir)
        self._recover()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="brushwork-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the worker; a job it is running goes back to the queue (its finished pictures kept)."""
        with self._changed:
            self._stopping = True
            if self._running is not None:
                self._running.shutdown = True
            while self._tasks:
                self._tasks.popleft().future.set_exception(BrushworkError("the server is stopping; try again"))
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._folder_lock is not None and not (self._thread and self._thread.is_alive()):
            self._folder_lock.close()  # closing the file releases the lock
            self._folder_lock = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._db.close()

    def _recover(self) -> None:
        with self._changed:
            redo = self._jobs.requeue_running()
            if redo:
                log.warning("re-queueing %d job(s) left running by a stopped process", len(redo))
            self._images.clean_after_crash(redo)
            self._bump()

    # -- JobService -----------------------------------------------------------------------------------

    def submit(self, recipe: Recipe, owner: str) -> Job:
        """Validate, fix the seed, persist (committed) and enqueue."""
        owner = owner.strip()
        if not owner:
            raise BrushworkError("a job needs an owner (user or API key)")
        recipe = Recipe.model_validate(recipe.model_dump())  # a private, fully validated copy
        if recipe.seed == -1:
            # Fixed now, so a re-run after a crash makes the same pictures as the first run.
            recipe.seed = int.from_bytes(uuid.uuid4().bytes[:4], "big") % (MAX_SEED + 1)
        job = Job(id=uuid.uuid4().hex, owner=owner, recipe=recipe, state=JobState.queued, created=now())
        with self._changed:
            self._jobs.add(job)
            job.position = self._positions().get(job.id)
            self._bump()
        return job

    def run_task(self, work: Callable[[Engine], T]) -> T:
        """Run `work(engine)` on the worker between jobs and return what it returns (or raise what it raised).

        Blocks the caller until then, as A1111's extras wait for its GPU lock."""
        task = _Task(work)
        with self._changed:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                raise BrushworkError("the job queue is not running; try again")
            self._tasks.append(task)
            self._changed.notify_all()
        return task.future.result()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._jobs.row(job_id)
            return None if row is None else self._job(row)

    def list_jobs(self, *, owner: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs newest first, optionally one owner's."""
        with self._lock:
            rows = self._jobs.newest(owner, max(1, min(limit, 1000)))
            positions = self._positions()
            return [self._job(row, positions) for row in rows]

    def current(self) -> Job | None:
        """The running job (a group's first one still running); never one that has ended."""
        with self._lock:
            for member in self._running.jobs if self._running is not None else ():
                job = self.get(member.id)
                if job is not None and job.state is JobState.running:
                    return job
            return None

    def cancel(self, job_id: str) -> bool:
        with self._changed:
            if self._jobs.finish(job_id, JobState.cancelled, only_from=JobState.queued):
                self._bump()
                return True
            running = self._running
            row = self._jobs.row(job_id)
            if running is not None and job_id in running.seqs and row is not None and row["state"] == "running":
                running.cancelled.add(job_id)  # the worker stops before the next step
                self._bump()
                return True
            return False  # finished, or left running by a process that is not this one

    def interrupt(self) -> None:
        """Cancel the running job; jobs grouped with it go back to the queue and run again."""
        with self._lock:
            if self._running is not None:
                self.cancel(self._running.jobs[0].id)

    def skip(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.skip = True

    def gallery(self, *, page: int = 0, per_page: int = 50) -> list[ImageRecord]:
        return self._images.page(page, per_page)

    def image_path(self, image_id: str) -> Path | None:
        return self._images.path(image_id)

    def events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events until it finishes; first its current state. Ends early (without a final
        event) when nothing new happens to the job for `timeout` seconds; unknown jobs yield nothing."""
        seen, last, sent_preview, running = (-1, -1), None, None, False

        def news() -> bool:  # queued jobs' streams sleep through other jobs' steps
            return self._version != seen[0] or (running and self._progress_version != seen[1])

        while True:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                with self._changed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if not self._changed.wait_for(news, left):
                        return
                    seen = (self._version, self._progress_version)
                    job = self.get(job_id)
                if job is None:
                    return
                running = job.state is JobState.running
                event = _event(job, sent_preview)
                if last is None or event.model_dump(exclude={"preview_png_base64", "eta_seconds"}) != last:
                    break
            last = event.model_dump(exclude={"preview_png_base64", "eta_seconds"})
            sent_preview = job.progress.preview_png or sent_preview
            yield event
            if job.state.finished:
                return

    # -- reading --------------------------------------------------------------------------------------

    def _bump(self, *, progress: bool = False) -> None:
        """Something changed (a state, or only the running job's progress): wake the event streams
        (call with the lock held)."""
        if progress:
            self._progress_version += 1
        else:
            self._version += 1
        self._changed.notify_all()

    def _positions(self) -> dict[str, int]:
        rows = self._jobs.queued()
        order = fair_order([(row["id"], row["owner"]) for row in rows], self._last_served)
        return {job_id: place for place, job_id in enumerate(order)}

    def _job(self, row: sqlite3.Row, positions: dict[str, int] | None = None) -> Job:
        job = job_from_row(row, self._images.for_job(row["id"]))
        state = job.state
        if state is JobState.queued:
            job.position = (self._positions() if positions is None else positions).get(job.id)
        elif state is JobState.running and self._running is not None and job.id in self._running.seqs:
            job.progress = self._running.progress
        elif state is JobState.done:
            total = _StepCounter(job.recipe).total
            job.progress = JobProgress(step=total, total=total)
        return job

    # -- the worker -----------------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker thread: take the next job (or group) fairly, run it, repeat. It never dies, and
        whatever raises, each job it took ends (done, failed or cancelled) or goes back to the queue."""
        while True:
            try:
                with self._changed:
                    run = task = None
                    while not self._stopping:
                        if self._tasks:
                            task = self._tasks.popleft()
                            break
                        if (run := self._take_next()) is not None:
                            break
                        self._changed.wait(IDLE_POLL_SECONDS)
            except Exception:  # a broken database: wait and try again, rather than end the worker
                log.exception("job queue worker cannot read the queue")
                time.sleep(1.0)
                continue
            if task is not None:
                self._run_task(task)
                continue
            if run is None:
                return
            try:
                self._execute(run)
            except Exception as error:  # a bug or a broken database: fail what is left, keep the worker alive
                log.error("job queue worker error while running job(s) %s", ", ".join(run.seqs), exc_info=error)
                for job in run.jobs:
                    self._record_failure(job.id, failure_reason(error), only_from=JobState.running)
            finally:
                with self._changed:
                    self._running = None
                    self._bump()

    def _run_task(self, task: _Task) -> None:
        try:
            task.future.set_result(task.work(self.engine))
        except Exception as error:  # the waiting request gets it, as if it had run the work itself
            task.future.set_exception(error)

    def _take_next(self) -> _Run | None:
        """Mark the next job (plus compatible ones when grouping) running; call with the lock held.

        Each job is prepared before it is marked running: one that cannot be fails there, alone, and the
        next one is taken, so no job is left `running` for want of its run objects and no bad job joins
        a group. Marking is all or none, and nothing after it can fail."""
        self._retry_failures()
        rows = [row for row in self._jobs.queued() if row["id"] not in self._unrecorded]
        by_id = {row["id"]: row for row in rows}
        order = fair_order([(row["id"], row["owner"]) for row in rows], self._last_served)
        leader = None
        while order and leader is None:
            leader = self._prepared(order.pop(0))
        if leader is None:
            return None
        chosen, room = [leader], self.max_group_images - leader.images
        grouping = hasattr(self.engine, "generate_group") and leader.job.id not in self._solo
        if grouping and leader.group is not None and room > 0:
            for job_id in order[:GROUP_SCAN]:
                member = None if job_id in self._solo else self._prepared(job_id)
                if member is not None and member.group == leader.group and member.images <= room:
                    chosen.append(member)
                    room -= member.images
        jobs = [prepared.job for prepared in chosen]
        self._jobs.mark_running(job.id for job in jobs)
        for job in jobs:
            self._turn += 1
            self._last_served[job.owner] = self._turn
        seqs = {job.id: by_id[job.id]["seq"] for job in jobs}
        self._running = _Run(jobs, seqs, leader.steps, JobProgress(total=leader.steps.total))
        self._bump()
        return self._running

    def _prepared(self, job_id: str) -> _Prepared | None:
        """`_prepare` for a queued job, or None when it cannot be prepared: then it has failed."""
        row = self._jobs.row(job_id)  # a database error is the queue's, not the job's: the worker retries
        if row is None:
            return None
        try:
            return self._prepare(row)
        except Exception as error:
            _log_failure(job_id, error, "before it could run")
            self._record_failure(job_id, failure_reason(error), only_from=JobState.queued)
            return None

    def _prepare(self, row: sqlite3.Row) -> _Prepared:
        """A queued job's run objects: its Job, with the stored recipe validated again (another version
        may have stored it), its steps planned and its group key. Raises what makes the job unrunnable."""
        recipe = Recipe.model_validate_json(row["recipe"])
        job = job_from_row(row, []).model_copy(update={"recipe": recipe, "state": JobState.running})
        return _Prepared(job, _StepCounter(recipe), group_key(recipe), recipe.image_count)

    def _execute(self, run: _Run) -> None:
        if len(run.jobs) == 1:
            self._run_single(run, run.jobs[0])
            return
        jobs = run.jobs
        try:
            done = {job.id: self._images.recorded_indices(job.id) for job in jobs}
            # One list[Result] in the recipes' order, once the whole batch is decoded; Cancelled on stop.
            results = self.engine.generate_group(
                [job.recipe for job in jobs], on_progress=self._reporter(run), should_stop=run.should_stop
            )
            for job, result in zip(jobs, results, strict=True):
                for image in result.images:
                    if image.index not in done[job.id]:
                        self._save(run, job, image)
        except Cancelled:
            self._end_stopped(run, jobs)
        except Exception as error:
            # Which job caused it is unknown: each goes back to run alone, so the error lands on its own job
            # and the others make their pictures (a group makes them all at the end of its one batch; any
            # saved already are kept and not made again). A job cancelled meanwhile stays cancelled.
            log.warning("group of jobs %s failed; re-queueing them to run one by one", ", ".join(run.seqs),
                        exc_info=error)
            for job in jobs:
                if job.id in run.cancelled:
                    self._finish(run, job, JobState.cancelled)
                else:
                    self._solo.add(job.id)
                    self._requeue(job)
        else:
            for job in jobs:
                self._finish(run, job, JobState.done)

    def _run_single(self, run: _Run, job: Job) -> None:
        """Run one job batch by batch, skipping batches already indexed (re-runs) or skipped by the user.
        Whatever raises ends the job: cancelled or back in the queue after a stop, else failed."""
        result = Result(recipe=job.recipe)  # collects the engine's notes
        try:
            skipped = self._jobs.skipped(job.id)
            done = self._images.recorded_indices(job.id)
            recipe = job.recipe  # validated when the job was taken (`_prepare`), and this run's own
            size = recipe.batch_size
            finished = [batch for batch in range(recipe.batch_count)
                        if batch in skipped or done.issuperset(range(batch * size, (batch + 1) * size))]
            run.steps = _StepCounter(recipe, credited_batches=len(finished))
            with self._lock:
                run.progress = JobProgress(step=run.steps.credited, total=run.steps.total)
            remaining = [batch for batch in range(recipe.batch_count) if batch not in finished]
            while remaining:  # one engine call for all of them: the job's LoRAs are applied once
                try:
                    # closing: a failed save ends the generator (and restores the job's LoRA patches) at once.
                    with closing(self.engine.generate(recipe, batches=remaining, on_progress=self._reporter(run),
                                                      should_stop=run.should_stop, result=result)) as images:
                        for image in images:
                            if image.index not in done:
                                self._save(run, job, image)
                    remaining = []
                except Cancelled:
                    if run.cancelled or run.shutdown or not run.skip:
                        raise
                    run.skip = False  # A1111's skip: drop the batch being made, go on with the next
                    saved = self._images.recorded_indices(job.id)
                    current = next((batch for batch in remaining
                                    if not saved.issuperset(range(batch * size, (batch + 1) * size))), None)
                    if current is not None:
                        skipped.add(current)
                        self._jobs.set_skipped(job.id, skipped)
                    remaining = [batch for batch in remaining if current is not None and batch > current]
        except Cancelled:
            self._end_stopped(run, [job])
        except Exception as error:
            _log_failure(job.id, error, "while running")
            self._record_failure(job.id, failure_reason(error), only_from=JobState.running, notes=result.notes)
        else:
            self._finish(run, job, JobState.done, notes=result.notes)

    def _reporter(self, run: _Run) -> Callable[[Progress], None]:
        def report(progress: Progress) -> None:
            step = run.steps.update(progress.batch, progress.step, progress.total)
            preview = run.progress.preview_png
            moment = time.monotonic()
            if moment - run.last_preview >= self.preview_interval:
                run.last_preview = moment
                try:
                    buffer = io.BytesIO()
                    progress.preview().save(buffer, format="PNG")
                    preview = buffer.getvalue()
                except Exception:  # a preview is a nicety; never fail a job over one
                    log.debug("preview failed", exc_info=True)
            worked = step - run.steps.credited
            eta = (moment - run.started) * (run.steps.total - step) / worked if worked > 0 else None
            with self._changed:
                run.progress = JobProgress(step=step, total=run.steps.total, eta_seconds=eta, preview_png=preview)
                self._bump(progress=True)

        return report

    def _save(self, run: _Run, job: Job, image: GeneratedImage) -> None:
        self._images.save(job.id, run.seqs[job.id], job.recipe.prompt, image)
        with self._changed:
            self._bump()

    def _end_stopped(self, run: _Run, jobs: list[Job]) -> None:
        """After Cancelled: cancel what the user cancelled, requeue what was only stopped alongside it."""
        for job in jobs:
            complete = len(self._images.recorded_indices(job.id)) >= job.recipe.image_count
            if job.id in run.cancelled:
                self._finish(run, job, JobState.cancelled)
            elif complete or (run.skip and job is run.jobs[0] and not run.shutdown):
                self._finish(run, job, JobState.done)  # a skipped group batch ends the leader only
            else:
                self._requeue(job)

    def _finish(self, run: _Run, job: Job, state: JobState, *, error: str | None = None, notes: Iterable[str] = ()) -> None:
        with self._changed:
            if state is JobState.done and job.id in run.cancelled:
                state = JobState.cancelled  # cancelled after the last step: still honoured, pictures kept
            self._jobs.finish(job.id, state, error=error, notes=notes)
            self._solo.discard(job.id)
            self._bump()

    def _requeue(self, job: Job) -> None:
        with self._changed:
            self._jobs.requeue(job.id)
            self._bump()

    def _record_failure(self, job_id: str, error: str, *, only_from: JobState, notes: Iterable[str] = ()) -> None:
        """Mark a job failed (if it is still in `only_from`). When the database refuses, the failure is
        kept and written before the next job is taken, so no job stays `running` while the worker lives."""
        with self._changed:
            self._solo.discard(job_id)
            try:
                self._jobs.finish(job_id, JobState.failed, error=error, notes=notes, only_from=only_from)
            except Exception:
                log.exception("cannot record that job %s failed; trying again before the next job", job_id)
                self._unrecorded[job_id] = (error, only_from, list(notes))
            self._bump()

    def _retry_failures(self) -> None:
        """Write the failures the database refused before (call with the lock held); raises if it still does."""
        for job_id, (error, only_from, notes) in list(self._unrecorded.items()):
            self._jobs.finish(job_id, JobState.failed, error=error, notes=notes, only_from=only_from)
            del self._unrecorded[job_id]
            self._bump()


def _event(job: Job, sent_preview: bytes | None) -> JobEvent:
    """The event that shows `job` as it is now (a preview only when it is new to this stream)."""
    event = JobEvent(job_id=job.id, kind=job.state.value, state=job.state)
    if job.state is JobState.queued:
        event.position = job.position
    elif job.state is JobState.running:
        progress = job.progress
        event.kind, event.step, event.total = "progress", progress.step, progress.total
        event.eta_seconds = progress.eta_seconds
        if progress.preview_png is not None and progress.preview_png != sent_preview:
            event.preview_png_base64 = base64.b64encode(progress.preview_png).decode("ascii")
    else:
        event.images, event.error = job.images, job.error
    return event
