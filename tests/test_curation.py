"""Training data as the community keeps it, and curation: a drawn set with planted blurry, duplicate, watermarked
and too-small pictures: every planted one is left out with its reason, no clean one is, nothing is deleted."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from brushwork.cli import main
from brushwork.errors import BrushworkError
from brushwork.shapes import make_dataset
from brushwork.train.curation import CurationSettings, curate
from brushwork.train.dataset import fit_to_bucket, make_buckets, nearest_bucket, scan_folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """24 clean drawn pictures (128 px) and, beside them, 3 blurry, 3 near-duplicate, 3 watermarked, 1 too small."""
    root = tmp_path_factory.mktemp("curation")
    data, extra = root / "data", root / "extra"
    make_dataset(data, 24, seed=11, size=128, split="all")
    make_dataset(extra, 10, seed=12, size=128, split="all")
    font = ImageFont.load_default(size=11)
    plants = {}
    for index in range(3):
        source = Image.open(extra / f"{index:05d}.png")
        source.filter(ImageFilter.GaussianBlur(2)).save(data / f"blurry-{index}.png")
        plants[f"blurry-{index}.png"] = "blurry"
        ImageEnhance.Brightness(Image.open(data / f"{index * 7:05d}.png")).enhance(1.04).convert("RGB").save(
            data / f"x-copy-{index}.jpg", quality=90)  # re-saved, a little brighter: a near-duplicate
        plants[f"x-copy-{index}.jpg"] = f"near-duplicate of {index * 7:05d}.png"
        marked = Image.open(extra / f"{index + 3:05d}.png").convert("RGB")
        ImageDraw.Draw(marked).text((marked.width - 3, marked.height - 3), "© stock", font=font,
                                    fill=(255, 255, 255), anchor="rd", stroke_width=1, stroke_fill=(0, 0, 0))
        marked.save(data / f"marked-{index}.png")
        plants[f"marked-{index}.png"] = "likely watermark or text"
    Image.open(extra / "00006.png").resize((48, 48)).save(data / "tiny.png")
    plants["tiny.png"] = "too small"
    (data / "broken.png").write_bytes(b"not a picture")
    plants["broken.png"] = "unreadable picture"
    for name in plants:
        (data / name).with_suffix(".txt").write_text("a picture")
    return data, plants


def test_every_planted_picture_is_left_out_and_no_clean_one(planted):
    data, plants = planted
    files_before = sorted(p.name for p in data.iterdir())
    report = curate(scan_folder(data), data, CurationSettings(resolution=128))
    dropped = {item.path: "; ".join(item.reasons) for item in report.dropped}
    assert set(dropped) == set(plants), dropped
    for name, reason in plants.items():
        assert reason in dropped[name], (name, dropped[name])
    assert len(report.kept) == 24 and all(name.endswith(".png") and name[0].isdigit() for name in report.kept)
    assert report.buckets == {"128x128": 24}
    assert sorted(p.name for p in data.iterdir()) == files_before  # nothing deleted
    assert any("aesthetic filter is off" in note for note in report.notes)


def test_data_check_command_prints_and_saves_the_report(planted, tmp_path, capsys):
    data, plants = planted
    assert main(["data", "check", str(data), "--resolution", "128", "--report", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{data}: 24 pictures kept, {len(plants)} left out")
    assert "left out tiny.png: too small: 48x48" in out and "buckets: 128x128 x24" in out
    saved = json.loads((tmp_path / "report.json").read_text())
    assert {item["path"] for item in saved["dropped"]} == set(plants)


def test_kohya_repeat_folders_metadata_and_missing_captions(tmp_path):
    (tmp_path / "10_sks dog").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "10_sks dog" / "a.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "10_sks dog" / "b.png")
    (tmp_path / "10_sks dog" / "b.txt").write_text("sks dog on grass\n")
    Image.new("RGB", (64, 64)).save(tmp_path / "c.jpg")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "c.jpg", "text": "a black square"}) + "\n")
    examples = scan_folder(tmp_path)
    assert [(e.path.name, e.caption, e.repeats) for e in examples] == [
        ("a.png", "sks dog", 10), ("b.png", "sks dog on grass", 10), ("c.jpg", "a black square", 1)]
    Image.new("RGB", (64, 64)).save(tmp_path / "d.png")
    with pytest.raises(BrushworkError, match="1 pictures have no caption: d.png"):
        scan_folder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("not json\n")
    with pytest.raises(BrushworkError, match="metadata.jsonl:1: expected a JSON object"):
        scan_folder(tmp_path)
    with pytest.raises(BrushworkError, match="not found"):
        scan_folder(tmp_path / "nowhere")


def test_buckets_keep_the_area_and_never_crop_to_squares():
    buckets = make_buckets(512)
    assert (512, 512) in buckets and (640, 384) in buckets and (384, 640) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and max(w / h, h / w) <= 2 for w, h in buckets)
    assert nearest_bucket((1600, 900), buckets) == (640, 384)  # 16:9 -> the widest bucket under 2:1
    assert nearest_bucket((900, 1600), buckets) == (384, 640)
    assert nearest_bucket((1000, 1000), buckets) == (512, 512)
    wide = fit_to_bucket(Image.new("RGB", (1600, 900), (200, 10, 10)), (640, 384))
    assert wide.size == (640, 384)  # covered, and only the rounding cut away (1600x900 -> 683x384 -> 640x384)
    with pytest.raises(BrushworkError, match="multiple of 64"):
        make_buckets(500)
