"""The Recipe: one typed, validated description of a picture to make.

Every front end (CLI flags, API JSON, UI form, A1111 `/sdapi` payload, PNG infotext) builds a Recipe;
the Engine is the only thing that turns one into pictures. A Recipe is validated whole before any model
loads, and errors name the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from brushwork.sampler_names import SAMPLER_NAMES

MAX_SEED = 2**32 - 1

ResizeMode = Literal["just resize", "crop and resize", "resize and fill"]
MaskedContent = Literal["fill", "original", "latent noise", "latent nothing"]


def _check_sampler(value: str | None) -> str | None:
    if value is not None and value not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    return value


def _check_multiple_of_8(value: int | None) -> int | None:
    if value is not None and value % 8:
        lower, upper = value // 8 * 8, value // 8 * 8 + 8
        raise ValueError(f"must be a multiple of 8 (got {value}; try {lower or 8} or {upper})")
    return value


class Hires(BaseModel):
    """A1111's hires fix: a first pass at the base size, an upscale, then a second img2img pass."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, gt=1.0, le=4.0, description="Upscale factor, unless resize_width/height are set.")
    resize_width: int = Field(0, ge=0, le=8192, description="Target width; 0 follows `scale`.")
    resize_height: int = Field(0, ge=0, le=8192)
    upscaler: str = Field("Latent", description="A latent mode ('Latent', 'Latent (bicubic)', ...) or an image upscaler.")
    steps: int = Field(0, ge=0, le=1000, description="Second-pass steps; 0 means the same as the first pass.")
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)
    prompt: str | None = Field(None, description="Second-pass prompt; None reuses the first.")
    negative_prompt: str | None = None
    sampler: str | None = None

    _sampler = field_validator("sampler")(classmethod(lambda cls, v: _check_sampler(v)))
    _sizes = field_validator("resize_width", "resize_height")(classmethod(lambda cls, v: _check_multiple_of_8(v or None) or v))


class Outpaint(BaseModel):
    """Extend the canvas by this many pixels on each side and paint the new area."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    top: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)

    _sizes = field_validator("left", "right", "top", "bottom")(classmethod(lambda cls, v: _check_multiple_of_8(v)))

    @model_validator(mode="after")
    def _some_side(self) -> "Outpaint":
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("give at least one side to extend (left, right, top, bottom)")
        return self


class LoraUse(BaseModel):
    """A LoRA (or LyCORIS) file from the models folder's Lora/ or LyCORIS/, applied for this recipe."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, description="File name (without extension) below Lora/.")
    weight: float = Field(1.0, ge=-10.0, le=10.0, description="Multiplier for the text encoders, and for the "
                          "U-Net unless unet_weight is given (A1111's <lora:name:te:unet>).")
    unet_weight: float | None = Field(None, ge=-10.0, le=10.0)

    @property
    def multipliers(self) -> tuple[float, float]:
        """(text encoders, U-Net)."""
        return self.weight, self.weight if self.unet_weight is None else self.unet_weight


ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
ControlResize = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]
CONTROL_MODES: tuple[str, ...] = ControlMode.__args__


