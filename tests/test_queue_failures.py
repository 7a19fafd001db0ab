"""The queue's failure paths, each with an injected fault: every job the worker takes ends (never stuck
`running`), only the job that caused a failure fails (one line in its `error`, its traceback in the log
with its id), the other jobs make their pictures, and the worker goes on with the next jobs."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest
from pydantic import ValidationError

from brushwork.engine.engine import Engine
from brushwork.errors import BrushworkError, RecipeError
from brushwork.serve.gallery import Gallery, JobTable
from brushwork.serve.jobs import INTERNAL_ERROR, Job, JobState
from brushwork.serve.queue import JobQueue, failure_reason
from test_queue import WAIT, HookedEngine, finish, make_recipe, model, pngs  # noqa: F401 (fixtures)

BUG = RuntimeError("a bug\nover two lines")
BUG_TEXT = "internal error: RuntimeError: a bug over two lines"
USER = RecipeError("steps: this server allows at most 1")


@pytest.fixture(autouse=True)
def _log_everything(caplog):
    caplog.set_level(logging.INFO, logger="brushwork.serve.queue")


def settle(queue: JobQueue, jobs: list[Job]) -> list[Job]:
    """Every job's end; then nothing is left running and the worker is still alive."""
    ended = [finish(queue, job.id) for job in jobs]
    assert queue._thread.is_alive(), "the worker died"
    assert all(job.state.finished for job in queue.list_jobs(limit=1000))
    assert queue.current() is None
    return ended


def tracebacks(caplog, job_id: str) -> list[logging.LogRecord]:
    """Log records naming the job that carry a traceback."""
    return [record for record in caplog.records if job_id in record.getMessage() and record.exc_info]


def assert_made(queue: JobQueue, job: Job, count: int = 1) -> None:
    assert job.state is JobState.done and job.error is None and len(job.images) == count
    assert all(queue.image_path(image.id).is_file() for image in job.images)


def assert_failed_alone(caplog, job: Job, fault: Exception, text: str) -> None:
    """Failed with `text`, no pictures, and its traceback logged with its id (ERROR for a bug)."""
    assert job.state is JobState.failed and job.error == text and job.images == []
    assert job.error.startswith(INTERNAL_ERROR) == (not isinstance(fault, BrushworkError))  # the API's 500 vs 422
    records = [record for record in tracebacks(caplog, job.id) if record.exc_info[1] is fault]
    assert records, f"no traceback logged for job {job.id}"
    assert records[-1].levelno == (logging.INFO if isinstance(fault, BrushworkError) else logging.ERROR)


def test_failure_reason_keeps_the_apis_contract(make_recipe):
    assert failure_reason(BrushworkError("no model 'x'\nfound")) == "no model 'x' found"
    with pytest.raises(ValidationError) as invalid:
        make_recipe(steps=0)
    assert failure_reason(invalid.value).startswith("steps: ")
    assert failure_reason(KeyError("k")) == "internal error: KeyError: 'k'"
    assert failure_reason(BUG) == BUG_TEXT and len(failure_reason(RuntimeError("x" * 2000))) == 500


@pytest.mark.parametrize("fault, text", [(BUG, BUG_TEXT), (USER, str(USER))], ids=["bug", "user-error"])
def test_a_job_that_cannot_be_built_fails_alone_and_never_joins_the_group(tmp_path, make_recipe, monkeypatch,
                                                                         caplog, fault, text):
    engine = HookedEngine()
    queue = JobQueue(tmp_path, engine)
    jobs = [queue.submit(make_recipe(prompt=prompt), owner) for prompt, owner in
            (("a", "alice"), ("bad", "bob"), ("c", "carol"), ("d", "alice"))]
    bad = {jobs[1].id, jobs[3].id}  # one would join the leader's group, one would lead the next
    prepare = JobQueue._prepare

    def faulty(self, row):
        if row["id"] in bad:
            raise fault
        return prepare(self, row)

    monkeypatch.setattr(JobQueue, "_prepare", faulty)
    queue.start()
    a, b, c, d = settle(queue, jobs)
    queue.stop()
    assert engine.groups == [2]  # a and c; the bad ones never reached the engine
    for job in (b, d):
        assert_failed_alone(caplog, job, fault, text)
        assert job.started is None  # failed before it was ever marked running
    assert_made(queue, a)
    assert_made(queue, c)
    assert pngs(tmp_path) == {image.path for image in a.images + c.images}


@pytest.mark.parametrize("damage, reason", [
    (lambda text: text.replace('"steps":2', '"steps":"two"'), "steps: Input should be a valid integer"),
    (lambda text: text[:40], "recipe: Invalid JSON"),  # a torn write or a damaged file
    (lambda text: "[1, 2]", "recipe: Input should be an object"),
], ids=["another-version", "not-json", "not-an-object"])
def test_a_stored_recipe_that_no_longer_loads_fails_alone(tmp_path, make_recipe, damage, reason):
    queue = JobQueue(tmp_path, HookedEngine())
    jobs = [queue.submit(make_recipe(prompt=prompt), "alice") for prompt in ("old", "fine")]
    with sqlite3.connect(queue.database_path) as db:  # as another version could have stored it
        db.execute("UPDATE jobs SET recipe = ? WHERE id = ?", (damage(jobs[0].recipe.model_dump_json()), jobs[0].id))
    assert queue.get(jobs[0].id).id == jobs[0].id  # still listed and shown
    queue.start()
    old, fine = settle(queue, jobs)
    queue.stop()
    assert old.state is JobState.failed and old.error.startswith(reason), old.error
    assert old.started is None
    assert_made(queue, fine)


