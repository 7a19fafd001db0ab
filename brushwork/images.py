"""Images named in a Recipe: a file path, a data URL or plain base64 — decoded or refused clearly."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from brushwork.errors import BrushworkError


def load_image(reference: str, *, what: str = "image") -> Image.Image:
    """The picture a reference names, fully decoded (EXIF orientation applied, no alpha kept)."""
    data = _bytes_of(reference, what)
    try:
        with warnings.catch_warnings():
            # Past Pillow's limit (about 9,500 x 9,500) a file is treated as a decompression bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BrushworkError(f"{what}: not a readable image ({error})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BrushworkError(f"{what}: too many pixels (more than {Image.MAX_IMAGE_PIXELS:,})") from None
    return ImageOps.exif_transpose(image)


def load_mask(reference: str, *, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    """A mask as 8-bit grey (white = repaint), resized to `size` if needed, with a note saying so."""
    image = load_image(reference, what="mask")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # A1111 treats a mask's alpha as part of it: transparent means "not painted".
        image = image.convert("RGBA")
        grey = Image.new("L", image.size, 0)
        grey.paste(image.convert("L"), mask=image.getchannel("A"))
        image = grey
    mask = image.convert("L")
    note = None
    if mask.size != size:
        note = f"mask is {mask.size[0]}x{mask.size[1]}, the image {size[0]}x{size[1]}: the mask was resized to match"
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    return mask, note


def _bytes_of(reference: str, what: str) -> bytes:
    if reference.startswith("data:"):
        _, _, payload = reference.partition(",")
        return _decode_base64(payload, what)
    path = Path(reference).expanduser()
    if len(reference) < 4096 and path.exists():
        if not path.is_file():
            raise BrushworkError(f"{what}: {reference} is not a file")
        return path.read_bytes()
    if len(reference) < 260 and ("/" in reference or "." in reference):
        raise BrushworkError(f"{what}: no such file: {reference}")
    return _decode_base64(reference, what)


def _decode_base64(payload: str, what: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BrushworkError(f"{what}: neither a file nor valid base64 image data") from None