class ControlUnit(BaseModel):
    """One ControlNet or T2I-Adapter unit, with the A1111 ControlNet extension's settings and meanings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255, description="File or folder name below ControlNet/ "
                       "(A1111's \"name [hash]\" works too).")
    image: str | None = Field(None, description="The unit's picture; None uses the init image (img2img).")
    module: str = Field("none", description="The preprocessor run on the picture first (A1111's module names).")
    weight: float = Field(1.0, ge=0.0, le=2.0)
    guidance_start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps where the unit starts.")
    guidance_end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps where it stops.")
    control_mode: ControlMode = "Balanced"
    resize_mode: ControlResize = "Crop and Resize"
    processor_res: int = Field(512, ge=64, le=4096, description="The preprocessor's working size (short side).")
    threshold_a: float | None = Field(None, description="The module's first setting (canny: low threshold).")
    threshold_b: float | None = Field(None, description="The module's second setting (canny: high threshold).")
    pixel_perfect: bool = Field(False, description="Pick processor_res from the picture and output sizes.")

    @field_validator("control_mode", mode="before")
    @classmethod
    def _mode_by_number(cls, value: object) -> object:
        # The extension's API takes the mode's index too (0, 1, 2).
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CONTROL_MODES):
            return CONTROL_MODES[value]
        return value

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_by_alias(cls, value: object) -> object:
        from brushwork.control.preprocessors import resize_mode_name

        return resize_mode_name(value) if isinstance(value, (int, str)) else value

    @model_validator(mode="after")
    def _start_before_end(self) -> "ControlUnit":
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) must not be after guidance_end "
                             f"({self.guidance_end})")
        return self


class SdUpscale(BaseModel):
    """A1111's "SD upscale" img2img script: upscale the init picture by `scale` with `upscaler`, repaint it in
    tiles of the recipe's width x height overlapping by `overlap` pixels, and blend the tiles back together."""

    model_config = ConfigDict(extra="forbid")

    overlap: int = Field(64, ge=0, le=2048, description="Pixels neighbouring tiles share (A1111's 'Tile overlap').")
    upscaler: str = Field("None", min_length=1, description="An image upscaler by name; 'None' keeps the init size.")
    scale: float = Field(2.0, ge=1.0, le=8.0, description="Upscale factor (ignored by the 'None' upscaler, as in A1111).")
    batch_size: int = Field(1, ge=1, le=64, description="Tiles denoised together in one pass (A1111's batch_size).")


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
    tiling: bool = Field(False, description="Seamless texture: the picture wraps around at its edges.")
    restore_faces: str | None = Field(None, description="A face restorer (CodeFormer, GFPGAN, RestoreFormer) "
                                      "run on each picture; None: none.")
    codeformer_weight: float = Field(0.5, ge=0.0, le=1.0, description="CodeFormer's fidelity (0: most change).")
    eta_noise_seed_delta: int = Field(0, ge=0, le=MAX_SEED,
                                      description="A1111's ENSD: the sampler's per-step noise is seeded seed + this.")
    loras: list[LoraUse] = Field(default_factory=list, max_length=32,
                                 description="LoRAs to apply, besides the prompt's <lora:name:weight> tags.")

    # img2img: images are a file path, a data URL or plain base64 (see brushwork.images).
    init_image: str | None = Field(None, description="The picture to start from (img2img, inpainting).")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0, description="How much of the schedule is re-run.")
    resize_mode: ResizeMode = "just resize"
    mask: str | None = Field(None, description="Inpainting mask: white is repainted.")
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_mask_invert: bool = Field(False, description="Repaint what is not masked.")
    inpainting_fill: MaskedContent = Field("original", description="What the masked area starts as.")
    inpaint_full_res: bool = Field(False, description="'Only masked': work on a crop around the mask.")
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    outpaint: Outpaint | None = None
    hires: Hires | None = None
    sd_upscale: SdUpscale | None = Field(None, description="img2img only: A1111's SD upscale script (needs init_image).")
    control_units: list[ControlUnit] = Field(default_factory=list, max_length=8,
                                             description="ControlNet / T2I-Adapter units, all applied together.")

    _sizes = field_validator("width", "height")(classmethod(lambda cls, v: _check_multiple_of_8(v)))
    _sampler = field_validator("sampler")(classmethod(lambda cls, v: _check_sampler(v)))

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.init_image is None:
            for field in ("mask", "outpaint"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} needs an init_image to work on")
        elif self.hires is not None:
            raise ValueError("hires fix applies to txt2img; for img2img set the size you want directly")
        if self.mask is not None and self.outpaint is not None:
            raise ValueError("outpaint makes its own mask; give either mask or outpaint")
        if self.sd_upscale is not None:
            self._check_sd_upscale(self.sd_upscale)
        # A control unit without a picture is allowed: one parsed from an infotext waits for its picture (the
        # Engine refuses to run it without one, before any model loads).
        return self

    def _check_sd_upscale(self, settings: SdUpscale) -> None:
        # No init_image yet is allowed: an infotext's SD upscale settings wait for their picture (the
        # Engine refuses to run them without one, before any model loads).
        for field in ("mask", "outpaint"):
            if getattr(self, field) is not None:
                raise ValueError(f"sd_upscale repaints whole tiles of the upscaled picture; it takes no {field}")
        if self.tiling:
            raise ValueError("sd_upscale paints tiles of one larger picture; tiling (seamless) does not apply")
        if self.batch_size != 1:
            raise ValueError("batch_size: sd_upscale makes one picture per batch; set sd_upscale.batch_size "
                             "for the tiles denoised together")
        tile = min(side for side in (self.width, self.height) if side) if (self.width or self.height) else None
        if tile is not None and settings.overlap >= tile:
            raise ValueError(f"sd_upscale.overlap: {settings.overlap} must be smaller than the tile size "
                             f"(width x height = {self.width}x{self.height})")

    def all_loras(self) -> list[LoraUse]:
        """The prompt's `<lora:...>` tags, then `loras`: what the job applies (A1111 applies the prompt's tags
        for the whole run). Tags in the negative or hires prompts are removed from the text, not applied."""
        from brushwork.prompts import extract_loras

        tags = [LoraUse(name=ref.name, weight=ref.weight, unet_weight=ref.unet_weight)
                for ref in extract_loras(self.prompt)[1]]
        return tags + list(self.loras)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

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
