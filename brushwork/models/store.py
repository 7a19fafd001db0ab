"""ModelStore: find, load, cache and free models under one memory budget.

Folders follow A1111's layout, so an existing install works as it is:
`Stable-diffusion/`, `VAE/`, `Lora/`, `ControlNet/`, `embeddings/`, `ESRGAN/`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from brushwork.errors import ModelLoadError
from brushwork.models.components import Components
from brushwork.models.diffusers_folder import load_diffusers_folder
from brushwork.models.hashing import HashCache
from brushwork.models.single_file import load_single_file, read_state_dict

log = logging.getLogger(__name__)

FOLDERS = {
    "checkpoint": "Stable-diffusion",
    "vae": "VAE",
    "lora": "Lora",
    "controlnet": "ControlNet",
    "embedding": "embeddings",
    "upscaler": "ESRGAN",
}
# Folders A1111 also reads for a kind, after the main one: LyCORIS files are LoRAs to it (since 1.5).
MORE_FOLDERS = {"lora": ("LyCORIS",)}
ANNOTATORS = "annotators"  # ControlNet/annotators/: the preprocessors' weights, not control models
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default-model" / "brushwork-shapes.safetensors"
EMBEDDED_CONTROLNETS = EMBEDDED_MODEL.parent / "ControlNet"  # ControlNets trained for the embedded model


@dataclass(frozen=True)
class ModelEntry:
    kind: str
    name: str  # the path below its folder, as A1111 shows it ("sub/model.safetensors")
    path: Path
    embedded: bool = False  # the model shipped in the package, listed after the user's own

    @property
    def is_diffusers_folder(self) -> bool:
        return self.path.is_dir()


@dataclass
class LoadedModel:
    name: str
    path: Path
    short_hash: str
    components: Components
    vae_name: str | None = None
    vae_short_hash: str | None = None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "brushwork"


class ModelStore:
    """Loads models by name or path and keeps at most `max_loaded` of them in memory (LRU).

    Names resolve only inside the models folder; paths outside it are accepted only when
    `allow_paths` is set (the CLI sets it, the server does not).
    """

    def __init__(
        self,
        models_dir: Path | str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
        allow_paths: bool = False,
        max_loaded: int = 1,
        hash_cache: Path | None = None,
    ):
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.allow_pickle = allow_pickle
        self.allow_paths = allow_paths
        self.max_loaded = max_loaded
        self.hashes = HashCache(hash_cache if hash_cache is not None else default_cache_dir() / "hashes.json")
        self._loaded: OrderedDict[tuple[Path, Path | None], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()

    # -- finding ----------------------------------------------------------------------------------

    def entries(self, kind: str) -> list[ModelEntry]:
        """Every model of one kind in the models folder, sorted by name; checkpoints end with the embedded model."""
        found = self._folder_entries(kind)
        if kind == "checkpoint" and EMBEDDED_MODEL.exists():
            found.append(ModelEntry(kind, EMBEDDED_MODEL.name, EMBEDDED_MODEL, embedded=True))
        if kind == "controlnet":  # the embedded model's own ControlNets, after the folder's
            found += [ModelEntry(kind, path.name, path, embedded=True)
                      for path in sorted(EMBEDDED_CONTROLNETS.glob("*.safetensors"))]
        return found

    def folders(self, kind: str) -> list[Path]:
        """Where models of this kind live in the models folder (none without one)."""
        if self.models_dir is None:
            return []
        return [self.models_dir / name for name in (FOLDERS[kind], *MORE_FOLDERS.get(kind, ()))]

    def _folder_entries(self, kind: str) -> list[ModelEntry]:
        found = []
        for folder in self.folders(kind):
            found += self._entries_in(kind, folder)
        return found

    def _entries_in(self, kind: str, folder: Path) -> list[ModelEntry]:
        if not folder.is_dir():
            return []
        found = []
        # A diffusers pipeline folder has model_index.json; a lone ControlNet or T2I-Adapter folder, config.json.
        marker = "config.json" if kind == "controlnet" else "model_index.json"
        for path in sorted(folder.rglob("*")):
            if kind == "controlnet" and path.relative_to(folder).parts[0] == ANNOTATORS:
                continue
            is_weights = path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES
            is_diffusers = path.is_dir() and (path / marker).is_file()
            inside_diffusers = any((parent / marker).is_file() for parent in path.parents)
            if (is_weights or is_diffusers) and not inside_diffusers:
                found.append(ModelEntry(kind, path.relative_to(folder).as_posix(), path))
        return found

    def resolve(self, kind: str, name: str) -> Path:
        """The file or folder a model name means; raises ModelLoadError with the choices if none."""
        candidate = Path(name).expanduser()
        if self.allow_paths and candidate.exists():
            return candidate.resolve()
        entries = self.entries(kind)
        wanted = _strip_hash_suffix(name)
        for entry in entries:
            relative = Path(entry.name)
            if wanted in (entry.name, relative.with_suffix("").as_posix(), relative.name, relative.stem):
                return entry.path if entry.embedded else self._inside_models_dir(entry.path, name)
        raise ModelLoadError(self._not_found(kind, name, candidate, entries))

    def _not_found(self, kind: str, name: str, candidate: Path, entries: list[ModelEntry]) -> str:
        """Where `resolve` looked, in a sentence: the path, the models folder, the embedded model."""
        places = [f"no file {candidate.resolve()}"] if self.allow_paths else []
        if self.models_dir is None:
            places.append("no --models-dir given")
        else:
            places.append("not in " + " or ".join(str(folder) for folder in self.folders(kind)))
        if kind == "checkpoint":
            places.append("not the embedded model")
        available = ", ".join(e.name for e in entries) or "none"
        return f"{kind} {name!r} not found: {', '.join(places)} (available: {available})"

    def _inside_models_dir(self, path: Path, name: str) -> Path:
        resolved = path.resolve()
        if self.models_dir is None or not resolved.is_relative_to(self.models_dir):
            raise ModelLoadError(f"model name {name!r} points outside the models folder")
        return resolved

    def default_entry(self) -> ModelEntry:
        """A1111 picks the first checkpoint in the folder; with none, the embedded model."""
        entries = self.entries("checkpoint")
        if not entries:
            raise ModelLoadError("no model given and none found: pass --model PATH or --models-dir DIR")
        return entries[0]

    def default_checkpoint(self) -> Path:
        return self.default_entry().path.resolve()

    # -- loading ----------------------------------------------------------------------------------

    def load(self, name: str | None, vae: str | None = None) -> LoadedModel:
        """The named checkpoint (with an optional VAE override), from the cache when already loaded."""
        path = self.resolve("checkpoint", name) if name else self.default_checkpoint()
        vae_path = self.resolve("vae", vae) if vae else None
        key = (path, vae_path)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            base = next((m for (p, _), m in self._loaded.items() if p == path), None)
            # Evict before loading, so that at max_loaded=1 two checkpoints are never in memory at once.
            self._make_room()
            components = base.components if base else self._load_components(path)
            model = LoadedModel(
                name=self._display_name(path, "checkpoint"),
                path=path,
                short_hash=self.hashes.short_hash(path),
                components=components,
            )
            if vae_path is not None:
                # A new VAE module: the cached checkpoint's own VAE is never modified.
                model.components = dataclasses.replace(components, vae=self._load_vae(vae_path, components.vae))
                model.vae_name = self._display_name(vae_path, "vae")
                model.vae_short_hash = self.hashes.short_hash(vae_path)
            self._loaded[key] = model
            return model

    def last_loaded(self) -> LoadedModel | None:
        """The model in memory that was used last, without loading anything."""
        with self._lock:
            return next(reversed(self._loaded.values()), None)

    def unload_all(self) -> None:
        """Free every loaded model (A1111's unload-checkpoint); jobs running keep theirs until they end."""
        with self._lock:
            self._loaded.clear()
            _free_memory()

    def _make_room(self) -> None:
        while len(self._loaded) >= self.max_loaded:
            evicted_key, _ = self._loaded.popitem(last=False)
            log.info("unloading %s", evicted_key[0])
            _free_memory()

    def _load_components(self, path: Path) -> Components:
        log.info("loading %s", path)
        if path.is_dir():
            components = load_diffusers_folder(path, dtype=self.dtype, device=self.device)
        else:
            components = load_single_file(path, allow_pickle=self.allow_pickle, dtype=self.dtype, device=self.device)
        return components

    def _load_vae(self, path: Path, like: AutoencoderKL) -> AutoencoderKL:
        """A VAE file (ldm or diffusers key layout) loaded into the checkpoint's VAE architecture."""
        state = read_state_dict(path, allow_pickle=self.allow_pickle)
        if any(key.startswith(("encoder.down.", "first_stage_model.", "vae.")) for key in state):
            state = convert_ldm_vae_checkpoint(state, like.config)
        state = {key: value.to(self.dtype) for key, value in state.items()}
        with init_empty_weights():
            vae = AutoencoderKL.from_config(like.config)
        try:
            vae.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise ModelLoadError(f"{path.name} is not a VAE for this model: {str(error).splitlines()[0]}") from None
        return vae.to(self.device).eval()

    def _display_name(self, path: Path, kind: str) -> str:
        for folder in self.folders(kind):
            if path.is_relative_to(folder):
                return path.relative_to(folder).with_suffix("").as_posix()
        return path.stem if path.is_file() else path.name


def _strip_hash_suffix(name: str) -> str:
    """A1111 titles read "model.safetensors [6ce0161689]"; the name is the part before the hash."""
    if name.endswith("]") and " [" in name:
        return name.rsplit(" [", 1)[0]
    return name


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
