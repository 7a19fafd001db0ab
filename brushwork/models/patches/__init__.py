"""Weight patches on a checkpoint's shared modules (LoRA, LyCORIS), applied for one job and restored exactly."""

from brushwork.models.patches.patcher import ModelPatcher, WeightChange, WeightPatch

__all__ = ["ModelPatcher", "WeightChange", "WeightPatch"]
