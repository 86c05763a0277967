"""Training recipes: one `Recipe` per (model, preset).

`paper`: the clip size of torchvision's Kinetics weights for the model and the paper's batch size,
for a GPU or TPU. `cpu`: smaller frames and crops, a slimmer network and fewer epochs, so that
`python -m strokevision_jax.train --model=r2plus1d` finishes in minutes on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from strokevision_jax.data import pipeline
from strokevision_jax.data.pipeline import SkeletonConfig, VideoConfig
from strokevision_jax.models import mvit, registry

PRESETS = ("paper", "cpu")


def _names(family: registry.Family) -> list[str]:
    return [spec.name for spec in registry.of_family(family)]


@dataclasses.dataclass(frozen=True)
class HeatmapConfig:
    """PoseConv3D's input: GeneratePoseTarget on the device, inside the jitted step, from the
    skeleton pipeline's compact-frame keypoints (its image size is the skeleton config's
    `compact_size` in training and `compact_eval_size` in evaluation)."""

    sigma: float = 0.6
    use_score: bool = True
    mode: str = "keypoint"  # or "limb"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run except the seed and the paths.

    The input is `video` (video models), `skeleton` (+ `heatmaps` for PoseConv3D), or all three
    for the two-pathway RGB + pose network (`input_key` then names both batch entries).
    """

    model: str
    preset: str
    dataset: str
    video: VideoConfig | None = None
    skeleton: SkeletonConfig | None = None
    heatmaps: HeatmapConfig | None = None
    model_overrides: tuple[tuple[str, Any], ...] = ()  # fields of the model's config
    batch_size: int = 16
    epochs: int = 30
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9)
    nesterov: bool = False  # sgd only
    learning_rate: float = 1e-3  # peak, reached after the warm-up
    head_lr_scale: float = 1.0  # the classifier head ('head' / 'cls_head' / 'fc') learns this much faster
    schedule: str = "cosine"  # warm-up then cosine to 0; or "exponential": x lr_decay per epoch
    lr_decay: float = 1.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    decay_all: bool = False  # weight decay on every parameter (torch's default), not kernels only
    grad_clip: float | None = None  # max global gradient norm
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"  # activations; parameters stay float32
    ema_decay: float | None = None  # evaluate (and keep as best) an average of the weights
    eval_flip: bool = False  # evaluate on the clip and its mirror image (probabilities averaged)

    def __post_init__(self):
        if self.video is None and self.skeleton is None:
            raise ValueError(f"Recipe {self.model}/{self.preset}: set video, skeleton, or both (with heatmaps).")
        if self.video is not None and self.skeleton is not None and self.heatmaps is None:
            raise ValueError(f"Recipe {self.model}/{self.preset}: video and skeleton together are the "
                             "two-pathway network's input and need heatmaps.")
        if self.heatmaps is not None and (self.skeleton is None or self.skeleton.normalization != "compact"):
            raise ValueError(f"Recipe {self.model}/{self.preset}: heatmaps need a skeleton config "
                             "with normalization='compact'.")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"Recipe.optimizer={self.optimizer!r}: choose 'adamw' or 'sgd'.")
        if self.schedule not in ("cosine", "exponential"):
            raise ValueError(f"Recipe.schedule={self.schedule!r}: choose 'cosine' or 'exponential'.")
        if self.eval_flip and (self.video is None or self.skeleton is not None):
            raise ValueError(f"Recipe {self.model}/{self.preset}: eval_flip mirrors video clips only.")

    @property
    def input_key(self) -> str | tuple[str, ...]:
        """The batch entry the model (or its heatmap step) reads; both entries, ('video',
        'keypoints'), for the two-pathway network."""
        if self.video is not None and self.skeleton is not None:
            return ("video", "keypoints")
        return "video" if self.video is not None else "keypoints"

    def transform(self, train: bool, frame_size: tuple[int, int] | None = None):
        """The per-record transform of the recipe's input (`frame_size`: the stored frames'
        (height, width), for keypoint records without frames)."""
        if self.video is not None and self.skeleton is not None:
            return pipeline.paired_transform(self.video, self.skeleton, train)
        if self.video is not None:
            return pipeline.video_transform(self.video, train)
        skeleton = self.skeleton
        if frame_size is not None and skeleton.frame_size is None:
            skeleton = dataclasses.replace(skeleton, frame_size=tuple(frame_size))
        return pipeline.skeleton_transform(skeleton, train)

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
# - a person-centred region (VideoConfig.region='person': the box around the keypoints of the
#   head, shoulders, elbows and wrists, with a 20 % margin) resized to 48 x 64, and random 42 x 56
#   crops of it: the arms and the box get about 1.6x the pixels of a whole-frame resize at the
#   same cost, and the patient's distance to the camera is normalised. Measured against
#   whole-frame 48 x 48 crops of a 56 x 75 resize, seeds 0-2 (README): validation 0.66-0.75
#   against 0.56-0.66, test 0.64-0.81 against 0.63-0.70. Without crops the network overfits the
#   34 training patients (train 0.95, validation 0.5).
# - evaluation with an average of the weights (decay 0.998, about 6 epochs) and a mirrored
#   second view: measured in the same runs as the plain weights, +0.04 to +0.08 test accuracy
#   (seeds 0 and 1, README).
_RESNET_CPU = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=8, resize=(48, 64), crop=(42, 56), region="person"),
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
# The transformers' cpu presets: small networks of the same family trained from scratch on the
# person-centred region (as the ResNets' cpu preset), chosen by validation accuracy on the
# dataset split (README): MViT-v2 with four blocks (mvit.CPU_BLOCKS) on 8 x 32 x 48 clips, and a
# Swin3D with embed_dim 48, depths 1-1-2-1 on 8 x 48 x 64 clips; AdamW 5e-4, 20 epochs, weight
# average and mirrored view in evaluation. With --pretrained the checkpoint's architecture is
# used instead (only MViT's input size is kept).
_TRANSFORMER_CPU = dict(
    dataset="synthetic", batch_size=8, epochs=20, learning_rate=5e-4, warmup_epochs=1,
    weight_decay=0.05, ema_decay=0.995, eval_flip=True,
)
_MVIT_CPU_VIDEO = VideoConfig(num_frames=8, resize=(36, 54), crop=(32, 48), region="person",
                              mean=_MVIT_MEAN, std=_MVIT_STD)
