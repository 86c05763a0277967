"""Multiscale Vision Transformers (MViT-v1-B, MViT-v2-S) in Flax NNX, channels-last.

The architecture follows torchvision.models.video.mvit (Fan et al., "Multiscale Vision
Transformers", ICCV 2021; Li et al., "MViTv2", CVPR 2022). Inputs are `(N, T, H, W, 3)`
normalised frames.

- Patch embedding: a 3x7x7 convolution with stride 2x4x4 and padding 1x3x3 (kernel
  `(kt, kh, kw, 3, C)`, with bias) gives a `(T/2, H/4, W/4)` grid of tokens; a class token is
  prepended. v1 adds an absolute position encoding (a spatial part, a temporal part and one
  for the class token); v2 uses none there.
- Blocks (`MultiscaleBlock`): pre-norm pooling attention and a GELU MLP, each with a
  residual branch and stochastic depth ("row" mode: per sample). In the attention, q, k and
  v are pooled per head (a depthwise 3D convolution, then LayerNorm over the head dim, the
  class token skipping the pooling); a q stride downsamples the token grid (the shortcut is
  then max-pooled the same way) and a kv stride shortens the keys. v2 adds decomposed
  relative position embeddings (`rel_pos_h/w/t` tables added to the attention logits),
  residual pooling (the pooled q is added to the attention output) and `proj_after_attn`
  (the width grows inside the attention instead of after the MLP).
- Head: final LayerNorm, the class token, dropout, linear.

State paths follow torchvision's state_dict with a few renames (the table is
`checkpoints_convert/families/mvit.py`): `attn.project.0` -> `attn.project`,
`attn.pool_q.pool` / `.norm_act.0` -> `attn.pool_q.kernel` / `.norm`, `mlp.0` / `mlp.3` ->
`mlp.fc1` / `mlp.fc2`, `head.1` -> `head`, LayerNorm `weight` -> `scale`. The v1 spatial
position encoding is stored as an `(H', W', C)` grid instead of torchvision's `(H'W', C)`
(the same numbers; the shape names the grid, so the converter can resize it).

Input size. As in torchvision, the model is built for one clip size (`temporal_size`,
`spatial_size`, default 16 x 224 x 224; the token grid is T/2 x H/4 x W/4), and some
parameter shapes follow it:
- v1: the position encoding has one entry per token of the grid, so v1 runs only on that
  size (another size raises a ValueError: build the model for the clip size);
- v2: each block's relative position tables have `2 * max(S // q_stride, S // kv_stride) - 1`
  spatial and `2 * T' - 1` temporal rows (S = max(H', W'), T': the block's input grid as
  torchvision computes it, by floor division). Where the actual grid needs a table of
  another length (odd sizes: torchvision sizes the table for 7 // 2 = 3 positions but the
  pooled grid has 4), the table is linearly interpolated at run time, as torchvision does. Unlike torchvision (whose
  forward takes the grid from its config), v2 also runs on other clip sizes, the tables
  being interpolated the same way.
The converter resizes checkpoint values to the model's shapes when they differ (e.g. a
16 x 224 x 224 checkpoint into a model built with `temporal_size=8, spatial_size=112`): the
v1 spatial grid bicubically (antialiased, as timm's `resample_abs_pos_embed`), the v1
temporal encoding and the v2 tables linearly (torchvision's `_interpolate`). The result is
torchvision's MViT built for that size holding the resized values; how well pretrained
weights transfer to another clip size is another question (fine-tune).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class MSBlockConfig:
    """torchvision's MSBlockConfig; an empty kernel / stride means "no pooling"."""

    num_heads: int
    input_channels: int
    output_channels: int
    kernel_q: tuple[int, ...]
    kernel_kv: tuple[int, ...]
    stride_q: tuple[int, ...]
    stride_kv: tuple[int, ...]

    def __post_init__(self):
        for name in ("kernel_q", "kernel_kv", "stride_q", "stride_kv"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) not in (0, 3):
                raise ValueError(f"{name} needs 0 or 3 entries, got {value}.")
            object.__setattr__(self, name, value)
        if self.output_channels % self.num_heads or self.input_channels % self.num_heads:
            raise ValueError(f"the channels ({self.input_channels}, {self.output_channels}) must "
                             f"be multiples of num_heads ({self.num_heads}).")


