"""`brushwork train lora`: a LoRA for any SD 1.x, 2.x or SDXL checkpoint from a folder of captioned pictures.

peft puts the adapters where kohya's trainer does: the U-Net's transformer blocks (attention, feed-forward and
the 1x1 projections around them) and, with `train_text_encoder`, the text encoders' attention and MLP;
the base weights stay frozen. Pictures are curated first (train/curation.py; the report is saved beside the
output), resized into aspect-ratio buckets and encoded by the VAE once. Each step draws its batch (one bucket),
noise and timesteps from generators seeded by (seed, step), so a run resumed from its state folder continues
to the same weights as an uninterrupted one (on the same machine). The output is a kohya-layout `.safetensors`
with the `ss_*` metadata A1111 shows; brushwork, A1111, ComfyUI and diffusers' `load_lora_weights` load it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from brushwork.engine.embeddings import BUNDLE_PREFIX, embedding_state
from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.train.finetune import (
    Curation,
    FineTuneResult,
    NewWord,
    Objective,
    RunControls,
    batch_captions,
    batch_order,
    curated_examples,
    encode_captions,
    encode_pictures,
    run_fine_tune,
    run_state,
    sample_file,
    shuffled_tags,
)
from brushwork.train.optimize import Optimization
from brushwork.train.settings import StepSettings

# kohya's networks.lora defaults: every Linear (and 1x1 projection) of the U-Net's transformer blocks, and of
# the text encoder's attention and MLP.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# With a conv rank (kohya's conv_dim: "LoCon"), also the ResNet blocks' 3x3 convolutions, where a U-Net's
# highest-resolution levels (often without attention) draw outlines.
CONV_TARGETS = ["conv1", "conv2"]


@dataclass(frozen=True)
class LoraTrainSettings:
    rank: int = 8
    alpha: float = 8.0
    conv_rank: int = 0  # 0: no conv adapters
    conv_alpha: float = 1.0
    steps: int = 500
    lr: float = 1e-4
    warmup: int = 0
    resolution: int = 512
    batch_size: int = 1
    train_text_encoder: bool = False
    caption_dropout: float = 0.0
    shuffle_tags: bool = False  # kohya's shuffle_caption
    keep_tokens: int = 0  # tags at the front that stay in place when shuffling
    new_words: tuple[tuple[str, str], ...] = ()  # (word, init word or ""): pivotal tuning's learnt token vectors
    word_lr: float | None = None  # the new words' learning rate (None: lr)
    seed: int = 0
    checkpoint_every: int = 100
    sample_every: int = 0  # steps between sample pictures (0: none), painted through the Engine
    sample_prompt: str = ""  # default: the first picture's caption
    optimization: StepSettings = StepSettings()


def train_lora(components: Components, data_dir: Path, output: Path, settings: LoraTrainSettings, *,
               base_name: str, base_hash: str, resume: bool = False, progress: bool = True,
               should_stop: Callable[[], bool] | None = None,
               on_step: Callable[[str, int, float], None] | None = None, curation: Curation | None = None,
               paint: Callable[[str, int, int], object] | None = None) -> FineTuneResult:
    """`paint(prompt, seed, size)` makes a picture with the model as it is (the Engine, in the CLI): the sample
    pictures every `sample_every` steps, saved in the state folder's samples/."""
    from peft import LoraConfig, inject_adapter_in_model

    if settings.rank < 1 or settings.steps < 1 or settings.batch_size < 1 or settings.conv_rank < 0:
        raise BrushworkError("train lora: --rank, --steps and --batch-size must be at least 1, --conv-rank at least 0")
    state = run_state(output, {"settings": asdict(settings), "base": base_hash, "data": str(Path(data_dir).resolve())},
                      resume)
    kept = curated_examples(data_dir, output, settings.resolution, "train lora", curation=curation)

    unet = components.unet
    device = unet.device
    for module in components.modules():
        module.requires_grad_(False)
    pictures = encode_pictures(components, kept, settings.resolution)
    torch.manual_seed(settings.seed)  # the adapters' initial weights
    # peft's own injection (not transformers' add_adapter, which wants a newer peft than is available here).
    conv = {name: settings.conv_rank for name in CONV_TARGETS} if settings.conv_rank else {}
    unet_config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian",
                             target_modules=UNET_TARGETS + list(conv), rank_pattern=conv,
                             alpha_pattern={name: settings.conv_alpha for name in conv})
    trained = [inject_adapter_in_model(unet_config, unet)]
    if settings.train_text_encoder:
        trained += [inject_adapter_in_model(LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                                                       init_lora_weights="gaussian", target_modules=TEXT_TARGETS),
                                            encoder) for encoder in components.text_encoders]
    parameters = [p for module in trained for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()  # adapters train in float32 even on a float16 base
    words = [NewWord.start(components, word, init) for word, init in settings.new_words]
    if words:  # pivotal tuning: the words' vectors at their own rate, undecayed (as textual inversion trains them)
        parameters.append({"params": [vectors for word in words for vectors in word.vectors],
                           "lr_scale": (settings.word_lr or settings.lr) / settings.lr, "weight_decay": 0.0})
    optimization = Optimization(parameters, lr=settings.lr, weight_decay=1e-2, settings=settings.optimization,
                                device=device, modules=trained)
    objective = Objective(components, settings.optimization.min_snr_gamma)

    start = 0
    saved = state.load("lora.pt") if resume else None
    if saved is not None:
        for module, weights in zip(trained, saved["adapters"]):
            module.load_state_dict(weights, strict=False)
        with torch.no_grad():
            for word, vectors in zip(words, saved["words"]):
                for live, saved_vectors in zip(word.vectors, vectors):
                    live.copy_(saved_vectors)
        optimization.load_state_dict(saved["optimization"])
        start = int(saved["step"])

    order = batch_order(pictures, settings.batch_size, settings.seed)

    def loss_of(micro: int) -> torch.Tensor:
        batch = order(micro)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro)
        captions = batch_captions(pictures, batch, generator, settings.caption_dropout)
        if settings.shuffle_tags:
            captions = [shuffled_tags(caption, settings.keep_tokens, generator) for caption in captions]
        noisy, timesteps, target = objective.noisy([pictures[i] for i in batch], generator)
        text = encode_captions(components, captions, [pictures[i].bucket for i in batch], words)
        return objective.loss(unet, noisy, timesteps, target, text)

    def checkpoint(done: int) -> None:
        if optimization.is_main:
            state.save("lora.pt", {"step": done, "optimization": optimization.state_dict(),
                                   "adapters": [_adapter_weights(module) for module in trained],
                                   "words": [[v.detach().clone() for v in word.vectors] for word in words]})

    def save_words() -> None:  # for the sample painter, which finds them as embeddings of the state folder
        for word in words:
            path = sample_file(output, word.word)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(embedding_state(word.vectors), str(path))

    started = time.time()
    result = run_fine_tune("lora", start, settings, optimization, loss_of, checkpoint, trained,
                           RunControls(progress, should_stop, on_step), samples=state.folder / "samples", paint=paint,
                           sample_prompt=settings.sample_prompt or pictures[0].caption, warmup=settings.warmup,
                           before_sample=save_words if words else None)
    optimization.finish()
    if optimization.is_main:
        metadata = _metadata(settings, components, kept, base_name, base_hash, output, started)
        bundled = {f"{BUNDLE_PREFIX}{word.word}.{key}": tensor for word in words
                   for key, tensor in embedding_state(word.vectors, bundled=True).items()}
        save_file(kohya_state_dict(components, settings) | bundled, str(output), metadata=metadata)
    return FineTuneResult(output, settings.steps, result.losses, result.seconds, len(kept))


