"""The model zoo: one typed description per model, read by everything that needs to know one.

A `Family` says what the models of one architecture share: the NNX network and its config class,
what it reads (video clips, keypoints, or heatmaps made on the device from keypoints), where its
classifier sits, the converter's torch key table, and how to build the PyTorch original for the
parity tests and the benchmark. A `ModelSpec` is one named model of a family: its published
configuration, its short names and its figure in the StrokeVision-Bench paper.

    from strokevision_jax.models import registry
    spec = registry.get("r2plus1d")                 # a name or a short name
    model = spec.build(num_classes=4, rngs=nnx.Rngs(0), base_width=16)   # config overrides

`train`, `presets`, `evaluate`, `benchmark`, `study`, `checkpoints_convert` and the parity tests
all look models up here. Adding a model: write its module (network, config, `TORCH_KEYS`,
`torch_reference`) under `strokevision_jax/models/` and add a `ModelSpec` (and, for a new
architecture, a `Family`) below; then give it training recipes in `strokevision_jax.presets`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Literal

from flax import nnx

from strokevision_jax.models import (
    motionbert,
    msg3d,
    mvit,
    poseconv3d,
    rgbpose,
    swin3d,
    video_resnet,
)
from strokevision_jax.models.torch_keys import TorchKeys

InputKind = Literal["video", "keypoints", "heatmaps", "video+heatmaps"]


class UnknownModelError(ValueError):
    """A model name that is neither a registered name nor a short name."""


@dataclasses.dataclass(frozen=True)
class Family:
    """What the models of one architecture share.

    network: the NNX module class, built as `network(config, rngs=rngs)`.
    config_class: its frozen config dataclass (every architecture choice is a field).
    input_kind: "video" ((N, T, H, W, 3) normalised frames), "keypoints" ((N, M, T, 17, 3)) or
      "heatmaps" (keypoints drawn as (N, T, H, W, 17) heatmap volumes inside the jitted step),
      or "video+heatmaps" (both, as a dict {'video', 'heatmaps'}: the two-pathway network).
    head: the top-level attribute holding the classifier (trained at the recipe's head learning
      rate); classifier: the dotted path of the Linear whose outputs are the classes;
      extra_classifiers: further per-class Linears (a two-pathway network's second head).
    torch_keys: the converter's key table for the upstream checkpoints.
    torch_reference: config -> the upstream PyTorch network of that config (None where this
      project has no PyTorch original to run: the skeleton models are checked against stored
      upstream outputs instead).
    input_size_fields: config fields that fix the input size the parameters are built for (kept
      when a checkpoint fixes every other field).
    upstream: where the original and its checkpoints come from.
    """

    name: str
    network: Callable[..., nnx.Module]
    config_class: type
    input_kind: InputKind
    head: str
    classifier: str
    torch_keys: TorchKeys
    torch_reference: Callable[[Any], Any] | None = None
    input_size_fields: tuple[str, ...] = ()
    upstream: str = ""
    extra_classifiers: tuple[str, ...] = ()

    @property
    def modality(self) -> Literal["rgb", "skeleton", "rgb+skeleton"]:
        return {"video": "rgb", "video+heatmaps": "rgb+skeleton"}.get(self.input_kind, "skeleton")

    @property
    def classifiers(self) -> tuple[str, ...]:
        """Dotted paths of every Linear whose outputs are the classes."""
        return (self.classifier, *self.extra_classifiers)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One named model: `family` at `config` (its published size and number of classes)."""

    name: str
    family: Family
    config: Any
    aliases: tuple[str, ...] = ()
    paper_accuracy: str | None = None  # StrokeVision-Bench Table 1 (%, real recordings)

    def __post_init__(self):
        if not isinstance(self.config, self.family.config_class):
            raise TypeError(f"{self.name}: config is a {type(self.config).__name__}, the "
                            f"{self.family.name} family's is {self.family.config_class.__name__}.")

    def make_config(self, num_classes: int | None = None, **overrides: Any) -> Any:
        """The published config with `num_classes` and `overrides` (config fields) replaced."""
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"{self.name}: unknown config field(s) {', '.join(unknown)}; the "
                            f"fields of {type(self.config).__name__} are: {', '.join(sorted(fields))}.")
        if num_classes is not None:
            overrides["num_classes"] = int(num_classes)
        return dataclasses.replace(self.config, **overrides)

    def build(self, *, num_classes: int | None = None, rngs: nnx.Rngs, **overrides: Any) -> nnx.Module:
        """The NNX model, freshly initialised (`overrides`: config fields, e.g. dtype=jnp.bfloat16)."""
        return self.family.network(self.make_config(num_classes, **overrides), rngs=rngs)

    __call__ = build


# ----------------------------------------------------------------------------- families

VIDEO_RESNET = Family(
    name="video_resnet", network=video_resnet.VideoResNet, config_class=video_resnet.VideoResNetConfig,
    input_kind="video", head="fc", classifier="fc", torch_keys=video_resnet.TORCH_KEYS,
    torch_reference=video_resnet.torch_reference, upstream="torchvision.models.video")
MVIT = Family(
    name="mvit", network=mvit.MViT, config_class=mvit.MViTConfig, input_kind="video", head="head",
    classifier="head", torch_keys=mvit.TORCH_KEYS, torch_reference=mvit.torch_reference,
    input_size_fields=("temporal_size", "spatial_size"), upstream="torchvision.models.video")
SWIN3D = Family(
    name="swin3d", network=swin3d.SwinTransformer3d, config_class=swin3d.Swin3dConfig,
    input_kind="video", head="head", classifier="head", torch_keys=swin3d.TORCH_KEYS,
    torch_reference=swin3d.torch_reference, upstream="torchvision.models.video")
