"""The model families brushwork knows, one file each; `FAMILIES` is in detection order (most specific first)."""

from __future__ import annotations

from brushwork.errors import ModelLoadError
from brushwork.models.families.base import ModelFamily, TextEncoderSlot
from brushwork.models.families.sd1 import SD1
from brushwork.models.families.sd2 import SD2
from brushwork.models.families.sdxl import SDXL

FAMILIES: dict[str, ModelFamily] = {family.key: family for family in (SDXL, SD2, SD1)}


def model_family(key: str) -> ModelFamily:
    try:
        return FAMILIES[key]
    except KeyError:
        raise ModelLoadError(f"unknown model family {key!r}; brushwork knows {', '.join(FAMILIES)}") from None


def family_display_name(key: str) -> str:
    family = FAMILIES.get(key)
    return family.name if family else key


def family_of_encoders(kinds: list[str]) -> ModelFamily | None:
    """The family whose text encoders are of these kinds ("clip" / "open_clip"), in order."""
    for family in FAMILIES.values():
        if [slot.kind for slot in family.text_encoders] == kinds:
            return family
    return None


__all__ = ["FAMILIES", "ModelFamily", "TextEncoderSlot", "SD1", "SD2", "SDXL", "family_display_name",
           "family_of_encoders", "model_family"]
