"""`brushwork models`: what an A1111-style models folder holds, with architecture and hash."""

from __future__ import annotations

import argparse

from brushwork.commands.common import add_model_options
from brushwork.errors import BrushworkError


def add_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the models in an A1111-style models folder")
    add_model_options(models)
    models.add_argument("--no-hash", dest="hash", action="store_false", help="skip hashing (fast for large folders)")
    models.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from brushwork.models.describe import describe_file
    from brushwork.models.store import FOLDERS, ModelStore

    if args.models_dir is None or not args.models_dir.is_dir():
        raise BrushworkError(f"models folder not found: {args.models_dir} (pass --models-dir DIR)")
    store = ModelStore(args.models_dir, allow_pickle=args.allow_pickle)
    rows = []
    for kind in FOLDERS:
        for entry in store.entries(kind):
            architecture = describe_file(entry.path, kind, allow_pickle=args.allow_pickle)
            digest = store.hashes.short_hash(entry.path) if args.hash else "-"
            rows.append((kind, entry.name, architecture, digest))
    if not rows:
        print(f"no models found in {args.models_dir} (expected folders: {', '.join(FOLDERS.values())})")
        return 0
    widths = [max(len(row[i]) for row in rows + [("KIND", "NAME", "ARCHITECTURE", "HASH")]) for i in range(4)]
    for row in [("KIND", "NAME", "ARCHITECTURE", "HASH"), *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    return 0
