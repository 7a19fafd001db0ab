"""A1111's styles.csv: reading it (quoting, BOM, old layout, comments), merging styles into prompts
({prompt}, append, empty prompts, order, negatives), the errors, and `generate --style` end to end."""

from __future__ import annotations

import csv

import pytest

from brushwork.cli import main
from brushwork.errors import BrushworkError
from brushwork.output import read_png_info
from brushwork.recipe import Recipe
from brushwork.styles import PromptStyle, apply_styles, apply_styles_to_recipe, load_styles, merge_prompt
from tiny_models import write_tiny_checkpoint

STYLES = {
    "film": PromptStyle("film", "cinematic still of {prompt}, 35mm", "cartoon, {prompt}"),
    "oil": PromptStyle("oil", "oil painting, canvas", "blurry"),
    "empty": PromptStyle("empty", "", ""),
}


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# -- merging -----------------------------------------------------------------------------------------------

def test_placeholder_is_replaced_by_the_prompt_as_it_is():
    assert merge_prompt("cinematic still of {prompt}, 35mm", "a red fox") == "cinematic still of a red fox, 35mm"
    assert merge_prompt("{prompt}, and again {prompt}", " x ") == " x , and again  x "  # every one; not stripped


def test_text_without_placeholder_is_appended_with_a_comma():
    assert merge_prompt("oil painting, canvas", "a red fox") == "a red fox, oil painting, canvas"
    assert merge_prompt("  oil painting ", " a red fox  ") == "a red fox, oil painting"  # both sides stripped


def test_empty_prompt_or_empty_style_leaves_no_stray_comma():
    assert merge_prompt("oil painting", "") == "oil painting"
    assert merge_prompt("oil painting", "   ") == "oil painting"
    assert merge_prompt("still of {prompt}", "") == "still of "  # A1111: the placeholder simply becomes ""
    assert merge_prompt("", " a red fox ") == "a red fox"  # an empty style only strips the prompt
    assert merge_prompt("", "") == ""


def test_several_styles_apply_in_order_to_prompt_and_negative():
    assert apply_styles("a fox", "ugly", ["film", "oil"], STYLES) == (
        "cinematic still of a fox, 35mm, oil painting, canvas", "cartoon, ugly, blurry")
    assert apply_styles("a fox", "ugly", ["oil", "film"], STYLES) == (
        "cinematic still of a fox, oil painting, canvas, 35mm", "cartoon, ugly, blurry")
    assert apply_styles("", "", ["oil"], STYLES) == ("oil painting, canvas", "blurry")
    assert apply_styles(" a fox ", " ugly ", [], STYLES) == (" a fox ", " ugly ")  # no styles: untouched


def test_unknown_style_names_itself_and_the_styles_there_are():
    with pytest.raises(BrushworkError, match=r"unknown style 'Film'; the styles are: 'film', 'oil', 'empty'"):
        apply_styles("a fox", "", ["oil", "Film"], STYLES)  # names are case-sensitive, as in A1111
    with pytest.raises(BrushworkError, match=r"unknown style 'x'; the styles are: none \(no styles.csv"):
        apply_styles("a fox", "", ["x"], {})


def test_none_is_a1111s_no_style():
    assert apply_styles(" a fox ", "", ["None"], {}) == ("a fox", "")
    mine = {"None": PromptStyle("None", "my text", "")}  # a file's own "None" row is a style like any other
    assert apply_styles("a fox", "", ["None"], mine) == ("a fox, my text", "")


def test_recipe_prompts_and_its_own_hires_prompts_are_styled():
    recipe = Recipe(prompt="a fox", negative_prompt="ugly", steps=3, hires={"prompt": "sharp"})
    styled = apply_styles_to_recipe(recipe, ["oil"], STYLES)
    assert (styled.prompt, styled.negative_prompt) == ("a fox, oil painting, canvas", "ugly, blurry")
    assert styled.hires.prompt == "sharp, oil painting, canvas"  # as A1111 styles its hires prompt
    assert styled.hires.negative_prompt is None  # unset: follows the styled first pass
    assert styled.steps == 3
    assert apply_styles_to_recipe(recipe, [], {}) is recipe


# -- reading styles.csv ---------------------------------------------------------------------------------------

def test_a1111_written_file_reads_back(tmp_path):
    """What A1111's save_styles writes: utf-8-sig, csv.DictWriter's quoting."""
    path = tmp_path / "styles.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["name", "prompt", "negative_prompt"])
        writer.writeheader()
        writer.writerow({"name": "None", "prompt": "", "negative_prompt": ""})
        writer.writerow({"name": 'Say "cheese"', "prompt": 'a "quoted", comma\nand a line break', "negative_prompt": "x"})
        writer.writerow({"name": "Ünïcödé", "prompt": "{prompt}, 水彩", "negative_prompt": ""})
    styles = load_styles(path)
    assert list(styles) == ["None", 'Say "cheese"', "Ünïcödé"]
    assert styles['Say "cheese"'] == PromptStyle('Say "cheese"', 'a "quoted", comma\nand a line break', "x")
    assert styles["Ünïcödé"].prompt == "{prompt}, 水彩"


