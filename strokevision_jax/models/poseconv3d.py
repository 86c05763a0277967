"""PoseConv3D (pyskl's ResNet3dSlowOnly + I3DHead) in Flax NNX, channels-last.

Duan et al., "Revisiting Skeleton-based Action Recognition", CVPR 2022. The network is a
SlowOnly ResNet-50 (Bottleneck3d blocks) run on pseudo-heatmap volumes: one channel per
COCO-17 keypoint (or limb), built by `strokevision_jax.data.heatmaps`. Inputs are
`(N, T, H, W, in_channels)`; kernels are `(T, H, W, in, out)`.

The defaults are pyskl's `configs/posec3d/slowonly_r50_ntu60_xsub/joint.py`: base width 32,
three stages of (4, 6, 3) bottlenecks (widths 32/64/128, outputs x4 = 128/256/512), a 1x7x7
stem without stride and with a stride-1 3x3 max-pool, spatial strides (2, 2, 2) and temporal
strides (1, 1, 2), so (N, T, H, W, 17) -> (N, T/2, H/8, W/8, 512). Upstream behaviour kept:
- every conv is an mmcv ConvModule: bias-free Conv3d, BatchNorm3d (eps 1e-5), ReLU, except
  the last conv of a bottleneck and the shortcut conv, which have no ReLU;
- padding is explicit and symmetric as torch's (XLA's 'SAME' pads a stride-2 3x3 conv on an
  even size by (0, 1), torch by (1, 1));
- '3x1x1' inflation: an inflated block has a (3, 1, 1) conv1 (temporal padding 1), every
  block a (1, 3, 3) conv2 that carries the block's (temporal, spatial, spatial) stride;
- a stage has a shortcut conv (1x1x1, the block's stride, + BN) in block 0 when its spatial
  stride is not 1 or the width changes; a temporal stride alone does not add one;
- the stem max-pool pads with -inf (it follows a ReLU, so this equals zero padding);
- the head averages over (T, H, W), applies dropout (identity in eval) and `fc_cls`;
  `out_indices` with several stages concatenates their outputs along channels, as the head.

State paths mirror the mmcv state_dict: torch `backbone.layer2.0.conv1.conv.weight` is NNX
path `('backbone', 'layer2', 0, 'conv1', 'conv', 'kernel')`, `cls_head.fc_cls.weight` is
`('cls_head', 'fc_cls', 'kernel')`. The converter's table is
`TORCH_KEYS` below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.layers import Conv3d
from strokevision_jax.models.torch_keys import Ignore, Rule, TorchKeys

InflateStyle = Literal["3x1x1", "3x3x3"]
_EXPANSION = 4  # Bottleneck3d


def _per_stage(value, num_stages: int) -> tuple:
    """mmcv's `_ntuple`: an int applies to every stage."""
    return (value,) * num_stages if isinstance(value, int) else tuple(value)


