"""`brushwork merge`: A1111's checkpoint merger, with LoRAs and a VAE baked in, to one .safetensors file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brushwork.commands.common import add_model_options, parse_lora
from brushwork.errors import BrushworkError

METHOD_FLAGS = {"weighted-sum": "Weighted sum", "add-difference": "Add difference", "none": "No interpolation"}


def add_parser(subparsers) -> None:
    merge = subparsers.add_parser(
        "merge", help="merge checkpoints (weighted sum, add difference) and bake in LoRAs and a VAE",
        description="A1111's checkpoint merger. With one checkpoint, bakes --lora and --vae into it.")
    merge.add_argument("models", nargs="+", metavar="MODEL", help="A, B and (add difference) C: names in "
                       "--models-dir or paths")
    merge.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    merge.add_argument("--method", choices=list(METHOD_FLAGS), default=None,
                       help="default: weighted-sum with two models, add-difference with three, none with one")
    merge.add_argument("-m", "--multiplier", type=float, default=0.3, help="A1111's M (default 0.3)")
    merge.add_argument("--lora", dest="loras", action="append", default=[], metavar="NAME[:WEIGHT[:UNET_WEIGHT]]",
                       help="bake this LoRA into the result; repeat for more")
    merge.add_argument("--vae", default=None, help="bake this VAE (a file, or a name in VAE/) into the result")
    merge.add_argument("--half", action="store_true", help="save as float16")
    merge.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    merge.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_options(merge)
    merge.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from brushwork.engine.engine import Engine
    from brushwork.models.merge import MergeInput, merge_into, merge_metadata
    from brushwork.models.single_file import save_single_file
    from brushwork.models.store import ModelStore
    from brushwork.recipe import LoraUse

    if len(args.models) > 3:
        raise BrushworkError(f"merge takes at most three checkpoints (A, B, C), got {len(args.models)}")
    method = METHOD_FLAGS[args.method] if args.method else METHOD_FLAGS[("none", "weighted-sum", "add-difference")[len(args.models) - 1]]
    output = args.output
    if output.suffix.lower() != ".safetensors":
        raise BrushworkError(f"--output: write a .safetensors file, got {output}")
    if output.exists() and not args.force:
        raise BrushworkError(f"{output} exists; pass --force to overwrite it")
    if method == "No interpolation" and not (args.loras or args.vae):
        raise BrushworkError("nothing to do: give a second checkpoint, --lora or --vae")
    loras = [LoraUse(**parse_lora(text)) for text in args.loras]

    # Each checkpoint from its own store: a merge changes A's weights in place, never a cached B or C.
    def loaded(index: int):
        store = ModelStore(args.models_dir, allow_pickle=args.allow_pickle, allow_paths=True)
        model = store.load(args.models[index])
        return store, MergeInput(model.components, model.name, store.hashes.sha256(model.path))

    store, primary = loaded(0)
    if args.vae:
        store.resolve("vae", args.vae)
    for use in loras:
        store.resolve("lora", use.name)
    others = [loaded(index)[1] for index in range(1, len(args.models))]
    bar = (lambda items: tqdm(items, unit="tensor", file=sys.stderr)) if args.progress else (lambda items: items)
    merge_into(primary.components, *(other.components for other in others[:2]), *([None] * (2 - len(others))),
               method, args.multiplier, progress=bar)
    # The VAE is baked in after the merge, replacing the merged one (as A1111 does); the merged U-Net is shared.
    components = store.load(args.models[0], vae=args.vae).components if args.vae else primary.components
    patches = Engine(store).lora_patches(loras, components)
    metadata = merge_metadata([primary, *others], method, args.multiplier, vae=args.vae,
                              loras=[":".join([use.name, *dict.fromkeys(f"{m:g}" for m in use.multipliers)])
                                     for use in loras], half=args.half,
                              inpaint=components.inpaint)
    output.parent.mkdir(parents=True, exist_ok=True)
    with components.patcher.applied(patches):
        save_single_file(components, output, dtype=torch.float16 if args.half else None, metadata=metadata)
    print(output)
    return 0
