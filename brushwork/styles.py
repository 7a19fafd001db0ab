"""Prompt styles kept as A1111 keeps them: a `styles.csv` with the columns `name,prompt,negative_prompt`.

    styles = load_styles(data_dir / STYLES_NAME)
    prompt, negative = apply_styles("a cat", "", ["Cinematic"], styles)

A style's text is merged into a prompt the way A1111 does it:

* text with a `{prompt}` placeholder: every `{prompt}` is replaced by the prompt, as it is;
* other text is appended: `"<prompt>, <text>"`, both stripped, and an empty side left out (so an empty
  prompt becomes the style text alone, and an empty style text leaves the prompt, stripped);
* the negative prompt is merged with the style's `negative_prompt` by the same rule;
* several styles are merged one after another, in the order given.

The file is read like A1111 reads it: UTF-8 with or without a byte order mark, standard CSV quoting
(a prompt with a comma is in double quotes, a quote inside is doubled), spaces after a comma ignored.
Extra columns are ignored, the old `name,text` layout is read too, and rows whose name starts with `#` are
comments. A1111's "None" is its "no style": it may always be asked for, and changes nothing but
surrounding spaces. Unlike A1111, which skips what it does not understand, a broken row or an unknown
style name is an error that says where and what.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from brushwork.errors import BrushworkError
from brushwork.recipe import Recipe

STYLES_NAME = "styles.csv"  # in the server's data dir (the CLI: the working directory)
PLACEHOLDER = "{prompt}"
NO_STYLE = "None"  # A1111's "no style" entry


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: str | Path) -> dict[str, PromptStyle]:
    """The styles in a styles.csv, by name, in file order. A missing file has none.

    Raises BrushworkError naming the file and the line for a file that is not UTF-8 text, broken CSV
    quoting, a header without `name` and `prompt` columns, a row with more fields than the header, a
    row without a name, or a name defined twice.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise BrushworkError(f"{path}: cannot read the styles file ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise BrushworkError(f"{path}, line {line}: not UTF-8 text; save the styles file as UTF-8") from None
    return _parse(text, path)


def _parse(text: str, path: Path) -> dict[str, PromptStyle]:
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    styles: dict[str, PromptStyle] = {}
    defined_on: dict[str, int] = {}
    header: list[str] | None = None
    line = 1
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                pass  # a blank line, or a row of empty fields
            elif header is None:
                header = _header(row, path, line)
            else:
                style = _style(row, header, path, line)
                if style is not None:
                    if style.name in styles:
                        raise BrushworkError(f"{path}, line {line}: style {style.name!r} is already defined on "
                                             f"line {defined_on[style.name]}; give each style its own name")
                    styles[style.name], defined_on[style.name] = style, line
            line = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
    except csv.Error as error:
        raise BrushworkError(f"{path}, line {line}: broken CSV ({error}); put a field that holds a comma or a "
                             'line break in double quotes, and write a quote inside one as ""') from None
    return styles


def _header(row: list[str], path: Path, line: int) -> list[str]:
    columns = [cell.strip() for cell in row]
    if "name" not in columns or not ({"prompt", "text"} & set(columns)):
        raise BrushworkError(f"{path}, line {line}: expected the header name,prompt,negative_prompt (as A1111 "
                             f"writes it), found {','.join(columns)}")
    return columns


def _style(row: list[str], header: list[str], path: Path, line: int) -> PromptStyle | None:
    """The style a data row holds; None for a comment. Missing trailing fields are empty, as in A1111."""
    if len(row) > len(header):
        raise BrushworkError(f"{path}, line {line}: {len(row)} fields but the header has {len(header)}; put a "
                             "prompt that holds a comma in double quotes")
    cells = dict(zip(header, row))
    name = cells.get("name", "")
    if name.startswith("#"):
        return None
    if not name.strip():
        raise BrushworkError(f"{path}, line {line}: this style has no name")
    prompt = cells["prompt"] if "prompt" in header else cells.get("text", "")
    return PromptStyle(name, prompt or "", cells.get("negative_prompt") or "")


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style's text merged into a prompt (see the module's docstring)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def find_styles(names: Iterable[str], styles: Mapping[str, PromptStyle]) -> list[PromptStyle]:
    """The styles `names` ask for, in that order; BrushworkError names one that does not exist."""
    found = []
    for name in names:
        style = styles.get(name)
        if style is None and name == NO_STYLE:
            style = PromptStyle(NO_STYLE)
        if style is None:
            known = ", ".join(repr(known) for known in styles) if styles else f"none (no {STYLES_NAME} or an empty one)"
            raise BrushworkError(f"unknown style {name!r}; the styles are: {known}")
        found.append(style)
    return found


def apply_styles(prompt: str, negative_prompt: str, names: Iterable[str],
                 styles: Mapping[str, PromptStyle]) -> tuple[str, str]:
    """(prompt, negative prompt) with the styles `names` merged in, in order.

    Raises BrushworkError naming an unknown style and the ones that exist, before anything is merged.
    """
    chosen = find_styles(names, styles)
    for style in chosen:
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def apply_styles_to_recipe(recipe: Recipe, names: Iterable[str], styles: Mapping[str, PromptStyle]) -> Recipe:
    """The recipe with the styles merged into its prompts, as A1111 does it: the prompt and negative prompt,
    and a hires-fix prompt or negative prompt of its own (an unset one follows the styled first pass).

    The result is validated again; no names, the same recipe.
    """
    names = list(names)
    if not names:
        return recipe
    fields = recipe.model_dump()
    fields["prompt"], fields["negative_prompt"] = apply_styles(recipe.prompt, recipe.negative_prompt, names, styles)
    hires = fields.get("hires")
    if hires is not None:
        for key in ("prompt", "negative_prompt"):
            if hires[key] is not None:
                for style in find_styles(names, styles):
                    hires[key] = merge_prompt(getattr(style, key), hires[key])
    return Recipe(**fields)
