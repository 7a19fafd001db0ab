"""The infotext of an upscaled picture: its source's, plus the "Postprocess ..." fields A1111's
extras tab records (`Postprocess upscale by: 2, Postprocess upscaler: 4x-UltraSharp`).

A1111 keeps those fields in a PNG chunk of their own; brushwork's PNGs carry one infotext, so they
go at the end of its last (`key: value`) line, where A1111, civitai and `brushwork png-info` read
them, and `generate --from-png` ignores them.
"""

from __future__ import annotations

from brushwork.infotext import format_number, quote, split_infotext
from brushwork.upscale.upscalers import Scale, SizePlan

PREFIX = "Postprocess "


def postprocess_fields(upscaler: str, scale: Scale, plan: SizePlan) -> dict[str, str]:
    """The fields for one upscale, in the order A1111 writes them."""
    fields: dict[str, str] = {}
    if isinstance(scale, tuple):
        fields["Postprocess upscale to"] = f"{scale[0]}x{scale[1]}"
    else:
        fields["Postprocess upscale by"] = format_number(scale)
    if plan.cropped:
        fields["Postprocess crop to"] = f"{plan.final[0]}x{plan.final[1]}"
    fields["Postprocess upscaler"] = upscaler
    return fields


def add_postprocess_info(infotext: str | None, fields: dict[str, str]) -> str:
    """`infotext` with `fields` appended to its parameters line (replacing those of an earlier
    upscale); just the fields when there is no infotext.

    An infotext without a parameters line (a bare prompt) is returned unchanged: a line of
    postprocess fields after it would read back as part of the prompt.
    """
    added = _join(fields)
    if not infotext or not infotext.strip():
        return added
    # The same normalisation split_infotext applies, so lines[-1] is the line it parsed.
    lines = infotext.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    _, _, params = split_infotext(infotext)
    if not params:
        return infotext
    if any(key.startswith(PREFIX) for key in params):
        kept = {key: value for key, value in params.items() if not key.startswith(PREFIX)}
        lines[-1] = _join(kept)
    lines[-1] = f"{lines[-1].rstrip().rstrip(',')}, {added}" if lines[-1].strip() else added
    return "\n".join(lines)


def _join(fields: dict[str, str]) -> str:
    return ", ".join(f"{key}: {quote(value)}" for key, value in fields.items())
