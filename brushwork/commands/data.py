"""`brushwork data shapes OUT_DIR`: draw the coloured-shape pictures (with captions) the base model trains on."""

from __future__ import annotations

import argparse
from pathlib import Path

from brushwork.commands.common import add_model_options
from brushwork.errors import BrushworkError
from brushwork.shapes.draw import CONDITIONS

SPLITS = ("train", "heldout", "all", "novel")


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="make and check training data")
    kinds = data.add_subparsers(dest="data_kind", required=True)
    shapes = kinds.add_parser("shapes", help="draw captioned pictures of coloured shapes (NNNNN.png + NNNNN.txt)")
    shapes.add_argument("out_dir", type=Path, help="folder to write the pictures into")
    shapes.add_argument("--count", type=int, required=True, help="how many pictures")
    shapes.add_argument("--seed", type=int, default=0, help="the same seed draws byte-identical files (default 0)")
    shapes.add_argument("--size", type=int, default=64, help="picture side in pixels (default 64)")
    shapes.add_argument("--split", choices=SPLITS, default="train",
                        help="train: never the held-out colour/shape pairs (default); heldout: only those; all: any")
    shapes.add_argument("--condition", choices=CONDITIONS, default=None,
                        help="also draw each picture's ControlNet control picture into OUT_DIR/conditioning/: "
                             "canny edges, the objects' mask, or a scribble of their outlines")
    shapes.set_defaults(run=run_shapes)
    check = kinds.add_parser("check", help="the curation report of a training folder: what training would leave "
                             "out and why (nothing is deleted), and the aspect-ratio buckets")
    check.add_argument("folder", type=Path, help="pictures with same-named .txt captions (kohya folders too)")
    check.add_argument("--resolution", type=int, default=512, help="the training resolution (default 512)")
    check.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    check.add_argument("--min-aesthetic", dest="min_aesthetic", type=float, default=5.0,
                       help="with LAION's aesthetic predictor in --models-dir's aesthetic/: the lowest score kept "
                            "(default 5)")
    add_model_options(check)
    check.set_defaults(run=run_check)


def run_shapes(args: argparse.Namespace) -> int:
    from brushwork.shapes import make_dataset

    if args.count < 1:
        raise BrushworkError(f"--count must be at least 1 (got {args.count})")
    if args.size < 16 or args.size % 16:
        raise BrushworkError(f"--size must be a multiple of 16, at least 16 (got {args.size})")
    if args.seed < 0:
        raise BrushworkError(f"--seed must be 0 or more (got {args.seed})")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise BrushworkError(f"{args.out_dir} exists and is not a folder")
    if args.out_dir.is_dir() and any(args.out_dir.glob("*.png")):
        raise BrushworkError(f"{args.out_dir} already holds pictures; choose an empty or new folder")
    make_dataset(args.out_dir, args.count, seed=args.seed, size=args.size, split=args.split, condition=args.condition)
    extra = f", {args.condition} control pictures in conditioning/" if args.condition else ""
    print(f"wrote {args.count} pictures ({args.size}x{args.size}, split {args.split}, seed {args.seed}{extra}) "
          f"to {args.out_dir}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from brushwork.train.curation import CurationSettings, curate
    from brushwork.train.dataset import scan_folder

    from brushwork.train.aesthetic import AestheticScorer

    aesthetic = AestheticScorer.find(args.models_dir, allow_pickle=args.allow_pickle)
    report = curate(scan_folder(args.folder), args.folder.expanduser(),
                    CurationSettings(resolution=args.resolution, min_aesthetic=args.min_aesthetic), aesthetic)
    print(report.to_text())
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.to_json(), encoding="utf-8")
    return 0
