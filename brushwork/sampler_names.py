"""The sampler names brushwork knows, as A1111 spells them, without the engine behind them.

Reading and writing infotext, validating a recipe and listing samplers need only the names; the engine
(`brushwork.engine.samplers`) maps each of them onto a scheduler.
"""

from __future__ import annotations

SAMPLER_NAMES: tuple[str, ...] = (
    "Euler", "Euler a", "Heun", "LMS", "LMS Karras", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras",
    "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DPM++ SDE Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
    "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "DDIM", "PLMS", "UniPC", "LCM",
)

# Newer A1111 infotexts name the sigma schedule apart ("Sampler: DPM++ 2M, Schedule type: Karras").
SCHEDULE_SUFFIXES = {"Karras": " Karras", "Automatic": "", "Uniform": ""}


def sampler_name_from_parts(sampler: str, schedule_type: str | None) -> str:
    """Join A1111 1.9+'s separate sampler and schedule type back into one of our names."""
    if schedule_type and not sampler.endswith(" Karras"):
        candidate = sampler + SCHEDULE_SUFFIXES.get(schedule_type, "")
        if candidate in SAMPLER_NAMES:
            return candidate
    return sampler
