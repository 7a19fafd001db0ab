"""AUTOMATIC1111's `/sdapi/v1` request and response shapes (its `modules/api/models.py`), as clients send them.

Field names, defaults and types follow A1111, so existing clients (webuiapi, Krita plugins, bots) work
unchanged. Unknown fields are ignored, as A1111 ignores them; fields for features brushwork lacks are
accepted at their neutral values and refused (422) otherwise, see `sdapi_adapter.check_unsupported`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class A1111Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationRequest(A1111Request):
    """The fields txt2img and img2img share (A1111's StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = Field("Euler", description="Deprecated: sampler_name wins when both are given.")
    scheduler: str | None = Field(None, description="A1111 1.9+'s schedule type: Automatic, Uniform or Karras.")
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


class Txt2ImgRequest(GenerationRequest):
    """A1111's StableDiffusionTxt2ImgProcessingAPI."""

    denoising_strength: float | None = Field(None, description="The hires fix's second-pass strength (0.7 if unset).")
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(GenerationRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI."""

    init_images: list[str] | None = None
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale.")
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool = Field(True, description="'Only masked' (A1111 sends true/false or 1/0).")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False


class ImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="Base64 PNGs, infotext included.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string, as A1111 sends it.")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class PngInfoRequest(A1111Request):
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ExtrasBaseRequest(A1111Request):
    """The Extras tab's settings, for one picture or a batch."""

    resize_mode: int = Field(0, description="0: scale by upscaling_resize; 1: to upscaling_resize_w x _h.")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleModeItem(BaseModel):
    name: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg]


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(description="Embeddings in use with the current model")
    skipped: dict[str, EmbeddingItem] = Field(description="Embeddings found but not in use (see docs/api.md)")


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class SDModuleItem(BaseModel):
    model_name: str
    filename: str


class FileData(BaseModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list)


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class InterrogateRequest(A1111Request):
    image: str = ""
    model: str = "clip"
