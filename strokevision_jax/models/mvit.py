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
`TORCH_KEYS` below): `attn.project.0` -> `attn.project`,
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
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.mvit_attention import (
    MultiscaleAttention,
    Triple,
    layer_norm,
    linear,
    max_pool_skip,
)
from strokevision_jax.models.resize import resize_grid, resize_rows
from strokevision_jax.models.torch_keys import ConversionError, Rule, TorchKeys


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


# torchvision's two Kinetics-400 architectures (the registry names them).
V1_B = MViTConfig(block_setting=V1_B_BLOCKS, residual_pool=False, rel_pos_embed=False,
                  proj_after_attn=False)
V2_S = MViTConfig()


# ---------------------------------------------------------------------------
# Layers


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
        self.kernel = nnx.Param(layers.TORCH_DEFAULT_KERNEL(rngs.params(), (*kernel, in_features, out_features),
                                                  cfg.param_dtype))
        self.bias = nnx.Param(layers.torch_default_uniform(fan_in)(rngs.params(), (out_features,), cfg.param_dtype))
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
        init = layers.trunc_normal_02()
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


class Mlp(nnx.Module):
    """torchvision's MLP(dim, [4 dim, out], GELU): fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, cfg: MViTConfig, dim: int, out: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(cfg, dim, 4 * dim, rngs)
        self.fc2 = linear(cfg, 4 * dim, out, rngs)
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
        self.norm1 = layer_norm(cfg, block.input_channels, rngs)
        self.norm2 = layer_norm(cfg, attn_dim, rngs)
        self.attn = MultiscaleAttention(cfg, input_size, block.input_channels, attn_dim, block,
                                        rngs=rngs)
        self.mlp = Mlp(cfg, attn_dim, block.output_channels, rngs=rngs)
        self.stochastic_depth = layers.StochasticDepth(stochastic_depth_prob, rngs=rngs)
        project = None
        if block.input_channels != block.output_channels:
            project = linear(cfg, block.input_channels, block.output_channels, rngs)
        self.project: nnx.Linear | None = nnx.data(project)

    def __call__(self, x: jax.Array, thw: Triple, *, train: bool) -> tuple[jax.Array, Triple]:
        x_norm1 = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm1, thw, train=train)
        if self.project is not None and self.proj_after_attn:
            x = self.project(x_norm1)
        if self.skip_stride is not None:
            x = max_pool_skip(x, thw, self.skip_stride)
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
        self.norm = layer_norm(config, blocks[-1].output_channels, rngs)
        self.head_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.head = linear(config, blocks[-1].output_channels, config.num_classes, rngs)
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
# The PyTorch side: the converter's key table (`TORCH_KEYS`)
#
# torchvision's Multiscale Vision Transformers (`mvit_v1_b`, `mvit_v2_s`).
#
# The NNX modules nest as torchvision's, with the renames listed in
# `strokevision_jax/models/mvit.py` (`attn.project.0` -> `attn.project`, `pool_q.pool` /
# `pool_q.norm_act.0` -> `pool_q.kernel` / `pool_q.norm`, `mlp.0` / `mlp.3` -> `mlp.fc1` /
# `mlp.fc2`, `head.1` -> `head`). Kernels are transposed: Conv3d (O, I, T, H, W) ->
# (T, H, W, I, O) (the depthwise pooling convs' (d, 1, 3, 3, 3) -> (3, 3, 3, 1, d)),
# Linear (O, I) -> (I, O).
#
# Position parameters depend on the clip size the model is built for (`temporal_size`,
# `spatial_size`); a checkpoint made for another size is resized to the model's shapes:
# - v1 `spatial_pos` (H'W', C) -> the model's (H2, W2, C) grid: bicubic, antialiased (timm's
#   `resample_abs_pos_embed`); the checkpoint's grid must be square unless H'W' = H2 W2;
# - v1 `temporal_pos` (T', C) and v2 `rel_pos_h/w/t` (rows, d): linear along the rows
#   (torchvision's own `_interpolate`, which it applies to the relative tables at run time).
# The state_dict has no buffers: nothing is ignored.

def _rows(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(rows, C) table -> (shape[0], C), linear; identity at the same length."""
    if value.ndim != 2 or value.shape[1:] != tuple(shape[1:]):
        raise ConversionError(f"a ({value.shape[0]}, C) table can't become {shape}")
    return resize_rows(value, shape[0])