_MVIT_CPU_MODEL = (("temporal_size", 8), ("spatial_size", (32, 48)), ("block_setting", mvit.CPU_BLOCKS),
                   ("stochastic_depth_prob", 0.1))
_SWIN_CPU_MODEL = (("embed_dim", 48), ("depths", (1, 1, 2, 1)), ("num_heads", (2, 4, 8, 16)))

RECIPES: dict[tuple[str, str], Recipe] = {}
for _name in _names(registry.VIDEO_RESNET):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_RESNET_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(model=_name, preset="cpu", **_RESNET_CPU)
for _name in _names(registry.MVIT):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_MVIT_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(model=_name, preset="cpu", model_overrides=_MVIT_CPU_MODEL,
                                     video=_MVIT_CPU_VIDEO, **_TRANSFORMER_CPU)
for _name in _names(registry.SWIN3D):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_SWIN_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(
        model=_name, preset="cpu", model_overrides=_SWIN_CPU_MODEL,
        video=dataclasses.replace(_SWIN_PAPER["video"], num_frames=8, resize=(56, 72), crop=(48, 64),
                                  region="person"),
        **_TRANSFORMER_CPU)

# The skeleton models. The stored clips are 1 s, 30 frames, one person.
#
# MotionBERT, configs/action/MB_ft_NTU60_xsub.yaml: 243-frame NTU clips there, our clips' 30
# frames here (temp_embed is sliced); two persons (a zero second one, as upstream's NTU
# pipeline); AdamW, backbone lr 1e-4 and head lr 1e-3, weight decay 0.01 on everything,
# x 0.99 per epoch, batch 32, 300 epochs.
_MOTIONBERT_PAPER = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=30, layout="h36m", normalization="screen", num_persons=2),
    batch_size=32, epochs=300, learning_rate=1e-4, head_lr_scale=10.0, schedule="exponential",
    lr_decay=0.99, warmup_epochs=0.0, weight_decay=0.01, decay_all=True,
)
# cpu: the small DSTformer (dim 64, depth 2, 4 heads) with a 256-wide head, one person.
_MOTIONBERT_CPU = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=30, layout="h36m", normalization="screen", num_persons=1),
    model_overrides=(("dim_feat", 64), ("dim_rep", 64), ("depth", 2), ("num_heads", 4),
                     ("hidden_dim", 256), ("maxlen", 30)),
    batch_size=16, epochs=30, learning_rate=1e-3, head_lr_scale=1.0, warmup_epochs=1.0,
    weight_decay=0.01,
)
# PoseConv3D, configs/posec3d/slowonly_r50_ntu60_xsub/joint.py: 48 sampled frames (our 30 repeat,
# as UniformSampleFrames does on short clips), PoseCompact + RandomResizedCrop to 56 x 56 in
# training and 64 x 64 in evaluation, keypoint heatmaps with sigma 0.6 and scores; SGD momentum
# 0.9, weight decay 3e-4, gradient norm clipped at 40, cosine. Upstream: lr 0.4 for 8 GPUs x 32
# clips; here batch 32 with the linearly scaled lr 0.05; 24 epochs of 10 repeats = 240 epochs.
_POSECONV3D_PAPER = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=48, layout="coco", normalization="compact", num_persons=1),
    heatmaps=HeatmapConfig(sigma=0.6, use_score=True, mode="keypoint"),
    batch_size=32, epochs=240, optimizer="sgd", learning_rate=0.05, warmup_epochs=0.0,
    weight_decay=3e-4, decay_all=True, grad_clip=40.0,
)
# cpu: base 16, one block per stage, 16 frames, 32 x 32 heatmaps, and AdamW: in 8 epochs SGD
# (lr 0.05 or 0.2) stayed near chance, AdamW 1e-3 reached validation 0.57; AdamW 3e-3 for 12
# epochs with a weight average (decay 0.99) learns faster (README).
_POSECONV3D_CPU = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=16, layout="coco", normalization="compact", num_persons=1,
                            compact_size=(32, 32), compact_eval_size=(32, 32)),
    heatmaps=HeatmapConfig(sigma=0.6, use_score=True, mode="keypoint"),
    model_overrides=(("base_channels", 16), ("stage_blocks", (1, 1, 1))),
    batch_size=16, epochs=12, optimizer="adamw", learning_rate=3e-3, warmup_epochs=1.0,
    weight_decay=0.05, grad_clip=40.0, ema_decay=0.99,
)
# MS-G3D, configs/msg3d/msg3d_pyskl_ntu60_xsub_hrnet/j.py: PreNormalize2D, 100 sampled frames,
# two persons; SGD nesterov momentum 0.9, weight decay 5e-4, cosine; upstream lr 0.1 for
# 8 GPUs x 16 clips, here batch 16 with lr 0.0125 (linear scaling); 16 epochs of 5 repeats.
_MSG3D_PAPER = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=100, layout="coco", normalization="centre", num_persons=2),
    batch_size=16, epochs=80, optimizer="sgd", nesterov=True, learning_rate=0.0125,
    warmup_epochs=0.0, weight_decay=5e-4, decay_all=True,
)
_MSG3D_CPU = dict(
    dataset="synthetic",
    skeleton=SkeletonConfig(num_frames=30, layout="coco", normalization="centre", num_persons=1),
    model_overrides=(("base_channels", 16), ("num_person", 1)),
    batch_size=16, epochs=20, optimizer="sgd", nesterov=True, learning_rate=0.05,
    warmup_epochs=1.0, weight_decay=5e-4, decay_all=True,
)
for _family, _paper, _cpu in ((registry.MOTIONBERT, _MOTIONBERT_PAPER, _MOTIONBERT_CPU),
                              (registry.POSECONV3D, _POSECONV3D_PAPER, _POSECONV3D_CPU),
                              (registry.MSG3D, _MSG3D_PAPER, _MSG3D_CPU)):
    for _name in _names(_family):
        RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_paper)
        RECIPES[(_name, "cpu")] = Recipe(model=_name, preset="cpu", **_cpu)

