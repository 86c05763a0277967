"""torchvision's Multiscale Vision Transformers (`mvit_v1_b`, `mvit_v2_s`).

The NNX modules nest as torchvision's, with the renames listed in
`strokevision_jax/models/mvit.py` (`attn.project.0` -> `attn.project`, `pool_q.pool` /
`pool_q.norm_act.0` -> `pool_q.kernel` / `pool_q.norm`, `mlp.0` / `mlp.3` -> `mlp.fc1` /
`mlp.fc2`, `head.1` -> `head`). Kernels are transposed: Conv3d (O, I, T, H, W) ->
(T, H, W, I, O) (the depthwise pooling convs' (d, 1, 3, 3, 3) -> (3, 3, 3, 1, d)),
Linear (O, I) -> (I, O).

Position parameters depend on the clip size the model is built for (`temporal_size`,
`spatial_size`); a checkpoint made for another size is resized to the model's shapes:
- v1 `spatial_pos` (H'W', C) -> the model's (H2, W2, C) grid: bicubic, antialiased (timm's
  `resample_abs_pos_embed`); the checkpoint's grid must be square unless H'W' = H2 W2;
- v1 `temporal_pos` (T', C) and v2 `rel_pos_h/w/t` (rows, d): linear along the rows
  (torchvision's own `_interpolate`, which it applies to the relative tables at run time).
The state_dict has no buffers: nothing is ignored.
"""

from __future__ import annotations

import math

import numpy as np

from checkpoints_convert.rules import ConversionError, Rule
from strokevision_jax.models.mvit import mvit_v1_b, mvit_v2_s, resize_grid, resize_rows

MODELS = {"mvit_v1_b": mvit_v1_b, "mvit_v2_s": mvit_v2_s}


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

TABLE = [
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
]
HEAD_KEYS = ("head.1.weight", "head.1.bias")
# torchvision's builder kwargs `spatial_size` / `temporal_size` (and the other MViT
# arguments) are config fields of the same name.
CONFIG_KWARGS: dict[str, str] = {}