def _settings(heads, inputs, outputs, kernel_q, kernel_kv, stride_q, stride_kv):
    return tuple(MSBlockConfig(*row) for row in zip(heads, inputs, outputs, kernel_q, kernel_kv,
                                                      stride_q, stride_kv))


_K3, _S1, _S2 = (3, 3, 3), (1, 1, 1), (1, 2, 2)
_HEADS = (1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8)
# kv strides: 8 at the first stage, 4 at the second, 2 at the third, 1 at the last (so that
# the keys stay a 7 x 7 grid at 224 x 224).
_STRIDE_KV = ((1, 8, 8),) + ((1, 4, 4),) * 2 + ((1, 2, 2),) * 11 + ((1, 1, 1),) * 2
_Q_POOLED = (1, 3, 14)  # blocks that halve the spatial grid

# torchvision's mvit_v1_b: q pooling only where the grid shrinks; the width grows at the end
# of each stage (blocks 0, 2, 13).
V1_B_BLOCKS = _settings(
    _HEADS,
    (96, 192, 192) + (384,) * 11 + (768, 768),
    (192, 192) + (384,) * 11 + (768,) * 3,
    tuple(_K3 if i in _Q_POOLED else () for i in range(16)),
    (_K3,) * 16,
    tuple(_S2 if i in _Q_POOLED else () for i in range(16)),
    _STRIDE_KV,
)
# torchvision's mvit_v2_s: q pooled (stride 1) everywhere; the width grows at the first block
# of each stage (blocks 1, 3, 14), inside the attention (proj_after_attn).
V2_S_BLOCKS = _settings(
    _HEADS,
    (96, 96, 192, 192) + (384,) * 11 + (768,),
    (96, 192, 192) + (384,) * 11 + (768, 768),
    (_K3,) * 16,
    (_K3,) * 16,
    tuple(_S2 if i in _Q_POOLED else _S1 for i in range(16)),
    _STRIDE_KV,
)

# A small MViT-v2 for CPU training from scratch (the `cpu` preset): four blocks of width 64 then
# 128, q pooled only where the grid halves (blocks 1 and 3) with 1 x 3 x 3 kernels, and
# 3 x 3 x 3 kv pooling. Depthwise pooling is most of an MViT's time on a CPU; this keeps it to
# what the two resolution changes need.
_Q_HALVE = (1, 3, 3)
CPU_BLOCKS = (
    MSBlockConfig(1, 32, 64, (), _K3, (), (1, 4, 4)),
    MSBlockConfig(2, 64, 64, _Q_HALVE, _K3, _S2, (1, 2, 2)),
    MSBlockConfig(2, 64, 128, (), _K3, (), (1, 2, 2)),
    MSBlockConfig(4, 128, 128, _Q_HALVE, _K3, _S2, (1, 1, 1)),
)


