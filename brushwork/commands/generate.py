"""`brushwork generate`: flags or a PNG's recipe -> Recipe -> Engine -> PNGs on disk."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import closing
from pathlib import Path

from brushwork.commands.common import add_model_options, parse_control, parse_lora
from brushwork.errors import BrushworkError
from brushwork.output import next_output_path, read_png_info, save_png
from brushwork.recipe import Recipe
from brushwork.styles import NO_STYLE, STYLES_NAME, apply_styles_to_recipe, load_styles

RECIPE_FLAGS = (
    "prompt", "negative_prompt", "model", "vae", "sampler", "steps", "cfg_scale", "seed",
    "width", "height", "batch_size", "batch_count", "clip_skip", "tiling", "init_image", "denoising_strength", "resize_mode",
    "mask", "mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "restore_faces", "codeformer_weight",
)
HIRES_FLAGS = {
    "hires_scale": "scale", "hires_upscaler": "upscaler", "hires_steps": "steps", "hires_strength": "denoising_strength",
    "hires_prompt": "prompt", "hires_negative_prompt": "negative_prompt", "hires_sampler": "sampler",
}


def add_parser(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="paint pictures from a prompt (txt2img)")
    generate.add_argument("prompt", nargs="?", default=None, help="the prompt, in A1111 syntax")
    generate.add_argument("-n", "--negative-prompt", dest="negative_prompt", default=None)
    generate.add_argument("--model", default=None, help="checkpoint file, diffusers folder, or a name in --models-dir")
    generate.add_argument("--vae", default=None, help="a VAE file (or name in VAE/) overriding the checkpoint's")
    generate.add_argument("--sampler", default=None, help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M Karras'")
    generate.add_argument("--steps", type=int, default=None)
    generate.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None, help="-1 (default) draws a random seed")
    generate.add_argument("-W", "--width", type=int, default=None)
    generate.add_argument("-H", "--height", type=int, default=None)
    generate.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="images per pass")
    generate.add_argument("--batch-count", dest="batch_count", type=int, default=None, help="passes")
    generate.add_argument("--clip-skip", dest="clip_skip", type=int, default=None)
    generate.add_argument("--tiling", action="store_const", const=True, default=None,
                          help="a seamless texture: the picture wraps around at its edges (A1111's Tiling)")
    generate.add_argument("--lora", dest="loras", action="append", default=[], metavar="NAME[:WEIGHT[:UNET_WEIGHT]]",
                          help="apply a LoRA from --models-dir's Lora/ (or a file path); repeat for more; "
                               "same as <lora:NAME:WEIGHT> in the prompt")
    generate.add_argument("--restore-faces", dest="restore_faces", default=None, metavar="RESTORER",
                          help="restore faces with CodeFormer, GFPGAN or RestoreFormer (weights in --models-dir)")
    generate.add_argument("--codeformer-weight", dest="codeformer_weight", type=float, default=None,
                          help="CodeFormer's fidelity, 0..1 (0: most change; default 0.5)")
    generate.add_argument("--from-png", dest="from_png", type=Path, default=None, help="re-make the picture in this PNG")
    generate.add_argument("--style", dest="styles", action="append", default=[], metavar="NAME",
                          help="merge this A1111 style into the prompts (repeat for several, applied in order)")
    generate.add_argument("--styles-file", dest="styles_file", type=Path, default=Path(STYLES_NAME), metavar="PATH",
                          help=f"the styles for --style (A1111's {STYLES_NAME}: name,prompt,negative_prompt); "
                               f"default: ./{STYLES_NAME}, in the current directory as A1111 keeps it in its own "
                               "(the command line has no data folder; `brushwork serve` reads the one in --data-dir)")
    img2img = generate.add_argument_group("img2img and inpainting")
    img2img.add_argument("--init-image", dest="init_image", default=None, help="start from this picture (img2img)")
    img2img.add_argument("--strength", dest="denoising_strength", type=float, default=None, help="denoising strength, 0..1")
    img2img.add_argument("--resize-mode", dest="resize_mode", default=None,
                         choices=("just resize", "crop and resize", "resize and fill"))
    img2img.add_argument("--mask", default=None, help="inpainting mask (white = repaint)")
    img2img.add_argument("--mask-blur", dest="mask_blur", type=int, default=None)
    img2img.add_argument("--invert-mask", dest="inpainting_mask_invert", action="store_const", const=True, default=None,
                         help="repaint what is not masked")
    img2img.add_argument("--masked-content", dest="inpainting_fill", default=None,
                         choices=("fill", "original", "latent noise", "latent nothing"))
    img2img.add_argument("--only-masked", dest="inpaint_full_res", action="store_const", const=True, default=None,
                         help="paint a crop around the mask at full resolution")
    img2img.add_argument("--only-masked-padding", dest="inpaint_full_res_padding", type=int, default=None)
    img2img.add_argument("--outpaint", default=None, metavar="SIDES",
                         help="extend the canvas, e.g. 'left=128,bottom=64' (multiples of 8)")
    control = generate.add_argument_group("ControlNet and T2I-Adapter (models in --models-dir's ControlNet/)")
    control.add_argument("--control", dest="controls", action="append", default=[], metavar="UNIT",
                         help="a unit: model=NAME,image=PATH[,module=canny][,weight=1][,start=0][,end=1]"
                              "[,mode=balanced|prompt|control][,resize=just|crop|fill][,res=512][,a=LOW][,b=HIGH]"
                              "[,pixel-perfect]; repeatable, one per unit")
    hires = generate.add_argument_group("hires fix (txt2img)")
    hires.add_argument("--hires-scale", type=float, default=None, help="turn hires fix on: upscale by this factor")
    hires.add_argument("--hires-resize", default=None, metavar="WxH", help="turn hires fix on: upscale to this size")
    hires.add_argument("--hires-upscaler", default=None, help="'Latent', 'Latent (bicubic)', 'Lanczos', an ESRGAN model ...")
    hires.add_argument("--hires-steps", type=int, default=None, help="second-pass steps (0: same as --steps)")
    hires.add_argument("--hires-strength", type=float, default=None, help="second-pass denoising strength")
    hires.add_argument("--hires-prompt", default=None)
    hires.add_argument("--hires-negative-prompt", default=None)
    hires.add_argument("--hires-sampler", default=None)
    generate.add_argument("-o", "--output-dir", dest="output_dir", type=Path, default=Path("outputs"))
    add_model_options(generate)
    generate.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    generate.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    generate.set_defaults(run=run)


def recipe_from_args(args: argparse.Namespace) -> tuple[Recipe, int | None]:
    """The Recipe the flags describe, and which image of it to make (only for --from-png)."""
    given = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    if args.outpaint is not None:
        given["outpaint"] = _parse_sides(args.outpaint)
    hires = {field: getattr(args, flag) for flag, field in HIRES_FLAGS.items() if getattr(args, flag) is not None}
    if args.hires_resize is not None:
        hires["resize_width"], hires["resize_height"] = _parse_size(args.hires_resize)
    if hires:
        given["hires"] = hires
    if args.loras:
        given["loras"] = [parse_lora(text) for text in args.loras]
    if args.controls:
        given["control_units"] = [parse_control(text) for text in args.controls]
    if args.from_png is None:
        if "prompt" not in given and not args.styles:
            raise BrushworkError("give a prompt, e.g. brushwork generate \"a red circle on a blue background\"")
        recipe, index = Recipe(**given), None
    else:
        base, index = recipe_from_png(args.from_png)
        # Flags given next to --from-png override the stored recipe (e.g. where the model lives now).
        recipe = Recipe(**(base.model_dump() | given))
    if args.styles:  # the expanded prompts are what the recipe (and so the infotext) records, as in A1111
        styles = load_styles(args.styles_file)
        if not styles and set(args.styles) != {NO_STYLE} and not args.styles_file.is_file():
            raise BrushworkError(f"--style: there is no styles file {args.styles_file}; "
                                 "give its place with --styles-file")
        recipe = apply_styles_to_recipe(recipe, args.styles, styles)
    return recipe, index


def _parse_sides(text: str) -> dict[str, int]:
    sides = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        side, _, amount = part.partition("=")
        if side not in ("left", "right", "top", "bottom") or not amount.isdigit():
            raise BrushworkError(f"--outpaint: expected e.g. 'left=128,bottom=64', got {text!r}")
        sides[side] = int(amount)
    return sides


def _parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise BrushworkError(f"--hires-resize: expected WIDTHxHEIGHT, e.g. 1024x1024, got {text!r}")
    return int(width), int(height)


def recipe_from_png(path) -> tuple[Recipe, int | None]:
    infotext, recipe_json = read_png_info(path)
    if recipe_json is not None:
        stored = json.loads(recipe_json)
        return Recipe(**stored["recipe"]), stored["index"]
    if infotext is None:
        raise BrushworkError(f"{path} carries no generation parameters")
    from brushwork.infotext import parse_infotext

    recipe, _ = parse_infotext(infotext)
    return recipe, None


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from brushwork.engine.engine import Engine, Result
    from brushwork.models.store import ModelStore

    recipe, only_index = recipe_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    store = ModelStore(args.models_dir, device=device, allow_pickle=args.allow_pickle, allow_paths=True)
    engine = Engine(store)
    batches = None if only_index is None else [only_index // recipe.batch_size]

    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: _request_stop(stop))
    bar = None

    def on_progress(progress) -> None:
        nonlocal bar
        if not args.progress:
            return
        if bar is None:
            bar = tqdm(total=progress.total * progress.batch_count, unit="step", file=sys.stderr, dynamic_ncols=True)
        bar.n = progress.batch * progress.total + progress.step
        bar.refresh()

    saved = []
    result = Result(recipe=recipe)
    try:
        with closing(engine.generate(recipe, on_progress=on_progress, should_stop=stop.is_set, batches=batches,
                                     result=result)) as images:
            for generated in images:
                if only_index is not None and generated.index != only_index:
                    continue
                path = next_output_path(args.output_dir, seed=generated.seed, prompt=recipe.prompt)
                save_png(generated.image, path, infotext=generated.infotext, recipe_json=generated.recipe_json)
                saved.append(path)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if bar is not None:
            bar.close()
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        for path in saved:
            print(path)
    return 0


def _request_stop(stop: threading.Event) -> None:
    """First Ctrl-C: stop after the current step. A second one interrupts at once."""
    if stop.is_set():
        raise KeyboardInterrupt
    stop.set()
