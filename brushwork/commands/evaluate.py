"""`brushwork eval shapes --model M`: how often a model's pictures show what their prompts asked for."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brushwork.commands.common import add_model_options
from brushwork.errors import BrushworkError


def add_parser(subparsers) -> None:
    evaluate = subparsers.add_parser("eval", help="measure models")
    kinds = evaluate.add_subparsers(dest="eval_kind", required=True)
    shapes = kinds.add_parser(
        "shapes", help="score a model on coloured-shape prompts with the shapes checker",
        description="Paints captions from the shapes drawer through the Engine and reports how often the "
                    "pictures show the asked colour, shape, position, count, size and background.",
    )
    shapes.add_argument("--model", default=None, help="checkpoint file or name (default: the embedded model)")
    shapes.add_argument("--prompts", type=int, default=200, help="prompts per split (default 200)")
    shapes.add_argument("--seeds", type=int, default=2, help="pictures per prompt, seeds 0..N-1 (default 2)")
    shapes.add_argument("--steps", type=int, default=20)
    shapes.add_argument("--cfg-scale", dest="cfg_scale", type=float, nargs="+", default=[7.0],
                        help="one or more CFG scales, e.g. --cfg-scale 1 7 (default 7)")
    shapes.add_argument("--sampler", default=None, help="A1111 sampler name (default: the Engine's)")
    shapes.add_argument("--split", choices=("train", "heldout", "both"), default="both",
                        help="train: colour/shape pairs seen in training; heldout: never seen; both (default)")
    shapes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shapes.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_options(shapes)
    shapes.set_defaults(run=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from brushwork.models.store import ModelStore
    from brushwork.train.evaluate import engine_source, eval_prompts, format_table, image_latency, score

    if args.prompts < 1 or args.seeds < 1 or args.steps < 1:
        raise BrushworkError("--prompts, --seeds and --steps must each be at least 1")
    store = ModelStore(args.models_dir, allow_pickle=args.allow_pickle, allow_paths=True)
    model = str(store.load(args.model).path)  # resolves the name (or the embedded model) and fails early
    splits = ("train", "heldout") if args.split == "both" else (args.split,)
    scores = []
    for split in splits:
        prompts = eval_prompts(args.prompts, split)
        for cfg in args.cfg_scale:
            source = engine_source(model, steps=args.steps, cfg_scale=cfg, sampler=args.sampler, store=store)
            with tqdm(total=len(prompts), desc=f"{split} cfg {cfg:g}", unit="prompt", file=sys.stderr,
                      disable=not args.progress, leave=False) as bar:
                scores.append(score(prompts, source, range(args.seeds), cfg, progress=lambda _: bar.update(1)))
    latency = image_latency(model, steps=args.steps, cfg_scale=args.cfg_scale[-1], store=store)
    if args.json:
        print(json.dumps({
            "model": model, "prompts": args.prompts, "seeds": args.seeds, "steps": args.steps,
            "sampler": args.sampler, "results": [s.to_dict() for s in scores],
            "seconds_per_image": round(latency, 4),
        }, indent=2))
    else:
        print(f"model {Path(model).name}: {args.prompts} prompts x {args.seeds} seeds per split, {args.steps} steps")
        print(format_table(scores))
        print(f"one {args.steps}-step picture (batch 1, CFG {args.cfg_scale[-1]:g}): {latency:.2f} s")
    return 0
