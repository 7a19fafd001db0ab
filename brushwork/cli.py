"""`brushwork ...`: the command line. It builds Recipes and calls the Engine; nothing more.

Errors the user can fix print one line and exit with code 2; Ctrl-C stops between steps, keeps
every picture already saved and exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing we run may reach for a model hub

from pydantic import ValidationError  # noqa: E402

from brushwork.errors import EXIT_INTERRUPTED, EXIT_USAGE, BrushworkError, Cancelled  # noqa: E402
from brushwork.recipe import describe_validation_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from brushwork.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="brushwork", description="An AI painting studio for Stable-Diffusion-family models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and why")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.run(args)
    except ValidationError as error:
        print(f"error: {describe_validation_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except BrushworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        print("\ninterrupted: pictures finished before the interruption are saved", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    """Library chatter (deprecations, 'config attributes were passed') is noise on a terminal."""
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
