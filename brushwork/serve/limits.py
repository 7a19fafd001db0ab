"""Admission checks: what one request may ask for, and uploaded pictures decoded safely.

Every check here runs before a job is queued, so a request past a limit costs the server almost nothing:
sizes (request body, uploaded bytes) answer 413, values (pixels, steps, batch, names) answer 422, and each
message names the limit and how to get under it.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from brushwork.engine.hires import LATENT_UPSCALERS, hires_size
from brushwork.engine.sd_upscale import is_no_upscaler, upscaled_size
from brushwork.errors import BrushworkError
from brushwork.models.store import ModelStore
from brushwork.recipe import Recipe
from brushwork.serve.settings import Limits
from brushwork.upscale import find_face_restorer

# An unset width/height means the model's native size; no family we load is larger than this.
LARGEST_NATIVE_SIZE = 1024


class OverLimit(BrushworkError):
    """A value past a configured limit (answered 422)."""


class TooLarge(BrushworkError):
    """An upload or request body past the size limit (answered 413)."""


class NotFound(BrushworkError):
    """An id that names nothing the caller may see (answered 404)."""


PROCESSOR_RES_ALWAYS = 2048


def check_recipe(recipe: Recipe, limits: Limits, *, init_size: tuple[int, int] | None = None) -> None:
    """Raise OverLimit naming the first limit the recipe goes past; `init_size` is the init picture's size."""
    if recipe.image_count > limits.max_batch:
        raise OverLimit(f"batch_size x batch_count = {recipe.image_count} is over this server's limit of "
                        f"{limits.max_batch} pictures per job (--max-batch)")
    if recipe.sd_upscale is not None and recipe.sd_upscale.batch_size > limits.max_batch:
        raise OverLimit(f"sd_upscale.batch_size = {recipe.sd_upscale.batch_size} is over this server's limit of "
                        f"{limits.max_batch} pictures per pass (--max-batch)")
    # A preprocessor works at processor_res on the short side: the extension's slider goes to 2048, and so may
    # any server; past that, as far as the server's own side limit.
    largest_processor = max(PROCESSOR_RES_ALWAYS, limits.max_image_side)
    for index, unit in enumerate(recipe.control_units):
        if unit.processor_res > largest_processor:
            raise OverLimit(f"control_units.{index}.processor_res = {unit.processor_res} is over this server's limit "
                            f"of {largest_processor} pixels (--max-image-side)")
    for field, steps in (("steps", recipe.steps), ("hires.steps", recipe.hires.steps if recipe.hires else 0)):
        if steps > limits.max_steps:
            raise OverLimit(f"{field} = {steps} is over this server's limit of {limits.max_steps} steps (--max-steps)")

    width = recipe.width or (init_size[0] if init_size else LARGEST_NATIVE_SIZE)
    height = recipe.height or (init_size[1] if init_size else LARGEST_NATIVE_SIZE)
    guessed = not init_size and not (recipe.width and recipe.height)
    # The model's native size is known only once it loads; the largest one stands in (set width and height).
    sizes = [("width x height" + (" (unset: the model's native size, up to 1024)" if guessed else ""), width, height)]
    if recipe.outpaint is not None:
        sides = recipe.outpaint
        sizes.append(("the outpainted canvas", width + sides.left + sides.right, height + sides.top + sides.bottom))
    if recipe.hires is not None:
        target = hires_size(recipe.model_copy(update={"width": width, "height": height}))
        sizes.append(("the hires fix target", *target))
    if recipe.sd_upscale is not None and init_size is not None:
        sizes.append(("the SD upscale result", *upscaled_size(init_size, recipe.sd_upscale)))
    for what, w, h in sizes:
        if w * h > limits.max_pixels:
            raise OverLimit(f"{what} is {w}x{h} = {w * h:,} pixels, over this server's limit of "
                            f"{limits.max_pixels:,} (--max-pixels); ask for a smaller size")
        if max(w, h) > limits.max_image_side:
            raise OverLimit(f"{what} is {w}x{h}, over this server's limit of {limits.max_image_side} pixels "
                            "on a side (--max-image-side)")