def _adapter_weights(module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items() if "lora_" in name}


def kohya_state_dict(components: Components, settings: LoraTrainSettings) -> dict[str, torch.Tensor]:
    """The trained adapters under kohya's names (`lora_unet_…`, `lora_te_text_model_…`), with `.alpha`."""
    from peft.tuners.lora import LoraLayer

    modules = [("lora_unet_", components.unet, "")]
    if settings.train_text_encoder:
        encoders = components.text_encoders
        for index, encoder in enumerate(encoders):
            # kohya: lora_te_ for one encoder, lora_te1_/lora_te2_ for SDXL's two. Files name CLIP's layers
            # `text_model.…`; transformers 5's CLIPTextModel has no such level.
            prefix = "lora_te_" if len(encoders) == 1 else f"lora_te{index + 1}_"
            modules.append((prefix, encoder, "" if hasattr(encoder, "text_model") else "text_model."))
    state = {}
    for prefix, module, level in modules:
        for path, layer in module.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            name = prefix + (level + path).replace(".", "_")
            for part, factors in (("lora_down.weight", layer.lora_A), ("lora_up.weight", layer.lora_B)):
                state[f"{name}.{part}"] = factors["default"].weight.detach().float().cpu().contiguous()
            state[f"{name}.alpha"] = torch.tensor(float(layer.lora_alpha["default"]))
    return state


def _metadata(settings: LoraTrainSettings, components: Components, examples, base_name: str, base_hash: str,
              output: Path, started: float) -> dict[str, str]:
    """kohya's `ss_*` keys, as A1111's LoRA cards show them."""
    tags: dict[str, dict[str, int]] = {}
    for example in examples:
        folder = example.path.parent.name
        for tag in (part.strip() for part in example.caption.split(",")):
            if tag:
                tags.setdefault(folder, {})[tag] = tags.setdefault(folder, {}).get(tag, 0) + example.repeats
    version = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}.get(components.family, components.family)
    architecture = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2",
                    "sdxl": "stable-diffusion-xl-v1-base"}.get(components.family, components.family)
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(settings.rank),
        "ss_network_args": json.dumps({"conv_dim": str(settings.conv_rank), "conv_alpha": f"{settings.conv_alpha:g}"}
                                      if settings.conv_rank else {}),
        "ss_network_alpha": f"{settings.alpha:g}", "ss_base_model_version": version,
        "ss_sd_model_name": base_name, "ss_new_sd_model_hash": base_hash, "ss_output_name": output.stem,
        "ss_resolution": f"({settings.resolution}, {settings.resolution})", "ss_max_train_steps": str(settings.steps),
        "ss_learning_rate": f"{settings.lr:g}", "ss_num_train_images": str(sum(e.repeats for e in examples)),
        "ss_batch_size_per_device": str(settings.batch_size), "ss_seed": str(settings.seed),
        "ss_gradient_accumulation_steps": str(settings.optimization.accumulation),
        "ss_mixed_precision": settings.optimization.mixed_precision,
        "ss_gradient_checkpointing": str(settings.optimization.gradient_checkpointing),
        "ss_training_started_at": f"{started:.0f}", "ss_training_finished_at": f"{time.time():.0f}",
        "ss_text_encoder_lr": f"{settings.lr:g}" if settings.train_text_encoder else "0",
        "ss_tag_frequency": json.dumps(tags), "ss_caption_dropout_rate": f"{settings.caption_dropout:g}",
        "modelspec.architecture": f"{architecture}/lora",
    }