def test_hand_written_file_spaces_comments_old_layout_and_extra_columns(tmp_path):
    path = write(tmp_path / "styles.csv", (
        "name, prompt, negative_prompt, description\n"
        "\n"
        "# a comment row, skipped\n"
        'warm, "golden hour, warm light", "cold, blue", evening look\n'
        "bare, just text\n"  # no negative field: empty
        ",,\n"  # an empty row: skipped
    ))
    assert load_styles(path) == {
        "warm": PromptStyle("warm", "golden hour, warm light", "cold, blue"),
        "bare": PromptStyle("bare", "just text", ""),
    }
    old = write(tmp_path / "old.csv", "name,text\nvintage,sepia photo\n")  # A1111's first layout
    assert load_styles(old) == {"vintage": PromptStyle("vintage", "sepia photo", "")}


def test_missing_file_has_no_styles(tmp_path):
    assert load_styles(tmp_path / "nope.csv") == {}
    assert load_styles(write(tmp_path / "only-header.csv", "name,prompt,negative_prompt\n")) == {}
    assert load_styles(write(tmp_path / "empty.csv", "")) == {}  # as A1111: an empty file, no styles


@pytest.mark.parametrize(("text", "line", "words"), [
    ('name,prompt\nok,fine\nbad,"never closed\n', 3, "broken CSV"),
    ('name,prompt\nbad,"a"b\n', 2, "broken CSV"),
    ("name,prompt,negative_prompt\nok,x,y\nfilm,grain, 35mm,blurry\n", 3, "4 fields but the header has 3"),
    ('name,prompt\nmulti,"one\ntwo\nthree"\n,orphan text\n', 5, "no name"),
    ("name,prompt\nsame,a\nother,b\nsame,c\n", 4, "'same' is already defined on line 2"),
    ("title,text2\nx,y\n", 1, "expected the header name,prompt,negative_prompt"),
    ("\nname only\nx\n", 2, "found name only"),
])
def test_malformed_file_names_the_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path / "styles.csv", text)
    with pytest.raises(BrushworkError) as caught:
        load_styles(path)
    assert f"{path}, line {line}:" in str(caught.value) and words in str(caught.value)


def test_a_file_not_in_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "styles.csv", "name,prompt\nok,fine\ncafé,crème\n", encoding="latin-1")
    with pytest.raises(BrushworkError, match=r"line 3: not UTF-8"):
        load_styles(path)


# -- generate --style ------------------------------------------------------------------------------------------

FAST = ["--steps", "2", "-W", "64", "-H", "64", "--seed", "3", "--no-progress"]
STYLES_CSV = 'name,prompt,negative_prompt\nfilm,"still of {prompt}, 35mm","cartoon"\noil,oil painting,blurry\n'


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    write_tiny_checkpoint("sd1", path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_style_writes_the_expanded_prompts(tiny_checkpoint, tmp_path, capsys):
    styles = write(tmp_path / "my-styles.csv", STYLES_CSV)
    code, stdout, err = _run(capsys, "generate", "a red circle", "-n", "dark", "--style", "film", "--style", "oil",
                             "--styles-file", styles, "--model", tiny_checkpoint, "-o", tmp_path / "out", *FAST)
    assert code == 0, err
    infotext, recipe_json = read_png_info(stdout.split()[0])
    assert infotext.splitlines()[:2] == ["still of a red circle, 35mm, oil painting", "Negative prompt: dark, cartoon, blurry"]
    assert '"prompt": "still of a red circle, 35mm, oil painting"' in recipe_json


def test_generate_reads_styles_csv_in_the_working_directory(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    write(tmp_path / "styles.csv", STYLES_CSV)
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _run(capsys, "generate", "--style", "oil", "--model", tiny_checkpoint, "-o", "out", *FAST)
    assert code == 0, err  # a style alone is prompt enough
    assert read_png_info(stdout.split()[0])[0].splitlines()[0] == "oil painting"


def test_generate_style_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    styles = write(tmp_path / "styles.csv", STYLES_CSV)
    base = ["--model", tiny_checkpoint, "-o", tmp_path / "o", *FAST]
    code, _, err = _run(capsys, "generate", "x", "--style", "Oil", "--styles-file", styles, *base)
    assert code == 2 and "unknown style 'Oil'; the styles are: 'film', 'oil'" in err
    code, _, err = _run(capsys, "generate", "x", "--style", "oil", "--styles-file", tmp_path / "none.csv", *base)
    assert code == 2 and f"there is no styles file {tmp_path / 'none.csv'}" in err
    broken = write(tmp_path / "broken.csv", "name,prompt\nfilm,grain, 35mm\n")
    code, _, err = _run(capsys, "generate", "x", "--style", "film", "--styles-file", broken, *base)
    assert code == 2 and f"{broken}, line 2: 3 fields" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was made
