"""The job queue on a real tiny model: persistence, events, cancel/interrupt/skip, failures, fairness,
grouping, the gallery, and recovery after a stop and after a SIGKILL of the whole process."""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from brushwork.engine.engine import Engine
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.output import read_png_info
from brushwork.recipe import Hires, Recipe
from brushwork.serve.jobs import Job, JobState
from brushwork.serve.queue import JobQueue, compatible, fair_order
from tiny_models import write_tiny_checkpoint

WAIT = 30.0  # seconds any single wait may take on a slow, busy machine before the test fails


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    write_tiny_checkpoint("sd1", path)
    return path


@pytest.fixture
def make_recipe(model):
    def make(**fields) -> Recipe:
        options = {"prompt": "a red fox", "model": str(model), "width": 32, "height": 32, "steps": 2, "seed": 100}
        return Recipe(**{**options, **fields})

    return make


class HookedEngine(Engine):
    """The real engine, calling `hook(progress)` after every step (to hold a job mid-run), failing on the
    prompt "boom" (a bug, not a user error), and recording the size of each group it runs."""

    def __init__(self, hook=None):
        super().__init__(ModelStore(allow_paths=True))
        self.hook = hook
        self.groups: list[int] = []

    def _hooked(self, on_progress):
        def report(progress):
            if on_progress is not None:
                on_progress(progress)
            if self.hook is not None:
                self.hook(progress)

        return report

    def generate(self, recipe, *, on_progress=None, **options):
        if recipe.prompt == "boom":
            raise RuntimeError("boom\nsecond line")
        return super().generate(recipe, on_progress=self._hooked(on_progress), **options)

    def generate_group(self, recipes, *, on_progress=None, should_stop=None):
        self.groups.append(len(recipes))
        if any(recipe.prompt == "boom" for recipe in recipes):
            raise RuntimeError("boom")
        return super().generate_group(recipes, on_progress=self._hooked(on_progress), should_stop=should_stop)


class Gate:
    """Holds the worker after step `step` of batch `batch` (the `hit`-th time it gets there) until the
    test releases it."""

    def __init__(self, batch: int = 1, step: int = 1, hit: int = 1):
        self.batch, self.step, self.hits_left = batch, step, hit
        self.reached, self.released = threading.Event(), threading.Event()

    def __call__(self, progress) -> None:
        if (progress.batch, progress.step) == (self.batch, self.step) and not self.released.is_set():
            self.hits_left -= 1
            if self.hits_left == 0:
                self.reached.set()
                assert self.released.wait(WAIT)

    def wait(self) -> None:
        assert self.reached.wait(WAIT), "the worker never reached the gate"


def finish(queue: JobQueue, job_id: str) -> Job:
    for _ in queue.events(job_id, timeout=WAIT):
        pass
    job = queue.get(job_id)
    assert job is not None and job.state.finished, f"job still {job.state if job else 'missing'}"
    return job


def pngs(data_dir: Path) -> set[str]:
    return {path.name for path in (data_dir / "outputs").glob("*.png")}


