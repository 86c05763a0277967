"""Video ResNets (R3D-18, MC3-18, R(2+1)D-18) in Flax NNX, channels-last.

The architecture follows torchvision.models.video (Tran et al., "A Closer Look at
Spatiotemporal Convolutions for Action Recognition", CVPR 2018). Inputs are
`(N, T, H, W, 3)`; kernels are `(T, H, W, in, out)`.

State paths mirror torchvision's state_dict keys one-to-one: torchvision nests
`nn.Sequential`s, and `TorchSequential` below is an `nnx.List` whose integer indices
are the same as the Sequential's (parameter-free ReLUs keep their slot), so
torch `layer1.0.conv1.0.0.weight` is NNX path `('layer1', 0, 'conv1', 0, 0, 'kernel')`.
Only the leaf names differ and kernels are transposed: `TORCH_KEYS` below is the converter's
table, and `torch_reference` builds torchvision's network for any config (the parity and
benchmark comparisons).
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

StemKind = Literal["r2plus1d", "basic"]
# "3d": 3x3x3 conv (Conv3DSimple); "2plus1d": 1x3x3 then 3x1x1 (Conv2Plus1D);
# "no_temporal": 1x3x3 only (Conv3DNoTemporal, MC3's stages 2-4).
ConvKind = Literal["3d", "2plus1d", "no_temporal"]
_CONV_KINDS = ("3d", "2plus1d", "no_temporal")

# torchvision's R(2+1)D stem hard-codes 45 middle channels for base width 64.
_STEM_MID_WIDTH_AT_64 = 45


@dataclasses.dataclass(frozen=True)
class VideoResNetConfig:
    """One video ResNet. The defaults are torchvision's r2plus1d_18.

    Widths derive from `base_width` (torchvision: 64):
      stage_widths   = base_width * (1, 2, 4, 8)
      stem_mid_width = max(1, 45 * base_width // 64)   (45 at 64, 11 at 16, 5 at 8)
    Inside each (2+1)D block the middle width follows torchvision's rule
    `mid_planes(in, out)`, which keeps the parameter count of a full 3x3x3 conv.
    """

    stem: StemKind = "r2plus1d"
    stage_convs: tuple[ConvKind, ...] = ("2plus1d", "2plus1d", "2plus1d", "2plus1d")
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)
    base_width: int = 64
    num_classes: int = 400
    dtype: Any = jnp.float32  # compute dtype (e.g. jnp.bfloat16); logits are float32
    param_dtype: Any = jnp.float32
    # Run 1xkxk and kx1x1 convs as 2D convs (same result, faster on CPU; see layers.Conv3d).
    factorize_convs: bool = True
    # torchvision's `zero_init_residual`: each block's last BatchNorm starts with scale 0, so
    # every residual block starts as the identity.
    zero_init_residual: bool = False

    def __post_init__(self):
        stages = (self.stage_convs, self.stage_blocks, self.stage_strides)
        if len({len(s) for s in stages}) != 1:
            raise ValueError(
                "stage_convs, stage_blocks and stage_strides need one entry per stage; got "
                f"{self.stage_convs}, {self.stage_blocks}, {self.stage_strides}."
            )
        for kind in self.stage_convs:
            if kind not in _CONV_KINDS:
                raise ValueError(
                    f"Unknown stage conv {kind!r}; choose one of {_CONV_KINDS}."
                )
        if self.stem not in ("r2plus1d", "basic"):
            raise ValueError(f"Unknown stem {self.stem!r}; choose 'r2plus1d' or 'basic'.")
        if self.base_width < 1 or self.num_classes < 1:
            raise ValueError(
                f"base_width and num_classes must be positive; got {self.base_width}, "
                f"{self.num_classes}."
            )

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * 2**i for i in range(len(self.stage_blocks)))

    @property
    def stem_mid_width(self) -> int:
        return max(1, _STEM_MID_WIDTH_AT_64 * self.base_width // 64)


def mid_planes(in_planes: int, out_planes: int) -> int:
    """torchvision's (2+1)D middle width: as many weights as one 3x3x3 conv would have."""
    return (in_planes * out_planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * out_planes)


# torchvision's three architectures (the registry names them).
R2PLUS1D = VideoResNetConfig()
R3D = VideoResNetConfig(stem="basic", stage_convs=("3d", "3d", "3d", "3d"))
MC3 = VideoResNetConfig(stem="basic", stage_convs=("3d", "no_temporal", "no_temporal", "no_temporal"))


# ---------------------------------------------------------------------------
# Layers


def _conv(
    cfg: VideoResNetConfig,
    in_planes: int,
    out_planes: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    rngs: nnx.Rngs,
) -> Conv3d:
    return Conv3d(
        in_planes,
        out_planes,
        kernel,
        stride,
        padding,
        kernel_init=layers.KAIMING_NORMAL_FAN_OUT,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        factorize=cfg.factorize_convs,
        rngs=rngs,
    )


def _batch_norm(cfg: VideoResNetConfig, features: int, rngs: nnx.Rngs, *,
                zero_scale: bool = False) -> nnx.BatchNorm:
    # torch momentum 0.1 weighs the new batch; flax momentum weighs the running value.
    return nnx.BatchNorm(
        features,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


def _linear(cfg: VideoResNetConfig, in_features: int, out_features: int,
            rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=jax.nn.initializers.normal(0.01),
        bias_init=jax.nn.initializers.zeros,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        rngs=rngs,
    )


class TorchSequential(nnx.List):
    """`nn.Sequential` look-alike: same integer indices, so the same state paths.

    BatchNorm layers get `use_running_average=not train`, blocks and nested sequences
    get `train`, anything else (convs, `jax.nn.relu`) is called on the input alone.
    """

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in self:
            if isinstance(layer, nnx.BatchNorm):
                x = layer(x, use_running_average=not train)
            elif isinstance(layer, (TorchSequential, BasicBlock)):
                x = layer(x, train=train)
            else:
                x = layer(x)
        return x


def _conv3d_simple(cfg, in_planes, out_planes, stride, rngs) -> Conv3d:
    return _conv(cfg, in_planes, out_planes, (3, 3, 3), (stride,) * 3, (1, 1, 1), rngs)


def _conv3d_no_temporal(cfg, in_planes, out_planes, stride, rngs) -> Conv3d:
    return _conv(cfg, in_planes, out_planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), rngs)


def _conv2plus1d(cfg, in_planes, out_planes, stride, rngs, *, mid: int) -> TorchSequential:
    # Spatial 1x3x3 conv, BN, ReLU, then temporal 3x1x1 conv (indices as torchvision's).
    return TorchSequential([
        _conv(cfg, in_planes, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), rngs),
        _batch_norm(cfg, mid, rngs),
        jax.nn.relu,
        _conv(cfg, mid, out_planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), rngs),
    ])