@dataclasses.dataclass(frozen=True)
class MViTConfig:
    """One MViT; fields mirror torchvision's `MViT` arguments. The defaults are mvit_v2_s.

    `spatial_size` is `(H, W)` (an int means a square); `stochastic_depth_prob` is the rate of
    the last block (block i of n drops with rate `p * i / (n - 1)`); `dropout` is the head's,
    `attention_dropout` the attention projection's and the MLP's.
    """

    spatial_size: tuple[int, int] = (224, 224)
    temporal_size: int = 16
    block_setting: tuple[MSBlockConfig, ...] = V2_S_BLOCKS
    residual_pool: bool = True
    residual_with_cls_embed: bool = False
    rel_pos_embed: bool = True
    proj_after_attn: bool = True
    dropout: float = 0.5
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.2
    num_classes: int = 400
    patch_embed_kernel: Triple = (3, 7, 7)
    patch_embed_stride: Triple = (2, 4, 4)
    patch_embed_padding: Triple = (1, 3, 3)
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32  # compute dtype (e.g. jnp.bfloat16); logits are float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        spatial = self.spatial_size
        spatial = (spatial, spatial) if isinstance(spatial, int) else tuple(int(s) for s in spatial)
        if len(spatial) != 2:
            raise ValueError(f"spatial_size is (H, W) or an int, got {self.spatial_size!r}.")
        object.__setattr__(self, "spatial_size", spatial)
        blocks = tuple(b if isinstance(b, MSBlockConfig) else MSBlockConfig(**b)
                       for b in self.block_setting)
        if not blocks:
            raise ValueError("block_setting can't be empty.")
        object.__setattr__(self, "block_setting", blocks)
        for name in ("patch_embed_kernel", "patch_embed_stride", "patch_embed_padding"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("dropout", "attention_dropout", "stochastic_depth_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}.")

    @property
    def token_grid(self) -> Triple:
        """torchvision's `input_size` after the patch embedding: size // stride."""
        sizes = (self.temporal_size, *self.spatial_size)
        return tuple(s // st for s, st in zip(sizes, self.patch_embed_stride))

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Blocks whose output is a stage's: the last block before each q-strided block."""
        blocks = self.block_setting
        return tuple(i for i in range(len(blocks))
                     if i == len(blocks) - 1 or math.prod(blocks[i + 1].stride_q) > 1)


_ARCHITECTURES: dict[str, MViTConfig] = {
    "mvit_v1_b": MViTConfig(block_setting=V1_B_BLOCKS, residual_pool=False,
                            rel_pos_embed=False, proj_after_attn=False),
    "mvit_v2_s": MViTConfig(),
}


# ---------------------------------------------------------------------------
# Resampling (numpy constants; also used by the checkpoint converter)


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's `F.interpolate(mode="linear", align_corners=False)`."""
    # Source positions in float32 arithmetic, as torch's CPU kernel computes them.
    matrix = np.zeros((out_size, in_size), np.float32)
    scale = np.float32(in_size / out_size)
    for i in range(out_size):
        src = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = np.float32(src - np.float32(i0))
        matrix[i, i0] += np.float32(1.0) - lam
        matrix[i, i1] += lam
    return matrix


def _cubic_aa(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def bicubic_aa_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's `F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)` along one axis (PIL's filter: a = -0.5, widened when shrinking)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        weights = np.array([_cubic_aa((j - center + 0.5) * inv) for j in range(lo, hi)])
        matrix[i, lo:hi] = weights / weights.sum()
    return matrix


def resize_rows(value: np.ndarray, size: int) -> np.ndarray:
    """Linear resize of axis 0 (torchvision's `_interpolate`); the identity at equal size."""
    if value.shape[0] == size:
        return value
    out = linear_resize_matrix(value.shape[0], size) @ value.reshape(value.shape[0], -1)
    return out.reshape(size, *value.shape[1:]).astype(value.dtype)


def resize_grid(value: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic antialiased resize of axes 0, 1 of an (H, W, C) grid; identity at equal size."""
    if tuple(value.shape[:2]) == tuple(size):
        return value
    rows = bicubic_aa_resize_matrix(value.shape[0], size[0])
    cols = bicubic_aa_resize_matrix(value.shape[1], size[1])
    out = np.einsum("ih,jw,hwc->ijc", rows, cols, value.astype(np.float64))
    return out.astype(value.dtype)


# ---------------------------------------------------------------------------
# Layers


def _normal(std: float = 0.02):
    # torchvision's trunc_normal_(std=0.02) truncates at +-2 (absolute, i.e. +-100 std): a
    # plain normal in practice. jax's truncated_normal would cut at +-2 std.
    return jax.nn.initializers.normal(std)


# torch's default Conv init: weight and bias uniform in +-1/sqrt(fan_in).
_conv_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(cfg: MViTConfig, in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, kernel_init=_normal(),
                      bias_init=jax.nn.initializers.zeros, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs)


def _layer_norm(cfg: MViTConfig, features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=cfg.norm_eps, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
    """torch `Conv3d(3, C, kernel, stride, padding)` with bias, on (N, T, H, W, 3).

    Runs as one 2D convolution over the N*T' output frames: the kt input frames each output
    frame sees are stacked on the channel axis (kt*3 channels) and the kernel reshaped to
    (kh, kw, kt*3, C). The result is the 3D convolution's; XLA on CPU runs it about twice as
    fast (16 x 224 x 224: 50 ms instead of 100 ms on 2 cores).
    """

    def __init__(self, cfg: MViTConfig, out_features: int, *, rngs: nnx.Rngs, in_features: int = 3):
        kernel = cfg.patch_embed_kernel
        fan_in = in_features * math.prod(kernel)
        self.kernel = nnx.Param(_conv_kernel_init(rngs.params(), (*kernel, in_features, out_features),
                                                  cfg.param_dtype))
        self.bias = nnx.Param(_conv_bias_init(fan_in)(rngs.params(), (out_features,), cfg.param_dtype))
        self.strides = cfg.patch_embed_stride
        self.padding = cfg.patch_embed_padding
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...], self.bias[...]
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        (kt, kh, kw, cin, cout), (st, sh, sw), (pt, ph, pw) = kernel.shape, self.strides, self.padding
        x = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0)))
        n, t, h, w, _ = x.shape
        t_out = (t - kt) // st + 1
        taps = [x[:, d: d + st * (t_out - 1) + 1: st] for d in range(kt)]  # kt x (N, T', H, W, 3)
        x = jnp.stack(taps, axis=-2).reshape(n * t_out, h, w, kt * cin)
        kernel = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
        y = jax.lax.conv_general_dilated(x, kernel, (sh, sw), [(ph, ph), (pw, pw)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(n, t_out, *y.shape[1:]) + bias


class PositionalEncoding(nnx.Module):
    """Class token, plus (v1) spatial (H', W', C), temporal (T', C) and class encodings."""

    def __init__(self, cfg: MViTConfig, embed: int, *, rngs: nnx.Rngs):
        init = _normal()
        t, h, w = cfg.token_grid
        self.class_token = nnx.Param(init(rngs.params(), (embed,), cfg.param_dtype))
        self.absolute = not cfg.rel_pos_embed
        if self.absolute:
            self.spatial_pos = nnx.Param(init(rngs.params(), (h, w, embed), cfg.param_dtype))
            self.temporal_pos = nnx.Param(init(rngs.params(), (t, embed), cfg.param_dtype))
            self.class_pos = nnx.Param(init(rngs.params(), (embed,), cfg.param_dtype))
        self.token_grid = (t, h, w)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (N, T', H', W', C) -> tokens (N, 1 + T'H'W', C)."""
        n, t, h, w, c = x.shape
        if self.absolute:
            if (t, h, w) != self.token_grid:
                raise ValueError(
                    f"this MViT-v1 was built for a {self.token_grid} token grid (absolute position "
                    f"encoding) but the clip gives {(t, h, w)}: build the model with the clip's "
                    "temporal_size / spatial_size (the converter resizes the encoding).")
            pos = (self.temporal_pos[...][:, None, None, :] + self.spatial_pos[...][None]).astype(x.dtype)
            x = x + pos
        x = x.reshape(n, t * h * w, c)
        cls = jnp.broadcast_to(self.class_token[...].astype(x.dtype), (n, 1, c))
        if self.absolute:
            cls = cls + self.class_pos[...].astype(x.dtype)
        return jnp.concatenate([cls, x], axis=1)


class StochasticDepth(nnx.Module):
    """torchvision's StochasticDepth(p, "row"): drops the whole branch per sample."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = rate
        self.rngs = rngs["dropout"].fork() if rate > 0.0 else nnx.data(None)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        survival = 1.0 - self.rate
        keep = jax.random.bernoulli(self.rngs(), survival, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * keep.astype(x.dtype) / jnp.asarray(survival, x.dtype) if survival > 0 else x * 0


def _pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class Pool(nnx.Module):
    """Per-head pooling of (B, heads, 1 + THW, d): depthwise Conv3d (no bias) then LayerNorm
    over d; the class token skips the convolution but not the norm."""

    def __init__(self, cfg: MViTConfig, dim: int, kernel: Sequence[int], stride: Sequence[int], *,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(_conv_kernel_init(rngs.params(), (*kernel, 1, dim), cfg.param_dtype))
        self.strides = tuple(stride)
        self.padding = tuple(k // 2 for k in kernel)
        self.norm = _layer_norm(cfg, dim, rngs)
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array, thw: Triple) -> tuple[jax.Array, Triple]:
        x, thw = _pool_tokens(x, thw, self.kernel[...].astype(self.dtype), self.strides, self.padding)
        return self.norm(x), thw


def _pool_tokens(x: jax.Array, thw: Triple, kernel: jax.Array, strides: Triple,
                 padding: Triple) -> tuple[jax.Array, Triple]:
    """Depthwise-convolves the grid tokens of (B, heads, 1 + THW, C); the class token passes."""
    b, heads, _, c = x.shape
    cls, grid = x[:, :, :1], x[:, :, 1:].reshape(b * heads, *thw, c)
    grid = _depthwise_conv3d(grid, kernel, strides, padding)
    new_thw = tuple(grid.shape[1:4])
    return jnp.concatenate([cls, grid.reshape(b, heads, -1, c)], axis=2), new_thw


def _depthwise_conv3d(x: jax.Array, kernel: jax.Array, strides: Triple, padding: Triple) -> jax.Array:
    """Depthwise 3D convolution of (B, T, H, W, C) with a (kt, kh, kw, 1, C) kernel, as a sum
    of strided slices. XLA on CPU runs grouped 3D convolutions slowly: with them the whole
    mvit_v2_s forward took 10x as long (2 x 8 x 112 x 112: 3.9 s instead of 0.3 s)."""
    kt, kh, kw = kernel.shape[:3]
    t, h, w = x.shape[1:4]
    x = jnp.pad(x, ((0, 0), *((p, p) for p in padding), (0, 0)))
    outs = [_pool_out(size, k, s, p) for size, k, s, p in zip((t, h, w), (kt, kh, kw), strides, padding)]
    (st, sh, sw), (ot, oh, ow) = strides, outs
    out = None
    for i in range(kt):
        for j in range(kh):
            for k in range(kw):
                tap = x[:, i: i + st * (ot - 1) + 1: st, j: j + sh * (oh - 1) + 1: sh,
                        k: k + sw * (ow - 1) + 1: sw] * kernel[i, j, k, 0]
                out = tap if out is None else out + tap
    return out


def _max_pool_skip(x: jax.Array, thw: Triple, stride: Sequence[int]) -> jax.Array:
    """torchvision's pool_skip: MaxPool3d(kernel s + 1 (s > 1), stride s, padding k // 2) over
    the grid tokens of (B, 1 + THW, C); the class token passes through."""
    kernel = tuple(s + 1 if s > 1 else s for s in stride)
    padding = tuple(k // 2 for k in kernel)
    b, _, c = x.shape
    cls, grid = x[:, :1], x[:, 1:].reshape(b, *thw, c)
    grid = jax.lax.reduce_window(grid, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1),
                                 ((0, 0), *((p, p) for p in padding), (0, 0)))
    return jnp.concatenate([cls, grid.reshape(b, -1, c)], axis=1)


@functools.cache
def _rel_pos_index(q: int, k: int) -> np.ndarray:
    """torchvision's distance index (q, k) into a table of 2 max(q, k) - 1 rows (computed in
    float32 and truncated, as torch does)."""
    q_ratio, k_ratio = np.float32(max(k / q, 1.0)), np.float32(max(q / k, 1.0))
    dist = (np.arange(q, dtype=np.float32)[:, None] * q_ratio
            - (np.arange(k, dtype=np.float32)[None, :] + np.float32(1.0 - k)) * k_ratio)
    return dist.astype(np.int64)


def _rel_table(table: jax.Array, q: int, k: int) -> jax.Array:
    """(q, k, d) embeddings: the table interpolated to 2 max(q, k) - 1 rows (if needed) and
    gathered at torchvision's distance index."""
    rows = 2 * max(q, k) - 1
    if table.shape[0] != rows:
        matrix = linear_resize_matrix(table.shape[0], rows).astype(np.float32)
        table = jnp.asarray(matrix, table.dtype) @ table
    return table[_rel_pos_index(q, k)]


def _add_rel_pos(attn: jax.Array, q: jax.Array, q_thw: Triple, k_thw: Triple,
                 tables: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
    """Adds v2's decomposed relative position terms q . R to the (B, h, 1 + Nq, 1 + Nk) logits
    (not to the class token's rows / columns)."""
    rel_h, rel_w, rel_t = tables
    (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
    b, heads, _, d = q.shape
    r_q = q[:, :, 1:].reshape(b, heads, qt, qh, qw, d)
    rh = jnp.einsum("bnthwc,hkc->bnthwk", r_q, _rel_table(rel_h, qh, kh))
    rw = jnp.einsum("bnthwc,wkc->bnthwk", r_q, _rel_table(rel_w, qw, kw))
    rt = jnp.einsum("bnthwc,tkc->bnthwk", r_q, _rel_table(rel_t, qt, kt))
    rel = (rt[..., :, None, None] + rh[..., None, :, None] + rw[..., None, None, :])
    rel = rel.reshape(b, heads, qt * qh * qw, kt * kh * kw)
    return attn + jnp.pad(rel, ((0, 0), (0, 0), (1, 0), (1, 0)))


class MultiscaleAttention(nnx.Module):
    def __init__(self, cfg: MViTConfig, input_size: Sequence[int], embed_dim: int, output_dim: int,
                 block: MSBlockConfig, *, rngs: nnx.Rngs):
        self.num_heads = block.num_heads
        self.head_dim = output_dim // block.num_heads
        self.output_dim = output_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.residual_pool = cfg.residual_pool
        self.residual_with_cls_embed = cfg.residual_with_cls_embed
        self.dtype = cfg.dtype
        self.qkv = _linear(cfg, embed_dim, 3 * output_dim, rngs)
        self.project = _linear(cfg, output_dim, output_dim, rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
        pool_q = pool_k = pool_v = None
        if math.prod(block.kernel_q) > 1 or math.prod(block.stride_q) > 1:
            pool_q = Pool(cfg, self.head_dim, block.kernel_q, block.stride_q, rngs=rngs)
        if math.prod(block.kernel_kv) > 1 or math.prod(block.stride_kv) > 1:
            pool_k = Pool(cfg, self.head_dim, block.kernel_kv, block.stride_kv, rngs=rngs)
            pool_v = Pool(cfg, self.head_dim, block.kernel_kv, block.stride_kv, rngs=rngs)
        self.pool_q: Pool | None = nnx.data(pool_q)
        self.pool_k: Pool | None = nnx.data(pool_k)
        self.pool_v: Pool | None = nnx.data(pool_v)
        self.rel_pos = cfg.rel_pos_embed
        if self.rel_pos:
            size = max(input_size[1:])
            q_size = size // block.stride_q[1] if block.stride_q else size
            kv_size = size // block.stride_kv[1] if block.stride_kv else size
            spatial, temporal = 2 * max(q_size, kv_size) - 1, 2 * input_size[0] - 1
            init = _normal()
            self.rel_pos_h = nnx.Param(init(rngs.params(), (spatial, self.head_dim), cfg.param_dtype))
            self.rel_pos_w = nnx.Param(init(rngs.params(), (spatial, self.head_dim), cfg.param_dtype))
            self.rel_pos_t = nnx.Param(init(rngs.params(), (temporal, self.head_dim), cfg.param_dtype))

    def __call__(self, x: jax.Array, thw: Triple, *, train: bool) -> tuple[jax.Array, Triple]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # 3 x (B, heads, N, d)
        k_thw = thw
        if self.pool_k is not None:
            # k and v share kernel size and stride: one depthwise conv over [k, v] (2d channels),
            # then each its own LayerNorm.
            pool_k, pool_v, d = self.pool_k, self.pool_v, self.head_dim
            kernel = jnp.concatenate([pool_k.kernel[...], pool_v.kernel[...]], axis=-1)
            kv, k_thw = _pool_tokens(jnp.concatenate([k, v], axis=-1), thw,
                                     kernel.astype(self.dtype), pool_k.strides, pool_k.padding)
            k, v = pool_k.norm(kv[..., :d]), pool_v.norm(kv[..., d:])
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)
        attn = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(self.scale, q.dtype), k)
        if self.rel_pos:
            tables = tuple(t[...].astype(q.dtype) for t in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t))
            attn = _add_rel_pos(attn, q, thw, k_thw, tables)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
        x = jnp.einsum("bhqk,bhkd->bhqd", attn, v)
        if self.residual_pool:
            if self.residual_with_cls_embed:
                x = x + q
            else:
                x = x + jnp.pad(q[:, :, 1:], ((0, 0), (0, 0), (1, 0), (0, 0)))
        x = jnp.transpose(x, (0, 2, 1, 3)).reshape(b, -1, self.output_dim)
        return self.dropout(self.project(x), deterministic=not train), thw


class Mlp(nnx.Module):
    """torchvision's MLP(dim, [4 dim, out], GELU): fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, cfg: MViTConfig, dim: int, out: int, *, rngs: nnx.Rngs):
        self.fc1 = _linear(cfg, dim, 4 * dim, rngs)
        self.fc2 = _linear(cfg, 4 * dim, out, rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.dropout(jax.nn.gelu(self.fc1(x), approximate=False), deterministic=not train)
        return self.dropout(self.fc2(x), deterministic=not train)


class MultiscaleBlock(nnx.Module):
    def __init__(self, cfg: MViTConfig, input_size: Sequence[int], block: MSBlockConfig,
                 stochastic_depth_prob: float, *, rngs: nnx.Rngs):
        self.proj_after_attn = cfg.proj_after_attn
        attn_dim = block.output_channels if cfg.proj_after_attn else block.input_channels
        self.skip_stride = block.stride_q if math.prod(block.stride_q) > 1 else None
        self.norm1 = _layer_norm(cfg, block.input_channels, rngs)
        self.norm2 = _layer_norm(cfg, attn_dim, rngs)
        self.attn = MultiscaleAttention(cfg, input_size, block.input_channels, attn_dim, block,
                                        rngs=rngs)
        self.mlp = Mlp(cfg, attn_dim, block.output_channels, rngs=rngs)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)
        project = None
        if block.input_channels != block.output_channels:
            project = _linear(cfg, block.input_channels, block.output_channels, rngs)
        self.project: nnx.Linear | None = nnx.data(project)

    def __call__(self, x: jax.Array, thw: Triple, *, train: bool) -> tuple[jax.Array, Triple]:
        x_norm1 = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm1, thw, train=train)
        if self.project is not None and self.proj_after_attn:
            x = self.project(x_norm1)
        if self.skip_stride is not None:
            x = _max_pool_skip(x, thw, self.skip_stride)
        x = x + self.stochastic_depth(x_attn, train=train)
        x_norm2 = self.norm2(x)
        if self.project is not None and not self.proj_after_attn:
            x = self.project(x_norm2)
        return x + self.stochastic_depth(self.mlp(x_norm2, train=train), train=train), thw_new


class MViT(nnx.Module):
    """Patch embedding + class token (+ v1 position encoding), MultiscaleBlocks, LayerNorm,
    class token -> dropout -> linear."""

    def __init__(self, config: MViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        blocks = config.block_setting
        embed = blocks[0].input_channels
        self.conv_proj = PatchEmbed(config, embed, rngs=rngs)
        self.pos_encoding = PositionalEncoding(config, embed, rngs=rngs)
        input_size = list(config.token_grid)
        self.blocks = nnx.List()
        for index, block in enumerate(blocks):
            rate = config.stochastic_depth_prob * index / max(len(blocks) - 1.0, 1.0)
            self.blocks.append(MultiscaleBlock(config, input_size, block, rate, rngs=rngs))
            if block.stride_q:
                input_size = [size // stride for size, stride in zip(input_size, block.stride_q)]
        self.norm = _layer_norm(config, blocks[-1].output_channels, rngs)
        self.head_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.head = _linear(config, blocks[-1].output_channels, config.num_classes, rngs)
        self.stage_ends = config.stage_ends

    def features(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """{'patch_embed': (N, 1 + T'H'W', C) tokens (class token first, position encoding
        added), 'stage1'..: the tokens after the last block of each resolution (for
        mvit_v1_b / v2_s blocks 0, 2, 13, 15), 'logits'}, in order."""
        grid = self.conv_proj(video)  # (N, T', H', W', C)
        thw = tuple(grid.shape[1:4])
        x = self.pos_encoding(grid)
        out = {"patch_embed": x}
        stage = 0
        for index, block in enumerate(self.blocks):
            x, thw = block(x, thw, train=train)
            if index in self.stage_ends:
                stage += 1
                out[f"stage{stage}"] = x
        x = self.norm(x)[:, 0]
        x = self.head_dropout(x, deterministic=not train)
        out["logits"] = self.head(x).astype(jnp.float32)
        return out

    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """video (N, T, H, W, 3) -> logits (N, num_classes) float32."""
        return self.features(video, train=train)["logits"]


# ---------------------------------------------------------------------------
# Factories (torchvision names)


def _build(arch: str, num_classes: int, rngs: nnx.Rngs, overrides: dict) -> MViT:
    config = dataclasses.replace(_ARCHITECTURES[arch], num_classes=num_classes, **overrides)
    return MViT(config, rngs=rngs)


def mvit_v1_b(*, num_classes: int = 400, rngs: nnx.Rngs, **overrides) -> MViT:
    """MViT-v1-B (16 x 224 x 224); `overrides` are MViTConfig fields (e.g. spatial_size=112)."""
    return _build("mvit_v1_b", num_classes, rngs, overrides)


def mvit_v2_s(*, num_classes: int = 400, rngs: nnx.Rngs, **overrides) -> MViT:
    """MViT-v2-S (16 x 224 x 224); `overrides` are MViTConfig fields (e.g. temporal_size=8)."""
    return _build("mvit_v2_s", num_classes, rngs, overrides)
