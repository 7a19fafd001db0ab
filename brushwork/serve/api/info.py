"""`/api/v1/info` (the server and its limits) and `/api/v1/png-info` (a picture's recipe read back)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from brushwork import __version__
from brushwork.errors import BrushworkError
from brushwork.infotext import parse_infotext, split_infotext
from brushwork.output import read_png_info
from brushwork.recipe import Recipe
from brushwork.serve.deps import ServerLimits, ServerSettings, User
from brushwork.serve.limits import TooLarge, open_image
from brushwork.serve.settings import Limits

router = APIRouter(tags=["info"])


class LimitsView(BaseModel):
    max_pixels: int
    max_steps: int
    max_batch: int
    max_upload_bytes: int
    max_image_side: int
    max_body_bytes: int


class ServerInfo(BaseModel):
    version: str
    user: str  # who the server takes you for (your jobs' owner)
    auth: bool
    limits: LimitsView


class PngInfo(BaseModel):
    """What a picture says about how it was made."""

    infotext: str | None  # A1111's "parameters" text
    recipe: Recipe | None  # from brushwork's own JSON when present (exact), else parsed from the infotext
    index: int | None  # which picture of that recipe this is (brushwork pictures only)
    parameters: dict[str, str]  # every `key: value` of the infotext, raw


@router.get("/info", response_model=ServerInfo)
def server_info(settings: ServerSettings, user: User) -> ServerInfo:
    limits = settings.limits
    return ServerInfo(
        version=__version__, user=user, auth=settings.auth_enabled,
        limits=LimitsView(max_pixels=limits.max_pixels, max_steps=limits.max_steps, max_batch=limits.max_batch,
                          max_upload_bytes=limits.max_upload_bytes, max_image_side=limits.max_image_side,
                          max_body_bytes=limits.max_body_bytes),
    )


@router.post("/png-info", response_model=PngInfo)
async def png_info(image: Annotated[UploadFile, File(description="A PNG (or an A1111 JPEG/WebP)")],
                   limits: ServerLimits) -> PngInfo:
    """Read a picture's infotext and recipe; 422 when it carries none (or is not a picture)."""
    if image.size is not None and image.size > limits.max_upload_bytes:
        raise TooLarge(f"image is over this server's upload limit of {limits.max_upload_bytes / 2**20:.1f} MiB")
    data = await image.read(limits.max_upload_bytes + 1)
    return await run_in_threadpool(read_picture_info, data, limits)


def read_picture_info(data: bytes, limits: Limits) -> PngInfo:
    open_image(data, "image", limits)  # refuses non-pictures and oversized ones before anything else
    infotext, recipe_json = read_info_from_bytes(data)
    if infotext is None and recipe_json is None:
        raise BrushworkError("the picture carries no generation parameters")
    parameters = split_infotext(infotext)[2] if infotext else {}
    if recipe_json is not None:
        try:
            stored = json.loads(recipe_json)
            return PngInfo(infotext=infotext, recipe=Recipe(**stored["recipe"]), index=stored.get("index"),
                           parameters=parameters)
        except (ValueError, KeyError, TypeError, ValidationError):
            pass  # another version's JSON: the infotext still says what it can
    if infotext is None:
        raise BrushworkError("the picture's brushwork recipe is unreadable and it has no infotext")
    recipe, _ = parse_infotext(infotext)
    return PngInfo(infotext=infotext, recipe=recipe, index=None, parameters=parameters)


def read_info_from_bytes(data: bytes) -> tuple[str | None, str | None]:
    """`read_png_info` for uploaded bytes (it reads files): (infotext, brushwork JSON)."""
    handle, name = tempfile.mkstemp(suffix=".img")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return read_png_info(name)
    finally:
        os.unlink(name)
