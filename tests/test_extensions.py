"""The denoiser's extension seam: a demo extension (a constant mid-block residual between begin 0.3 and end
0.6) on one job of a grouped batch changes only that job's picture, and only from its first active step.

Latents are compared within the tolerance test_sampler_seeds.py explains (a batch of another size sums its
GEMMs in another order); inside one batch shape, rows the extension does not own stay bit-identical."""

from __future__ import annotations

import pytest
import torch

from brushwork.engine.engine import Engine
from brushwork.engine.extensions import DenoiseContext, Extension
from brushwork.models.store import ModelStore
from brushwork.recipe import Hires, Recipe
from tiny_models import write_tiny_checkpoint

STEPS = 10


class ConstantResidual(Extension):
    """Adds `value` to every skip connection and to the mid block of the U-Net for its rows (the shapes a
    ControlNet's residuals have), and records the steps it ran at."""

    def __init__(self, value: float, begin: float, end: float, unet):
        super().__init__(begin, end)
        self.value = value
        self.config = unet.config
        self.steps: list[tuple[int, int]] = []

    def shapes(self, height: int, width: int) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
        """(channels, height, width) of each down-block residual, in the U-Net's order, and of the mid block."""
        channels = self.config.block_out_channels
        down = [(channels[0], height, width)]  # conv_in
        for index, width_of_block in enumerate(channels):
            down += [(width_of_block, height, width)] * self.config.layers_per_block
            if index + 1 < len(channels):
                height, width = height // 2, width // 2
                down.append((width_of_block, height, width))
        return down, (channels[-1], height, width)

    def before_unet(self, context: DenoiseContext) -> None:
        rows = context.rows(self.images)
        self.steps.append((context.step, context.total))
        down, mid = self.shapes(*context.model_input.shape[-2:])
        full = context.model_input.new_full
        context.add_residuals([full((len(rows), *shape), self.value) for shape in down],
                              full((len(rows), *mid), self.value), rows)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("extensions") / "tiny.safetensors"
    write_tiny_checkpoint("sd1", path)
    return path


def recipe(checkpoint, prompt: str, seed: int, **fields) -> Recipe:
    return Recipe(**{"prompt": prompt, "seed": seed, "steps": STEPS, "width": 32, "height": 32, "sampler": "Euler",
                     "model": str(checkpoint)} | fields)


class Recorder:
    """The provider: one ConstantResidual for each recipe whose prompt says "marked"."""

    def __init__(self):
        self.made: list[ConstantResidual] = []

    def __call__(self, recipe: Recipe, components, width: int, height: int) -> list[Extension]:
        if "marked" not in recipe.prompt:
            return []
        extension = ConstantResidual(5.0, 0.3, 0.6, components.unet)
        self.made.append(extension)
        return [extension]


def trajectories(engine: Engine, recipes: list[Recipe]) -> tuple[list[torch.Tensor], list]:
    """Every step's latents of the group's batch, and the group's results."""
    seen: list[torch.Tensor] = []
    results = engine.generate_group(recipes, on_progress=lambda progress: seen.append(progress._latents.clone()))
    return seen, results


def test_only_its_picture_changes_and_only_in_its_steps(checkpoint):
    plain, marked = recipe(checkpoint, "a red circle", 1), recipe(checkpoint, "a marked blue square", 2)
    recorder = Recorder()
    base_steps, [base_plain, base_marked] = trajectories(Engine(ModelStore(allow_paths=True)), [plain, marked])
    steps, [with_plain, with_marked] = trajectories(Engine(ModelStore(allow_paths=True), [recorder]), [plain, marked])

    [extension] = recorder.made
    assert extension.images == (1,)  # the second picture of the batch is the marked job's
    active = [step for step, total in extension.steps]
    assert active == [step for step in range(STEPS) if 0.3 <= step / STEPS <= 0.6] == [3, 4, 5, 6]
    assert all(total == STEPS for _, total in extension.steps)

    for index, (before, after) in enumerate(zip(base_steps, steps)):
        assert torch.equal(before[0], after[0])  # the other job's picture: bit-identical at every step
        if index < 3:
            assert torch.equal(before[1], after[1])  # before its begin: untouched
        else:
            assert not torch.allclose(before[1], after[1], atol=1e-3)  # from its first step on: changed
    assert (with_plain.images[0].image.tobytes() == base_plain.images[0].image.tobytes())
    assert with_marked.images[0].image.tobytes() != base_marked.images[0].image.tobytes()


