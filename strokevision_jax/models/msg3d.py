"""MS-G3D (pyskl's variant, COCO-17 graph) in Flax NNX, channels-last inside.

The architecture follows pyskl's `MSG3D` backbone + `GCNHead` (Liu et al., "Disentangling and
Unifying Graph Convolutions for Skeleton-Based Action Recognition", CVPR 2020; pyskl commit
3f6795f, configs/msg3d/msg3d_pyskl_ntu60_xsub_hrnet/j.py). Input is upstream's
`(N, M, T, V, C)`: M persons (missing ones zero-filled), V = 17 joints in COCO order,
C = (x, y, score). Inside, activations are `(N*M, T, V, C)`.

Network: a data BatchNorm over (person, joint, channel), then three stages; stage i computes
x = relu(sgcn_i(x) + gcn3d_i(x)); x = tcn_i(x), with widths base * (1, 2, 4) and temporal
strides (1, 2, 2), so T -> T/4:
- `sgcn_i` = [MSGCN (13 hop scales), MSTCN (stride s), MSTCN without its final ReLU];
- `gcn3d_i` = the sum of two G3D pathways (windows of 3 and 5 frames): unfold temporal
  windows, a 6-scale graph conv on the window graph, then a (1, w, 1) conv collapsing the
  window and a BatchNorm;
- `tcn_i` = MSTCN.
The head averages over (T, V) per person, then over persons, and applies `fc_cls`.

Upstream behaviours reproduced:
- data_bn channel = m*V*C + v*C + c (upstream permutes to (N, M, V, C, T) before its
  BatchNorm1d);
- graph aggregation is x @ A: out[u] = sum_v (A + PA)[k, v, u] x[v]; the K scales are stacked
  scale-major into K*C channels (k*C + c) before the 1x1 conv;
- the fixed adjacencies (`graph.py`) are numpy constants computed from the layout, not
  variables; only the learnable offsets `PA` are Params (the checkpoint's `.A` buffers are
  compared with them by the converter);
- the first stage is built for 3 input channels, hard-coded upstream (its `in_channels`
  only sizes data_bn, so any other value fails in its forward; the config refuses it); the
  stage-1 window graph conv maps 3 -> base, later ones keep their input width and the
  window-collapsing conv changes it;
- pyskl's MSTCN: six branches of out//6 channels, the last (1x1, strided) branch takes the
  remainder out - 5*(out//6); dilated temporal convs pad (d, d) explicitly (XLA 'SAME' would
  pad stride-2 convs asymmetrically); the max-pool branch pads with -inf;
- the window graph conv's ReLU is applied twice (MLP's, then the block's): a no-op, kept
  implicit; its residual is off.

State paths mirror pyskl's state_dict keys: the model holds `backbone` and `cls_head`,
`nnx.List`s keep `nn.Sequential` / `nn.ModuleList` indices (parameter-free modules keep
their slot), so torch `backbone.sgcn2.1.branches.3.3.conv.weight` is NNX path
`('backbone', 'sgcn2', 1, 'branches', 3, 3, 'conv', 'kernel')`. The converter's table is
`TORCH_KEYS` below.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import graph as graph_lib
from strokevision_jax.models import layers
from strokevision_jax.models.torch_keys import ConversionError, Ignore, Rule, TorchKeys

# pyskl MSTCN: four dilated temporal convs, a max-pool branch and a 1x1 branch.
_TCN_DILATIONS = (1, 2, 3, 4)
_NUM_TCN_BRANCHES = len(_TCN_DILATIONS) + 2
_G3D_WINDOWS = (3, 5)
# Upstream hard-codes the first stage's input width (see the module docstring).
_STAGE1_IN = 3


@dataclasses.dataclass(frozen=True)
class MSG3DConfig:
    """One MS-G3D. The defaults are pyskl's published model (NTU-60 HRNet joints config).

    Field names are pyskl's MSG3D / GCNHead arguments; `layout` / `mode` are its graph_cfg.
    Stage widths are base_channels * (1, 2, 4); the head reads 4 * base_channels features.
    """

    in_channels: int = 3
    base_channels: int = 96
    num_gcn_scales: int = 13
    num_g3d_scales: int = 6
    num_person: int = 2
    tcn_dropout: float = 0.0
    layout: str = "coco"
    mode: str = "binary_adj"
    num_classes: int = 60
    dropout: float = 0.0  # GCNHead dropout before fc_cls
    dtype: Any = jnp.float32  # compute dtype (e.g. jnp.bfloat16); logits are float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        graph_lib.check_graph(self.layout, self.mode)
        sizes = {name: getattr(self, name) for name in
                 ("in_channels", "base_channels", "num_gcn_scales", "num_g3d_scales",
                  "num_person", "num_classes")}
        bad = {name: value for name, value in sizes.items() if int(value) < 1}
        if bad:
            raise ValueError(f"MSG3DConfig sizes must be positive; got {bad}.")
        if self.in_channels != _STAGE1_IN:
            raise ValueError(f"in_channels={self.in_channels}: pyskl's MSG3D builds its first "
                             f"stage for {_STAGE1_IN} input channels whatever in_channels says, "
                             f"so only in_channels={_STAGE1_IN} (x, y, score) runs.")
        if self.base_channels < _NUM_TCN_BRANCHES:
            raise ValueError(f"base_channels={self.base_channels} leaves an MS-TCN branch "
                             f"without channels; use at least {_NUM_TCN_BRANCHES}.")
        for name in ("tcn_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}.")

    @property
    def num_joints(self) -> int:
        return graph_lib.graph_adjacency(self.layout, self.mode).shape[0]

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        return self.base_channels, 2 * self.base_channels, 4 * self.base_channels


PRESETS: dict[str, MSG3DConfig] = {
    # pyskl's msg3d_pyskl_ntu60_xsub_hrnet (the registry's default).
    "ntu60_xsub": MSG3DConfig(),
    # The fixture's reduced width (uneven MS-TCN branches) and a CPU training size.
    "small": MSG3DConfig(base_channels=16),
    # Test model: one channel per MS-TCN branch, 3 MS-GCN and 2 G3D scales.
    "tiny": MSG3DConfig(base_channels=6, num_gcn_scales=3, num_g3d_scales=2),
}


# ---------------------------------------------------------------------------
# Layers


def _conv(cfg: MSG3DConfig, in_features: int, out_features: int, kernel: tuple[int, ...], *,
          rngs: nnx.Rngs, stride: tuple[int, ...] | None = None,
          padding: tuple[tuple[int, int], ...] | None = None,
          dilation: tuple[int, ...] | None = None) -> nnx.Conv:
    """Conv with bias, explicit symmetric padding (none by default), channels-last."""
    fan_in = in_features * int(np.prod(kernel))
    return nnx.Conv(
        in_features, out_features, kernel,
        strides=stride or 1,
        padding=padding or tuple((0, 0) for _ in kernel),
        kernel_dilation=dilation or 1,
        use_bias=True,
        kernel_init=layers.torch_default_uniform(fan_in),
        bias_init=layers.torch_default_uniform(fan_in),
        dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
    )


def _batch_norm(cfg: MSG3DConfig, features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # torch momentum 0.1 weighs the new batch; flax momentum weighs the running value.
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, rngs=rngs)


class Sequential(nnx.List):
    """`nn.Sequential` look-alike with the same indices. BatchNorms get
    `use_running_average=not train`, the modules of this file `train`, functions the input."""

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in self:
            if isinstance(layer, nnx.BatchNorm):
                x = layer(x, use_running_average=not train)
            elif isinstance(layer, (Sequential, UnitTCN, MaxPoolTime)):
                x = layer(x, train=train)
            else:
                x = layer(x)
        return x


class MaxPoolTime(nnx.Module):
    """MaxPool2d((3, 1), stride (s, 1), padding (1, 0)) on (N, T, V, C); pads with -inf.

    Written as the maximum of three shifted copies: the same values as `reduce_window`, but
    its gradient is elementwise (reduce_window's select-and-scatter gradient made the
    backward pass of the whole network compile several times slower on CPU)."""

    def __init__(self, stride: int):
        self.stride = stride

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        t = x.shape[1]
        padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)), constant_values=-jnp.inf)
        pooled = jnp.maximum(jnp.maximum(padded[:, :t], padded[:, 1:t + 1]), padded[:, 2:t + 2])
        return pooled[:, ::self.stride]


class UnitTCN(nnx.Module):
    """pyskl `unit_tcn`: temporal conv (k, 1), stride (s, 1), dilation d, padding
    d*(k-1)/2 on both sides, then BatchNorm. (N, T, V, C) -> (N, T/s, V, out)."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *, kernel_size: int,
                 stride: int = 1, dilation: int = 1, rngs: nnx.Rngs):
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = _conv(cfg, in_channels, out_channels, (kernel_size, 1), stride=(stride, 1),
                          padding=((pad, pad), (0, 0)), dilation=(dilation, 1), rngs=rngs)
        self.bn = _batch_norm(cfg, out_channels, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class MLP(nnx.Module):
    """pyskl MLP with one layer: `layers` = [1x1 conv, BatchNorm, ReLU]."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.layers = Sequential([
            _conv(cfg, in_channels, out_channels, (1, 1), rngs=rngs),
            _batch_norm(cfg, out_channels, rngs),
            jax.nn.relu,
        ])

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.layers(x, train=train)


def _aggregate(adjacency: jax.Array, x: jax.Array) -> jax.Array:
    """x @ A per scale: (K, V, V) and (N, T, V, C) -> (N, T, V, K*C), channel k*C + c."""
    n, t, v, c = x.shape
    support = jnp.einsum("kvu,ntvc->ntukc", adjacency.astype(x.dtype), x)
    return support.reshape(n, t, v, adjacency.shape[0] * c)


class MultiScaleGraphConv(nnx.Module):
    """Graph conv over K fixed adjacencies plus learnable offsets `PA`, then MLP.

    pyskl's MSGCN (spatial graph) and ST_MSGCN (window graph, residual off) are the same
    computation; `fixed_adjacency()` is what pyskl stores as the `.A` buffer.
    (N, T, V', in) -> (N, T, V', out).
    """

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *,
                 num_scales: int, window_size: int | None = None, rngs: nnx.Rngs):
        self.layout, self.mode = cfg.layout, cfg.mode
        self.num_scales = num_scales
        self.window_size = window_size  # None: the spatial graph
        shape = self.fixed_adjacency().shape
        # Upstream initialises the offsets U(-1e-6, 1e-6).
        self.PA = nnx.Param(jax.random.uniform(rngs.params(), shape, cfg.param_dtype,
                                               -1e-6, 1e-6))
        self.mlp = MLP(cfg, in_channels * num_scales, out_channels, rngs=rngs)

    def fixed_adjacency(self) -> np.ndarray:
        """(K, V', V') float32 constant; V' = window_size * V for a window graph."""
        if self.window_size is None:
            return graph_lib.msgcn_adjacency(self.layout, self.mode, self.num_scales)
        return graph_lib.g3d_adjacency(self.layout, self.mode, self.num_scales, self.window_size)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        adjacency = jnp.asarray(self.fixed_adjacency()) + self.PA[...]
        return self.mlp(_aggregate(adjacency, x), train=train)


class UnfoldTemporalWindows(nnx.Module):
    """(N, T, V, C) -> (N, T', w*V, C): the w frames around each output frame side by side,
    node index = frame_in_window * V + joint. T is zero-padded by (w-1)//2 on both sides and
    the windows start every `stride` frames (pyskl's nn.Unfold((w, 1)))."""

    def __init__(self, window_size: int, stride: int):
        self.window_size = window_size
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, v, c = x.shape
        w, s = self.window_size, self.stride
        pad = (w - 1) // 2
        padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0)))
        num_windows = (t + 2 * pad - w) // s + 1
        span = s * (num_windows - 1) + 1
        # Strided slices, not a gather: their gradients are cheap pads.
        windows = jnp.stack([padded[:, i:i + span:s] for i in range(w)], axis=2)  # (N, T', w, V, C)
        return windows.reshape(n, num_windows, w * v, c)


