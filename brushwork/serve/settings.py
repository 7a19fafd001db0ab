"""The server's configuration: where models and data live, who may call it, and how much one request may ask.

`brushwork serve` builds a `Settings` from its flags; tests build one directly. Nothing here reads the
environment or touches the disk, so a Settings is cheap to make and safe to share.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path

from brushwork.errors import BrushworkError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; past a limit the API answers 413 (sizes) or 422 (values)."""

    max_pixels: int = 2048 * 2048  # width * height of any pass, the hires target included
    max_steps: int = 150  # sampling steps of any pass
    max_batch: int = 16  # batch_size * batch_count
    max_upload_bytes: int = 16 * MIB  # one uploaded picture, decoded
    max_image_side: int = 4096  # the longer side of any picture made or uploaded
    max_train_steps: int = 20_000  # optimizer steps of one training job
    max_train_resolution: int = 1024  # a training job's bucket side
    max_class_images: int = 1000  # pictures a DreamBooth job paints for prior preservation

    @property
    def max_body_bytes(self) -> int:
        """A request body may carry an init image and a mask, base64-encoded (4/3 larger), plus JSON."""
        return 2 * math.ceil(self.max_upload_bytes * 4 / 3) + MIB


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    models_dir: Path | None = None
    data_dir: Path = Path("brushwork-data")
    # user -> password (HTTP basic, A1111's --api-auth) and bearer/X-API-Key keys; both empty: no auth.
    basic_auth: dict[str, str] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    insecure: bool = False
    limits: Limits = Limits()
    allow_pickle: bool = False
    batching: bool = True  # let the queue denoise compatible jobs together
    device: str | None = None  # None: cuda when present, else cpu
    allow_server_stop: bool = False  # A1111's --api-server-stop: /sdapi/v1/server-stop, -restart, -kill

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth or self.api_keys)

    def check_exposure(self) -> None:
        """Refuse to serve an unauthenticated API beyond this machine unless told to (--insecure)."""
        if is_loopback(self.host) or self.auth_enabled or self.insecure:
            return
        raise BrushworkError(
            f"--host {self.host} makes the server reachable from other machines, and no --api-auth or --api-key "
            "is set: anyone could use it. Add --api-auth user:password or --api-key KEY, or pass --insecure "
            "if that is really what you want"
        )


def parse_basic_auth(text: str | None) -> dict[str, str]:
    """A1111's --api-auth value, "user:pass[,user2:pass2]", as user -> password."""
    users: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in (text or "").split(","))):
        user, colon, password = pair.partition(":")
        if not colon or not user or not password:
            raise BrushworkError(f"--api-auth: expected user:password[,user2:password2], got {pair!r}")
        users[user] = password
    return users


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