def _spatial_grid(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torchvision's flat (H'W', C) spatial encoding -> the model's (H2, W2, C) grid."""
    h2, w2, channels = shape
    if value.ndim != 2 or value.shape[1] != channels:
        raise ConversionError(f"spatial_pos {value.shape} can't become {shape}")
    tokens = value.shape[0]
    if tokens == h2 * w2:
        return value.reshape(h2, w2, channels)
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(
            f"spatial_pos has {tokens} positions, not a square grid: can't resize it to "
            f"{h2} x {w2}; build the model with the checkpoint's spatial_size")
    return resize_grid(value.reshape(side, side, channels), (h2, w2))


_BLOCK = r"blocks\.(\d+)"

_TORCH_RULES = (
    Rule(r"conv_proj\.weight", "conv_proj.kernel", "conv"),
    Rule(r"conv_proj\.bias", "conv_proj.bias"),
    Rule(r"pos_encoding\.(class_token|class_pos)", "pos_encoding.{0}"),
    Rule(r"pos_encoding\.spatial_pos", "pos_encoding.spatial_pos", _spatial_grid),
    Rule(r"pos_encoding\.temporal_pos", "pos_encoding.temporal_pos", _rows),
    Rule(rf"{_BLOCK}\.(norm[12])\.weight", "blocks.{0}.{1}.scale"),
    Rule(rf"{_BLOCK}\.(norm[12])\.bias", "blocks.{0}.{1}.bias"),
    Rule(rf"{_BLOCK}\.attn\.qkv\.weight", "blocks.{0}.attn.qkv.kernel", "linear"),
    Rule(rf"{_BLOCK}\.attn\.qkv\.bias", "blocks.{0}.attn.qkv.bias"),
    Rule(rf"{_BLOCK}\.attn\.project\.0\.weight", "blocks.{0}.attn.project.kernel", "linear"),
    Rule(rf"{_BLOCK}\.attn\.project\.0\.bias", "blocks.{0}.attn.project.bias"),
    Rule(rf"{_BLOCK}\.attn\.(pool_[qkv])\.pool\.weight", "blocks.{0}.attn.{1}.kernel", "conv"),
    Rule(rf"{_BLOCK}\.attn\.(pool_[qkv])\.norm_act\.0\.weight", "blocks.{0}.attn.{1}.norm.scale"),
    Rule(rf"{_BLOCK}\.attn\.(pool_[qkv])\.norm_act\.0\.bias", "blocks.{0}.attn.{1}.norm.bias"),
    Rule(rf"{_BLOCK}\.attn\.(rel_pos_[hwt])", "blocks.{0}.attn.{1}", _rows),
    Rule(rf"{_BLOCK}\.mlp\.0\.weight", "blocks.{0}.mlp.fc1.kernel", "linear"),
    Rule(rf"{_BLOCK}\.mlp\.0\.bias", "blocks.{0}.mlp.fc1.bias"),
    Rule(rf"{_BLOCK}\.mlp\.3\.weight", "blocks.{0}.mlp.fc2.kernel", "linear"),
    Rule(rf"{_BLOCK}\.mlp\.3\.bias", "blocks.{0}.mlp.fc2.bias"),
    Rule(rf"{_BLOCK}\.project\.weight", "blocks.{0}.project.kernel", "linear"),
    Rule(rf"{_BLOCK}\.project\.bias", "blocks.{0}.project.bias"),
    Rule(r"norm\.weight", "norm.scale"),
    Rule(r"norm\.bias", "norm.bias"),
    Rule(r"head\.1\.weight", "head.kernel", "linear"),
    Rule(r"head\.1\.bias", "head.bias"),
)
_TORCH_HEAD = ("head.1.weight", "head.1.bias")


TORCH_KEYS = TorchKeys(rules=_TORCH_RULES, head=_TORCH_HEAD)


def torch_reference(config: MViTConfig):
    """torchvision's `MViT` built for the config's clip size (its builders fix 16 x 224 x 224),
    with the config's block settings, dropout and stochastic depth."""
    from torchvision.models.video import mvit as tv

    blocks = [tv.MSBlockConfig(b.num_heads, b.input_channels, b.output_channels, list(b.kernel_q),
                               list(b.kernel_kv), list(b.stride_q), list(b.stride_kv))
              for b in config.block_setting]
    return tv.MViT(
        spatial_size=tuple(config.spatial_size), temporal_size=config.temporal_size,
        block_setting=blocks, residual_pool=config.residual_pool,
        residual_with_cls_embed=config.residual_with_cls_embed, rel_pos_embed=config.rel_pos_embed,
        proj_after_attn=config.proj_after_attn, dropout=config.dropout,
        attention_dropout=config.attention_dropout, stochastic_depth_prob=config.stochastic_depth_prob,
        num_classes=config.num_classes, patch_embed_kernel=config.patch_embed_kernel,
        patch_embed_stride=config.patch_embed_stride, patch_embed_padding=config.patch_embed_padding)
