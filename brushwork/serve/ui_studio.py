"""What every tab of the web UI shares: `Studio` (the app's services), error wording, the browser's id.

The tab modules (`ui_generate`, `ui_tabs`) and the page (`ui`) import this; it imports none of them, so
the UI's modules form no import cycle.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from brushwork.engine.hires import LATENT_UPSCALERS
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe, describe_validation_error
from brushwork.serve.auth import ANONYMOUS
from brushwork.serve.deps import Upscalers
from brushwork.serve.jobs import Job, JobService
from brushwork.serve.limits import admit
from brushwork.serve.settings import Settings
from brushwork.serve.training import TrainingQueue
from brushwork.serve.ui_forms import owner_of
from brushwork.styles import NO_STYLE, STYLES_NAME, PromptStyle, load_styles

# Nothing leaves the machine: Gradio reads this whenever it would report, and every Blocks says so too.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class Studio:
    """What the UI's handlers use: the app's services, as `create_app` put them on `app.state`."""

    jobs: JobService
    store: ModelStore
    settings: Settings
    upscalers: Upscalers
    training: TrainingQueue

    def checkpoints(self) -> list[str]:
        return [entry.name for entry in self.store.entries("checkpoint")]

    def loras(self) -> list[str]:
        """The names `<lora:name:weight>` takes: file names without extension, from Lora/ and LyCORIS/."""
        return list(dict.fromkeys(Path(entry.name).stem for entry in self.store.entries("lora")))

    def vaes(self) -> list[str]:
        return [entry.name for entry in self.store.entries("vae")]

    def controlnets(self) -> list[str]:
        """ControlNets and T2I-Adapters: files and diffusers folders in ControlNet/ (not its annotators/)."""
        return [entry.name for entry in self.store.entries("controlnet")]

    def image_upscalers(self) -> list[str]:
        return self.upscalers.names()

    def hires_upscalers(self) -> list[str]:
        return [*LATENT_UPSCALERS, *self.image_upscalers()]

    @property
    def styles_path(self) -> Path:
        return Path(self.settings.data_dir) / STYLES_NAME

    def styles(self) -> dict[str, PromptStyle]:
        """The data dir's styles.csv, read now (edits apply to the next job); BrushworkError if malformed."""
        return load_styles(self.styles_path)

    def style_names(self) -> list[str]:
        """The styles to pick from, in file order; an empty "None" row (A1111's "no style") is left out."""
        return [name for name, style in self.styles().items()
                if not (name == NO_STYLE and not style.prompt and not style.negative_prompt)]

    def owner(self, request: gr.Request | None, browser_id: str | None) -> str:
        return owner_of(getattr(request, "username", None), browser_id, ANONYMOUS)

    def submit(self, recipe: Recipe, owner: str) -> Job:
        """Queue a recipe after the checks every front end applies (limits, names, pictures)."""
        names = self.image_upscalers()
        return self.jobs.submit(admit(recipe, self.settings.limits, self.store, names), owner)

    def own_job(self, job_id: str | None, owner: str) -> Job | None:
        job = self.jobs.get(job_id) if job_id else None
        return job if job is not None and job.owner == owner else None


def describe(error: Exception) -> str:
    """The one-line message a user sees for a refused recipe or a failed action."""
    text = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
    return " ".join(text.split()) or type(error).__name__


def readable_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors become a readable gr.Error (a toast); anything else an "internal error" one, logged."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (BrushworkError, ValidationError) as error:
            raise gr.Error(describe(error), print_exception=False) from None
        except Exception as error:
            log.exception("web UI action %s failed", handler.__name__)
            raise gr.Error(f"internal error ({type(error).__name__}); see the server log", print_exception=False) from None

    return wrapper


def new_browser_id(current: str | None) -> str:
    """A random id kept in the browser's storage: the owner of its jobs when nobody signs in."""
    return current or secrets.token_hex(8)
