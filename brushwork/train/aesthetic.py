"""The LAION "improved aesthetic predictor": an MLP over CLIP ViT-L/14 image embeddings, scoring 1-10.

Nothing is downloaded: curation uses it when the user has placed both parts in the models folder's
`aesthetic/`:

- the MLP, `sac+logos+ava1-l14-linearMSE.pth` as LAION publishes it (a pickle: read only with --allow-pickle,
  and then with `torch.load(weights_only=True)`), or its state dict as a `.safetensors` file;
- CLIP ViT-L/14 as a transformers folder (e.g. `openai/clip-vit-large-patch14` saved with `save_pretrained`:
  `config.json` and the weights; a whole CLIPModel or only its vision tower with projection).

The score is the MLP of the L2-normalised image embedding, as the predictor was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from brushwork.errors import BrushworkError

AESTHETIC_FOLDER = "aesthetic"
MLP_SUFFIXES = (".safetensors", ".pth", ".pt")


class AestheticMLP(nn.Module):
    """LAION's layout (`layers.0` ... `layers.7`), so its published state dict loads as is."""

    def __init__(self, width: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticScorer:
    def __init__(self, mlp: AestheticMLP, clip: nn.Module, processor, name: str):
        self.mlp, self.clip, self.processor, self.name = mlp.eval(), clip.eval(), processor, name

    @classmethod
    def find(cls, models_dir: Path | None, *, allow_pickle: bool = False) -> AestheticScorer | None:
        """The predictor in `models_dir/aesthetic/`, or None when its two parts are not both there."""
        folder = Path(models_dir) / AESTHETIC_FOLDER if models_dir else None
        if folder is None or not folder.is_dir():
            return None
        # A .safetensors copy wins over the pickle it was converted from.
        weights = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MLP_SUFFIXES),
                         key=lambda p: (p.suffix.lower() != ".safetensors", p.name))
        clips = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file())
        if not weights or not clips:
            return None
        return cls(_load_mlp(weights[0], allow_pickle), *_load_clip(clips[0]), name=weights[0].name)

    @torch.no_grad()
    def score(self, pictures: list[Image.Image]) -> list[float]:
        pixels = self.processor(images=[p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
        if hasattr(self.clip, "get_image_features"):
            embeddings = self.clip.get_image_features(pixel_values=pixels)
            embeddings = getattr(embeddings, "pooler_output", embeddings)
        else:
            embeddings = self.clip(pixel_values=pixels).image_embeds
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return [float(value) for value in self.mlp(embeddings).flatten()]


def _load_mlp(path: Path, allow_pickle: bool) -> AestheticMLP:
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise BrushworkError(f"{path.name} is a pickle, which can run code when read: pass --allow-pickle to read it "
                             "(with weights_only), or convert it to .safetensors")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        mlp = AestheticMLP(int(state["layers.0.weight"].shape[1]))
        mlp.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - whatever the file holds, the user gets one line
        raise BrushworkError(f"{path.name} is not the LAION aesthetic predictor's MLP ({error})") from None
    return mlp


def _load_clip(folder: Path):
    import json

    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    try:
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
        model_class = CLIPModel if kind == "clip" else CLIPVisionModelWithProjection
        model = model_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise BrushworkError(f"{folder.name}: not a CLIP model folder ({error})") from None
    has_processor = (folder / "preprocessor_config.json").is_file()
    # Without its own preprocessor config, CLIPImageProcessor's defaults are CLIP's (224 px, OpenAI mean/std).
    processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True) if has_processor else CLIPImageProcessor()
    return model, processor
