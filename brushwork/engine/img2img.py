"""Stage 3 for img2img, inpainting and outpainting: the source picture and mask at working size,
and how each result goes back into the original (A1111 semantics, in pixels; no tensors here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

from brushwork.images import load_image, load_mask
from brushwork.recipe import Outpaint, Recipe


@dataclass
class Source:
    """What the denoiser starts from, and how to return its result to the user's picture."""

    image: Image.Image  # RGB at the working size: what is encoded into latents
    mask: Image.Image | None = None  # L at the working size, blurred; white = repaint
    original: Image.Image | None = None  # the picture results are composited into
    overlay_mask: Image.Image | None = None  # L at the original's size: where the result shows through
    crop: tuple[int, int, int, int] | None = None  # "only masked": where the working picture sits
    notes: list[str] = field(default_factory=list)

    def finish(self, result: Image.Image) -> Image.Image:
        """Put a generated picture back: paste an 'only masked' crop, keep unmasked pixels original."""
        if self.original is None or self.overlay_mask is None:
            return result
        if self.crop is not None:
            left, top, right, bottom = self.crop
            canvas = self.original.copy()
            canvas.paste(result.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
            result = canvas
        return Image.composite(result, self.original, self.overlay_mask)


def working_size(recipe: Recipe, native: int) -> tuple[int, int]:
    """img2img paints at the asked size, else at the init picture's size (down to a multiple of 8)."""
    if recipe.width and recipe.height:
        return recipe.width, recipe.height
    image = load_image(recipe.init_image, what="init_image")
    width = recipe.width or max(8, image.width // 8 * 8)
    height = recipe.height or max(8, image.height // 8 * 8)
    return width, height


def prepare_source(recipe: Recipe, width: int, height: int) -> Source:
    image = load_image(recipe.init_image, what="init_image").convert("RGB")
    if recipe.outpaint is not None:
        return _outpaint_source(recipe, resize_image(image, width, height, recipe.resize_mode), recipe.outpaint)
    if recipe.mask is None:
        return Source(image=resize_image(image, width, height, recipe.resize_mode))

    mask, note = load_mask(recipe.mask, size=image.size)
    if recipe.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    if recipe.inpaint_full_res:
        source = _only_masked_source(recipe, image, mask, width, height)
    else:
        image = resize_image(image, width, height, recipe.resize_mode)
        blurred = blur(resize_image(mask, width, height, recipe.resize_mode), recipe.mask_blur)
        source = Source(image=image, mask=blurred, original=image, overlay_mask=blurred)
    if note:
        source.notes.append(note)
    if recipe.inpainting_fill == "fill":
        source.image = fill_masked(source.image, source.mask)
    return source


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A1111's resize modes: stretch; cover then centre-crop; fit then stretch the edges outwards."""
    if image.size == (width, height):
        return image
    if mode == "just resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    cover = mode == "crop and resize"
    scale = (max if cover else min)(width / image.width, height / image.height)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    if cover:
        left, top = (fitted.width - width) // 2, (fitted.height - height) // 2
        return fitted.crop((left, top, left + width, top + height))
    pad_x, pad_y = width - fitted.width, height - fitted.height
    padded = cv2.copyMakeBorder(
        np.asarray(fitted), pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2, cv2.BORDER_REPLICATE
    )
    return Image.fromarray(padded, mode=fitted.mode)


def blur(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"Masked content: fill": paint the masked area from its surroundings before denoising."""
    hole = (np.asarray(mask) > 127).astype(np.uint8)
    if not hole.any():
        return image
    filled = cv2.inpaint(np.asarray(image), hole, inpaintRadius=5, flags=cv2.INPAINT_TELEA)
    return Image.fromarray(filled)


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The mask's bounding box plus padding, grown to the working aspect ratio inside the picture."""
    box = mask.point(lambda v: 255 if v > 127 else 0).getbbox()
    if box is None:
        return (0, 0, mask.width, mask.height)
    left, top, right, bottom = box
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(mask.width, right + padding), min(mask.height, bottom + padding)
    # Grow the shorter side to the working aspect ratio, so the crop is not distorted when resized.
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < width / height:
        grow = min(mask.width, round(box_h * width / height)) - box_w
        left, right = _grow(left, right, grow, mask.width)
    else:
        grow = min(mask.height, round(box_w * height / width)) - box_h
        top, bottom = _grow(top, bottom, grow, mask.height)
    return left, top, right, bottom


def _grow(low: int, high: int, amount: int, limit: int) -> tuple[int, int]:
    low -= amount // 2
    high += amount - amount // 2
    if low < 0:
        high, low = high - low, 0
    if high > limit:
        low, high = max(0, low - (high - limit)), limit
    return low, high


def _only_masked_source(recipe: Recipe, image: Image.Image, mask: Image.Image, width: int, height: int) -> Source:
    """Crop around the mask, paint the crop at full working resolution, paste it back."""
    overlay = blur(mask, recipe.mask_blur)
    box = crop_region(mask, recipe.inpaint_full_res_padding, width, height)
    crop_image = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    crop_mask = overlay.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    return Source(image=crop_image, mask=crop_mask, original=image, overlay_mask=overlay, crop=box)


def _outpaint_source(recipe: Recipe, image: Image.Image, sides: Outpaint) -> Source:
    """A larger canvas with the picture inside; the new margins are the mask, pre-filled from the
    picture's edges so the denoiser continues it instead of inventing a border."""
    width, height = image.width + sides.left + sides.right, image.height + sides.top + sides.bottom
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (sides.left, sides.top))
    hard_mask = Image.new("L", (width, height), 255)
    # The mask reaches a blur's width into the old picture, so the seam itself is repainted.
    reach = recipe.mask_blur
    hard_mask.paste(
        0,
        (
            sides.left + (reach if sides.left else 0),
            sides.top + (reach if sides.top else 0),
            sides.left + image.width - (reach if sides.right else 0),
            sides.top + image.height - (reach if sides.bottom else 0),
        ),
    )
    outside = Image.new("L", (width, height), 255)
    outside.paste(0, (sides.left, sides.top, sides.left + image.width, sides.top + image.height))
    canvas = fill_masked(canvas, outside)
    mask = blur(hard_mask, recipe.mask_blur)
    return Source(image=canvas, mask=mask, original=canvas, overlay_mask=mask)
