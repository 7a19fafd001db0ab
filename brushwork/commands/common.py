"""Options several commands share."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=None, help="A1111-style models folder")
    parser.add_argument(
        "--allow-pickle", dest="allow_pickle", action="store_true",
        help="allow .ckpt/.pt files (loaded with torch.load(weights_only=True)); off by default since pickles can run code",
    )
