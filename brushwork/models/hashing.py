"""A1111's model hashes, cached so multi-gigabyte files are read once.

A1111 writes `Model hash: <first 10 hex digits of the file's sha256>`; the same digest identifies
models on community sites, so users can match a picture to the file that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The sha256 of a file, or of a diffusers folder's files (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def addnet_sha256(path: Path) -> str:
    """The sha256 kohya's additional-networks extension (and A1111, for LoRAs) gives a file: of a .safetensors
    file's tensor data only, after its JSON header, so editing the metadata keeps the hash; of the whole file
    for other formats."""
    if path.suffix.lower() != ".safetensors":
        return sha256_of(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header)
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 digests keyed by path, size and modification time, kept in one JSON file."""

    def __init__(self, file: Path | None):
        self.file = file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if file is not None and file.exists():
            try:
                self._entries = json.loads(file.read_text())
            except (OSError, ValueError):
                self._entries = {}  # a damaged cache only costs re-hashing

    def sha256(self, path: Path) -> str:
        return self._digest(path, "sha256", sha256_of)

    def short_hash(self, path: Path) -> str:
        return self.sha256(path)[:10]

    def lora_hash(self, path: Path) -> str:
        """A1111's LoRA short hash (its "Lora hashes" infotext): 12 hex digits of `addnet_sha256`."""
        return self._digest(path, "addnet", addnet_sha256)[:12]

    def _digest(self, path: Path, kind: str, compute) -> str:
        path = path.resolve()
        stat = path.stat()
        stamp = {"size": stat.st_size, "mtime": stat.st_mtime}
        with self._lock:
            entry = self._entries.get(str(path))
            if entry and entry.get("size") == stamp["size"] and entry.get("mtime") == stamp["mtime"] and kind in entry:
                return entry[kind]
        digest = compute(path)
        with self._lock:
            entry = self._entries.get(str(path))
            if not (entry and entry.get("size") == stamp["size"] and entry.get("mtime") == stamp["mtime"]):
                entry = dict(stamp)  # the file changed: its other digests are stale
            self._entries[str(path)] = entry | {kind: digest}
            self._save()
        return digest

    def _save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._entries, indent=1))
        os.replace(temporary, self.file)