MOTIONBERT = Family(
    name="motionbert", network=motionbert.MotionBERT, config_class=motionbert.MotionBERTConfig,
    input_kind="keypoints", head="head", classifier="head.fc2", torch_keys=motionbert.TORCH_KEYS,
    upstream="MotionBERT (train_action.py checkpoints)")
POSECONV3D = Family(
    name="poseconv3d", network=poseconv3d.PoseConv3D, config_class=poseconv3d.PoseConv3DConfig,
    input_kind="heatmaps", head="cls_head", classifier="cls_head.fc_cls",
    torch_keys=poseconv3d.TORCH_KEYS, upstream="pyskl (mmcv checkpoints)")
MSG3D = Family(
    name="msg3d", network=msg3d.MSG3D, config_class=msg3d.MSG3DConfig, input_kind="keypoints",
    head="cls_head", classifier="cls_head.fc_cls", torch_keys=msg3d.TORCH_KEYS,
    upstream="pyskl (mmcv checkpoints)")
RGBPOSE = Family(
    name="rgbpose", network=rgbpose.RGBPoseConv3D, config_class=rgbpose.RGBPoseConfig,
    input_kind="video+heatmaps", head="cls_head", classifier="cls_head.fc_rgb",
    extra_classifiers=("cls_head.fc_pose",), torch_keys=rgbpose.TORCH_KEYS,
    upstream="pyskl (mmcv checkpoints)")

FAMILIES: tuple[Family, ...] = (VIDEO_RESNET, MVIT, SWIN3D, MOTIONBERT, POSECONV3D, MSG3D, RGBPOSE)

# ----------------------------------------------------------------------------- models
# Names are torchvision's builder names (the video models) and upstream's (the skeleton models);
# the short names are the paper's. Paper figures: StrokeVision-Bench Table 1 (the Video Swin row
# reports about 74 % for the family; MViT one figure for both).

_SPECS = (
    ModelSpec("r2plus1d_18", VIDEO_RESNET, video_resnet.R2PLUS1D, ("r2plus1d",), "86.96"),
    ModelSpec("r3d_18", VIDEO_RESNET, video_resnet.R3D, ("r3d",), "87.68"),
    ModelSpec("mc3_18", VIDEO_RESNET, video_resnet.MC3, ("mc3",)),
    ModelSpec("mvit_v1_b", MVIT, mvit.V1_B, (), "77.14"),
    # "mvit": the stronger of torchvision's two Kinetics-400 MViTs.
    ModelSpec("mvit_v2_s", MVIT, mvit.V2_S, ("mvit",), "77.14"),
    ModelSpec("swin3d_t", SWIN3D, swin3d.TINY, (), "≈74"),
    ModelSpec("swin3d_s", SWIN3D, swin3d.SMALL, (), "≈74"),
    # "swin": the strongest Kinetics-400 Video Swin in torchvision.
    ModelSpec("swin3d_b", SWIN3D, swin3d.BASE, ("swin",), "≈74"),
    ModelSpec("motionbert", MOTIONBERT, motionbert.PRESETS["ntu60_xsub"], (), "84.29"),
    ModelSpec("poseconv3d", POSECONV3D, poseconv3d.PRESETS["ntu60_xsub"], (), "68.93"),
    ModelSpec("msg3d", MSG3D, msg3d.PRESETS["ntu60_xsub"], (), "78.39"),
    # Early fusion (not in the paper): RGB and pose heatmaps, lateral connections both ways.
    ModelSpec("rgbposeconv3d", RGBPOSE, rgbpose.PRESETS["ntu60_xsub"], ("rgbpose",)),
    # Its ablation: the same two pathways, inputs, heads and recipe, without the laterals (the
    # pathways meet only in the 1:1 average of their heads' probabilities).
    ModelSpec("rgbposeconv3d_nolateral", RGBPOSE,
              dataclasses.replace(rgbpose.PRESETS["ntu60_xsub"], lateral=False), ("rgbpose_nolateral",)),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
# The seven networks StrokeVision-Bench trains (Table 1), in its order.
PAPER_MODELS = ("r3d_18", "r2plus1d_18", "mvit_v2_s", "swin3d_b", "motionbert", "poseconv3d", "msg3d")
ALIASES: dict[str, str] = {alias: spec.name for spec in _SPECS for alias in spec.aliases}


def names() -> list[str]:
    return list(MODELS)


def short_name(name: str) -> str:
    """The model's first short name, or its name."""
    spec = get(name)
    return spec.aliases[0] if spec.aliases else spec.name


def get(name: str) -> ModelSpec:
    """The model called `name` (a registered name or a short name); raises UnknownModelError
    listing both."""
    name = ALIASES.get(name, name)
    try:
        return MODELS[name]
    except KeyError:
        short = ", ".join(f"{a} -> {m}" for a, m in sorted(ALIASES.items()))
        raise UnknownModelError(f"Unknown model {name!r}; models: {', '.join(MODELS)}; short names: "
                                f"{short}.") from None


def resolve(name: str) -> str:
    """The registered name of `name` (a name or a short name)."""
    return get(name).name


def of_family(family: Family) -> Iterator[ModelSpec]:
    return (spec for spec in _SPECS if spec.family is family)


def family_of_config(config: Any) -> Family:
    """The family whose config class `config` is an instance of."""
    for family in FAMILIES:
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} is no registered family's config class.")


def torch_reference(config: Any):
    """The upstream PyTorch network of an NNX model config (torch is imported then), or None for
    a family without one in this project."""
    family = family_of_config(config)
    return None if family.torch_reference is None else family.torch_reference(config)