# RGBPoseConv3D, pyskl's configs/rgbpose_conv3d/rgbpose_conv3d.py: 8 RGB frames and 32 pose
# frames; MMCompact (a square box around the person), resize to 256 x 256, RandomResizedCrop of
# area 0.56-1 resized to 224, flip; heatmaps at a quarter of the RGB size, sigma 0.7 with scores;
# ImageNet mean and std; SGD momentum 0.9, weight decay 1e-4, gradient norm clipped at 40, 20
# epochs. Here: the person region (as the video cpu presets) stands in for MMCompact, the crop
# scale jitter for RandomResizedCrop, evaluation is a centre 224 crop (upstream: the whole
# 256 frame), the learning rate is upstream's 0.0075 for 8 GPUs x 6 clips scaled linearly to
# batch 16, and the schedule is cosine (upstream: x 0.1 at epochs 12 and 16).
_RGBPOSE_PAPER = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=8, resize=(256, 256), crop=(224, 224), region="person",
                      scale_jitter=(0.857, 1.143), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    skeleton=SkeletonConfig(num_frames=32, layout="coco", normalization="compact", num_persons=1,
                            compact_size=(56, 56), compact_eval_size=(56, 56)),
    heatmaps=HeatmapConfig(sigma=0.7, use_score=True, mode="keypoint"),
    batch_size=16, epochs=20, optimizer="sgd", learning_rate=0.0025, warmup_epochs=0.0,
    weight_decay=1e-4, decay_all=True, grad_clip=40.0, compute_dtype="bfloat16",
)
# cpu: the cpu presets' sizes for both pathways (width 16, one block per stage), 8 RGB frames of
# the 48 x 64 person region and 16 heatmap frames (speed ratio 2) at a quarter of that size, the
# published strides (RGB layer2 and pose layer1 meet at 6 x 8); AdamW with a weight average, as
# the video cpu presets. Measured on this 2-core CPU (train step, batch 8): 0.28 s; keeping the
# heatmaps at half the RGB size (RGB max-pool stride 1) costs 1.27 s.
_RGBPOSE_CPU = dict(
    dataset="synthetic",
    video=VideoConfig(num_frames=8, resize=(56, 72), crop=(48, 64), region="person"),
    skeleton=SkeletonConfig(num_frames=16, layout="coco", normalization="compact", num_persons=1,
                            compact_size=(12, 16), compact_eval_size=(12, 16)),
    heatmaps=HeatmapConfig(sigma=0.6, use_score=True, mode="keypoint"),
    model_overrides=(("rgb_base_channels", 16), ("rgb_stage_blocks", (1, 1, 1, 1)),
                     ("pose_base_channels", 16),
                     ("pose_stage_blocks", (1, 1, 1)), ("speed_ratio", 2)),
    batch_size=8, epochs=20, learning_rate=1e-3, warmup_epochs=0.5, weight_decay=0.05,
    grad_clip=40.0, ema_decay=0.998,
)
for _name in _names(registry.RGBPOSE):
    RECIPES[(_name, "paper")] = Recipe(model=_name, preset="paper", **_RGBPOSE_PAPER)
    RECIPES[(_name, "cpu")] = Recipe(model=_name, preset="cpu", **_RGBPOSE_CPU)


def with_clip(recipe: Recipe, **video_changes) -> Recipe:
    """`recipe` with other clip settings (VideoConfig fields); a model built for a fixed input
    size (MViT's temporal_size / spatial_size) follows the new frames and crop."""
    video = dataclasses.replace(recipe.video, **video_changes)
    sizes = {"temporal_size": video.num_frames, "spatial_size": tuple(video.crop)}
    overrides = tuple((k, sizes.get(k, v)) for k, v in recipe.model_overrides)
    return recipe.replace(video=video, model_overrides=overrides)


def recipe(model: str, preset: str) -> Recipe:
    """The recipe of `model` (a name or a short name) for `preset`."""
    model = registry.ALIASES.get(model, model)
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}.")
    try:
        return RECIPES[(model, preset)]
    except KeyError:
        known = sorted({m for m, _ in RECIPES})
        raise ValueError(f"No recipe for model {model!r}; models with recipes: {', '.join(known)}.") from None
