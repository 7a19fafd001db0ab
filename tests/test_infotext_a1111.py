"""`a1111_parameters` against AUTOMATIC1111's `parse_generation_parameters` (modules/infotext_utils.py, v1.10).

Each case is an infotext laid out the way an A1111 version (or an extension, or a fork) writes it, with the
complete dict a fresh A1111 v1.10 install returns for it from /sdapi/v1/png-info, worked out by reading A1111's
code: the pairs in the order found, then "Prompt" and "Negative prompt", then its defaults in its order, the
old hires fix restored, Emphasis, and the version back-compatibility flags. The dicts are compared as JSON, so
order and types (the string "1" against 1, 0 against false) count.
"""

from __future__ import annotations

import json

import pytest

from brushwork.infotext import a1111_parameters, parse_infotext, split_infotext
from brushwork.serve.api.sdapi_adapter import png_info_parameters

CASES: list[tuple[str, str, dict[str, object]]] = []


def case(name: str, text: str, expected: dict[str, object]) -> None:
    CASES.append((name, text, expected))


# -- A1111 1.0 era (no Version field yet): SD 1.5, emphasis in both prompts -------------------------------
case(
    "sd15_no_version",
    "masterpiece, best quality, 1girl, (smile:1.2)\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4)\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2233445566, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "2233445566", "Size-1": "512",
        "Size-2": "512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Prompt": "masterpiece, best quality, 1girl, (smile:1.2)",
        "Negative prompt": "lowres, bad anatomy, (worst quality:1.4)",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.2: prompt editing (square brackets weigh 1/1.1 to the emphasis parser), Clip skip, ENSD ----------------
case(
    "v1_2_prompt_editing_clip_skip_ensd",
    "a [cat:dog:0.5] in the rain\n"
    "Negative prompt: nsfw\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 9, Seed: 1234, Size: 512x768, Model hash: 7f96a1a9ca, "
    "Model: anything-v5, Clip skip: 2, ENSD: 31337, Version: v1.2.1",
    {
        "Steps": "28", "Sampler": "DPM++ 2M Karras", "CFG scale": "9", "Seed": "1234", "Size-1": "512",
        "Size-2": "768", "Model hash": "7f96a1a9ca", "Model": "anything-v5", "Clip skip": "2", "ENSD": "31337",
        "Version": "v1.2.1", "Prompt": "a [cat:dog:0.5] in the rain", "Negative prompt": "nsfw",
        "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False, "Old prompt editing timelines": True,
        "Downcast alphas_cumprod": True,
    },
)

# -- 1.5: new-style hires fix by scale --------------------------------------------------------------------
case(
    "v1_5_hires_upscale",
    "a castle on a hill, highly detailed\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Hires upscale: 2, Hires steps: 15, "
    "Hires upscaler: Latent, Version: v1.5.1",
    {
        "Steps": "30", "Sampler": "DPM++ 2M Karras", "CFG scale": "7.5", "Seed": "42", "Size-1": "512",
        "Size-2": "512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Denoising strength": "0.55",
        "Hires upscale": "2", "Hires steps": "15", "Hires upscaler": "Latent", "Version": "v1.5.1",
        "Prompt": "a castle on a hill, highly detailed", "Negative prompt": "blurry",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False, "Downcast alphas_cumprod": True,
    },
)

# -- 1.9: a Hires prompt equal to the prompt reads back as "", and Hires negative prompt is added before Prompt
case(
    "v1_9_hires_prompt_same_as_prompt_lora",
    "portrait of a knight, <lora:add_detail:0.6>\n"
    "Negative prompt: lowres, watermark\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 987654321, Size: 512x768, "
    "Model hash: e4a30e4607, Model: majicmixRealistic_v6, Denoising strength: 0.4, "
    'Hires prompt: "portrait of a knight, <lora:add_detail:0.6>", Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, '
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4',
    {
        "Steps": "25", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6", "Seed": "987654321",
        "Size-1": "512", "Size-2": "768", "Model hash": "e4a30e4607", "Model": "majicmixRealistic_v6",
        "Denoising strength": "0.4", "Hires prompt": "", "Hires upscale": "2", "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54", "Version": "v1.9.4", "Hires negative prompt": "",
        "Prompt": "portrait of a knight, <lora:add_detail:0.6>", "Negative prompt": "lowres, watermark",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.10: SDXL, a Hires prompt of its own, Hires sampler and schedule type ---------------------------------
case(
    "v1_10_sdxl_hires_prompt_differs",
    "a cozy cabin in the woods\n"
    "Negative prompt: people\n"
    "Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 5, Size: 768x512, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.3, "
    'Hires prompt: "a cozy cabin in the woods, snow", Hires negative prompt: people, Hires upscale: 1.5, '
    "Hires steps: 10, Hires upscaler: 4x-UltraSharp, Hires sampler: DPM++ 2M, Hires schedule type: Karras, "
    "Version: v1.10.1",
    {
        "Steps": "20", "Sampler": "Euler", "Schedule type": "Automatic", "CFG scale": "7", "Seed": "5",
        "Size-1": "768", "Size-2": "512", "Model hash": "31e35c80fc", "Model": "sd_xl_base_1.0",
        "Denoising strength": "0.3", "Hires prompt": "a cozy cabin in the woods, snow",
        "Hires negative prompt": "", "Hires upscale": "1.5", "Hires steps": "10",
        "Hires upscaler": "4x-UltraSharp", "Hires sampler": "DPM++ 2M", "Hires schedule type": "Karras",
        "Version": "v1.10.1", "Prompt": "a cozy cabin in the woods", "Negative prompt": "people",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires checkpoint": "Use same checkpoint",
        "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.6: SDXL with the refiner; before 1.8 a Refiner means "switch by sampling steps" ---------------------
case(
    "v1_6_sdxl_refiner",
    "cinematic photo of a lighthouse at dusk, 35mm\n"
    "Negative prompt: drawing, painting\n"
    "Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 3141592653, Size: 1024x1024, Model hash: 31e35c80fc, "
    "Model: sd_xl_base_1.0, VAE hash: 63aeecb90f, VAE: sdxl_vae.safetensors, "
    "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.6.0",
    {
        "Steps": "40", "Sampler": "DPM++ 2M Karras", "CFG scale": "5", "Seed": "3141592653", "Size-1": "1024",
        "Size-2": "1024", "Model hash": "31e35c80fc", "Model": "sd_xl_base_1.0", "VAE hash": "63aeecb90f",
        "VAE": "sdxl_vae.safetensors", "Refiner": "sd_xl_refiner_1.0 [7440042bbd]", "Refiner switch at": "0.8",
        "Version": "v1.6.0", "Prompt": "cinematic photo of a lighthouse at dusk, 35mm",
        "Negative prompt": "drawing, painting",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": True, "Downcast alphas_cumprod": True,
    },
)

# -- 1.9: SDXL refiner (no back-compat flag any more); a top-level BREAK is not emphasis ---------------------
case(
    "v1_9_sdxl_refiner_break",
    "a knight in silver armour BREAK a red dragon\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 3M SDE, Schedule type: Exponential, CFG scale: 4.5, Seed: 77, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Refiner: sd_xl_refiner_1.0 [7440042bbd], "
    "Refiner switch at: 0.75, Version: v1.9.3",
    {
        "Steps": "30", "Sampler": "DPM++ 3M SDE", "Schedule type": "Exponential", "CFG scale": "4.5",
        "Seed": "77", "Size-1": "832", "Size-2": "1216", "Model hash": "31e35c80fc", "Model": "sd_xl_base_1.0",
        "Refiner": "sd_xl_refiner_1.0 [7440042bbd]", "Refiner switch at": "0.75", "Version": "v1.9.3",
        "Prompt": "a knight in silver armour BREAK a red dragon", "Negative prompt": "blurry",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.7: inpainting, only masked, with its padding as the infotext says it (a string) ---------------------
case(
    "v1_7_inpaint_only_masked",
    "a red rose in a vase\n"
    "Negative prompt: wilted\n"
    "Steps: 32, Sampler: DPM++ SDE Karras, CFG scale: 8, Seed: 1000, Size: 512x512, Model hash: 3e16efc8, "
    "Model: sd-v1-5-inpainting, Denoising strength: 0.75, Conditional mask weight: 1.0, Mask blur: 4, "
    "Masked content: latent noise, Inpaint area: Only masked, Masked area padding: 48, Version: v1.7.0",
    {
        "Steps": "32", "Sampler": "DPM++ SDE Karras", "CFG scale": "8", "Seed": "1000", "Size-1": "512",
        "Size-2": "512", "Model hash": "3e16efc8", "Model": "sd-v1-5-inpainting", "Denoising strength": "0.75",
        "Conditional mask weight": "1.0", "Mask blur": "4", "Masked content": "latent noise",
        "Inpaint area": "Only masked", "Masked area padding": "48", "Version": "v1.7.0",
        "Prompt": "a red rose in a vase", "Negative prompt": "wilted",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked", "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False, "Downcast alphas_cumprod": True,
    },
)

# -- 1.10: inpainting the unmasked part, filled ------------------------------------------------------------
case(
    "v1_10_inpaint_not_masked",
    "a stone wall\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 12, Size: 768x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.6, Mask blur: 8, "
    "Mask mode: Inpaint not masked, Masked content: fill, Version: v1.10.0",
    {
        "Steps": "20", "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": "7", "Seed": "12",
        "Size-1": "768", "Size-2": "768", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Denoising strength": "0.6", "Mask blur": "8", "Mask mode": "Inpaint not masked",
        "Masked content": "fill", "Version": "v1.10.0", "Prompt": "a stone wall", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Old hires fix (autumn 2022): First pass size 0x0, worked out from Size (1024x768 -> 640x448) ---------------
case(
    "old_hires_fix_automatic_first_pass",
    "a landscape painting, mountains\n"
    "Negative prompt: text\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x768, Model hash: 7460a6fa, "
    "Denoising strength: 0.7, First pass size: 0x0",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1", "Size-1": 640, "Size-2": 448,
        "Model hash": "7460a6fa", "Denoising strength": "0.7", "First pass size-1": "0", "First pass size-2": "0",
        "Prompt": "a landscape painting, mountains", "Negative prompt": "text",
        "Clip skip": "1", "Hires resize-1": 1024, "Hires resize-2": 768, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Old hires fix with an explicit first pass ---------------------------------------------------------------
case(
    "old_hires_fix_explicit_first_pass",
    "a portrait of an old man\n"
    "Steps: 25, Sampler: DDIM, CFG scale: 8, Seed: 66, Size: 1024x1024, Model hash: 7460a6fa, "
    "Denoising strength: 0.6, First pass size: 512x512",
    {
        "Steps": "25", "Sampler": "DDIM", "CFG scale": "8", "Seed": "66", "Size-1": 512, "Size-2": 512,
        "Model hash": "7460a6fa", "Denoising strength": "0.6", "First pass size-1": "512",
        "First pass size-2": "512", "Prompt": "a portrait of an old man", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 1024, "Hires resize-2": 1024, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.8: LoRA and TI hashes, quoted because they hold commas and colons ------------------------------------
case(
    "v1_8_lora_and_ti_hashes",
    "masterpiece, 1girl, <lora:add_detail:0.8>, <lora:more_details:0.5>\n"
    "Negative prompt: EasyNegative, (worst quality:1.4)\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3702553003, Size: 512x768, Model hash: e4a30e4607, "
    'Model: majicmixRealistic_v6, Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef", '
    'TI hashes: "EasyNegative: c74b4e810b03", Version: v1.8.0',
    {
        "Steps": "25", "Sampler": "DPM++ 2M Karras", "CFG scale": "7", "Seed": "3702553003", "Size-1": "512",
        "Size-2": "768", "Model hash": "e4a30e4607", "Model": "majicmixRealistic_v6",
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef",
        "TI hashes": "EasyNegative: c74b4e810b03", "Version": "v1.8.0",
        "Prompt": "masterpiece, 1girl, <lora:add_detail:0.8>, <lora:more_details:0.5>",
        "Negative prompt": "EasyNegative, (worst quality:1.4)",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.10 with ADetailer: quoted values holding commas, colons and escaped quotes -----------------------------
case(
    "v1_10_adetailer_quoted_values",
    "a smiling woman, portrait\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 101, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, ADetailer model: face_yolov8n.pt, "
    'ADetailer prompt: "a smiling face, detailed eyes", ADetailer confidence: 0.3, ADetailer version: 24.9.0, '
    'Comment: "say \\"hi\\", then: leave", Version: v1.10.1',
    {
        "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "101",
        "Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "ADetailer model": "face_yolov8n.pt", "ADetailer prompt": "a smiling face, detailed eyes",
        "ADetailer confidence": "0.3", "ADetailer version": "24.9.0", "Comment": 'say "hi", then: leave',
        "Version": "v1.10.1", "Prompt": "a smiling woman, portrait", "Negative prompt": "blurry",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Multi-line prompt and negative: each line stripped, inner blank lines kept --------------------------------
case(
    "multi_line_prompt_and_negative",
    "a painting of a fox,\n"
    "  sitting in the snow  \n"
    "\n"
    "by a famous artist\n"
    "Negative prompt: ugly,\n"
    "  deformed\n"
    "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 8, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Version: v1.10.1",
    {
        "Steps": "20", "Sampler": "Euler", "CFG scale": "7", "Seed": "8", "Size-1": "512", "Size-2": "512",
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Version": "v1.10.1",
        "Prompt": "a painting of a fox,\nsitting in the snow\n\nby a famous artist",
        "Negative prompt": "ugly,\ndeformed",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- "Negative prompt:" alone on its line: the negative starts on the next line without a newline; the blank
#    line before it stays at the end of the prompt ---------------------------------------------------------
case(
    "negative_prompt_on_the_next_line",
    "a cat\n"
    "\n"
    "Negative prompt:\n"
    "blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 9, Size: 512x512, Version: v1.10.1",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "9", "Size-1": "512", "Size-2": "512",
        "Version": "v1.10.1", "Prompt": "a cat\n", "Negative prompt": "blurry",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Hypernetworks (late 2022): appended to the prompt as an extra-network tag -------------------------------
case(
    "hypernet_with_strength",
    "a portrait in anime style\n"
    "Negative prompt: lowres\n"
    "Steps: 20, Sampler: DDIM, CFG scale: 7, Seed: 10, Size: 512x512, Model hash: 925997e9, Hypernet: anime_3, "
    "Hypernet strength: 0.8",
    {
        "Steps": "20", "Sampler": "DDIM", "CFG scale": "7", "Seed": "10", "Size-1": "512", "Size-2": "512",
        "Model hash": "925997e9", "Hypernet": "anime_3", "Hypernet strength": "0.8",
        "Prompt": "a portrait in anime style<hypernet:anime_3:0.8>", "Negative prompt": "lowres",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

case(
    "hypernet_without_strength",
    "an old ship at sea\n"
    "Steps: 50, Sampler: Euler a, CFG scale: 7.5, Seed: 4, Size: 512x512, Model hash: 7460a6fa, "
    "Hypernet: aivazovsky, Clip skip: 2",
    {
        "Steps": "50", "Sampler": "Euler a", "CFG scale": "7.5", "Seed": "4", "Size-1": "512", "Size-2": "512",
        "Model hash": "7460a6fa", "Hypernet": "aivazovsky", "Clip skip": "2",
        "Prompt": "an old ship at sea<hypernet:aivazovsky:1.0>", "Negative prompt": "",
        "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.6.1 with Dynamic Prompts: Template / Negative Template ------------------------------------------------
case(
    "v1_6_dynamic_prompts_template",
    "a red dragon, watercolor\n"
    "Negative prompt: photo\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 55, Size: 512x512, Model hash: 6ce0161689, "
    'Model: v1-5-pruned-emaonly, Template: "a {red|blue} dragon, {watercolor|oil}", Negative Template: photo, '
    "Version: v1.6.1",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "55", "Size-1": "512", "Size-2": "512",
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Template": "a {red|blue} dragon, {watercolor|oil}", "Negative Template": "photo", "Version": "v1.6.1",
        "Prompt": "a red dragon, watercolor", "Negative prompt": "photo",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False, "Downcast alphas_cumprod": True,
    },
)

# -- 1.10 writing RNG, Emphasis and Clip skip itself: nothing of those is filled in ---------------------------
case(
    "v1_10_rng_emphasis_clip_skip_present",
    "(masterpiece:1.2), a fox in the forest\n"
    "Negative prompt: lowres\n"
    "Steps: 28, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 6.5, Seed: 20240601, Size: 896x1152, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Clip skip: 2, RNG: CPU, Emphasis: No norm, Version: v1.10.1",
    {
        "Steps": "28", "Sampler": "DPM++ 2M SDE", "Schedule type": "Karras", "CFG scale": "6.5",
        "Seed": "20240601", "Size-1": "896", "Size-2": "1152", "Model hash": "31e35c80fc",
        "Model": "sd_xl_base_1.0", "Clip skip": "2", "RNG": "CPU", "Emphasis": "No norm", "Version": "v1.10.1",
        "Prompt": "(masterpiece:1.2), a fox in the forest", "Negative prompt": "lowres",
        "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32,
        "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.8+ with FP8 weights: Cache FP16 weight for LoRA defaults to False then ---------------------------------
case(
    "v1_8_fp8_weight",
    "a sports car on a wet road\n"
    "Steps: 30, Sampler: DPM++ 2M, CFG scale: 6, Seed: 8080, Size: 1024x1024, Model hash: 31e35c80fc, "
    "Model: sd_xl_base_1.0, FP8 weight: Enable for SDXL, Version: v1.8.0",
    {
        "Steps": "30", "Sampler": "DPM++ 2M", "CFG scale": "6", "Seed": "8080", "Size-1": "1024",
        "Size-2": "1024", "Model hash": "31e35c80fc", "Model": "sd_xl_base_1.0", "FP8 weight": "Enable for SDXL",
        "Version": "v1.8.0", "Prompt": "a sports car on a wet road", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "Cache FP16 weight for LoRA": False,
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.5.2 with DDIM and prompt editing: every pre-1.6 flag at once -----------------------------------------
case(
    "v1_5_ddim_all_backcompat_flags",
    "a [blue:red:10] bird on a branch\n"
    "Steps: 50, Sampler: DDIM, CFG scale: 7, Seed: 31, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Version: v1.5.2",
    {
        "Steps": "50", "Sampler": "DDIM", "CFG scale": "7", "Seed": "31", "Size-1": "512", "Size-2": "512",
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Version": "v1.5.2",
        "Prompt": "a [blue:red:10] bird on a branch", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False, "Old prompt editing timelines": True, "Pad conds v0": True,
        "Downcast alphas_cumprod": True,
    },
)

# -- Development builds: "v1.6.0-2-g..." is 1.6.0.post2 (not before 1.6.0, before 1.7.0-225) ------------------
case(
    "dev_build_v1_6_post2",
    "a [red:blue:5] kite\n"
    "Steps: 20, Sampler: PLMS, CFG scale: 7, Seed: 3, Size: 512x512, Version: v1.6.0-2-g4afaaf8a",
    {
        "Steps": "20", "Sampler": "PLMS", "CFG scale": "7", "Seed": "3", "Size-1": "512", "Size-2": "512",
        "Version": "v1.6.0-2-g4afaaf8a", "Prompt": "a [red:blue:5] kite", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False, "Downcast alphas_cumprod": True,
    },
)

# -- "v1.7.0-230-g..." is after 1.7.0-225: no Downcast; a Refiner before 1.8 still switches by steps -----------
case(
    "dev_build_v1_7_post230_refiner",
    "a snowy mountain village\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 17, Size: 1024x1024, Model: sd_xl_base_1.0, "
    "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.7.0-230-g7a1b2c3d",
    {
        "Steps": "30", "Sampler": "DPM++ 2M Karras", "CFG scale": "7", "Seed": "17", "Size-1": "1024",
        "Size-2": "1024", "Model": "sd_xl_base_1.0", "Refiner": "sd_xl_refiner_1.0 [7440042bbd]",
        "Refiner switch at": "0.8", "Version": "v1.7.0-230-g7a1b2c3d", "Prompt": "a snowy mountain village",
        "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": True,
    },
)

# -- Forge's version string is no version to A1111: no back-compat, and the Hires prompts are read as new -----
case(
    "forge_version_hires_negative_only",
    "a fox\n"
    "Negative prompt: lowres\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 2, Size: 896x1152, "
    "Model hash: a3b6d7b9a1, Model: flux1-dev-bnb-nf4, Denoising strength: 0.5, Hires negative prompt: lowres, "
    "Hires upscale: 1.5, Hires upscaler: Latent, Version: f2.0.1v1.10.1-previous-224-g900196889",
    {
        "Steps": "20", "Sampler": "Euler", "Schedule type": "Simple", "CFG scale": "1", "Seed": "2",
        "Size-1": "896", "Size-2": "1152", "Model hash": "a3b6d7b9a1", "Model": "flux1-dev-bnb-nf4",
        "Denoising strength": "0.5", "Hires negative prompt": "", "Hires upscale": "1.5",
        "Hires upscaler": "Latent", "Version": "f2.0.1v1.10.1-previous-224-g900196889", "Hires prompt": "",
        "Prompt": "a fox", "Negative prompt": "lowres",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.6: a Hires prompt before 1.8.0-139 is kept as written, even when it equals the prompt -------------------
case(
    "v1_6_hires_prompt_kept",
    "a lake at dawn\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 6, Size: 512x512, Denoising strength: 0.45, "
    "Hires prompt: a lake at dawn, Hires upscale: 2, Hires upscaler: Latent, Version: v1.6.0",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "6", "Size-1": "512", "Size-2": "512",
        "Denoising strength": "0.45", "Hires prompt": "a lake at dawn", "Hires upscale": "2",
        "Hires upscaler": "Latent", "Version": "v1.6.0", "Prompt": "a lake at dawn", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
        "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
        "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full",
        "VAE Decoder": "Full", "FP8 weight": "Disable", "Refiner switch by sampling steps": False,
        "Downcast alphas_cumprod": True,
    },
)

# -- A last line with fewer than three pairs is prompt -------------------------------------------------------
case(
    "fewer_than_three_pairs_is_prompt",
    "a lighthouse at dusk\nstyle: noir, mood: calm",
    {
        "Prompt": "a lighthouse at dusk\nstyle: noir, mood: calm", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- The regex's quirks: a bare flag and a one-letter key are skipped, an empty value is dropped, a key stops
#    at "." (so "NGMS.scale" reads as "scale"), values keep trailing spaces, a quote that does not end the pair
#    is plain text, and "64 x 64" / "-1x-1" are no sizes ----------------------------------------------------
case(
    "regex_quirks",
    "a quirky line\n"
    "Steps: 20, Sampler: Euler, Tiling, CFG scale: 7, Seed: 3, Size: 512x512, Model: , "
    "Hires upscaler: 4x+ fancy, A: b, Size 2: 64 x 64, NGMS.scale: 0.5, Denoising strength: 0.5 , "
    'Note: "a, b" c, Seed resize from: -1x-1',
    {
        "Steps": "20", "Sampler": "Euler", "CFG scale": "7", "Seed": "3", "Size-1": "512", "Size-2": "512",
        "Hires upscaler": "4x+ fancy", "Size 2": "64 x 64", "scale": "0.5", "Denoising strength": "0.5 ",
        "Note": '"a', "Seed resize from": "-1x-1", "Prompt": "a quirky line", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Quoting edge cases: bad JSON kept with its quotes, a quoted size still split, "" kept as an empty string
#    (it is not empty before unquoting), a repeated key keeps its first place and its last value -------------
case(
    "quoting_edge_cases_and_repeated_key",
    "a bird\n"
    'Steps: 10, Sampler: Euler, CFG scale: 7, Comment: "say \\q", Quoted: "512x512", Empty quotes: "", '
    "Steps: 12, Version: v1.10.1",
    {
        "Steps": "12", "Sampler": "Euler", "CFG scale": "7", "Comment": '"say \\q"', "Quoted-1": "512",
        "Quoted-2": "512", "Empty quotes": "", "Version": "v1.10.1", "Prompt": "a bird", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Windows line endings ----------------------------------------------------------------------------------
case(
    "crlf_line_endings",
    "a cat\r\nNegative prompt: dog\r\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64, "
    "Version: v1.10.1\r\n",
    {
        "Steps": "12", "Sampler": "Euler", "CFG scale": "5", "Seed": "9", "Size-1": "64", "Size-2": "64",
        "Version": "v1.10.1", "Prompt": "a cat", "Negative prompt": "dog",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- 1.10: hires fix to a fixed size (strings, no old-hires restoring) and a seed resize ----------------------
case(
    "v1_10_hires_resize_and_seed_resize",
    "a city at night, neon\n"
    "Negative prompt: daylight\n"
    "Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 246, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Seed resize from: 640x960, Denoising strength: 0.5, "
    "Hires resize: 1024x1536, Hires steps: 12, Hires upscaler: Latent (nearest-exact), Version: v1.10.1",
    {
        "Steps": "24", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "246",
        "Size-1": "512", "Size-2": "768", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Seed resize from-1": "640", "Seed resize from-2": "960", "Denoising strength": "0.5",
        "Hires resize-1": "1024", "Hires resize-2": "1536", "Hires steps": "12",
        "Hires upscaler": "Latent (nearest-exact)", "Version": "v1.10.1", "Prompt": "a city at night, neon",
        "Negative prompt": "daylight",
        "Clip skip": "1", "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
        "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0, "Schedule min sigma": 0,
        "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

# -- Parameters only (empty prompts) and a negative prompt only ---------------------------------------------
case(
    "parameters_only",
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Version: v1.10.1",
    {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1", "Size-1": "512", "Size-2": "512",
        "Model hash": "6ce0161689", "Version": "v1.10.1", "Prompt": "", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)

case(
    "negative_prompt_only_bracketed_break",
    "Negative prompt: (bad hands BREAK extra fingers)\n"
    "Steps: 20, Sampler: UniPC, CFG scale: 7, Seed: 1, Size: 512x512, Version: v1.10.1",
    {
        "Steps": "20", "Sampler": "UniPC", "CFG scale": "7", "Seed": "1", "Size-1": "512", "Size-2": "512",
        "Version": "v1.10.1", "Prompt": "", "Negative prompt": "(bad hands BREAK extra fingers)",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable", "Emphasis": "Original",
        "Refiner switch by sampling steps": False,
    },
)

# -- An empty text: what A1111's png-info answers for a picture without parameters ----------------------------
case(
    "empty_text",
    "",
    {
        "Prompt": "", "Negative prompt": "",
        "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
        "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
        "Schedule type": "Automatic", "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    },
)


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=[n for n, _, _ in CASES])
def test_a1111_parameters_match_parse_generation_parameters(text: str, expected: dict[str, object]) -> None:
    parsed = a1111_parameters(text)
    assert parsed == expected
    assert json.dumps(parsed) == json.dumps(expected)  # same order, same JSON types


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20 and len({name for name, _, _ in CASES}) == len(CASES)


def test_the_sdapi_png_info_uses_it() -> None:
    _, text, expected = CASES[0]
    assert json.dumps(png_info_parameters(text)) == json.dumps(expected)


# brushwork's own reading trims values and takes keys A1111's regex cannot (one letter, "."): only there do
# the two differ.
LENIENT_CASES = {"regex_quirks"}


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=[n for n, _, _ in CASES])
def test_split_infotext_reads_like_a1111(text: str, expected: dict[str, object]) -> None:
    name = next(n for n, t, _ in CASES if t == text)
    prompt, negative, params = split_infotext(text)
    # The prompts agree (A1111 adds a Hypernet to its Prompt)...
    hypernet = ""
    if "Hypernet" in expected:
        hypernet = f"<hypernet:{expected['Hypernet']}:{expected.get('Hypernet strength', '1.0')}>"
    assert (prompt + hypernet, negative) == (expected["Prompt"], expected["Negative prompt"])
    if name in LENIENT_CASES:
        return
    # ...and so does every pair, but for the sizes A1111 splits and the Hires prompts it empties.
    for key, value in params.items():
        if key in expected:
            assert expected[key] in (value, "" if key.startswith("Hires") else value), key
        else:
            assert f"{key}-1" in expected, key


def test_parse_infotext_reads_the_old_hires_fix_like_a1111() -> None:
    [(_, text, expected)] = [c for c in CASES if c[0] == "old_hires_fix_automatic_first_pass"]
    recipe, _ = parse_infotext(text)
    assert (recipe.width, recipe.height) == (expected["Size-1"], expected["Size-2"]) == (640, 448)
    assert recipe.hires is not None
    assert (recipe.hires.resize_width, recipe.hires.resize_height) == (1024, 768)
    assert recipe.hires.denoising_strength == 0.7

    [(_, text, _)] = [c for c in CASES if c[0] == "old_hires_fix_explicit_first_pass"]
    recipe, _ = parse_infotext(text)
    assert recipe.hires is not None
    assert (recipe.width, recipe.height) == (512, 512)
    assert (recipe.hires.resize_width, recipe.hires.resize_height) == (1024, 1024)


def test_png_info_parameters_command(tmp_path, capsys) -> None:
    from PIL import Image

    from brushwork.cli import main
    from brushwork.output import save_png

    name, text, expected = CASES[3]
    picture = save_png(Image.new("RGB", (8, 8)), tmp_path / "a1111.png", infotext=text, recipe_json=None)
    assert main(["png-info", "--parameters", str(picture)]) == 0
    assert json.loads(capsys.readouterr().out) == expected
