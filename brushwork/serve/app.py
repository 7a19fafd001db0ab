"""The FastAPI app: the native API (`/api/v1`), A1111's API (`/sdapi/v1`) and, mounted by the UI, the web page.

    app = create_app(Settings(models_dir=Path("models"), data_dir=Path("data")))
    uvicorn.run(app, host="127.0.0.1", port=7860)

`create_app` builds the services (ModelStore -> Engine -> JobQueue, and the TrainingQueue) from the settings,
unless a `JobService` is handed in; routes only ever talk to the services on `app.state`, through `brushwork.serve.deps`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from brushwork import __version__
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import describe_validation_error
from brushwork.serve.api import (
    controlnet, gallery, info, jobs as jobs_api, models, sdapi, sdapi_info, sdapi_system, train,
)
from brushwork.serve.auth import AuthMiddleware, build_authenticator
from brushwork.serve.deps import Upscalers, WebuiOptions, locked_runner
from brushwork.serve.jobs import JobService
from brushwork.serve.limits import BodyLimitMiddleware, NotFound, TooLarge
from brushwork.serve.settings import Settings

log = logging.getLogger(__name__)

# Synchronous waits (A1111's txt2img, event streams) each hold a worker thread while their job runs;
# anyio's default of 40 threads would make the 41st waiting client stall every other request.
REQUEST_THREADS = 256


def create_app(
    settings: Settings,
    jobs: JobService | None = None,
    *,
    store: ModelStore | None = None,
    ui: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """The server app. Without `jobs`, a JobQueue over `settings.data_dir` is built, started on startup
    and stopped on shutdown; a `jobs` handed in is the caller's to start and stop.

    `ui(app)` mounts the web UI: it runs after every API route is added, so mounting at `/` never hides
    `/api/v1` or `/sdapi/v1`.
    """
    store = store or build_store(settings)
    from brushwork.engine.engine import Engine

    queue = None
    if jobs is None:
        from brushwork.serve.queue import JobQueue

        queue = JobQueue(settings.data_dir, Engine(store), max_group_images=8 if settings.batching else 1)
        jobs = queue
    upscalers = Upscalers(store, queue.run_task if queue is not None else locked_runner(Engine(store)))
    from brushwork.serve.training import TrainingQueue

    training = TrainingQueue(settings.data_dir, store, settings.limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, REQUEST_THREADS)
        if queue is not None:
            await run_in_threadpool(queue.start)
        await run_in_threadpool(training.start)
        try:
            yield
        finally:
            app.state.shutdown.set()
            await run_in_threadpool(training.close)
            if queue is not None:
                await run_in_threadpool(queue.close)

    app = FastAPI(
        title="brushwork",
        version=__version__,
        description="An AI painting studio: the native job API under /api/v1 and AUTOMATIC1111's API under /sdapi/v1.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.jobs = jobs
    app.state.webui_options = WebuiOptions()
    app.state.upscalers = upscalers
    app.state.training = training
    app.state.shutdown = threading.Event()

    for router in (jobs_api.router, gallery.router, models.router, info.router, train.router):
        app.include_router(router, prefix="/api/v1")
    for router in (sdapi.router, sdapi_info.router, sdapi_system.router):
        app.include_router(router, prefix="/sdapi/v1")
    app.include_router(controlnet.router)  # the ControlNet extension's routes sit at the root: /controlnet/...
    add_error_handlers(app)

    # Added last = runs first: unauthenticated requests are refused before their body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(AuthMiddleware, authenticator=build_authenticator(settings))

    if ui is not None:
        ui(app)  # the web UI mounts itself here (at "/"), behind the same auth and body limit
    return app


def build_store(settings: Settings) -> ModelStore:
    """The server's ModelStore: names resolve only inside the models folder (never arbitrary paths)."""
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ModelStore(settings.models_dir, device=device, allow_pickle=settings.allow_pickle, allow_paths=False)


def status_for(error: BrushworkError) -> int:
    """413 for sizes, 404 for unknown ids; every other BrushworkError (a limit, a bad recipe, an unknown
    model, a picture that does not decode) is input the server cannot use: 422."""
    if isinstance(error, TooLarge):
        return 413
    if isinstance(error, NotFound):
        return 404
    return 422


def add_error_handlers(app: FastAPI) -> None:
    """Domain errors become 4xx with {"detail": "one line"}; nothing the caller sends can cause a 500."""

    @app.exception_handler(BrushworkError)
    async def brushwork_error(request: Request, error: BrushworkError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(error).split())}, status_code=status_for(error))

    @app.exception_handler(ValidationError)
    async def recipe_invalid(request: Request, error: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_error(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input back: a rejected 20 MB base64 string would return.
        errors = [{"loc": list(item.get("loc", ())), "msg": item.get("msg", ""), "type": item.get("type", "")}
                  for item in error.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the server log"}, status_code=500)
