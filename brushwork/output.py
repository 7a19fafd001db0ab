"""Pictures on disk: PNGs that carry their recipe, A1111-style file names, and reading the recipe back.

Each PNG holds two text chunks: `parameters`, A1111's infotext (so A1111, its forks and image hosts show
and re-use the settings), and `brushwork`, our own JSON, which keeps what infotext cannot say.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import unicodedata
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from brushwork.errors import BrushworkError

PARAMETERS_KEY = "parameters"  # A1111's chunk name; other tools look for exactly this.
BRUSHWORK_KEY = "brushwork"
SLUG_MAX = 60

# Modes a PNG can hold as they are; anything else (CMYK, float, ...) is converted first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
_COUNTER = re.compile(r"^(\d+)-")
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _png_text_chunks(infotext: str, recipe_json: str | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in ((PARAMETERS_KEY, infotext), (BRUSHWORK_KEY, recipe_json)):
        if value is None:
            continue
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            # tEXt is latin-1 only; iTXt holds UTF-8, and A1111 and Pillow read both under the same key.
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    return info


def save_png(image: Image.Image, path: str | os.PathLike[str], *, infotext: str, recipe_json: str | None) -> Path:
    """Write `image` as a PNG at `path` with the `parameters` infotext and (when given) the `brushwork` JSON.

    The PNG is written to a hidden temporary file in the same folder and moved into place with
    `os.replace`, so readers (a gallery, a file watcher) never see a half-written picture; an existing
    file at `path` is replaced. The folder is created when missing. Returns `path` as a Path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")

    # Same folder, so os.replace is a rename on one file system; no ".png" suffix, so counters and
    # galleries ignore it. os.open with 0o666 lets the umask decide the mode (tempfile would force 0600).
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            image.save(file, format="PNG", pnginfo=_png_text_chunks(infotext, recipe_json))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def prompt_slug(prompt: str, max_length: int = SLUG_MAX) -> str:
    """A file-name-safe digest of a prompt: lower case ASCII letters, digits and single dashes.

    Accents are folded ("café" -> "cafe"); scripts with no ASCII form give an empty slug.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        cut = slug[: max_length + 1]
        # Cut at a word boundary when there is one, so names do not end in half a word.
        slug = cut.rsplit("-", 1)[0] if "-" in cut else slug[:max_length]
        slug = slug[:max_length].strip("-")
    return slug


def next_sequence_number(folder: Path) -> int:
    """One more than the largest `NNNNN-` prefix in `folder` (any extension, as A1111 counts); 0 when none."""
    highest = -1
    for entry in folder.iterdir():
        match = _COUNTER.match(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def next_output_path(folder: str | os.PathLike[str], *, seed: int, prompt: str) -> Path:
    """The path for the next picture in `folder`, named like A1111: `00012-1234567-a-cyberpunk-street.png`.

    The counter is one past the highest already in the folder, so deleting old pictures never reuses a
    number below the newest. The folder is created when missing. This picks a name but does not reserve it:
    callers saving from several threads must hold one lock around next_output_path + save_png.
    """
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    parts = [f"{next_sequence_number(directory):05d}", str(seed)]
    slug = prompt_slug(prompt)
    if slug:
        parts.append(slug)
    return directory / ("-".join(parts) + ".png")


def decode_user_comment(raw: bytes | str) -> str | None:
    """The text of an EXIF UserComment, where A1111 keeps the infotext of its JPEG and WebP pictures.

    The first 8 bytes name the encoding; A1111 (via piexif) writes "UNICODE\\0" + UTF-16 big-endian, some
    tools little-endian, so the byte order is guessed from where the zero bytes of ASCII text fall.
    """
    if isinstance(raw, str):
        return raw or None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = body.decode("utf-16", errors="replace")
        else:
            little = body[1:2] == b"\x00" and body[:1] != b"\x00"
            text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    elif prefix == b"ASCII\x00\x00\x00":
        text = body.decode("ascii", errors="replace")
    elif prefix == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("shift_jis", errors="replace")
    else:
        # No or an unknown prefix: A1111 falls back to UTF-8 here too.
        text = (body if prefix == b"\x00" * 8 else raw).decode("utf-8", errors="ignore")
    text = text.rstrip("\x00")
    return text or None


def _png_texts(image: Image.Image) -> dict[str, str]:
    # `info` has the chunks before the pixel data (where A1111 and we put them); `text` also reads those
    # after it, but must decode the picture to get there, so it is only the fallback.
    texts = {key: value for key, value in image.info.items() if isinstance(value, str)}
    if PARAMETERS_KEY not in texts and BRUSHWORK_KEY not in texts:
        try:
            texts.update({key: str(value) for key, value in image.text.items()})  # type: ignore[attr-defined]
        except (OSError, SyntaxError, ValueError):
            pass  # damaged pixel data: the chunks read so far are still good
    return texts


def read_png_info(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """(infotext, brushwork JSON) stored in a picture; None for each one it lacks.

    PNG text chunks are read, and for JPEG and WebP the EXIF UserComment where A1111 stores its
    infotext (those never hold brushwork JSON). Raises BrushworkError for a missing or unreadable file,
    a file that is not an image, or an image format that carries no infotext.
    """
    source = Path(path)
    if not source.exists():
        raise BrushworkError(f"no such file: {source}")
    if not source.is_file():
        raise BrushworkError(f"{source} is not a file; give the path of a PNG picture")
    try:
        with Image.open(source) as image:
            if image.format == "PNG":
                texts = _png_texts(image)
                return texts.get(PARAMETERS_KEY), texts.get(BRUSHWORK_KEY)
            if image.format in ("JPEG", "MPO", "WEBP"):
                comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
                return (decode_user_comment(comment) if comment else None), None
            raise BrushworkError(
                f"{source} is a {image.format} image, which carries no infotext; use a PNG (or an A1111 JPEG/WebP)"
            )
    except UnidentifiedImageError:
        raise BrushworkError(f"{source} is not an image file (expected a PNG)") from None
    except Image.DecompressionBombError as error:
        raise BrushworkError(f"{source} is too large to open safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # PermissionError, a truncated header, broken EXIF, ...: Pillow's own words name the problem.
        raise BrushworkError(f"cannot read {source}: {error}") from None


# A1111's `samples_format` values and the Pillow format each one is written in.
SAMPLE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_as_sample(png: bytes, samples_format: str, quality: int) -> bytes:
    """A PNG (with its infotext) re-encoded as A1111 encodes API pictures for `samples_format`: unchanged for
    png; for jpg/webp at `quality` (A1111's jpeg_quality), the infotext in the EXIF UserComment as A1111
    (piexif) writes it: "UNICODE\\0" + UTF-16 big-endian. Raises BrushworkError for another format."""
    kind = SAMPLE_FORMATS.get(samples_format.lower())
    if kind is None:
        raise BrushworkError(f"samples_format: {samples_format!r} is not one of {', '.join(SAMPLE_FORMATS)}")
    if kind == "PNG":
        return png
    with Image.open(io.BytesIO(png)) as image:
        infotext = _png_texts(image).get(PARAMETERS_KEY)
        picture = image.convert("RGB")
    exif = Image.Exif()
    if infotext:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + infotext.encode("utf-16-be")
    buffer = io.BytesIO()
    picture.save(buffer, format=kind, quality=max(1, min(100, quality)), exif=exif.tobytes())
    return buffer.getvalue()
