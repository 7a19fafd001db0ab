"""Engine tasks on the queue's worker (`JobQueue.run_task`): upscaling runs there, between jobs, on the
Engine's one network cache, and a waiting request always gets an answer."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from brushwork.errors import BrushworkError
from brushwork.serve.queue import JobQueue
from test_api import data_url, make_client, models_dir, png_bytes  # noqa: F401 (fixtures)
from test_queue import WAIT, Gate, HookedEngine, finish, make_recipe, model  # noqa: F401 (fixtures)


def test_a_task_runs_on_the_worker_thread_and_returns_its_value(tmp_path):
    queue = JobQueue(tmp_path, HookedEngine())
    queue.start()
    try:
        engine, thread = queue.run_task(lambda engine: (engine, threading.current_thread().name))
    finally:
        queue.stop()
    assert engine is queue.engine and thread == "brushwork-queue"


def test_a_task_raises_what_its_work_raised(tmp_path):
    queue = JobQueue(tmp_path, HookedEngine())
    queue.start()

    def broken(engine):
        raise BrushworkError("no such upscaler")

    try:
        with pytest.raises(BrushworkError, match="no such upscaler"):
            queue.run_task(broken)
        assert queue.run_task(lambda engine: 7) == 7  # the worker lives on
    finally:
        queue.stop()


def test_a_task_waits_for_the_running_job_and_goes_before_queued_ones(tmp_path, make_recipe):
    gate = Gate(batch=0, step=1)
    queue = JobQueue(tmp_path, HookedEngine(gate), max_group_images=1)
    running = queue.submit(make_recipe(), "alice")
    queue.start()
    gate.wait()  # the first job is mid-run
    waiting = queue.submit(make_recipe(prompt="a blue bird"), "alice")
    seen: list[tuple[str, str]] = []

    def states(engine) -> None:  # as the task runs
        seen.append((queue.get(running.id).state.value, queue.get(waiting.id).state.value))

    task = threading.Thread(target=queue.run_task, args=(states,))
    task.start()
    task.join(0.5)
    assert task.is_alive(), "the task ran beside the job"
    gate.released.set()
    task.join(WAIT)
    assert seen == [("done", "queued")]
    assert finish(queue, waiting.id).state.value == "done"
    queue.stop()


def test_stopping_fails_the_waiting_tasks_and_a_stopped_queue_refuses_new_ones(tmp_path, make_recipe):
    gate = Gate(batch=0, step=1)
    queue = JobQueue(tmp_path, HookedEngine(gate))
    queue.submit(make_recipe(), "alice")
    queue.start()
    gate.wait()
    errors: list[Exception] = []

    def wait_for_task() -> None:
        try:
            queue.run_task(lambda engine: None)
        except BrushworkError as error:
            errors.append(error)

    waiter = threading.Thread(target=wait_for_task)
    waiter.start()
    while not queue._tasks:  # the task is queued behind the held job
        waiter.join(0.01)
    stopper = threading.Thread(target=queue.stop)
    stopper.start()
    waiter.join(WAIT)
    gate.released.set()
    stopper.join(WAIT)
    assert [str(error) for error in errors] == ["the server is stopping; try again"]
    with pytest.raises(BrushworkError, match="not running"):
        queue.run_task(lambda engine: None)


def test_sdapi_extras_upscale_on_the_worker_with_the_engines_cache(models_dir, tmp_path):
    with make_client(models_dir, tmp_path / "data") as client:
        queue = client.app.state.jobs
        threads: list[str] = []
        upscale_image = queue.engine.upscale_image

        def recording(image: Image.Image, name: str, scale) -> Image.Image:
            threads.append(threading.current_thread().name)
            return upscale_image(image, name, scale)

        queue.engine.upscale_image = recording
        reply = client.post("/sdapi/v1/extra-single-image",
                            json={"image": data_url(png_bytes()), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert reply.status_code == 200, reply.text
    assert threads == ["brushwork-queue"]
