"""PNG writing and reading, and A1111-style output file names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from brushwork.errors import BrushworkError
from brushwork.output import decode_user_comment, next_output_path, prompt_slug, read_png_info, save_png

INFOTEXT = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 16x8"
RECIPE_JSON = json.dumps({"prompt": "a cat", "steps": 20})


@pytest.fixture
def image() -> Image.Image:
    picture = Image.new("RGB", (16, 8), (10, 20, 30))
    picture.putpixel((3, 4), (255, 0, 0))
    return picture


def test_save_png_round_trips_pixels_infotext_and_json(tmp_path: Path, image: Image.Image) -> None:
    path = save_png(image, tmp_path / "out.png", infotext=INFOTEXT, recipe_json=RECIPE_JSON)
    assert path == tmp_path / "out.png"
    assert read_png_info(path) == (INFOTEXT, RECIPE_JSON)
    with Image.open(path) as reread:
        assert reread.format == "PNG"
        assert reread.info["parameters"] == INFOTEXT  # where A1111 and other tools look
        assert reread.convert("RGB").tobytes() == image.tobytes()


def test_save_png_uses_itxt_only_for_non_latin1_text(tmp_path: Path, image: Image.Image) -> None:
    latin = save_png(image, tmp_path / "latin.png", infotext="café au lait", recipe_json=None)
    unicode = save_png(image, tmp_path / "unicode.png", infotext="東京の夜 🌃", recipe_json='{"p": "東京"}')
    assert b"tEXtparameters\x00caf\xe9" in latin.read_bytes()
    assert b"iTXtparameters" in unicode.read_bytes() and b"iTXtbrushwork" in unicode.read_bytes()
    assert read_png_info(latin) == ("café au lait", None)
    assert read_png_info(unicode) == ("東京の夜 🌃", '{"p": "東京"}')


def test_save_png_converts_modes_png_cannot_hold(tmp_path: Path) -> None:
    path = save_png(Image.new("CMYK", (8, 8)), tmp_path / "cmyk.png", infotext="x", recipe_json=None)
    with Image.open(path) as reread:
        assert reread.mode == "RGB"


def test_save_png_creates_folder_replaces_file_and_leaves_no_temp_files(tmp_path: Path, image: Image.Image) -> None:
    target = tmp_path / "new" / "folder" / "out.png"
    save_png(image, target, infotext="first", recipe_json=None)
    save_png(image, target, infotext="second", recipe_json=None)
    assert read_png_info(target) == ("second", None)
    assert os.listdir(target.parent) == ["out.png"]


def test_failed_save_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    save_png(image, target, infotext="old", recipe_json=None)

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half a picture")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(image, target, infotext="new", recipe_json=None)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out.png"]
    assert read_png_info(target) == ("old", None)


def test_read_finds_text_chunks_after_the_pixel_data(tmp_path: Path, image: Image.Image) -> None:
    # Pillow writes text before IDAT; move the chunk after it, as some tools do.
    path = save_png(image, tmp_path / "late.png", infotext="late text", recipe_json=None)
    data = path.read_bytes()
    start = data.index(b"tEXtparameters") - 4
    length = int.from_bytes(data[start : start + 4], "big") + 12
    chunk, rest = data[start : start + length], data[:start] + data[start + length :]
    iend = rest.index(b"IEND") - 4
    path.write_bytes(rest[:iend] + chunk + rest[iend:])
    assert read_png_info(path) == ("late text", None)


def test_read_png_without_metadata_gives_nones(tmp_path: Path, image: Image.Image) -> None:
    image.save(tmp_path / "plain.png")
    assert read_png_info(tmp_path / "plain.png") == (None, None)


def test_read_a1111_style_png_written_with_plain_pillow(tmp_path: Path, image: Image.Image) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    image.save(tmp_path / "a1111.png", pnginfo=info)
    assert read_png_info(tmp_path / "a1111.png") == (INFOTEXT, None)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_infotext_from_a1111_exif_user_comment(tmp_path: Path, image: Image.Image, fmt: str) -> None:
    exif = Image.Exif()
    # What A1111 writes through piexif: an 8-byte encoding name, then UTF-16 big-endian.
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "東京, Steps: 20".encode("utf-16-be")
    path = tmp_path / f"a1111.{fmt.lower()}"
    image.save(path, format=fmt, exif=exif.tobytes())
    assert read_png_info(path) == ("東京, Steps: 20", None)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"UNICODE\x00" + "abc, é".encode("utf-16-le"), "abc, é"),
        (b"ASCII\x00\x00\x00Steps: 5\x00", "Steps: 5"),
        (b"\x00" * 8, None),
        ("already text", "already text"),
    ],
)
def test_decode_user_comment_encodings(raw: bytes | str, text: str | None) -> None:
    assert decode_user_comment(raw) == text


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BrushworkError, match="no such file"):
        read_png_info(tmp_path / "nope.png")


def test_read_directory(tmp_path: Path) -> None:
    with pytest.raises(BrushworkError, match="is not a file"):
        read_png_info(tmp_path)


def test_read_text_file_named_png(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("Steps: 20, Sampler: Euler\n")
    with pytest.raises(BrushworkError, match=r"fake\.png is not an image file"):
        read_png_info(fake)


def test_read_truncated_png(tmp_path: Path, image: Image.Image) -> None:
    path = save_png(image, tmp_path / "cut.png", infotext="x", recipe_json=None)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BrushworkError, match="cut.png"):
        read_png_info(path)


def test_read_image_format_without_infotext(tmp_path: Path, image: Image.Image) -> None:
    image.save(tmp_path / "pic.bmp")
    with pytest.raises(BrushworkError, match="BMP image, which carries no infotext"):
        read_png_info(tmp_path / "pic.bmp")


def test_next_output_path_starts_at_zero_and_creates_folder(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "txt2img"
    path = next_output_path(folder, seed=1234567, prompt="A cyberpunk street, (brush stroke:1.2)")
    assert path == folder / "00000-1234567-a-cyberpunk-street-brush-stroke-1-2.png"
    assert folder.is_dir()


def test_next_output_path_counts_past_the_highest_existing_number(tmp_path: Path) -> None:
    for name in ["00003-1-a.png", "00011-5-b.jpg", "notes.txt", "cat-00099.png", ".00050-1-x.png.ab.tmp"]:
        (tmp_path / name).write_bytes(b"")
    assert next_output_path(tmp_path, seed=7, prompt="x").name == "00012-7-x.png"


def test_next_output_path_without_usable_slug(tmp_path: Path) -> None:
    assert next_output_path(tmp_path, seed=3, prompt="東京の夜 !!!").name == "00000-3.png"
    assert next_output_path(tmp_path, seed=3, prompt="").name == "00000-3.png"


def test_prompt_slug_is_short_safe_and_cut_at_a_word() -> None:
    slug = prompt_slug("Café crème, " + "very " * 30 + "long; prompt/../../etc")
    assert slug.startswith("cafe-creme-very-very")
    assert len(slug) <= 60 and not slug.endswith("-")
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and "--" not in slug
    assert slug.split("-")[-1] == "very"  # whole words only
    assert prompt_slug("x" * 100) == "x" * 60