@pytest.mark.parametrize("fault, text", [(BUG, BUG_TEXT), (USER, str(USER))], ids=["bug", "user-error"])
def test_a_run_failure_in_a_group_of_three_fails_only_its_job(tmp_path, make_recipe, monkeypatch, caplog, fault, text):
    resolve = Engine.resolve

    def faulty(self, recipe, model):  # the engine's own per-recipe step: fails the group and the job alone
        if recipe.prompt == "faulty":
            raise fault
        return resolve(self, recipe, model)

    monkeypatch.setattr(Engine, "resolve", faulty)
    engine = HookedEngine()
    queue = JobQueue(tmp_path, engine)
    jobs = [queue.submit(make_recipe(prompt=prompt, batch_size=2 if prompt == "c" else 1), owner)
            for prompt, owner in (("a", "alice"), ("faulty", "bob"), ("c", "carol"))]
    queue.start()
    a, bad, c = settle(queue, jobs)
    queue.stop()
    assert engine.groups == [3]  # the group failed, then each job ran alone
    assert_failed_alone(caplog, bad, fault, text)
    assert_made(queue, a)
    assert_made(queue, c, count=2)
    group_logs = [record for record in caplog.records if record.levelno == logging.WARNING and record.exc_info]
    assert group_logs and all(job.id in group_logs[0].getMessage() for job in jobs)


def test_a_group_failure_no_single_job_causes_fails_none(tmp_path, make_recipe, monkeypatch):
    engine = HookedEngine()

    def too_big(recipes, **options):  # e.g. out of memory for the batch, fine for each job alone
        engine.groups.append(len(recipes))
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "generate_group", too_big)
    queue = JobQueue(tmp_path, engine)
    jobs = [queue.submit(make_recipe(prompt=prompt), owner) for prompt, owner in (("a", "alice"), ("b", "bob"))]
    queue.start()
    for job in settle(queue, jobs):
        assert_made(queue, job)
    queue.stop()
    assert engine.groups == [2]


def test_saving_one_jobs_picture_fails_that_job_only_and_keeps_the_others(tmp_path, make_recipe, monkeypatch, caplog):
    queue = JobQueue(tmp_path, HookedEngine())
    jobs = [queue.submit(make_recipe(prompt=prompt), owner) for prompt, owner in
            (("a", "alice"), ("full", "bob"), ("c", "carol"))]
    fault = OSError("No space left on device")
    save = Gallery.save

    def faulty(self, job_id, *args):
        if job_id == jobs[1].id:
            raise fault
        return save(self, job_id, *args)

    monkeypatch.setattr(Gallery, "save", faulty)
    queue.start()
    a, full, c = settle(queue, jobs)
    queue.stop()
    assert_failed_alone(caplog, full, fault, "internal error: OSError: No space left on device")
    assert_made(queue, a)  # saved in the group before the fault: kept, and not made again alone
    assert_made(queue, c)
    assert pngs(tmp_path) == {image.path for image in a.images + c.images}


def test_a_member_cancelled_before_its_group_fails_stays_cancelled(tmp_path, make_recipe):
    reached, released, fired = threading.Event(), threading.Event(), []

    def hook(progress):  # the group's first step: hold it, then fail the whole batch
        if not fired:
            fired.append(True)
            reached.set()
            assert released.wait(WAIT)
            raise RuntimeError("the device was lost")

    engine = HookedEngine(hook)
    queue = JobQueue(tmp_path, engine)
    jobs = [queue.submit(make_recipe(prompt=prompt), owner) for prompt, owner in
            (("a", "alice"), ("b", "bob"), ("c", "carol"))]
    queue.start()
    assert reached.wait(WAIT)
    assert queue.cancel(jobs[1].id)
    released.set()
    a, b, c = settle(queue, jobs)
    queue.stop()
    assert engine.groups == [3]
    assert b.state is JobState.cancelled and b.images == []
    assert_made(queue, a)
    assert_made(queue, c)


def test_an_error_escaping_the_run_fails_its_job_and_the_worker_goes_on(tmp_path, make_recipe, monkeypatch, caplog):
    queue = JobQueue(tmp_path, HookedEngine(), max_group_images=1)  # each job alone
    jobs = [queue.submit(make_recipe(prompt=prompt), "alice") for prompt in ("broken", "next")]
    run_single = JobQueue._run_single

    def faulty(self, run, job):  # a bug in the worker's own bookkeeping, outside any job's handler
        if job.id == jobs[0].id:
            raise BUG
        return run_single(self, run, job)

    monkeypatch.setattr(JobQueue, "_run_single", faulty)
    queue.start()
    broken, following = settle(queue, jobs)
    queue.stop()
    assert broken.state is JobState.failed and broken.error == BUG_TEXT and broken.started is not None
    assert tracebacks(caplog, jobs[0].id)[-1].exc_info[1] is BUG
    assert_made(queue, following)


def test_a_failure_the_database_refuses_once_is_written_later(tmp_path, make_recipe, monkeypatch):
    queue = JobQueue(tmp_path, HookedEngine())
    jobs = [queue.submit(make_recipe(prompt=prompt), "alice") for prompt in ("boom", "next")]
    refusals = []
    record = JobTable.finish

    def flaky(self, job_id, state, **fields):
        if state is JobState.failed and not refusals:
            refusals.append(job_id)
            raise sqlite3.OperationalError("database is locked")
        return record(self, job_id, state, **fields)

    monkeypatch.setattr(JobTable, "finish", flaky)
    queue.start()
    boom, following = settle(queue, jobs)
    queue.stop()
    assert refusals == [boom.id]  # refused once: written again before the next job ran
    assert boom.state is JobState.failed and boom.error == "internal error: RuntimeError: boom second line"
    assert boom.finished <= following.started
    assert_made(queue, following)
