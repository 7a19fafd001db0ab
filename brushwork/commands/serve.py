"""`brushwork serve`: the HTTP server (native API, A1111's /sdapi/v1) on uvicorn, on this machine only by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from brushwork.commands.common import add_model_options
from brushwork.errors import BrushworkError

DEFAULTS = {"max_pixels": 2048 * 2048, "max_steps": 150, "max_batch": 16, "max_upload_mb": 16.0, "max_image_side": 4096,
            "max_train_steps": 20_000}


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP API (native /api/v1 and A1111's /sdapi/v1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=7860)
    add_model_options(serve)
    serve.add_argument("--data-dir", dest="data_dir", type=Path, default=Path("brushwork-data"),
                       help="job queue database and finished pictures (default: ./brushwork-data)")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    auth = serve.add_argument_group("access")
    auth.add_argument("--api-auth", dest="api_auth", default=None, metavar="USER:PASS[,USER2:PASS2]",
                      help="HTTP basic credentials, as A1111's --api-auth")
    auth.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                      help="accept 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (repeatable)")
    auth.add_argument("--api-server-stop", dest="allow_server_stop", action="store_true",
                      help="allow /sdapi/v1/server-stop, server-restart and server-kill (as A1111's flag)")
    auth.add_argument("--insecure", action="store_true",
                      help="allow a non-local --host without --api-auth/--api-key (anyone who can reach it may use it)")
    limits = serve.add_argument_group("limits per request")
    limits.add_argument("--max-pixels", dest="max_pixels", type=int, default=DEFAULTS["max_pixels"],
                        help="width x height of any pass, hires target included (default: %(default)s)")
    limits.add_argument("--max-steps", dest="max_steps", type=int, default=DEFAULTS["max_steps"])
    limits.add_argument("--max-batch", dest="max_batch", type=int, default=DEFAULTS["max_batch"],
                        help="batch_size x batch_count (default: %(default)s)")
    limits.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=DEFAULTS["max_upload_mb"],
                        help="size of one uploaded picture (default: %(default)s)")
    limits.add_argument("--max-image-side", dest="max_image_side", type=int, default=DEFAULTS["max_image_side"])
    limits.add_argument("--max-train-steps", dest="max_train_steps", type=int, default=DEFAULTS["max_train_steps"],
                        help="optimizer steps of one training job (default: %(default)s)")
    serve.add_argument("--no-batching", dest="batching", action="store_false",
                       help="never denoise compatible jobs together in one batch")
    serve.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace):
    from brushwork.serve.settings import Limits, Settings, parse_basic_auth

    for name in ("max_pixels", "max_steps", "max_batch", "max_upload_mb", "max_image_side", "max_train_steps"):
        if getattr(args, name) <= 0:
            raise BrushworkError(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.port < 65536:
        raise BrushworkError(f"--port must be from 1 to 65535, got {args.port}")
    if any(not key.strip() for key in args.api_keys):
        raise BrushworkError("--api-key must not be empty")
    limits = Limits(max_pixels=args.max_pixels, max_steps=args.max_steps, max_batch=args.max_batch,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_image_side=args.max_image_side,
                    max_train_steps=args.max_train_steps)
    settings = Settings(
        host=args.host, port=args.port, models_dir=args.models_dir, data_dir=args.data_dir,
        basic_auth=parse_basic_auth(args.api_auth), api_keys=tuple(key.strip() for key in args.api_keys),
        insecure=args.insecure, limits=limits, allow_pickle=args.allow_pickle, batching=args.batching,
        device=args.device, allow_server_stop=args.allow_server_stop,
    )
    settings.check_exposure()
    return settings


def web_ui():
    """The web UI's `mount(app)` (`brushwork.serve.ui`), once that package exists; None until then."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("brushwork.serve.ui") is None:
        return None
    return importlib.import_module("brushwork.serve.ui").mount


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from brushwork.serve.app import create_app

    settings = settings_from_args(args)
    app = create_app(settings, ui=web_ui())
    # A request waiting on its job holds the shutdown back at most this long; the queue keeps the job.
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                                           timeout_graceful_shutdown=10))
    requested: list[str] = []

    def control(action: str) -> None:
        """/sdapi/v1/server-stop, -restart, -kill (only with --api-server-stop)."""
        if action == "kill":
            os._exit(0)  # jobs are in the database before they are acknowledged: nothing is lost
        requested.append(action)
        server.should_exit = True

    app.state.server_control = control
    server.run()
    if "restart" in requested:
        os.execv(sys.executable, sys.orig_argv)  # the same interpreter and command line, in this process
    return 0
