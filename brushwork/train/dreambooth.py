"""`brushwork train dreambooth`: fine-tune a whole SD 1.x, 2.x or SDXL checkpoint on a few pictures of one subject.

Every instance picture is trained with the instance prompt ("a photo of sks dog"). With prior preservation
(`class_images` > 0) the base model first paints that many pictures of the class prompt ("a photo of a dog")
through the Engine, kept in the state folder so a second run (or --resume) does not paint them again, and
every step adds their loss, weighted by `prior_weight`: the model learns the subject without forgetting what
the class looks like. The output is a single-file checkpoint in the ldm layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from brushwork.errors import BrushworkError
from brushwork.models.components import Components
from brushwork.models.single_file import save_single_file
from brushwork.train.dataset import Example
from brushwork.train.finetune import (
    Curation,
    FineTuneResult,
    Objective,
    Picture,
    RunControls,
    batch_order,
    curated_examples,
    encode_captions,
    encode_pictures,
    run_fine_tune,
    run_state,
)
from brushwork.train.loop import TrainingInterrupted
from brushwork.train.optimize import Optimization, processes
from brushwork.train.settings import StepSettings

CLASS_FOLDER = "class-images"


@dataclass(frozen=True)
class DreamBoothSettings:
    instance_prompt: str
    class_prompt: str = ""
    class_images: int = 0  # 0: no prior preservation
    prior_weight: float = 1.0
    steps: int = 400
    lr: float = 5e-6
    resolution: int = 512
    batch_size: int = 1
    train_text_encoder: bool = False
    class_steps: int = 20  # sampling steps for the class pictures
    seed: int = 0
    checkpoint_every: int = 100
    sample_every: int = 0  # steps between sample pictures (0: none), painted through the Engine
    sample_prompt: str = ""  # default: the instance prompt
    optimization: StepSettings = StepSettings()


def train_dreambooth(components: Components, paint: Callable[[str, int, int], object], data_dir: Path,
                     output: Path, settings: DreamBoothSettings, *, base_hash: str, resume: bool = False,
                     progress: bool = True, should_stop: Callable[[], bool] | None = None,
                     on_step: Callable[[str, int, float], None] | None = None,
                     curation: Curation | None = None) -> FineTuneResult:
    """`paint(prompt, seed, size)` paints with the model as it is (the Engine, in the CLI): the class pictures
    before the first step, and the sample pictures every `sample_every` steps (the state folder's samples/)."""
    if not settings.instance_prompt.strip():
        raise BrushworkError("train dreambooth: give an --instance-prompt, e.g. \"a photo of sks dog\"")
    if settings.class_images and not settings.class_prompt.strip():
        raise BrushworkError("train dreambooth: prior preservation (--class-images) needs a --class-prompt")
    state = run_state(output, {"settings": asdict(settings), "base": base_hash, "data": str(Path(data_dir).resolve())},
                      resume)
    kept = curated_examples(data_dir, output, settings.resolution, "train dreambooth",
                            default_caption=settings.instance_prompt, curation=curation)  # instance pictures need no captions
    launched = processes()
    if launched.is_main_process:  # one painter for all launched processes
        _paint_class_pictures(state.folder / CLASS_FOLDER, paint, settings, should_stop)
    launched.wait_for_everyone()

    for module in components.modules():
        module.requires_grad_(False)
    instances = [Picture(p.latents, settings.instance_prompt, p.bucket)
                 for p in encode_pictures(components, kept, settings.resolution)]
    classes = []
    if settings.class_images:
        class_examples = [Example(path, settings.class_prompt) for path in _class_paths(state.folder / CLASS_FOLDER)]
        classes = encode_pictures(components, class_examples, settings.resolution)
    trained = [components.unet] + (list(components.text_encoders) if settings.train_text_encoder else [])
    for module in trained:
        module.requires_grad_(True)
        module.float()
    parameters = [p for module in trained for p in module.parameters()]
    optimization = Optimization(parameters, lr=settings.lr, weight_decay=1e-2, settings=settings.optimization,
                                device=components.unet.device, modules=trained)
    objective = Objective(components, settings.optimization.min_snr_gamma)
    unet = components.unet

    start = 0
    saved = state.load("dreambooth.pt") if resume else None
    if saved is not None:
        for module, weights in zip(trained, saved["modules"]):
            module.load_state_dict(weights)
        optimization.load_state_dict(saved["optimization"])
        start = int(saved["step"])
    instance_order = batch_order(instances, settings.batch_size, settings.seed)
    class_order = batch_order(classes, settings.batch_size, settings.seed + 1) if classes else None

    def encode(pictures: list[Picture]):
        return encode_captions(components, [p.caption for p in pictures], [p.bucket for p in pictures])

    def loss_of(micro: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro)
        batch = [instances[i] for i in instance_order(micro)]
        loss = objective.loss(unet, *objective.noisy(batch, generator), encode(batch))
        if class_order is not None:
            prior = [classes[i] for i in class_order(micro)]
            loss = loss + settings.prior_weight * objective.loss(
                unet, *objective.noisy(prior, generator), encode(prior))
        return loss

    def checkpoint(done: int) -> None:
        if optimization.is_main:
            state.save("dreambooth.pt", {"step": done, "optimization": optimization.state_dict(),
                                         "modules": [module.state_dict() for module in trained]})

    result = run_fine_tune("dreambooth", start, settings, optimization, loss_of, checkpoint, trained,
                           RunControls(progress, should_stop, on_step), samples=state.folder / "samples", paint=paint,
                           sample_prompt=settings.sample_prompt or settings.instance_prompt)
    optimization.finish()
    if optimization.is_main:
        save_single_file(components, output, metadata={"brushwork.dreambooth": settings.instance_prompt})
    return FineTuneResult(output, settings.steps, result.losses, result.seconds, len(kept))


def _class_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("class-*.png"))


def _paint_class_pictures(folder: Path, paint: Callable[[str, int, int], object], settings: DreamBoothSettings,
                          should_stop: Callable[[], bool] | None) -> None:
    """Paint the class pictures the state folder does not hold yet (a stop request ends it between pictures)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(settings.class_images):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted("dreambooth class pictures", 0)
        path = folder / f"class-{number:04d}.png"
        if path.is_file():
            continue
        picture = paint(settings.class_prompt, settings.seed + number, settings.resolution)
        partial = path.with_name(path.name + ".partial.png")
        picture.save(partial)
        partial.replace(path)  # a picture half-written by a killed run is never taken for a finished one
    for extra in _class_paths(folder)[settings.class_images:]:
        extra.unlink()  # from an earlier run that asked for more