@dataclasses.dataclass(frozen=True)
class PoseConv3DConfig:
    """ResNet3dSlowOnly + I3DHead; field names are pyskl's. Defaults: the published config
    (`slowonly_r50_ntu60_xsub/joint.py`, 2.02M parameters at 60 classes).

    `inflate` has one entry per stage: 0/1 for all its blocks, or a tuple with one 0/1 per
    block. `conv1_stride` and `pool1_stride` are (temporal, spatial) as upstream. The head's
    input width is derived: 4 * base_channels * 2**i summed over `out_indices`.
    """

    in_channels: int = 17
    base_channels: int = 32
    num_stages: int = 3
    stage_blocks: tuple[int, ...] = (4, 6, 3)
    out_indices: tuple[int, ...] = (2,)
    conv1_kernel: tuple[int, int, int] = (1, 7, 7)
    conv1_stride: tuple[int, int] = (1, 1)
    pool1_stride: tuple[int, int] = (1, 1)
    inflate: tuple[Any, ...] = (0, 1, 1)
    inflate_style: InflateStyle = "3x1x1"
    spatial_strides: tuple[int, ...] = (2, 2, 2)
    temporal_strides: tuple[int, ...] = (1, 1, 2)
    # pyskl's default: each bottleneck's last BN starts with scale 0 (the block is the identity).
    zero_init_residual: bool = True
    dropout: float = 0.5
    num_classes: int = 60
    init_std: float = 0.01  # fc_cls weight ~ N(0, init_std)
    dtype: Any = jnp.float32  # compute dtype; logits are float32
    param_dtype: Any = jnp.float32
    # Run 1xkxk and kx1x1 convs as 2D convs (same result, faster on CPU; see layers.Conv3d).
    factorize_convs: bool = True

    def __post_init__(self):
        n = self.num_stages
        if not 1 <= n <= 4:
            raise ValueError(f"num_stages must be 1..4 (ResNet3d), got {n}.")
        per_stage = {"stage_blocks": self.stage_blocks, "spatial_strides": self.spatial_strides,
                     "temporal_strides": self.temporal_strides}
        wrong = {name: v for name, v in per_stage.items() if len(v) != n}
        if wrong:
            raise ValueError(f"num_stages={n} needs {n} entries in each of "
                             f"{', '.join(per_stage)}; got {wrong}.")
        if not self.out_indices or not all(0 <= i < n for i in self.out_indices):
            raise ValueError(f"out_indices must name stages 0..{n - 1}; got {self.out_indices}.")
        inflations = self.stage_inflations
        if len(inflations) != n:
            raise ValueError(f"inflate needs one entry per stage ({n}); got {self.inflate}.")
        for stage, (flags, blocks) in enumerate(zip(inflations, self.stage_blocks)):
            if len(flags) != blocks:
                raise ValueError(f"inflate[{stage}]={self.inflate[stage]} has {len(flags)} entries "
                                 f"for {blocks} blocks.")
        if self.inflate_style not in ("3x1x1", "3x3x3"):
            raise ValueError(f"inflate_style must be '3x1x1' or '3x3x3', got {self.inflate_style!r}.")
        if len(self.conv1_kernel) != 3 or len(self.conv1_stride) != 2 or len(self.pool1_stride) != 2:
            raise ValueError("conv1_kernel is (t, h, w); conv1_stride and pool1_stride are "
                             f"(temporal, spatial); got {self.conv1_kernel}, {self.conv1_stride}, "
                             f"{self.pool1_stride}.")
        if min(self.in_channels, self.base_channels, self.num_classes, *self.stage_blocks) < 1:
            raise ValueError("in_channels, base_channels, num_classes and stage_blocks must be "
                             f"positive; got {self.in_channels}, {self.base_channels}, "
                             f"{self.num_classes}, {self.stage_blocks}.")

    @property
    def stage_inflations(self) -> tuple[tuple[int, ...], ...]:
        """Per stage, per block: 1 = inflated (temporal conv1), 0 = not."""
        stages = _per_stage(self.inflate, self.num_stages)
        return tuple(_per_stage(flag, blocks) for flag, blocks in zip(stages, self.stage_blocks))

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Bottleneck widths; each stage outputs 4x its width."""
        return tuple(self.base_channels * 2**i for i in range(self.num_stages))

    @property
    def feature_channels(self) -> int:
        return sum(_EXPANSION * self.stage_widths[i] for i in self.out_indices)


PRESETS: dict[str, PoseConv3DConfig] = {
    # pyskl's slowonly_r50_ntu60_xsub (the registry's default).
    "ntu60_xsub": PoseConv3DConfig(),
    # Tests: width 8, one block per stage (inflated stages keep their temporal conv1).
    "tiny": PoseConv3DConfig(base_channels=8, stage_blocks=(1, 1, 1)),
}


# ---------------------------------------------------------------------------
# Layers


# mmcv kaiming_init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
class ConvModule(nnx.Module):
    """mmcv ConvModule: bias-free conv -> BatchNorm (eps 1e-5) -> optional ReLU."""

    def __init__(self, cfg: PoseConv3DConfig, in_planes: int, out_planes: int,
                 kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1),
                 padding: tuple[int, int, int] = (0, 0, 0), *, relu: bool = True,
                 zero_scale: bool = False, rngs: nnx.Rngs):
        self.conv = Conv3d(in_planes, out_planes, kernel, stride, padding,
                           kernel_init=layers.KAIMING_NORMAL_FAN_OUT, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           factorize=cfg.factorize_convs, rngs=rngs)
        # torch momentum 0.1 weighs the new batch; flax momentum weighs the running value.
        self.bn = nnx.BatchNorm(out_planes, momentum=0.9, epsilon=1e-5,
                                scale_init=nnx.initializers.zeros if zero_scale
                                else nnx.initializers.ones,
                                dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.relu = relu

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.bn(self.conv(x), use_running_average=not train)
        return jax.nn.relu(x) if self.relu else x


# (conv1 kernel, conv1 padding, conv2 kernel, conv2 padding) per inflation mode.
_BOTTLENECK_KERNELS = {
    "no_inflate": ((1, 1, 1), (0, 0, 0), (1, 3, 3), (0, 1, 1)),
    "3x1x1": ((3, 1, 1), (1, 0, 0), (1, 3, 3), (0, 1, 1)),
    "3x3x3": ((1, 1, 1), (0, 0, 0), (3, 3, 3), (1, 1, 1)),
}


class Bottleneck3d(nnx.Module):
    """conv1 -> conv2 (strided) -> conv3 (x4 width, no ReLU), + shortcut, ReLU."""

    def __init__(self, cfg: PoseConv3DConfig, in_planes: int, planes: int,
                 stride: tuple[int, int], inflate: bool, *, rngs: nnx.Rngs):
        k1, p1, k2, p2 = _BOTTLENECK_KERNELS[cfg.inflate_style if inflate else "no_inflate"]
        temporal, spatial = stride
        strides = (temporal, spatial, spatial)
        out_planes = planes * _EXPANSION
        self.conv1 = ConvModule(cfg, in_planes, planes, k1, padding=p1, rngs=rngs)
        self.conv2 = ConvModule(cfg, planes, planes, k2, strides, p2, rngs=rngs)
        self.conv3 = ConvModule(cfg, planes, out_planes, (1, 1, 1), relu=False,
                                zero_scale=cfg.zero_init_residual, rngs=rngs)
        downsample = None
        # Upstream's rule: a temporal stride alone keeps the identity shortcut.
        if spatial != 1 or in_planes != out_planes:
            downsample = ConvModule(cfg, in_planes, out_planes, (1, 1, 1), strides,
                                    relu=False, rngs=rngs)
        self.downsample: ConvModule | None = downsample

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        identity = x if self.downsample is None else self.downsample(x, train=train)
        out = self.conv3(self.conv2(self.conv1(x, train=train), train=train), train=train)
        return jax.nn.relu(out + identity)


class ResLayer(nnx.List):
    """A stage: `nn.Sequential` of bottlenecks (same integer indices, so the same paths)."""

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for block in self:
            x = block(x, train=train)
        return x


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    """MaxPool3d((1, 3, 3), (1, s, s), padding (0, 1, 1)) on (N, T, H, W, C), -inf padding."""
    pad = ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3, 1),
                                 (1, 1, stride, stride, 1), pad)


class ResNet3dSlowOnly(nnx.Module):
    """Stem (`conv1` ConvModule + 1x3x3 max-pool) and stages `layer1..layerN`.

    `lateral_channels[i]`: extra input channels of stage i's first block (pyskl's
    `lateral_inplanes`: another pathway's features concatenated to its input, see `rgbpose`).
    """

    def __init__(self, config: PoseConv3DConfig, *, lateral_channels: tuple[int, ...] = (),
                 rngs: nnx.Rngs):
        cfg = config
        lateral_channels = tuple(lateral_channels) + (0,) * (cfg.num_stages - len(lateral_channels))
        temporal, spatial = cfg.conv1_stride
        self.conv1 = ConvModule(cfg, cfg.in_channels, cfg.base_channels, cfg.conv1_kernel,
                                (temporal, spatial, spatial),
                                tuple((k - 1) // 2 for k in cfg.conv1_kernel), rngs=rngs)
        self.pool1_stride = tuple(cfg.pool1_stride)
        in_planes = cfg.base_channels
        stages = zip(cfg.stage_blocks, cfg.temporal_strides, cfg.spatial_strides,
                     cfg.stage_widths, cfg.stage_inflations)
        for index, (blocks, t_stride, s_stride, planes, inflate) in enumerate(stages):
            layer = ResLayer()
            in_planes += lateral_channels[index]
            for block in range(blocks):
                stride = (t_stride, s_stride) if block == 0 else (1, 1)
                layer.append(Bottleneck3d(cfg, in_planes, planes, stride, inflate[block] == 1,
                                          rngs=rngs))
                in_planes = planes * _EXPANSION
            setattr(self, f"layer{index + 1}", layer)
        self.num_stages = cfg.num_stages

    def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.conv1(x, train=train)
        temporal, spatial = self.pool1_stride
        x = _max_pool_3x3(x, spatial)
        return x[:, ::temporal]  # a (1, 3, 3) pool's temporal stride is a slice

    def stages(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        """{'stem', 'layer1'..: (N, T', H', W', C)}; x is (N, T, H, W, in_channels)."""
        out = {"stem": self.stem(x, train=train)}
        x = out["stem"]
        for index in range(self.num_stages):
            x = out[f"layer{index + 1}"] = getattr(self, f"layer{index + 1}")(x, train=train)
        return out


class I3DHead(nnx.Module):
    """Global average pool over (T, H, W), dropout, `fc_cls`."""

    def __init__(self, config: PoseConv3DConfig, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.fc_cls = nnx.Linear(config.feature_channels, config.num_classes,
                                 kernel_init=jax.nn.initializers.normal(config.init_std),
                                 bias_init=jax.nn.initializers.zeros, dtype=config.dtype,
                                 param_dtype=config.param_dtype, rngs=rngs)

    def pool(self, features: jax.Array) -> jax.Array:
        # (N, T', H', W', C) -> (N, C); the mean is taken in float32 for bf16 runs.
        return jnp.mean(features.astype(jnp.float32), axis=(1, 2, 3))

    def __call__(self, pooled: jax.Array, *, train: bool) -> jax.Array:
        x = self.dropout(pooled, deterministic=not train)
        return self.fc_cls(x).astype(jnp.float32)


class PoseConv3D(nnx.Module):
    """pyskl Recognizer3D: `backbone` (ResNet3dSlowOnly) + `cls_head` (I3DHead)."""

    def __init__(self, config: PoseConv3DConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = ResNet3dSlowOnly(config, rngs=rngs)
        self.cls_head = I3DHead(config, rngs=rngs)
        self.out_indices = tuple(config.out_indices)

    def features(self, heatmaps: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """heatmaps (N, T, H, W, in_channels) -> {'stem': (N, T, H, W, base) (T, H, W divided
        by the stem strides), 'layer1'..: stage outputs, 'features': the backbone output the
        head receives (published config: (N, T/2, H/8, W/8, 512)), 'pooled': (N, C) float32,
        'logits': (N, num_classes) float32}."""
        out = self.backbone.stages(heatmaps, train=train)
        chosen = [out[f"layer{i + 1}"] for i in self.out_indices]
        out["features"] = chosen[0] if len(chosen) == 1 else _concat_channels(chosen)
        out["pooled"] = self.cls_head.pool(out["features"])
        out["logits"] = self.cls_head(out["pooled"], train=train)
        return out

    def __call__(self, heatmaps: jax.Array, *, train: bool = False) -> jax.Array:
        """heatmaps (N, T, H, W, in_channels) -> logits (N, num_classes) float32."""
        return self.features(heatmaps, train=train)["logits"]


def _concat_channels(stage_outputs: list[jax.Array]) -> jax.Array:
    shapes = {x.shape[:-1] for x in stage_outputs}
    if len(shapes) != 1:
        raise ValueError(f"out_indices selects stages with different (N, T, H, W) sizes "
                         f"{sorted(shapes)}; the I3D head can only concatenate equal sizes.")
    return jnp.concatenate(stage_outputs, axis=-1)


# ---------------------------------------------------------------------------
# The PyTorch side: the converter's key table (`TORCH_KEYS`)
#
# pyskl PoseConv3D (Recognizer3D: ResNet3dSlowOnly backbone + I3DHead).
#
# Reads what pyskl training writes (`mmcv.runner.save_checkpoint`: `{'meta', 'state_dict'}`, the
# reader unwraps `state_dict`). The NNX modules nest as mmcv's ConvModules do, so the table only
# renames leaves and transposes kernels: `<module>.conv.weight` (O, I, T, H, W) -> `.conv.kernel`
# (T, H, W, I, O); `<module>.bn.{weight, bias, running_mean, running_var}` -> `.bn.{scale, bias,
# mean, var}`; `cls_head.fc_cls.weight` (O, I) -> `.kernel` (I, O).

# ConvModules: the stem conv, a bottleneck's conv1..conv3 and its shortcut.
_MODULE = r"(backbone\.(?:conv1|layer\d\.\d+\.(?:conv[123]|downsample)))"

_TORCH_RULES = (
    Rule(rf"{_MODULE}\.conv\.weight", "{0}.conv.kernel", "conv"),
    Rule(rf"{_MODULE}\.bn\.weight", "{0}.bn.scale"),
    Rule(rf"{_MODULE}\.bn\.bias", "{0}.bn.bias"),
    Rule(rf"{_MODULE}\.bn\.running_mean", "{0}.bn.mean"),
    Rule(rf"{_MODULE}\.bn\.running_var", "{0}.bn.var"),
    Ignore(rf"{_MODULE}\.bn\.num_batches_tracked",
           "a training-step counter; torch only uses it when BN momentum is None (pyskl: 0.1), "
           "flax BatchNorm keeps a fixed momentum"),
    Rule(r"cls_head\.fc_cls\.weight", "cls_head.fc_cls.kernel", "linear"),
    Rule(r"cls_head\.fc_cls\.bias", "cls_head.fc_cls.bias"),
)
_TORCH_HEAD = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")


TORCH_KEYS = TorchKeys(rules=_TORCH_RULES, head=_TORCH_HEAD)