_CONV_BUILDERS = {
    "3d": _conv3d_simple,
    "2plus1d": _conv2plus1d,
    "no_temporal": _conv3d_no_temporal,
}


def _downsample_stride(kind: ConvKind, stride: int) -> tuple[int, int, int]:
    return (1, stride, stride) if kind == "no_temporal" else (stride, stride, stride)


class BasicBlock(nnx.Module):
    """Two convs with BN, plus the identity (or a strided 1x1x1 conv + BN) shortcut."""

    def __init__(
        self,
        cfg: VideoResNetConfig,
        kind: ConvKind,
        in_planes: int,
        planes: int,
        stride: int,
        *,
        rngs: nnx.Rngs,
    ):
        build = _CONV_BUILDERS[kind]
        if kind == "2plus1d":
            # Both convs of a block use the middle width of its first conv (as torchvision).
            mid = mid_planes(in_planes, planes)
            conv_a = build(cfg, in_planes, planes, stride, rngs, mid=mid)
            conv_b = build(cfg, planes, planes, 1, rngs, mid=mid)
        else:
            conv_a = build(cfg, in_planes, planes, stride, rngs)
            conv_b = build(cfg, planes, planes, 1, rngs)
        self.conv1 = TorchSequential([conv_a, _batch_norm(cfg, planes, rngs), jax.nn.relu])
        self.conv2 = TorchSequential([conv_b, _batch_norm(cfg, planes, rngs,
                                                          zero_scale=cfg.zero_init_residual)])
        downsample = None
        if stride != 1 or in_planes != planes:
            downsample = TorchSequential([
                _conv(cfg, in_planes, planes, (1, 1, 1), _downsample_stride(kind, stride),
                      (0, 0, 0), rngs),
                _batch_norm(cfg, planes, rngs),
            ])
        self.downsample: TorchSequential | None = downsample

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        out = self.conv2(self.conv1(x, train=train), train=train)
        return jax.nn.relu(out + shortcut)