class G3DBlock(nnx.Module):
    """pyskl MSG3DBlock (embed_factor 1): `gcn3d` = [unfold, window graph conv], then
    `out_conv`, a (1, w, 1) conv collapsing the window, and `out_bn` (no activation).
    (N, T, V, in) -> (N, T/stride, V, out)."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *,
                 window_size: int, stride: int, rngs: nnx.Rngs):
        self.window_size = window_size
        embed = out_channels if in_channels == _STAGE1_IN else in_channels
        self.gcn3d = nnx.List([
            UnfoldTemporalWindows(window_size, stride),
            MultiScaleGraphConv(cfg, in_channels, embed, num_scales=cfg.num_g3d_scales,
                                window_size=window_size, rngs=rngs),
        ])
        self.out_conv = _conv(cfg, embed, out_channels, (1, window_size, 1), rngs=rngs)
        self.out_bn = _batch_norm(cfg, out_channels, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        unfold, graph_conv = self.gcn3d
        windows = graph_conv(unfold(x), train=train)  # (N, T', w*V, embed)
        n, t, _, c = windows.shape
        windows = windows.reshape(n, t, self.window_size, x.shape[2], c)
        out = self.out_conv(windows)[:, :, 0]  # (N, T', V, out)
        return self.out_bn(out, use_running_average=not train)


class MultiWindowG3D(nnx.Module):
    """pyskl MW_MSG3DBlock: the sum of G3D blocks with windows of 3 and 5 frames."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *, stride: int,
                 rngs: nnx.Rngs):
        self.gcn3d = nnx.List([
            G3DBlock(cfg, in_channels, out_channels, window_size=w, stride=stride, rngs=rngs)
            for w in _G3D_WINDOWS
        ])

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return sum(block(x, train=train) for block in self.gcn3d)