def test_single_recipe_and_hires_pass_get_their_extensions(checkpoint):
    recorder = Recorder()
    engine = Engine(ModelStore(allow_paths=True), [recorder])
    hires = Hires(scale=2, upscaler="Latent", steps=4, denoising_strength=0.5)
    result = engine.run(recipe(checkpoint, "a marked circle", 3, batch_size=2, hires=hires))
    first, second = recorder.made
    assert first.images is None and second.images is None  # the whole batch is this recipe's
    assert [step for step, _ in first.steps] == [3, 4, 5, 6]
    assert second.steps == [(1, 2)]  # hires: 4 steps at strength 0.5 run 2; only 1/2 lies in [0.3, 0.6]
    assert len(result.images) == 2


def test_rows_cover_both_guidance_halves():
    context = DenoiseContext(0, 10, torch.tensor(999), images=3, halves=2, model_input=torch.zeros(6, 4, 8, 8))
    assert context.rows([1]) == [1, 4]
    assert context.rows(None) == [0, 1, 2, 3, 4, 5]
    context.add_residuals([torch.ones(2, 2, 8, 8)], torch.ones(2, 3, 4, 4), [1, 4])
    context.add_residuals([torch.ones(6, 2, 8, 8)], None, context.rows(None))  # a second extension adds up
    down = context.unet_kwargs["down_block_additional_residuals"][0]
    assert down[:, 0, 0, 0].tolist() == [1, 2, 1, 1, 2, 1]
    mid = context.unet_kwargs["mid_block_additional_residual"]
    assert mid[:, 0, 0, 0].tolist() == [0, 1, 0, 0, 1, 0]


def test_after_guidance_and_order(checkpoint):
    calls = []

    class Scale(Extension):
        def __init__(self, factor, order):
            super().__init__()
            self.factor, self.order = factor, order

        def after_guidance(self, context):
            calls.append(self.order)
            pictures = list(self.images or range(context.images))  # the guided output has one row per picture
            context.output[pictures] = context.output[pictures] * self.factor

    def provider(recipe, components, width, height):
        return [Scale(1.0, 2), Scale(0.0, 1)]  # given out of order: run by `order`

    engine = Engine(ModelStore(allow_paths=True), [provider])
    engine.run(recipe(checkpoint, "anything", 4, steps=2))
    assert calls == [1, 2, 1, 2]


def test_begin_and_end_are_checked():
    with pytest.raises(ValueError, match="begin and end"):
        Extension(0.7, 0.3)


def test_down_residuals_alone_get_a_zero_mid_residual():
    """Else diffusers would read them as a T2I-Adapter's (added at other places)."""
    context = DenoiseContext(0, 10, torch.tensor(999), images=1, halves=1, model_input=torch.zeros(1, 4, 8, 8))
    context.add_residuals([torch.ones(1, 2, 8, 8), torch.ones(1, 3, 4, 4)], None, [0])
    assert torch.equal(context.unet_kwargs["mid_block_additional_residual"], torch.zeros(1, 3, 4, 4))


def test_a_providers_own_subset_is_kept_and_shared_instances_are_refused(checkpoint):
    class Mark(Extension):
        pass

    def second_picture_only(recipe, components, width, height):
        return [Mark(images=[1])]  # the recipe's own second picture

    engine = Engine(ModelStore(allow_paths=True), [second_picture_only])
    components = engine.store.load(str(checkpoint)).components
    [mark] = engine.extensions(recipe(checkpoint, "x", 1, batch_size=2), components, 32, 32, images=range(3, 5))
    assert mark.images == (4,)  # rows 3 and 4 are the recipe's: its second picture is row 4

    shared = Mark()
    engine.extension_providers = [lambda *args: [shared, shared]]
    with pytest.raises(RuntimeError, match="same extension twice"):
        engine.extensions(recipe(checkpoint, "x", 1), components, 32, 32)