def _stem(cfg: VideoResNetConfig, rngs: nnx.Rngs) -> TorchSequential:
    width = cfg.stage_widths[0]
    if cfg.stem == "basic":
        # (N, T, H, W, 3) -> (N, T, H/2, W/2, width)
        return TorchSequential([
            _conv(cfg, 3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), rngs),
            _batch_norm(cfg, width, rngs),
            jax.nn.relu,
        ])
    mid = cfg.stem_mid_width
    return TorchSequential([
        _conv(cfg, 3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), rngs),
        _batch_norm(cfg, mid, rngs),
        jax.nn.relu,
        _conv(cfg, mid, width, (3, 1, 1), (1, 1, 1), (1, 0, 0), rngs),
        _batch_norm(cfg, width, rngs),
        jax.nn.relu,
    ])


class VideoResNet(nnx.Module):
    """Stem, stages `layer1..layer4` of BasicBlocks, global average pool, `fc`."""

    def __init__(self, config: VideoResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.stem = _stem(config, rngs)
        in_planes = config.stage_widths[0]
        stages = zip(config.stage_convs, config.stage_blocks, config.stage_strides,
                     config.stage_widths)
        for index, (kind, blocks, stride, planes) in enumerate(stages):
            layer = TorchSequential()
            for block in range(blocks):
                layer.append(BasicBlock(config, kind, in_planes, planes,
                                        stride if block == 0 else 1, rngs=rngs))
                in_planes = planes
            setattr(self, f"layer{index + 1}", layer)
        self.num_stages = len(config.stage_blocks)
        self.fc = _linear(config, in_planes, config.num_classes, rngs)

    def features(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """{'stem', 'layer1'..'layer4': (N, T', H', W', C) activations, 'logits'}, in order."""
        out = {"stem": self.stem(video, train=train)}  # (N, T, H/2, W/2, C)
        x = out["stem"]
        for index in range(self.num_stages):
            x = out[f"layer{index + 1}"] = getattr(self, f"layer{index + 1}")(x, train=train)
        # (N, T', H', W', C) -> (N, C); the mean is taken in float32 for bf16 runs.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        out["logits"] = self.fc(pooled).astype(jnp.float32)
        return out

    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """video (N, T, H, W, 3) -> logits (N, num_classes) float32."""
        return self.features(video, train=train)["logits"]


# ---------------------------------------------------------------------------
# torchvision's side: the key table and the reference network

_BLOCK = r"layer\d\.\d+"
# Conv3d modules: the stem's convs (0; R(2+1)D also 3), a block conv (convN.0, or in R(2+1)D
# the spatial and temporal halves convN.0.0 / convN.0.3) and the shortcut (downsample.0).
_CONV = rf"(stem\.[03]|{_BLOCK}\.conv\d\.0(?:\.[03])?|{_BLOCK}\.downsample\.0)"
# BatchNorm3d modules: after each conv (stem.1 / stem.4, convN.1, the (2+1)D middle BN
# convN.0.1, downsample.1).
_BN = rf"(stem\.[14]|{_BLOCK}\.conv\d\.(?:0\.)?1|{_BLOCK}\.downsample\.1)"

# Leaves renamed, kernels transposed: Conv3d (O, I, T, H, W) -> (T, H, W, I, O), Linear (O, I)
# -> (I, O), BatchNorm weight / running stats -> scale / mean / var.
TORCH_KEYS = TorchKeys(
    rules=(
        Rule(rf"{_CONV}\.weight", "{0}.kernel", "conv"),
        Rule(rf"{_BN}\.weight", "{0}.scale"),
        Rule(rf"{_BN}\.bias", "{0}.bias"),
        Rule(rf"{_BN}\.running_mean", "{0}.mean"),
        Rule(rf"{_BN}\.running_var", "{0}.var"),
        Ignore(rf"{_BN}\.num_batches_tracked",
               "flax BatchNorm uses a fixed momentum; torchvision's is 0.1, so the counter is unused"),
        Rule(r"fc\.weight", "fc.kernel", "linear"),
        Rule(r"fc\.bias", "fc.bias"),
    ),
    head=("fc.weight", "fc.bias"),
)


def torch_reference(config: VideoResNetConfig):
    """torchvision's VideoResNet of `config` (its builder at torchvision's own size; the same
    class at other widths and depths, e.g. the cpu preset's base width 16, one block per stage
    and 11-channel R(2+1)D stem)."""
    import torch
    from torchvision.models.video import resnet as tv

    if len(config.stage_blocks) != 4:
        raise ValueError(f"torchvision's VideoResNet has 4 stages; the config has "
                         f"{len(config.stage_blocks)} ({config.stage_blocks}).")
    convs = {"3d": tv.Conv3DSimple, "2plus1d": tv.Conv2Plus1D, "no_temporal": tv.Conv3DNoTemporal}
    builders = {("r2plus1d", ("2plus1d",) * 4): tv.r2plus1d_18, ("basic", ("3d",) * 4): tv.r3d_18,
                ("basic", ("3d",) + ("no_temporal",) * 3): tv.mc3_18}
    builder = builders.get((config.stem, tuple(config.stage_convs)))
    if (builder is not None and config.base_width == 64 and tuple(config.stage_blocks) == (2, 2, 2, 2)
            and tuple(config.stage_strides) == (1, 2, 2, 2)):
        return builder(num_classes=config.num_classes)

    class SlimVideoResNet(tv.VideoResNet):
        """torchvision's VideoResNet (its `_make_layer` and forward) at the config's widths."""

        def __init__(self):  # pylint: disable=super-init-not-called
            torch.nn.Module.__init__(self)
            widths = config.stage_widths
            self.inplanes = widths[0]
            self.stem = _torch_stem(config)
            stages = zip(config.stage_convs, widths, config.stage_blocks, config.stage_strides)
            for index, (kind, planes, blocks, stride) in enumerate(stages):
                setattr(self, f"layer{index + 1}",
                        self._make_layer(tv.BasicBlock, convs[kind], planes, blocks, stride=stride))
            self.avgpool = torch.nn.AdaptiveAvgPool3d((1, 1, 1))
            self.fc = torch.nn.Linear(widths[-1], config.num_classes)
            for module in self.modules():
                if isinstance(module, torch.nn.Conv3d):
                    torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    return SlimVideoResNet()


def _torch_stem(config: VideoResNetConfig):
    from torch import nn

    width = config.stage_widths[0]
    if config.stem == "basic":  # torchvision's BasicStem at another width
        return nn.Sequential(
            nn.Conv3d(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    mid = config.stem_mid_width  # torchvision's R2Plus1dStem: 45 at width 64
    return nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False), nn.BatchNorm3d(width),
        nn.ReLU(inplace=True))