def tcn_branch_channels(out_channels: int) -> tuple[int, ...]:
    """Widths of pyskl's six MS-TCN branches: five of out//6, the 1x1 branch the rest."""
    width = out_channels // _NUM_TCN_BRANCHES
    return (width,) * (_NUM_TCN_BRANCHES - 1) + (out_channels - width * (_NUM_TCN_BRANCHES - 1),)


class MSTCN(nnx.Module):
    """pyskl's MSTCN (not the original MS-G3D's): `branches` 0-3 = [1x1 conv, BN, ReLU,
    UnitTCN(3, dilation 1..4, stride s)], 4 = [1x1 conv, BN, ReLU, max-pool, BN],
    5 = [1x1 conv with stride (s, 1), BN]; concatenated, plus the residual (identity when the
    shape is kept, else UnitTCN(kernel 1, stride s)), ReLU (unless `act=False`), dropout.
    (N, T, V, in) -> (N, T/stride, V, out)."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, out_channels: int, *,
                 stride: int = 1, act: bool = True, dropout: float = 0.0, rngs: nnx.Rngs):
        widths = tcn_branch_channels(out_channels)
        branches = []
        for width, dilation in zip(widths, _TCN_DILATIONS):
            branches.append(Sequential([
                _conv(cfg, in_channels, width, (1, 1), rngs=rngs),
                _batch_norm(cfg, width, rngs),
                jax.nn.relu,
                UnitTCN(cfg, width, width, kernel_size=3, stride=stride, dilation=dilation,
                        rngs=rngs),
            ]))
        pool_width, rest_width = widths[-2], widths[-1]
        branches.append(Sequential([
            _conv(cfg, in_channels, pool_width, (1, 1), rngs=rngs),
            _batch_norm(cfg, pool_width, rngs),
            jax.nn.relu,
            MaxPoolTime(stride),
            _batch_norm(cfg, pool_width, rngs),
        ]))
        branches.append(Sequential([
            _conv(cfg, in_channels, rest_width, (1, 1), stride=(stride, 1), rngs=rngs),
            _batch_norm(cfg, rest_width, rngs),
        ]))
        self.branches = nnx.List(branches)
        residual = None  # identity
        if in_channels != out_channels or stride != 1:
            residual = UnitTCN(cfg, in_channels, out_channels, kernel_size=1, stride=stride,
                               rngs=rngs)
        self.residual: UnitTCN | None = residual
        self.act = act
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        residual = x if self.residual is None else self.residual(x, train=train)
        out = jnp.concatenate([branch(x, train=train) for branch in self.branches], axis=-1)
        out = out + residual
        if self.act:
            out = jax.nn.relu(out)
        return self.drop(out, deterministic=not train)


class FactorizedPathway(nnx.List):
    """pyskl `sgcn_i` = Sequential(MSGCN, MSTCN(stride s), MSTCN with act = Identity)."""

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in self:
            x = layer(x, train=train)
        return x


def _factorized_pathway(cfg: MSG3DConfig, in_channels: int, gcn_channels: int,
                        out_channels: int, stride: int, rngs: nnx.Rngs) -> FactorizedPathway:
    return FactorizedPathway([
        MultiScaleGraphConv(cfg, in_channels, gcn_channels, num_scales=cfg.num_gcn_scales,
                            rngs=rngs),
        MSTCN(cfg, gcn_channels, out_channels, stride=stride, rngs=rngs),
        MSTCN(cfg, out_channels, out_channels, act=False, rngs=rngs),
    ])


# ---------------------------------------------------------------------------
# Network


class MSG3DBackbone(nnx.Module):
    """pyskl `MSG3D`: (N, M, T, V, C) -> (N, M, T/4, V, 4*base) (channels-last; upstream
    returns (N, M, 4*base, T/4, V))."""

    def __init__(self, cfg: MSG3DConfig, *, rngs: nnx.Rngs):
        self.layout, self.mode = cfg.layout, cfg.mode
        self.data_bn = _batch_norm(cfg, cfg.num_person * cfg.num_joints * cfg.in_channels, rngs)
        c1, c2, c3 = cfg.stage_channels
        stages = ((_STAGE1_IN, c1, c1, 1), (c1, c1, c2, 2), (c2, c2, c3, 2))
        for index, (in_channels, gcn_channels, out_channels, stride) in enumerate(stages, 1):
            setattr(self, f"gcn3d{index}",
                    MultiWindowG3D(cfg, in_channels, out_channels, stride=stride, rngs=rngs))
            setattr(self, f"sgcn{index}",
                    _factorized_pathway(cfg, in_channels, gcn_channels, out_channels, stride,
                                        rngs))
            setattr(self, f"tcn{index}",
                    MSTCN(cfg, out_channels, out_channels, dropout=cfg.tcn_dropout, rngs=rngs))

    def fixed_adjacency(self) -> np.ndarray:
        """(V, V) bone matrix; pyskl stores it as `backbone.A` (unused in its forward)."""
        return graph_lib.graph_adjacency(self.layout, self.mode)

    def normalize_input(self, x: jax.Array, *, train: bool) -> jax.Array:
        """data_bn: (N, M, T, V, C) -> (N, T, M*V*C) normalised, channel m*V*C + v*C + c."""
        n, m, t, v, c = x.shape
        expected = self.data_bn.num_features
        if m * v * c != expected:
            raise ValueError(f"MS-G3D input {x.shape} (N, M, T, V, C) has M*V*C = {m * v * c}, "
                             f"but data_bn was built for {expected} (num_person x joints x "
                             "in_channels).")
        flat = jnp.transpose(x, (0, 2, 1, 3, 4)).reshape(n, t, m * v * c)
        return self.data_bn(flat, use_running_average=not train)

    def features(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """{'data_bn': (N, T, M*V*C), 'sgcn{i}' / 'gcn3d{i}' / 'tcn{i}': (N*M, T_i, V, C_i),
        'features': (N, M, T/4, V, 4*base)}."""
        n, m, t, v, c = x.shape
        out = {"data_bn": self.normalize_input(x, train=train)}
        h = out["data_bn"].reshape(n, t, m, v, c)
        h = jnp.transpose(h, (0, 2, 1, 3, 4)).reshape(n * m, t, v, c)
        for index in (1, 2, 3):
            factorized = out[f"sgcn{index}"] = getattr(self, f"sgcn{index}")(h, train=train)
            windowed = out[f"gcn3d{index}"] = getattr(self, f"gcn3d{index}")(h, train=train)
            h = jax.nn.relu(factorized + windowed)
            h = out[f"tcn{index}"] = getattr(self, f"tcn{index}")(h, train=train)
        out["features"] = h.reshape(n, m, *h.shape[1:])
        return out

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.features(x, train=train)["features"]


class GCNHead(nnx.Module):
    """pyskl GCNHead: mean over (T, V) per person, mean over persons, dropout, `fc_cls`.
    (N, M, T, V, C) -> ((N, C) pooled, (N, num_classes) float32 logits)."""

    def __init__(self, cfg: MSG3DConfig, in_channels: int, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        # Upstream init_weights: normal_init(fc_cls, std=0.01), bias 0.
        self.fc_cls = nnx.Linear(in_channels, cfg.num_classes,
                                 kernel_init=jax.nn.initializers.normal(0.01),
                                 bias_init=jax.nn.initializers.zeros,
                                 dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)

    def pool(self, features: jax.Array) -> jax.Array:
        # Means in float32 for bf16 runs.
        return jnp.mean(jnp.mean(features.astype(jnp.float32), axis=(2, 3)), axis=1)

    def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
        pooled = self.dropout(self.pool(features), deterministic=not train)
        return self.fc_cls(pooled).astype(jnp.float32)


class MSG3D(nnx.Module):
    """pyskl RecognizerGCN(MSG3D, GCNHead): `backbone` and `cls_head`, as pyskl's keys."""

    def __init__(self, config: MSG3DConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = MSG3DBackbone(config, rngs=rngs)
        self.cls_head = GCNHead(config, config.stage_channels[-1], rngs=rngs)

    def features(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Backbone intermediates (see MSG3DBackbone.features), 'pooled' (N, 4*base) and
        'logits' (N, num_classes) float32. x: (N, M, T, V, C)."""
        out = self.backbone.features(x, train=train)
        out["pooled"] = self.cls_head.pool(out["features"])
        pooled = self.cls_head.dropout(out["pooled"], deterministic=not train)
        out["logits"] = self.cls_head.fc_cls(pooled).astype(jnp.float32)
        return out

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x (N, M, T, V, C) -> logits (N, num_classes) float32."""
        return self.cls_head(self.backbone(x, train=train), train=train)


# ---------------------------------------------------------------------------
# The PyTorch side: the converter's key table (`TORCH_KEYS`)
#
# pyskl's MS-G3D (`msg3d`: RecognizerGCN = MSG3D backbone + GCNHead), mmcv checkpoints.
#
# Files are what `mmcv.runner.save_checkpoint` writes, `{'meta': ..., 'state_dict': ...}` (the
# reader unwraps `state_dict`), with keys `backbone.*` and `cls_head.*`. The NNX model nests as
# pyskl's (strokevision_jax/models/msg3d.py), so the table renames leaves and transposes
# kernels: Conv2d (O, I, kt, 1) -> (kt, 1, I, O), the window-collapsing Conv3d (O, I, 1, w, 1)
# -> (1, w, 1, I, O), Linear (O, I) -> (I, O), BatchNorm weight / running stats -> scale /
# mean / var. The learnable adjacency offsets `PA` are Params, copied as they are.
#
# The fixed adjacency buffers (`backbone.A`, and `.A` next to each `PA`) are not variables: the
# model computes them from its graph layout. `check_fixed` compares each with the model's own
# and refuses the file when one differs (another graph layout or mode, another number of
# scales), so a checkpoint trained on another graph is never loaded silently.

# pyskl MSTCN modules: the two in each factorized pathway, and the stage TCN.
_MSTCN = r"backbone\.(?:sgcn\d\.[12]|tcn\d)"
# Graph convs: MSGCN (sgcn_i.0) and the window graph conv of each G3D block (gcn3d.1).
_GRAPH_CONV = r"backbone\.(?:sgcn\d\.0|gcn3d\d\.gcn3d\.\d\.gcn3d\.1)"
_G3D_BLOCK = r"backbone\.gcn3d\d\.gcn3d\.\d"
_CONV = (rf"({_MSTCN}\.branches\.\d\.0|{_MSTCN}\.branches\.[0-3]\.3\.conv|{_MSTCN}\.residual\.conv"
         rf"|{_GRAPH_CONV}\.mlp\.layers\.0|{_G3D_BLOCK}\.out_conv)")
_BN = (rf"(backbone\.data_bn|{_MSTCN}\.branches\.\d\.1|{_MSTCN}\.branches\.[0-3]\.3\.bn"
       rf"|{_MSTCN}\.branches\.4\.4|{_MSTCN}\.residual\.bn|{_GRAPH_CONV}\.mlp\.layers\.1"
       rf"|{_G3D_BLOCK}\.out_bn)")

_TORCH_RULES = (
    Rule(rf"{_CONV}\.weight", "{0}.kernel", "conv"),
    Rule(rf"{_CONV}\.bias", "{0}.bias"),
    Rule(rf"{_BN}\.weight", "{0}.scale"),
    Rule(rf"{_BN}\.bias", "{0}.bias"),
    Rule(rf"{_BN}\.running_mean", "{0}.mean"),
    Rule(rf"{_BN}\.running_var", "{0}.var"),
    Ignore(rf"{_BN}\.num_batches_tracked",
           "flax BatchNorm uses a fixed momentum; pyskl's is 0.1, so the counter is unused"),
    Rule(rf"({_GRAPH_CONV})\.PA", "{0}.PA"),
    Rule(r"cls_head\.fc_cls\.weight", "cls_head.fc_cls.kernel", "linear"),
    Rule(r"cls_head\.fc_cls\.bias", "cls_head.fc_cls.bias"),
)
_TORCH_HEAD = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")

_FIXED_SUFFIX = ".A"
# Adjacencies are 0/1 matrices scaled by 1/column sum: any real difference is >= 1e-3.
FIXED_ATOL = 1e-6


def fixed_buffers(model: nnx.Module) -> dict[str, np.ndarray]:
    """{pyskl buffer key: the model's own value} for every `.A` buffer pyskl would save."""
    out = {}
    for path, module in model.iter_modules():
        fixed = getattr(module, "fixed_adjacency", None)
        if callable(fixed):
            out[".".join(map(str, path)) + _FIXED_SUFFIX] = fixed()
    return out


def _is_fixed_key(key: str) -> bool:
    return re.fullmatch(r"backbone(?:\..+)?\.A", key) is not None


def check_fixed(state_dict: Mapping[str, np.ndarray], model: nnx.Module) -> dict[str, np.ndarray]:
    """Compares the checkpoint's adjacency buffers with the model's graph; returns the
    state_dict without them. Raises ConversionError naming every missing, surplus, mis-shaped
    or differing buffer (with its largest difference)."""
    expected = fixed_buffers(model)
    config = model.config
    graph = (f"graph layout={config.layout!r} mode={config.mode!r}, "
             f"num_gcn_scales={config.num_gcn_scales}, num_g3d_scales={config.num_g3d_scales}")
    problems = []
    for key in sorted(k for k in state_dict if _is_fixed_key(k)):
        if key not in expected:
            problems.append(f"{key}: the model has no adjacency buffer there")
            continue
        stored, own = np.asarray(state_dict[key], np.float32), expected[key]
        if stored.shape != own.shape:
            problems.append(f"{key}: shape {stored.shape}, but the model's graph gives {own.shape}")
            continue
        difference = float(np.max(np.abs(stored - own))) if own.size else 0.0
        if difference > FIXED_ATOL:
            problems.append(f"{key}: differs from the model's adjacency by up to {difference:.3g}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        problems.append("missing adjacency buffers (pyskl saves them all): " + ", ".join(missing))
    if problems:
        raise ConversionError(
            f"the checkpoint's graph is not this model's ({graph}); a pyskl MSG3D with "
            "graph_cfg=dict(layout='coco', mode='binary_adj') stores exactly these buffers. "
            "Pass the checkpoint's num_gcn_scales / num_g3d_scales if they differ, or convert "
            "a checkpoint trained on this graph:\n  " + "\n  ".join(problems))
    return {key: value for key, value in state_dict.items() if key not in expected}


TORCH_KEYS = TorchKeys(rules=_TORCH_RULES, head=_TORCH_HEAD, check_fixed=check_fixed)
