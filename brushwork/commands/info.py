"""`brushwork png-info` and `brushwork samplers`: what a picture or the engine knows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brushwork.errors import BrushworkError


def add_parser(subparsers) -> None:
    png_info = subparsers.add_parser("png-info", help="print the recipe stored in a picture")
    png_info.add_argument("file", type=Path)
    shown = png_info.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print brushwork's JSON recipe instead of the infotext")
    shown.add_argument("--parameters", action="store_true",
                       help="print the infotext's fields as JSON, exactly as A1111 parses them (/sdapi/v1/png-info)")
    png_info.set_defaults(run=run_png_info)
    samplers = subparsers.add_parser("samplers", help="list the sampler names")
    samplers.set_defaults(run=run_samplers)


def run_png_info(args: argparse.Namespace) -> int:
    from brushwork.infotext import a1111_parameters
    from brushwork.output import read_png_info

    infotext, recipe_json = read_png_info(args.file)
    if args.json:
        if recipe_json is None:
            raise BrushworkError(f"{args.file} has no brushwork recipe (it was not made by brushwork)")
        print(json.dumps(json.loads(recipe_json), indent=2))
    elif infotext is None:
        raise BrushworkError(f"{args.file} carries no generation parameters")
    elif args.parameters:
        print(json.dumps(a1111_parameters(infotext), indent=2, ensure_ascii=False))
    else:
        print(infotext)
    return 0


def run_samplers(args: argparse.Namespace) -> int:
    from brushwork.sampler_names import SAMPLER_NAMES

    print("\n".join(SAMPLER_NAMES))
    return 0
