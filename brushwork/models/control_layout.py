"""ControlNet and T2I-Adapter key layouts -> diffusers' names, as tables to check by eye against the originals.

ControlNet, lllyasviel's layout (ControlNet's `cldm/cldm.py` `ControlNet`; the A1111 extension ships it
under `control_model.`): diffusers' `convert_controlnet_checkpoint` renames the U-Net-like parts
(`time_embed`, `input_blocks`, `zero_convs`, `middle_block`, `middle_block_out`). Two parts it gets wrong
or leaves out are renamed here:

* `input_hint_block`: convolutions at the even places of a Sequential (SiLUs between them), the first
  taking the picture, the last the zero-initialised one into the U-Net's width. diffusers' converter
  assumes the real models' four widths (16, 32, 96, 256: the last convolution at place 14); models with
  other widths (ours, at tiny size) have the last one elsewhere.
* `label_emb` (SDXL's "adm" input: pooled text + size/crop ids): diffusers has the table but its
  converter does not apply it.

T2I-Adapter, TencentARC's layout (T2I-Adapter's `ldm/modules/encoders/adapter.py`), as
diffusers' `scripts/convert_original_t2i_adapter.py` reads it:

* `Adapter` (built with sk=True, use_conv=False, as every published model is): one flat `body` list of
  ResnetBlocks, `num_res_blocks` per level, so block K is level K // n, resnet K % n in diffusers'
  `FullAdapter`. A level's first block has an `in_conv` when the width changes.
* `Adapter_light`: one `extractor` per level, its ResnetBlock_lights in a nested `body`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

StateDict = dict[str, torch.Tensor]

# --- ControlNet -------------------------------------------------------------------------------------------

# The top-level modules of cldm's ControlNet, by their names in the file (after `control_model.`).
CLDM_PARTS = (
    "time_embed.",
    "label_emb.",
    "input_hint_block.",
    "input_blocks.",
    "zero_convs.",
    "middle_block.",
    "middle_block_out.",
)

# ldm name -> diffusers name of SDXL's addition embedding, from diffusers' own (diffusers -> ldm) table.
LABEL_EMB = {ldm: ours for ours, ldm in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items()}


def hint_block_to_diffusers(hint: Mapping[str, torch.Tensor]) -> StateDict:
    """`input_hint_block.N.*` -> `controlnet_cond_embedding.*`: N=0 is conv_in, the last N conv_out and
    each one between `blocks.(N/2 - 1)` (diffusers' ModuleList holds only the convolutions)."""
    places = sorted({int(key.split(".")[1]) for key in hint})
    last = places[-1]
    out: StateDict = {}
    for key, tensor in hint.items():
        _, place, param = key.split(".", 2)
        n = int(place)
        module = "conv_in" if n == 0 else "conv_out" if n == last else f"blocks.{n // 2 - 1}"
        out[f"controlnet_cond_embedding.{module}.{param}"] = tensor
    return out


def cldm_layers_per_block(cldm: Mapping[str, torch.Tensor]) -> int:
    """ResBlocks per level: the `input_blocks` before the first Downsample (`N.0.op`), less conv_in."""
    blocks = sorted({int(key.split(".")[1]) for key in cldm if key.startswith("input_blocks.")})
    for n in blocks[1:]:
        if f"input_blocks.{n}.0.op.weight" in cldm:
            return n - 1
    return len(blocks) - 1  # a single level: no Downsample


# --- T2I-Adapter ------------------------------------------------------------------------------------------

# (TencentARC name, diffusers name). In `Adapter`, {level} and {j} come from the flat block number K.
FULL_ADAPTER: tuple[tuple[str, str], ...] = (
    (r"conv_in\.(?P<param>weight|bias)", "adapter.conv_in.{param}"),
    (r"body\.(?P<K>\d+)\.in_conv\.(?P<param>weight|bias)", "adapter.body.{level}.in_conv.{param}"),
    (r"body\.(?P<K>\d+)\.(?P<conv>block1|block2)\.(?P<param>weight|bias)",
     "adapter.body.{level}.resnets.{j}.{conv}.{param}"),
)
LIGHT_ADAPTER: tuple[tuple[str, str], ...] = (
    (r"body\.(?P<level>\d+)\.(?P<conv>in_conv|out_conv)\.(?P<param>weight|bias)",
     "adapter.body.{level}.{conv}.{param}"),
    (r"body\.(?P<level>\d+)\.body\.(?P<j>\d+)\.(?P<conv>block1|block2)\.(?P<param>weight|bias)",
     "adapter.body.{level}.resnets.{j}.{conv}.{param}"),
)


def unmatched_keys(state: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...]) -> list[str]:
    """The keys no pattern of `table` names (tensors of a variant diffusers cannot build)."""
    return sorted(key for key in state if not any(re.fullmatch(pattern, key) for pattern, _ in table))


def adapter_to_diffusers(
    state: Mapping[str, torch.Tensor], table: tuple[tuple[str, str], ...], *, num_res_blocks: int = 1
) -> StateDict:
    """Rename every key by `table`; `num_res_blocks` splits `Adapter`'s flat block number K."""
    out: StateDict = {}
    for key, tensor in state.items():
        for pattern, template in table:
            if match := re.fullmatch(pattern, key):
                fields = match.groupdict()
                if "K" in fields:
                    fields["level"], fields["j"] = divmod(int(fields.pop("K")), num_res_blocks)
                out[template.format(**fields)] = tensor
                break
        else:
            raise KeyError(f"T2I-Adapter tensor {key!r} has no place in diffusers' layout")
    return out


def adapter_res_blocks(state: Mapping[str, torch.Tensor]) -> int | None:
    """`Adapter`'s ResnetBlocks per level: the place of the first block that changes width (level 1's
    first), or None when no block does (the levels cannot be told apart)."""
    changes = [int(m.group(1)) for key in state if (m := re.fullmatch(r"body\.(\d+)\.in_conv\.weight", key))]
    return min(changes) if changes else None