def check_names(recipe: Recipe, store: ModelStore, upscalers: list[str]) -> None:
    """Raise (ModelLoadError/OverLimit, with the choices) unless every model and upscaler the recipe names exists.

    The store confines names to its models folder, so a path smuggled into `model` or `vae` fails here.
    """
    if recipe.model:
        store.resolve("checkpoint", recipe.model)
    if recipe.vae:
        store.resolve("vae", recipe.vae)
    if recipe.hires is not None and recipe.hires.upscaler not in LATENT_UPSCALERS:
        if recipe.hires.upscaler not in upscalers:
            choices = ", ".join([*LATENT_UPSCALERS, *upscalers])
            raise OverLimit(f"hires.upscaler: unknown upscaler {recipe.hires.upscaler!r}; choose one of: {choices}")
    for use in recipe.all_loras():
        store.resolve("lora", use.name)
    for unit in recipe.control_units:
        store.resolve("controlnet", unit.model)
    if recipe.restore_faces:
        find_face_restorer(recipe.restore_faces, store)
    if recipe.sd_upscale is not None and not is_no_upscaler(recipe.sd_upscale.upscaler):
        if recipe.sd_upscale.upscaler not in upscalers:
            choices = ", ".join(["None", *upscalers])
            raise OverLimit(f"sd_upscale.upscaler: unknown upscaler {recipe.sd_upscale.upscaler!r}; choose one of: {choices}")


def admit(recipe: Recipe, limits: Limits, store: ModelStore, upscalers: list[str]) -> Recipe:
    """The recipe as it may be queued: its pictures checked and inlined, its limits and names checked."""
    recipe, init_size = inline_images(recipe, limits)
    check_recipe(recipe, limits, init_size=init_size)
    check_names(recipe, store, upscalers)
    return recipe


def inline_images(recipe: Recipe, limits: Limits) -> tuple[Recipe, tuple[int, int] | None]:
    """The recipe with its init image and mask decoded (or refused) and held as data URLs; the init size."""
    update: dict[str, object] = {}
    init_size = None
    for field in ("init_image", "mask"):
        value = getattr(recipe, field)
        if value is not None:
            data, image = decode_base64_image(value, field, limits)
            update[field] = image_data_url(data)
            init_size = image.size if field == "init_image" else init_size
    units = []
    for index, unit in enumerate(recipe.control_units):  # a unit's picture, like the init image, only inline
        if unit.image is not None:
            data, _ = decode_base64_image(unit.image, f"control_units.{index}.image", limits)
            unit = unit.model_copy(update={"image": image_data_url(data)})
        units.append(unit)
    if units:
        update["control_units"] = units
    return recipe.model_copy(update=update), init_size


def decode_base64_image(value: str, what: str, limits: Limits) -> tuple[bytes, Image.Image]:
    """A base64 or data-URL picture from a JSON request: its bytes, and the picture decoded.

    Only inline data is accepted: a Recipe may also name a file, which must never reach the server's disk.
    """
    _, comma, payload = value.partition(",") if value.startswith("data:") else ("", "", value)
    payload = "".join(payload.split())  # some clients wrap base64 lines
    if math.floor(len(payload) * 3 / 4) > limits.max_upload_bytes + 3:
        raise TooLarge(f"{what} is over this server's upload limit of {_mib(limits.max_upload_bytes)} (--max-upload-mb)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BrushworkError(f"{what}: not valid base64 image data (send base64 or a data: URL)") from None
    return data, open_image(data, what, limits)


def open_image(data: bytes, what: str, limits: Limits) -> Image.Image:
    """Uploaded bytes decoded as a picture, or a BrushworkError; its size is checked before its pixels load."""
    if len(data) > limits.max_upload_bytes:
        raise TooLarge(f"{what} is {_mib(len(data))}, over this server's upload limit of "
                       f"{_mib(limits.max_upload_bytes)} (--max-upload-mb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if max(image.size) > limits.max_image_side:
                raise TooLarge(f"{what} is {image.width}x{image.height}, over this server's limit of "
                               f"{limits.max_image_side} pixels on a side")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise BrushworkError(f"{what}: not a readable image ({type(error).__name__})") from None
    return image


def image_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`: at once from Content-Length, else while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = (f"the request body is over this server's limit of {_mib(self.max_bytes)} "
                   "(--max-upload-mb sets the picture size it allows)")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = b'{"detail": "%s"}' % message.encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the route's body parsing, where FastAPI passes HTTPExceptions through.
                raise HTTPException(413, message)
            return incoming

        await self.app(scope, counting_receive, send)
