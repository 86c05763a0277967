"""Training recipes: one `Recipe` per (model, preset).

`paper`: the clip size of torchvision's Kinetics weights for the model and the paper's batch size,
for a GPU or TPU. `cpu`: smaller frames and crops, a slimmer network and fewer epochs, so that
`python -m strokevision_jax.train --model=r2plus1d` finishes in minutes on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from strokevision_jax.data.pipeline import VideoConfig

PRESETS = ("paper", "cpu")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run except the seed and the paths."""

    model: str
    preset: str
    dataset: str
    video: VideoConfig
    model_overrides: tuple[tuple[str, Any], ...] = ()  # fields of the model's config
    batch_size: int = 16
    epochs: int = 30
    learning_rate: float = 1e-3  # peak, reached after the warm-up
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"  # activations; parameters stay float32
    ema_decay: float | None = None  # evaluate (and keep as best) an average of the weights
    eval_flip: bool = False  # evaluate on the clip and its mirror image (probabilities averaged)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


# torchvision's video-ResNet Kinetics-400 transforms: resize 128 x 171, centre crop 112.
_RESNET_PAPER = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=16, resize=(128, 171), crop=(112, 112)),
    batch_size=16, epochs=30, learning_rate=1e-3, warmup_epochs=2, weight_decay=0.05,
    compute_dtype="bfloat16",
)
# The cpu preset, chosen by measurement on the synthetic data (2-core CPU, see the README):
# - 8 frames: the classes differ by motion; with 4 frames the network stayed near chance.
# - base width 16 with one block per stage (an R(2+1)D-10 layout, stage widths 16-128): learns
#   faster per second than width 8 with two blocks per stage, and fits the 10-minute budget.
# - random 48 x 48 crops of a 56 x 75 resize: without crops the network overfits the 34 training
#   patients (train 0.95, validation 0.5).
# - evaluation with an average of the weights (decay 0.998, about 6 epochs) and a mirrored
#   second view: measured in the same runs as the plain weights, +0.04 to +0.08 test accuracy
#   (seeds 0 and 1, README).
_RESNET_CPU = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=8, resize=(56, 75), crop=(48, 48)),
    model_overrides=(("base_width", 16), ("stage_blocks", (1, 1, 1, 1))),
    batch_size=8, epochs=26, learning_rate=1e-3, warmup_epochs=0.5, weight_decay=0.05,
    ema_decay=0.998, eval_flip=True,
)

# torchvision's MViT Kinetics-400 transforms: resize the short side to 256, centre crop 224,
# mean 0.45 and std 0.225 on every channel, 16 frames. MViT's position embeddings are built for
# its input size, so the size is part of the model config too (see `with_clip`).
_MVIT_MEAN, _MVIT_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
_MVIT_PAPER = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=16, resize=(256, 341), crop=(224, 224), mean=_MVIT_MEAN, std=_MVIT_STD),
    model_overrides=(("temporal_size", 16), ("spatial_size", (224, 224))),
    batch_size=8, epochs=30, learning_rate=1e-4, warmup_epochs=2, weight_decay=0.05,
    compute_dtype="bfloat16",
)
# torchvision's Swin3D Kinetics-400 transforms: resize 256, centre crop 224, ImageNet mean/std,
# 32-frame clips (the 30 stored frames are resampled to 32).
_SWIN_PAPER = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=32, resize=(256, 341), crop=(224, 224),
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    batch_size=8, epochs=30, learning_rate=1e-4, warmup_epochs=2, weight_decay=0.05,
    compute_dtype="bfloat16",
)
# The transformers' cpu presets keep the architecture (so that Kinetics weights still fit with
# --pretrained) and shrink the clip: 8 x 64 x 64. They run on a CPU; they were not tuned for
# accuracy there (from scratch, these models need far more data or pretrained weights).
_TRANSFORMER_CPU = dict(
    dataset="synthetic", batch_size=8, epochs=10, learning_rate=3e-4, warmup_epochs=1,
    weight_decay=0.05,
)

RECIPES: dict[tuple[str, str], Recipe] = {}
for _name in ("r2plus1d_18", "r3d_18", "mc3_18"):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_RESNET_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(model=_name, preset="cpu", **_RESNET_CPU)
for _name in ("mvit_v1_b", "mvit_v2_s"):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_MVIT_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(
        model=_name, preset="cpu", model_overrides=(("temporal_size", 8), ("spatial_size", (64, 64))),
        video=VideoConfig(num_frames=8, resize=(72, 96), crop=(64, 64), mean=_MVIT_MEAN, std=_MVIT_STD),
        **_TRANSFORMER_CPU)
for _name in ("swin3d_t", "swin3d_s", "swin3d_b"):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_SWIN_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(
        model=_name, preset="cpu",
        video=dataclasses.replace(_SWIN_PAPER["video"], num_frames=8, resize=(72, 96), crop=(64, 64)),
        **_TRANSFORMER_CPU)


def with_clip(recipe: Recipe, **video_changes) -> Recipe:
    """`recipe` with other clip settings (VideoConfig fields); a model built for a fixed input
    size (MViT's temporal_size / spatial_size) follows the new frames and crop."""
    video = dataclasses.replace(recipe.video, **video_changes)
    sizes = {"temporal_size": video.num_frames, "spatial_size": tuple(video.crop)}
    overrides = tuple((k, sizes.get(k, v)) for k, v in recipe.model_overrides)
    return recipe.replace(video=video, model_overrides=overrides)


def recipe(model: str, preset: str) -> Recipe:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}.")
    try:
        return RECIPES[(model, preset)]
    except KeyError:
        known = sorted({m for m, _ in RECIPES})
        raise ValueError(f"No recipe for model {model!r}; models with recipes: {', '.join(known)}.") from None
