"""The sd-webui-controlnet extension's infotext: one `ControlNet <n>` entry per unit, written and read as the
extension writes and reads it (its scripts/infotext.py)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Sequence

from brushwork.errors import RecipeError
from brushwork.infotext import format_number
from brushwork.recipe import ControlUnit

log = logging.getLogger(__name__)

# sd-webui-controlnet (its scripts/infotext.py) writes one `ControlNet <n>` pair per unit, the unit's settings in
# one quoted value: `Module: canny, Model: name [hash], Weight: 1, ...`. It splits that value at "," and ": " to
# read it back, so no setting may hold "," or ":".
_CONTROLNET_KEY = re.compile(r"ControlNet (\d+)")
# The unit fields a Recipe holds, by the extension's snake-case names ("Guidance Start" -> guidance_start).
_CONTROL_UNIT_FIELDS = frozenset(ControlUnit.model_fields) - {"image"}
# A1111's old model hash (sd_models.model_hash), which the extension puts in its model names: 8 hex digits of the
# sha256 of 64 KiB read at 1 MiB.
_OLD_HASH_OFFSET, _OLD_HASH_BYTES = 0x100000, 0x10000


def controlnet_model_title(path: Path) -> str:
    """A ControlNet model as the extension names it (its /controlnet/model_list, a unit's `model`, the infotext):
    the file's name without extension and A1111's old hash, "control_v11p_sd15_canny [d14c016b]". A file under
    1 MiB hashes to that of nothing, as in A1111. A diffusers folder (the extension loads none) is named by the
    folder and hashed by its weights file."""
    name = path.name if path.is_dir() else path.stem
    if path.is_dir():
        weights = sorted(file for file in path.iterdir() if file.suffix in (".safetensors", ".bin"))
        if not weights:
            return f"{name} [NOFILE]"  # A1111's hash of a missing file
        path = weights[0]
    with open(path, "rb") as handle:
        handle.seek(_OLD_HASH_OFFSET)
        return f"{name} [{hashlib.sha256(handle.read(_OLD_HASH_BYTES)).hexdigest()[:8]}]"


def controlnet_extras(units: Sequence[ControlUnit], titles: Sequence[str]) -> dict[str, str]:
    """The extension's `ControlNet <n>` infotext of each unit, `titles` naming their models (see
    `controlnet_model_title`). Names are the fields' words capitalised, values as the extension writes them
    (7.0 as "7"); a threshold appears only where the module has that slider (unset: the slider's default). A unit
    whose setting holds "," or ":" is left out, as the extension leaves it out: its text could not be read back."""
    from brushwork.control.preprocessors import PREPROCESSORS, module_name

    extras: dict[str, str] = {}
    for index, (unit, title) in enumerate(zip(units, titles)):
        preprocessor = PREPROCESSORS[module_name(unit.module)]
        fields = {"Module": unit.module, "Model": title, "Weight": format_number(unit.weight),
                  "Resize Mode": unit.resize_mode, "Processor Res": str(unit.processor_res)}
        for key, slider, value in (("Threshold A", preprocessor.threshold_a, unit.threshold_a),
                                   ("Threshold B", preprocessor.threshold_b, unit.threshold_b)):
            if slider is not None:
                fields[key] = format_number(slider.default if value is None else value)
        fields |= {"Guidance Start": format_number(unit.guidance_start), "Guidance End": format_number(unit.guidance_end),
                   "Pixel Perfect": str(unit.pixel_perfect), "Control Mode": unit.control_mode}
        if any("," in value or ":" in value for value in fields.values()):
            log.warning("ControlNet unit %d is left out of the infotext: a setting holds ',' or ':' (%s)", index, fields)
            continue
        extras[f"ControlNet {index}"] = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return extras


def control_units_from_params(params: dict[str, str], hires: bool) -> list[dict[str, str]]:
    """The Recipe's control units from the `ControlNet <n>` pairs, in n's order, read as the extension reads them
    (parse_unit). Fields a Recipe has no place for are left in `params`: Low Vram and Save Detected Map change no
    picture; an Hr Option other than Both, with hires fix on, would (RecipeError). No picture: the Engine asks
    for one."""
    found = sorted((int(match.group(1)), value) for key, value in params.items()
                   if (match := _CONTROLNET_KEY.fullmatch(key)))
    units = []
    for number, text in found:
        unit: dict[str, str] = {}
        for item in text.split(","):
            name, separator, value = item.strip().partition(": ")
            if not separator:
                raise RecipeError(f"infotext field 'ControlNet {number}': {item.strip()!r} is not a 'Name: value' pair")
            field = "_".join(word.lower() for word in name.split(" "))
            if field == "hr_option" and value != "Both" and hires:
                raise RecipeError(f"infotext field 'ControlNet {number}': Hr Option {value!r} is not supported by "
                                  "brushwork, whose units act in both passes of the hires fix")
            if field in _CONTROL_UNIT_FIELDS and value != "-1":  # -1: the extension's "the module's default"
                unit[field] = value
        if not unit.get("model"):
            raise RecipeError(f"infotext field 'ControlNet {number}' names no Model")
        units.append(unit)
    return units