def test_submit_commits_before_returning(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    job = queue.submit(make_recipe(seed=-1), "alice")
    with sqlite3.connect(queue.database_path) as other:  # a second connection sees it at once
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        state, owner, stored = other.execute("SELECT state, owner, recipe FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert (state, owner) == ("queued", "alice")
    # The seed is fixed at submit, so a re-run after a crash makes the same pictures.
    assert Recipe.model_validate_json(stored).seed == job.recipe.seed != -1
    assert queue.get(job.id).position == 0
    with pytest.raises(BrushworkError):
        queue.submit(make_recipe(), " ")


def test_job_makes_pngs_with_infotext(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    queue.start()
    job = finish(queue, queue.submit(make_recipe(batch_size=2, batch_count=2), "alice").id)
    queue.stop()
    assert job.state is JobState.done and job.progress.step == job.progress.total == 4
    assert [(image.seed, image.width, image.height) for image in job.images] == [(100 + i, 32, 32) for i in range(4)]
    for image in job.images:
        path = queue.image_path(image.id)
        assert path.parent == tmp_path / "outputs"
        infotext, recipe_json = read_png_info(path)
        assert infotext == image.infotext and f"Seed: {image.seed}, Size: 32x32" in infotext and recipe_json
    assert pngs(tmp_path) == {image.path for image in job.images}
    assert not list((tmp_path / "outputs").glob(".*"))


def test_events_from_queued_to_done(tmp_path, make_recipe):
    gate = Gate(batch=0, step=1, hit=2)  # holds the second job after its first step
    queue = JobQueue(tmp_path, HookedEngine(gate), max_group_images=1, preview_interval=0)
    first = queue.submit(make_recipe(), "alice")
    second = queue.submit(make_recipe(prompt="a blue bird"), "alice")
    stream = queue.events(second.id, timeout=WAIT)
    events = [next(stream)]
    assert (events[0].kind, events[0].position) == ("queued", 1)
    queue.start()
    for event in stream:
        events.append(event)
        if event.kind == "progress" and event.step:
            gate.released.set()  # seen mid-run: let it finish
    queue.stop()
    kinds = " ".join(event.kind for event in events)
    assert re.fullmatch(r"(queued )+(progress )+done", kinds), kinds
    progress = [event for event in events if event.kind == "progress"]
    assert [event.step for event in progress] == sorted(event.step for event in progress)
    assert progress[-1].total == 2
    preview = next(event.preview_png_base64 for event in progress if event.preview_png_base64)
    assert Image.open(io.BytesIO(base64.b64decode(preview))).format == "PNG"
    assert len(events[-1].images) == 1 and events[-1].state is JobState.done
    # A finished job: its final event, once; an unknown one: nothing.
    assert [event.kind for event in queue.events(first.id)] == ["done"]
    assert list(queue.events("no-such-job")) == []


def test_events_end_after_timeout_without_news(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    job = queue.submit(make_recipe(), "alice")  # never started: nothing will happen to it
    started = time.monotonic()
    assert [event.kind for event in queue.events(job.id, timeout=0.2)] == ["queued"]
    assert time.monotonic() - started < 5


def test_cancel_queued_job(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    kept = queue.submit(make_recipe(), "alice")
    dropped = queue.submit(make_recipe(), "alice")
    assert queue.cancel(dropped.id)
    assert not queue.cancel(dropped.id) and not queue.cancel("no-such-job")
    assert queue.get(kept.id).position == 0
    queue.start()
    assert finish(queue, kept.id).state is JobState.done
    queue.stop()
    cancelled = queue.get(dropped.id)
    assert cancelled.state is JobState.cancelled and cancelled.started is None and cancelled.images == []
    assert not queue.cancel(kept.id)  # finished


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_stopping_the_running_job_keeps_its_finished_pictures(tmp_path, make_recipe, how):
    gate = Gate(batch=1)
    queue = JobQueue(tmp_path, HookedEngine(gate))
    queue.start()
    job = queue.submit(make_recipe(batch_count=3), "alice")
    gate.wait()
    assert queue.current().id == job.id and queue.get(job.id).state is JobState.running
    if how == "cancel":
        assert queue.cancel(job.id)
    else:
        queue.interrupt()
    gate.released.set()
    job = finish(queue, job.id)
    queue.stop()
    assert job.state is JobState.cancelled and [image.seed for image in job.images] == [100]
    assert [image.id for image in queue.gallery()] == [job.images[0].id]
    assert queue.current() is None


def test_skip_drops_only_the_current_batch(tmp_path, make_recipe):
    gate = Gate(batch=1)
    queue = JobQueue(tmp_path, HookedEngine(gate))
    queue.start()
    job = queue.submit(make_recipe(batch_count=3), "alice")
    gate.wait()
    queue.skip()
    gate.released.set()
    job = finish(queue, job.id)
    queue.stop()
    assert job.state is JobState.done and [image.seed for image in job.images] == [100, 102]


def test_failures_are_one_line_and_the_worker_survives(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    queue.start()
    missing = finish(queue, queue.submit(make_recipe(model="no-such-model"), "alice").id)
    bug = finish(queue, queue.submit(make_recipe(prompt="boom"), "alice").id)
    good = finish(queue, queue.submit(make_recipe(), "alice").id)
    queue.stop()
    assert missing.state is JobState.failed and "no-such-model" in missing.error and "not found" in missing.error
    assert bug.state is JobState.failed and bug.error == "internal error: RuntimeError: boom second line"
    assert good.state is JobState.done and len(good.images) == 1


def test_fair_order_rotates_owners():
    queued = [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob")]
    assert fair_order(queued, {}) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    # Served most recently goes last; never served goes first.
    assert fair_order(queued, {"alice": 5, "bob": 3}) == ["c1", "b1", "a1", "b2", "a2", "a3"]


def test_owners_take_turns(tmp_path, make_recipe):
    engine = HookedEngine()
    queue = JobQueue(tmp_path, engine, max_group_images=1)  # 1: grouping off
    jobs = [queue.submit(make_recipe(prompt=f"alice {i}"), "alice") for i in range(4)]
    jobs.append(queue.submit(make_recipe(prompt="bob"), "bob"))
    assert queue.get(jobs[-1].id).position == 1  # not 4: bob's one job is not stuck behind alice's
    queue.start()
    finished = [finish(queue, job.id) for job in jobs]
    queue.stop()
    started = sorted(finished, key=lambda job: job.started)
    assert [job.recipe.prompt for job in started] == ["alice 0", "bob", "alice 1", "alice 2", "alice 3"]
    assert engine.groups == []
    assert [job.recipe.prompt for job in queue.list_jobs(owner="alice", limit=2)] == ["alice 3", "alice 2"]
    assert len(queue.list_jobs()) == 5


def test_gallery_pages_newest_first_and_paths_stay_inside(tmp_path, make_recipe):
    queue = JobQueue(tmp_path, HookedEngine())
    queue.start()
    jobs = [finish(queue, queue.submit(make_recipe(seed=seed), "alice").id) for seed in (1, 2, 3)]
    queue.stop()
    assert [image.seed for image in queue.gallery(per_page=2)] == [3, 2]
    assert [image.seed for image in queue.gallery(page=1, per_page=2)] == [1]
    assert queue.gallery(page=5, per_page=2) == []
    assert queue.image_path("no-such-image") is None
    with sqlite3.connect(queue.database_path) as db:  # a tampered index must not reach outside outputs
        for image, bad in zip(jobs, ("../queue.sqlite3", "/etc/passwd")):
            db.execute("UPDATE images SET path = ? WHERE id = ?", (bad, image.images[0].id))
    assert queue.image_path(jobs[0].images[0].id) is None and queue.image_path(jobs[1].images[0].id) is None
    assert queue.image_path(jobs[2].images[0].id) == tmp_path / "outputs" / jobs[2].images[0].path


def test_restart_finishes_an_interrupted_job_without_duplicates(tmp_path, make_recipe):
    gate = Gate(batch=1)
    first = JobQueue(tmp_path, HookedEngine(gate))
    first.start()
    job = first.submit(make_recipe(batch_count=3), "alice")
    gate.wait()  # picture 0 is saved and indexed
    first.stop(timeout=0)  # asks the worker to stop; it is held at the gate, so it cannot yet
    gate.released.set()
    first.stop()
    before = first.get(job.id)
    assert before.state is JobState.queued and len(before.images) == 1  # back in the queue, picture kept
    # What a killed process could leave besides: the job still `running`, a temp file mid-write, and a
    # picture written but not yet indexed.
    outputs = tmp_path / "outputs"
    with sqlite3.connect(first.database_path) as db:
        db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job.id,))
    (outputs / ".00001-01-101-a-red-fox.png.1234.tmp").write_bytes(b"half a png")
    (outputs / "00001-07-107-a-red-fox.png").write_bytes((outputs / before.images[0].path).read_bytes())
    second = JobQueue(tmp_path, HookedEngine())
    second.start()
    with pytest.raises(BrushworkError, match="already using"):
        JobQueue(tmp_path, HookedEngine()).start()
    after = finish(second, job.id)
    second.stop()
    assert after.state is JobState.done and [image.seed for image in after.images] == [100, 101, 102]
    assert after.images[0].id == before.images[0].id
    assert pngs(tmp_path) == {image.path for image in after.images}
    assert not list(outputs.glob(".*"))


def test_grouping_rule(make_recipe):
    base = make_recipe()
    assert compatible(base, make_recipe(prompt="other", negative_prompt="x", seed=5, cfg_scale=3, batch_size=3))
    for change in ({"steps": 3}, {"width": 40}, {"height": 40}, {"sampler": "Euler"}, {"model": "other"},
                   {"vae": "other"}, {"clip_skip": 2}, {"batch_count": 2}, {"hires": Hires()}):
        assert not compatible(base, make_recipe(**change)), change
    img2img = make_recipe(init_image="x.png")
    assert not compatible(img2img, img2img)


def test_compatible_jobs_share_one_batch(tmp_path, make_recipe):
    engine = HookedEngine()
    queue = JobQueue(tmp_path, engine, max_group_images=4)
    jobs = [
        queue.submit(make_recipe(prompt="a"), "alice"),
        queue.submit(make_recipe(prompt="b", batch_size=2), "alice"),
        queue.submit(make_recipe(prompt="c", steps=3), "bob"),  # other steps: runs alone
        queue.submit(make_recipe(prompt="d", batch_size=2), "alice"),  # no room left: next group
        queue.submit(make_recipe(prompt="e"), "carol"),
    ]
    queue.start()
    finished = [finish(queue, job.id) for job in jobs]
    queue.stop()
    # Fair order a, c, e, b, d; the group led by a takes e and b (4 pictures), then c alone, then d alone.
    assert engine.groups == [3]
    assert [len(job.images) for job in finished] == [1, 2, 1, 2, 1] and all(job.state is JobState.done for job in finished)


def test_grouping_survives_a_cancelled_member_and_a_failing_one(tmp_path, make_recipe):
    gate = Gate(batch=0)
    engine = HookedEngine(gate)
    queue = JobQueue(tmp_path, engine)
    jobs = [queue.submit(make_recipe(prompt=prompt), owner) for prompt, owner in
            (("a", "alice"), ("b", "bob"), ("c", "carol"))]
    queue.start()
    gate.wait()
    assert queue.cancel(jobs[1].id)  # cancels b only; a and c go back to the queue
    gate.released.set()
    finished = [finish(queue, job.id) for job in jobs]
    assert [job.state for job in finished] == [JobState.done, JobState.cancelled, JobState.done]
    assert engine.groups == [3, 2]
    # A group that fails is re-run one job at a time, so the error lands on its own job.
    queue.stop()
    boom, fine = queue.submit(make_recipe(prompt="boom"), "alice"), queue.submit(make_recipe(prompt="f"), "bob")
    queue.start()
    boom, fine = finish(queue, boom.id), finish(queue, fine.id)
    queue.stop()
    assert engine.groups == [3, 2, 2]
    assert boom.state is JobState.failed and boom.error == "internal error: RuntimeError: boom second line"
    assert fine.state is JobState.done and len(fine.images) == 1


def serve_until_idle(data_dir: str) -> None:
    """A worker process: the queue on `data_dir`, pausing after each step (so it can be killed mid-job),
    until no job is left."""
    queue = JobQueue(data_dir, HookedEngine(hook=lambda progress: time.sleep(0.1)))
    queue.start()
    while any(not job.state.finished for job in queue.list_jobs(limit=1000)):
        time.sleep(0.05)
    queue.stop()


def test_sigkill_mid_job_loses_and_duplicates_nothing(tmp_path, make_recipe):
    # Forked, not spawned: a fresh interpreter would spend most of the test importing torch. Each child is
    # still a process of its own, and the second one knows only what the first left on disk.
    processes = multiprocessing.get_context("fork")
    data = tmp_path / "data"
    submitter = JobQueue(data, HookedEngine())  # never started: submits only, then reads
    jobs = [submitter.submit(make_recipe(prompt=f"job {i}", seed=10 * i, batch_count=3, steps=3), owner)
            for i, owner in enumerate(("alice", "bob", "alice"))]
    child = processes.Process(target=serve_until_idle, args=(str(data),))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [submitter.get(job.id) for job in jobs]
            done = [job for job in states if job.state is JobState.done]
            partial = [job for job in states if job.state is JobState.running and 1 <= len(job.images) < 3]
            if done and partial:
                break
            assert child.is_alive(), "the worker process ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no job was caught half-done")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.join(WAIT)
    assert child.exitcode == -signal.SIGKILL
    snapshot = {job.id: submitter.get(job.id) for job in jobs}
    (data / "outputs" / f".{partial[0].images[0].path}.abcdef.tmp").write_bytes(b"\x89PNG half")  # a save cut short

    second = processes.Process(target=serve_until_idle, args=(str(data),))
    second.start()
    second.join(120)
    assert second.exitcode == 0

    for i, job in enumerate(jobs):
        before, after = snapshot[job.id], submitter.get(job.id)
        assert after.state is JobState.done
        assert [(image.seed, image.width) for image in after.images] == [(10 * i + k, 32) for k in range(3)]
        # Pictures saved before the kill are kept as they were; a job done before the kill did not run again.
        assert [image.id for image in before.images] == [image.id for image in after.images[: len(before.images)]]
        if before.state is JobState.done:
            assert after.finished == before.finished
        for image in after.images:
            with Image.open(submitter.image_path(image.id)) as picture:
                picture.load()
            assert read_png_info(submitter.image_path(image.id))[0] == image.infotext
    assert pngs(data) == {image.path for job in jobs for image in submitter.get(job.id).images}
    assert len(pngs(data)) == 9 and not list((data / "outputs").glob(".*"))
    # The job cut in two has exactly the pictures one uninterrupted run makes.
    cut = submitter.get(partial[0].id)
    expected = Engine(ModelStore(allow_paths=True)).run(cut.recipe).images
    for image, reference in zip(cut.images, expected, strict=True):
        with Image.open(submitter.image_path(image.id)) as picture:
            assert picture.tobytes() == reference.image.tobytes()
