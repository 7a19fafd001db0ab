"""The Recipe: one typed, validated description of a picture to make.

Every front end (CLI flags, API JSON, UI form, A1111 `/sdapi` payload, PNG infotext) builds a Recipe;
the Engine is the only thing that turns one into pictures. A Recipe is validated whole before any model
loads, and errors name the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**32 - 1


class Recipe(BaseModel):
    """What to paint and how. Field names follow A1111's API where one exists."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = Field(None, description="Checkpoint name or path; None means the default model.")
    vae: str | None = Field(None, description="A separate VAE that overrides the checkpoint's own.")
    sampler: str = "DPM++ 2M"
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 draws a random seed.")
    width: int | None = Field(None, ge=8, le=16384, description="None means the model's native size.")
    height: int | None = Field(None, ge=8, le=16384)
    batch_size: int = Field(1, ge=1, le=64, description="Images denoised together in one pass.")
    batch_count: int = Field(1, ge=1, le=1000, description="Passes run one after another.")
    clip_skip: int = Field(1, ge=1, le=12, description="2 uses CLIP's penultimate layer.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            lower, upper = value // 8 * 8, value // 8 * 8 + 8
            raise ValueError(f"must be a multiple of 8 (got {value}; try {lower or 8} or {upper})")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        from brushwork.engine.samplers import SAMPLERS

        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLERS)}")
        return value

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count


def describe_validation_error(error: Exception) -> str:
    """One line naming each bad field, for the CLI and the API."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "recipe"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
