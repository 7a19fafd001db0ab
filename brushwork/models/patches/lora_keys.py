"""Which module of a loaded checkpoint a LoRA file's key means.

LoRA files name the layer they change in one of these ways, all seen in shared files:

    lora_unet_down_blocks_0_attentions_0_proj_in          kohya, SD 1.x/2.x: diffusers module names
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q   kohya, SDXL (and some SD 1.x): ldm names
    lora_te_text_model_encoder_layers_0_self_attn_q_proj  kohya text encoder (lora_te1_/lora_te2_ on SDXL)
    unet.down_blocks.0.attentions.0.proj_in               diffusers/peft (text_encoder., text_encoder_2.)
    unet.….attn1.processor.to_q_lora                      diffusers' older attention-processor layout

Rather than parse underscores back into dots (ambiguous: `to_q` or `to.q`?), the map is built forwards, from
every Linear and Conv2d the modules have, through each naming scheme, as ComfyUI's `model_lora_keys` does.
"""

from __future__ import annotations

from torch import nn

from brushwork.models.components import Components
from brushwork.models.ldm_layout import UNET_PREFIX, unet_to_ldm

Target = tuple[str, str]  # (patcher module: "unet" | "text_encoder" | "text_encoder_2", module path)

# diffusers' older attention-processor names -> the attention module's own layer names.
_PROCESSOR_NAMES = {
    ".processor.to_q_lora": ".to_q", ".processor.to_k_lora": ".to_k", ".processor.to_v_lora": ".to_v",
    ".processor.to_out_lora": ".to_out.0",
}


def lora_targets(components: Components) -> dict[str, Target]:
    """Every name a LoRA file may give a patchable layer of these components -> that layer."""
    targets: dict[str, Target] = {}
    unet_layers = _layers(components.unet)
    for path in unet_layers:
        targets["lora_unet_" + path.replace(".", "_")] = ("unet", path)
        targets["unet." + path] = ("unet", path)
    # The same layers under their ldm names (kohya's SDXL files, LyCORIS files of any family).
    ldm = unet_to_ldm({path + ".weight": path for path in unet_layers}, components.unet.config)
    for ldm_key, path in ldm.items():
        ldm_module = ldm_key[len(UNET_PREFIX): -len(".weight")]
        targets.setdefault("lora_unet_" + ldm_module.replace(".", "_"), ("unet", path))

    kohya = components.model_family.lora_text_prefixes
    encoders = [(name, module) for name, module in components.patcher.modules.items() if name != "unet"]
    for prefix, (module, encoder) in zip(kohya, encoders):
        for path in _layers(encoder):
            # Files name CLIP's layers `text_model.encoder.layers.N...`; transformers 5 dropped the
            # `text_model` level from CLIPTextModel, 4.x has it.
            named = path if path.startswith("text_model.") else "text_model." + path
            targets[prefix + named.replace(".", "_")] = (module, path)
            targets[f"{module}.{named}"] = (module, path)
    return targets


def normalise_module_key(key: str) -> str:
    """A module key in diffusers' older processor layout, as the newer layout names it."""
    for old, new in _PROCESSOR_NAMES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _layers(module: nn.Module) -> list[str]:
    return [name for name, layer in module.named_modules() if isinstance(layer, (nn.Linear, nn.Conv2d))]
