"""RGBPoseConv3D (pyskl's two-pathway RGB + pose-heatmap network) in Flax NNX, channels-last.

Duan et al., "Revisiting Skeleton-based Action Recognition", CVPR 2022, section 3.3: early
fusion of RGB frames and pose heatmaps. Two SlowOnly ResNet pathways (this project's
`poseconv3d.ResNet3dSlowOnly`) run side by side:

- the RGB pathway reads few frames at a high resolution, `(N, T, H, W, 3)` normalised clips;
- the pose pathway reads `speed_ratio` times as many frames of keypoint heatmaps,
  `(N, speed_ratio * T, h, w, 17)`, at a quarter of the RGB resolution (so that its layer1 has
  the size of the RGB layer2);
- lateral connections exchange features twice, in both directions: after RGB layer2 / pose
  layer1 and after RGB layer3 / pose layer2. Towards RGB, a bias-free (k, 1, 1) conv with
  temporal stride `speed_ratio` (`layer2_lateral`, `layer3_lateral`); towards pose, a (k, 1, 1)
  transposed conv with temporal stride `speed_ratio`, BN and ReLU (`layer1_lateral`,
  `layer2_lateral`), k = `fusion_kernel`. Each receiving stage concatenates the lateral to its
  input, so its first block is wider (pyskl's `lateral_inplanes`);
- one classifier per pathway (`cls_head.fc_rgb`, `cls_head.fc_pose`) on the average-pooled
  features, each trained with its own cross-entropy (pyskl's loss_components rgb + pose);
- the fused prediction (what `__call__` returns) averages the two heads' class probabilities,
  as pyskl's 1:1 score fusion at test time: `log(0.5 softmax(rgb) + 0.5 softmax(pose))`.

The defaults are pyskl's `configs/rgbpose_conv3d/rgbpose_conv3d.py`: an R50 SlowOnly RGB
pathway (base 64, 3-4-6-3 blocks, inflated stages 3 and 4, stem and pool stride 2), the
PoseConv3D pose pathway without temporal strides (base 32, 4-6-3 blocks), speed and channel
ratio 4, lateral inflation 1 (to RGB) and 16 (to pose), fusion kernel 7; 8 RGB frames at
224 x 224 and 32 heatmap frames at 56 x 56.

State paths mirror pyskl's state_dict: torch `backbone.rgb_path.layer3.0.conv1.conv.weight` is
NNX `('backbone', 'rgb_path', 'layer3', 0, 'conv1', 'conv', 'kernel')`, and
`backbone.pose_path.layer1_lateral.conv.weight` (a ConvTranspose3d, `(in, out, k, 1, 1)`) is
`('backbone', 'pose_path', 'layer1_lateral', 'conv', 'kernel')` `(k, 1, 1, in, out)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.layers import Conv3d
from strokevision_jax.models.poseconv3d import PoseConv3DConfig, ResNet3dSlowOnly
from strokevision_jax.models.torch_keys import Ignore, Rule, TorchKeys

# (RGB stage, pose stage), 1-based, after which the pathways exchange features: pyskl's
# rgb lateral_activate (0, 0, 1, 1) and pose lateral_activate (0, 1, 1).
LATERAL_PAIRS = ((2, 1), (3, 2))


@dataclasses.dataclass(frozen=True)
class RGBPoseConfig:
    """RGBPoseConv3D backbone + RGBPoseHead; `rgb_*` / `pose_*` fields are the pathways'
    ResNet3dPathway arguments (as `poseconv3d.PoseConv3DConfig`'s). Defaults: pyskl's published
    configuration (RGB R50 SlowOnly, pose SlowOnly-R50 of PoseConv3D without temporal stride).

    The RGB pathway needs 4 stages, the pose pathway 3 (the laterals pair RGB layer2 with pose
    layer1 and RGB layer3 with pose layer2); the paired stages' outputs must have the same
    height and width, which the input sizes and strides decide (checked when called).
    `lateral=False` builds the two pathways without laterals (a late-fusion-only ablation).
    """

    num_classes: int = 60
    speed_ratio: int = 4  # pose frames per RGB frame
    channel_ratio: int = 4
    fusion_kernel: int = 7
    lateral: bool = True
    rgb_lateral_infl: int = 1
    pose_lateral_infl: int = 16
    rgb_base_channels: int = 64
    rgb_stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    rgb_conv1_kernel: tuple[int, int, int] = (1, 7, 7)
    rgb_conv1_stride: tuple[int, int] = (1, 2)
    rgb_pool1_stride: tuple[int, int] = (1, 2)
    rgb_inflate: tuple[Any, ...] = (0, 0, 1, 1)
    rgb_spatial_strides: tuple[int, ...] = (1, 2, 2, 2)
    rgb_temporal_strides: tuple[int, ...] = (1, 1, 1, 1)
    pose_in_channels: int = 17
    pose_base_channels: int = 32
    pose_stage_blocks: tuple[int, ...] = (4, 6, 3)
    pose_conv1_kernel: tuple[int, int, int] = (1, 7, 7)
    pose_conv1_stride: tuple[int, int] = (1, 1)
    pose_pool1_stride: tuple[int, int] = (1, 1)
    pose_inflate: tuple[Any, ...] = (0, 1, 1)
    pose_spatial_strides: tuple[int, ...] = (2, 2, 2)
    pose_temporal_strides: tuple[int, ...] = (1, 1, 1)
    rgb_dropout: float = 0.5
    pose_dropout: float = 0.5
    init_std: float = 0.01
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    factorize_convs: bool = True

    def __post_init__(self):
        if len(self.rgb_stage_blocks) != 4 or len(self.pose_stage_blocks) != 3:
            raise ValueError("RGBPoseConfig: the RGB pathway has 4 stages and the pose pathway 3 "
                             f"(laterals {LATERAL_PAIRS}); got rgb_stage_blocks={self.rgb_stage_blocks}, "
                             f"pose_stage_blocks={self.pose_stage_blocks}.")
        if min(self.speed_ratio, self.channel_ratio, self.fusion_kernel, self.rgb_lateral_infl,
               self.pose_lateral_infl) < 1 or self.fusion_kernel % 2 == 0:
            raise ValueError("RGBPoseConfig: speed_ratio, channel_ratio and the lateral inflations "
                             "must be positive and fusion_kernel odd; got "
                             f"{self.speed_ratio}, {self.channel_ratio}, {self.rgb_lateral_infl}, "
                             f"{self.pose_lateral_infl}, {self.fusion_kernel}.")
        self.rgb_pathway, self.pose_pathway  # noqa: B018 (each pathway validates its fields)
        for rgb, pose in LATERAL_PAIRS if self.lateral else ():
            if self.pose_lateral_width(pose) < 1 or self.rgb_lateral_width(rgb) < 1:
                raise ValueError(f"RGBPoseConfig: the laterals after RGB layer{rgb} / pose layer{pose} "
                                 "would have no channels; lower channel_ratio or the inflations.")

    def _pathway(self, prefix: str, in_channels: int, dropout: float) -> PoseConv3DConfig:
        field = lambda name: getattr(self, f"{prefix}_{name}")  # noqa: E731
        stages = len(field("stage_blocks"))
        return PoseConv3DConfig(
            in_channels=in_channels, base_channels=field("base_channels"), num_stages=stages,
            stage_blocks=field("stage_blocks"), out_indices=(stages - 1,),
            conv1_kernel=field("conv1_kernel"), conv1_stride=field("conv1_stride"),
            pool1_stride=field("pool1_stride"), inflate=field("inflate"),
            spatial_strides=field("spatial_strides"), temporal_strides=field("temporal_strides"),
            zero_init_residual=self.zero_init_residual, dropout=dropout,
            num_classes=self.num_classes, init_std=self.init_std, dtype=self.dtype,
            param_dtype=self.param_dtype, factorize_convs=self.factorize_convs)

    @property
    def rgb_pathway(self) -> PoseConv3DConfig:
        return self._pathway("rgb", 3, self.rgb_dropout)

    @property
    def pose_pathway(self) -> PoseConv3DConfig:
        return self._pathway("pose", self.pose_in_channels, self.pose_dropout)

    def rgb_lateral_width(self, rgb_stage: int) -> int:
        """Channels the pose pathway sends into RGB stage `rgb_stage + 1`."""
        return 4 * self.rgb_pathway.stage_widths[rgb_stage - 1] * self.rgb_lateral_infl // self.channel_ratio

    def pose_lateral_width(self, pose_stage: int) -> int:
        """Channels the RGB pathway sends into pose stage `pose_stage + 1`."""
        return 4 * self.pose_pathway.stage_widths[pose_stage - 1] * self.channel_ratio // self.pose_lateral_infl

    @property
    def feature_channels(self) -> tuple[int, int]:
        return self.rgb_pathway.feature_channels, self.pose_pathway.feature_channels


PRESETS: dict[str, RGBPoseConfig] = {
    "ntu60_xsub": RGBPoseConfig(),
    # Tests: width 4 / 8, one block per stage; speed ratio 2.
    "tiny": RGBPoseConfig(rgb_base_channels=4, rgb_stage_blocks=(1, 1, 1, 1), pose_base_channels=4,
                          pose_stage_blocks=(1, 1, 1), speed_ratio=2, pose_lateral_infl=4),
}


# ---------------------------------------------------------------------------
# Layers


class TemporalConvTranspose(nnx.Module):
    """torch `ConvTranspose3d(in, out, (k, 1, 1), stride=(s, 1, 1), padding=((k - 1) // 2, 0, 0),
    bias=False)` called with `output_size` s * T (pyskl's DeConvModule): (N, T, H, W, in) ->
    (N, s * T, H, W, out). Kernel `(k, 1, 1, in, out)`."""

    def __init__(self, in_features: int, out_features: int, kernel: int, stride: int, *,
                 dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        shape = (kernel, 1, 1, in_features, out_features)
        self.kernel = nnx.Param(layers.KAIMING_NORMAL_FAN_OUT(rngs.params(), shape, param_dtype))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        k, s = kernel.shape[0], self.stride
        pad = (k - 1) // 2
        # torch picks output_padding so that the output has s * T frames.
        extra = s - k + 2 * pad
        n, t, h, w, c = x.shape
        # A transposed conv is the conv of the s-dilated input with the flipped kernel.
        y = jax.lax.conv_general_dilated(
            x.reshape(n, t, h * w, c), kernel[::-1, 0], window_strides=(1, 1),
            padding=[(k - 1 - pad, k - 1 - pad + extra), (0, 0)], lhs_dilation=(s, 1),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(n, s * t, h, w, y.shape[-1])


class ToRGBLateral(nnx.Module):
    """Pose -> RGB: mmcv ConvModule without norm and activation (`.conv` only)."""

    def __init__(self, cfg: RGBPoseConfig, in_planes: int, out_planes: int, *, rngs: nnx.Rngs):
        k = cfg.fusion_kernel
        self.conv = Conv3d(in_planes, out_planes, (k, 1, 1), (cfg.speed_ratio, 1, 1), ((k - 1) // 2, 0, 0),
                           kernel_init=layers.KAIMING_NORMAL_FAN_OUT, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, factorize=cfg.factorize_convs, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        return self.conv(x)


class ToPoseLateral(nnx.Module):
    """RGB -> pose: pyskl's DeConvModule (transposed conv, BatchNorm, ReLU)."""

    def __init__(self, cfg: RGBPoseConfig, in_planes: int, out_planes: int, *, rngs: nnx.Rngs):
        self.conv = TemporalConvTranspose(in_planes, out_planes, cfg.fusion_kernel, cfg.speed_ratio,
                                          dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(out_planes, momentum=0.9, epsilon=1e-5, dtype=cfg.dtype,
                                param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class RGBPoseBackbone(nnx.Module):
    """`rgb_path` and `pose_path` (ResNet3dSlowOnly each) with their `layer{i}_lateral`s."""

    def __init__(self, cfg: RGBPoseConfig, *, rngs: nnx.Rngs):
        rgb, pose = cfg.rgb_pathway, cfg.pose_pathway
        pairs = LATERAL_PAIRS if cfg.lateral else ()
        to_rgb = [0] * rgb.num_stages
        to_pose = [0] * pose.num_stages
        for rgb_stage, pose_stage in pairs:  # stage i + 1 (0-based: i) receives after stage i
            to_rgb[rgb_stage] = cfg.rgb_lateral_width(rgb_stage)
            to_pose[pose_stage] = cfg.pose_lateral_width(pose_stage)
        self.rgb_path = ResNet3dSlowOnly(rgb, lateral_channels=tuple(to_rgb), rngs=rngs)
        self.pose_path = ResNet3dSlowOnly(pose, lateral_channels=tuple(to_pose), rngs=rngs)
        rgb_widths = [4 * w for w in rgb.stage_widths]
        pose_widths = [4 * w for w in pose.stage_widths]
        for rgb_stage, pose_stage in pairs:
            setattr(self.rgb_path, f"layer{rgb_stage}_lateral",
                    ToRGBLateral(cfg, pose_widths[pose_stage - 1], to_rgb[rgb_stage], rngs=rngs))
            setattr(self.pose_path, f"layer{pose_stage}_lateral",
                    ToPoseLateral(cfg, rgb_widths[rgb_stage - 1], to_pose[pose_stage], rngs=rngs))
        self.pairs = pairs
        self.speed_ratio = cfg.speed_ratio

    def __call__(self, video: jax.Array, heatmaps: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """(N, T, H, W, 3), (N, speed_ratio * T, H / 4, W / 4, K) at the published strides ->
        the last stages' features (N, T', H', W', C) of RGB and pose."""
        if heatmaps.shape[1] != self.speed_ratio * video.shape[1]:
            raise ValueError(f"RGBPoseConv3D: {heatmaps.shape[1]} heatmap frames for {video.shape[1]} "
                             f"RGB frames; the pose pathway reads speed_ratio={self.speed_ratio} times "
                             "as many.")
        rgb_path, pose_path = self.rgb_path, self.pose_path
        x_rgb = rgb_path.stem(video, train=train)
        x_pose = pose_path.stem(heatmaps, train=train)
        rgb_done = pose_done = 0  # stages run so far
        for rgb_stage, pose_stage in (*self.pairs, (4, 3)):
            for i in range(rgb_done, rgb_stage):
                x_rgb = getattr(rgb_path, f"layer{i + 1}")(x_rgb, train=train)
            for i in range(pose_done, pose_stage):
                x_pose = getattr(pose_path, f"layer{i + 1}")(x_pose, train=train)
            rgb_done, pose_done = rgb_stage, pose_stage
            if (rgb_stage, pose_stage) == (4, 3):
                break
            if x_rgb.shape[2:4] != x_pose.shape[2:4]:
                raise ValueError(
                    f"RGBPoseConv3D: RGB layer{rgb_stage} is {x_rgb.shape[2:4]} (H, W), pose "
                    f"layer{pose_stage} {x_pose.shape[2:4]}; the laterals need equal sizes: make "
                    "the heatmaps a quarter of the RGB crop at the published strides.")
            from_pose = getattr(rgb_path, f"layer{rgb_stage}_lateral")(x_pose, train=train)
            from_rgb = getattr(pose_path, f"layer{pose_stage}_lateral")(x_rgb, train=train)
            x_rgb = jnp.concatenate([x_rgb, from_pose.astype(x_rgb.dtype)], axis=-1)
            x_pose = jnp.concatenate([x_pose, from_rgb.astype(x_pose.dtype)], axis=-1)
        return x_rgb, x_pose


class RGBPoseHead(nnx.Module):
    """Per pathway: global average pool over (T, H, W), dropout, a Linear (`fc_rgb`, `fc_pose`)."""

    def __init__(self, cfg: RGBPoseConfig, *, rngs: nnx.Rngs):
        rgb_channels, pose_channels = cfg.feature_channels

        def linear(width):
            return nnx.Linear(width, cfg.num_classes, kernel_init=jax.nn.initializers.normal(cfg.init_std),
                              bias_init=jax.nn.initializers.zeros, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype, rngs=rngs)

        self.dropout_rgb = nnx.Dropout(cfg.rgb_dropout, rngs=rngs)
        self.dropout_pose = nnx.Dropout(cfg.pose_dropout, rngs=rngs)
        self.fc_rgb = linear(rgb_channels)
        self.fc_pose = linear(pose_channels)

    def __call__(self, x_rgb: jax.Array, x_pose: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        pooled = [jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)) for x in (x_rgb, x_pose)]
        rgb = self.fc_rgb(self.dropout_rgb(pooled[0], deterministic=not train))
        pose = self.fc_pose(self.dropout_pose(pooled[1], deterministic=not train))
        return {"rgb": rgb.astype(jnp.float32), "pose": pose.astype(jnp.float32)}


def fuse_scores(rgb: jax.Array, pose: jax.Array) -> jax.Array:
    """log(0.5 softmax(rgb) + 0.5 softmax(pose)): the 1:1 probability average, as logits."""
    views = jnp.stack([jax.nn.log_softmax(rgb, -1), jax.nn.log_softmax(pose, -1)])
    return jax.nn.logsumexp(views, axis=0) - jnp.log(2.0)


class RGBPoseConv3D(nnx.Module):
    """pyskl's RGBPoseConv3D recogniser: `backbone` + `cls_head`.

    Inputs are a dict {'video': (N, T, H, W, 3), 'heatmaps': (N, speed_ratio * T, h, w, K)}.
    `heads` gives every prediction; `__call__` the fused one. Training minimises the sum of the
    two heads' cross-entropies (`loss_components`), as pyskl.
    """

    loss_components = ("rgb", "pose")

    def __init__(self, config: RGBPoseConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = RGBPoseBackbone(config, rngs=rngs)
        self.cls_head = RGBPoseHead(config, rngs=rngs)

    def heads(self, inputs: dict[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
        """{'rgb', 'pose': each head's logits, 'fused': `fuse_scores` of the two}, (N, classes)."""
        missing = {"video", "heatmaps"} - set(inputs)
        if missing:
            raise ValueError(f"RGBPoseConv3D reads {{'video', 'heatmaps'}}; the inputs lack "
                             f"{', '.join(sorted(missing))}.")
        out = self.cls_head(*self.backbone(inputs["video"], inputs["heatmaps"], train=train), train=train)
        out["fused"] = fuse_scores(out["rgb"], out["pose"])
        return out

    def __call__(self, inputs: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        return self.heads(inputs, train=train)["fused"]


# ---------------------------------------------------------------------------
# The converter's key table (pyskl's mmcv checkpoints: {'meta', 'state_dict'})
#
# `backbone.{rgb,pose}_path.<ConvModule>.conv.weight` (O, I, T, H, W) -> `.conv.kernel`;
# the pose laterals are ConvTranspose3d, weight (I, O, T, H, W) -> kernel (T, H, W, I, O);
# BatchNorms as in `poseconv3d.TORCH_KEYS`; `cls_head.fc_{rgb,pose}` Linears.

def _conv_transpose(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    del shape
    return np.transpose(value, (2, 3, 4, 0, 1))


_PATH = r"backbone\.(?:rgb|pose)_path"
_MODULE = rf"({_PATH}\.(?:conv1|layer\d\.\d+\.(?:conv[123]|downsample)))"
_TO_RGB = r"(backbone\.rgb_path\.layer\d_lateral)"
_TO_POSE = r"(backbone\.pose_path\.layer\d_lateral)"
_BN = rf"({_MODULE[1:-1]}|{_TO_POSE[1:-1]})"

_TORCH_RULES = (
    Rule(rf"{_MODULE}\.conv\.weight", "{0}.conv.kernel", "conv"),
    Rule(rf"{_TO_RGB}\.conv\.weight", "{0}.conv.kernel", "conv"),
    Rule(rf"{_TO_POSE}\.conv\.weight", "{0}.conv.kernel", _conv_transpose),
    Rule(rf"{_BN}\.bn\.weight", "{0}.bn.scale"),
    Rule(rf"{_BN}\.bn\.bias", "{0}.bn.bias"),
    Rule(rf"{_BN}\.bn\.running_mean", "{0}.bn.mean"),
    Rule(rf"{_BN}\.bn\.running_var", "{0}.bn.var"),
    Ignore(rf"{_BN}\.bn\.num_batches_tracked", "a training-step counter, unused by flax BatchNorm (fixed momentum)"),
    Rule(r"cls_head\.fc_(rgb|pose)\.weight", "cls_head.fc_{0}.kernel", "linear"),
    Rule(r"cls_head\.fc_(rgb|pose)\.bias", "cls_head.fc_{0}.bias"),
)
TORCH_KEYS = TorchKeys(
    rules=_TORCH_RULES,
    head=("cls_head.fc_rgb.weight", "cls_head.fc_rgb.bias", "cls_head.fc_pose.weight",
          "cls_head.fc_pose.bias"))
