"""What routes receive: the services of one app, injected with `Annotated[..., Depends(...)]`.

`create_app` puts the services on `app.state`; these small functions hand them to routes, so a route
names what it needs in its signature and tests can build an app around any `JobService`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable

from fastapi import Depends, Request
from PIL import Image

from brushwork.models.store import ModelStore
from brushwork.serve.auth import ANONYMOUS
from brushwork.serve.jobs import JobService
from brushwork.serve.settings import Limits, Settings

if TYPE_CHECKING:
    from brushwork.engine.engine import Engine


@dataclass
class WebuiOptions:
    """The A1111 options `/sdapi/v1/options` can set, shared by the whole server as in A1111.

    `checkpoint` and `vae` are model names already checked against the models folder; None means the
    store's default checkpoint and the checkpoint's own VAE.
    """

    checkpoint: str | None = None
    vae: str | None = None
    clip_skip: int = 1
    other: dict[str, Any] = field(default_factory=dict)  # accepted and shown back; they change nothing
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_limits(request: Request) -> Limits:
    return request.app.state.settings.limits


def get_user(request: Request) -> str:
    """The caller, as the auth middleware identified them (the owner of the jobs they submit)."""
    return getattr(request.state, "user", ANONYMOUS)


def get_webui_options(request: Request) -> WebuiOptions:
    return request.app.state.webui_options


class Upscalers:
    """Picture upscalers (Pillow filters and the models folder's ESRGAN/ networks) and face restorers, on
    the Engine's network caches.

    `run(work)` runs `work(engine)` where the engine is used: on the job queue's worker, between jobs
    (`JobQueue.run_task`), so an upscale never runs beside a job. An app around another `JobService`
    passes a runner of its own.
    """

    def __init__(self, store: ModelStore, run: Callable[[Callable[[Engine], Any]], Any]):
        self.store = store
        self.run = run

    def names(self) -> list[str]:
        from brushwork.upscale import list_upscalers

        return list_upscalers(self.store)

    def upscale(self, image: Image.Image, name: str, scale: float | tuple[int, int]) -> Image.Image:
        return self.run(lambda engine: engine.upscale_image(image, name, scale))

    def restore_faces(self, image: Image.Image, name: str, visibility: float, codeformer_weight: float) -> Image.Image:
        return self.run(lambda engine: engine.restore_faces(image, name, visibility, codeformer_weight))


def locked_runner(engine: Engine) -> Callable[[Callable[[Engine], Any]], Any]:
    """A runner for `Upscalers` without a job queue: one caller at a time on `engine`."""
    lock = threading.Lock()

    def run(work: Callable[[Engine], Any]) -> Any:
        with lock:
            return work(engine)

    return run


def get_upscalers(request: Request) -> Upscalers:
    return request.app.state.upscalers


def get_shutdown(request: Request) -> threading.Event:
    """Set when the server is stopping: requests waiting on a job give up instead of holding it open."""
    return request.app.state.shutdown


Jobs = Annotated[JobService, Depends(get_jobs)]
Store = Annotated[ModelStore, Depends(get_store)]
ServerSettings = Annotated[Settings, Depends(get_settings)]
ServerLimits = Annotated[Limits, Depends(get_limits)]
User = Annotated[str, Depends(get_user)]
Options = Annotated[WebuiOptions, Depends(get_webui_options)]
ImageUpscalers = Annotated[Upscalers, Depends(get_upscalers)]
Shutdown = Annotated[threading.Event, Depends(get_shutdown)]
