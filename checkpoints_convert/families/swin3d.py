"""torchvision's Video Swin Transformers (`swin3d_t`, `swin3d_s`, `swin3d_b`).

The NNX model nests as torchvision's, with torchvision's `features` Sequential named `layers`
(same indices: stages at 0, 2, 4, 6, PatchMerging at 1, 3, 5) and the MLP's `mlp.0` / `mlp.3`
named `fc1` / `fc2`. Transforms: the patch Conv3d (O, I, T, H, W) -> (T, H, W, I, O), Linear
(O, I) -> (I, O), LayerNorm weight -> scale.

Relative position bias tables: torchvision stores `((2Wd-1)(2Wh-1)(2Ww-1), heads)`, the NNX
model `(2Wd-1, 2Wh-1, 2Ww-1, heads)` (same values, reshaped). The table's size depends only on
the window size; for the window the model was built with it is a reshape, for another window
(`window_size=...`) the table is resized timm-style, by interpolating the relative offsets
(trilinear, align_corners=False, as torch's `F.interpolate`; timm's 2D resize is bicubic, which
torch does not offer in 3D). The checkpoint's window is read off the table's length: among
the factorisations (2a-1)(2b-1)(2c-1) of it, torchvision's (8, 7, 7) when it fits, else the
one closest to the model's window. The `relative_position_index` buffers are not stored: the
model computes them from its window size.
"""

from __future__ import annotations

import math

import numpy as np

from checkpoints_convert.rules import ConversionError, Ignore, Rule
from strokevision_jax.models.swin3d import swin3d_b, swin3d_s, swin3d_t

MODELS = {"swin3d_t": swin3d_t, "swin3d_s": swin3d_s, "swin3d_b": swin3d_b}

_TORCHVISION_TABLE_DIMS = (15, 13, 13)  # window (8, 7, 7)


def _odd_divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1, 2) if n % d == 0]


def _table_dims(length: int, hint: tuple[int, int, int]) -> tuple[int, int, int]:
    """(2a-1, 2b-1, 2c-1) with product `length`: torchvision's if it fits, else nearest `hint`."""
    candidates = [(d, e, length // (d * e)) for d in _odd_divisors(length)
                  for e in _odd_divisors(length // d)]
    if not candidates:
        raise ConversionError(f"a relative position bias table of {length} rows is not "
                              "(2Wd-1)(2Wh-1)(2Ww-1) for any window")
    if hint in candidates:
        return hint
    if _TORCHVISION_TABLE_DIMS in candidates:
        return _TORCHVISION_TABLE_DIMS
    return min(candidates, key=lambda c: sum(abs(math.log(a / b)) for a, b in zip(c, hint)))


def _linear_resize_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """torch's linear interpolation along one axis, align_corners=False."""
    length = x.shape[axis]
    if length == size:
        return x
    source = np.maximum((np.arange(size) + 0.5) * (length / size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), length - 1)
    high = np.minimum(low + 1, length - 1)
    weight = (source - low).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1.0 - weight) + np.take(x, high, axis=axis) * weight


def resize_bias_table(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torch table (L, heads) -> NNX table `shape` = (2Wd-1, 2Wh-1, 2Ww-1, heads)."""
    if value.ndim != 2 or len(shape) != 4:
        raise ConversionError(f"relative position bias table: expected (L, heads) -> "
                              f"(2Wd-1, 2Wh-1, 2Ww-1, heads), got {value.shape} -> {shape}")
    if value.shape[1] != shape[3]:
        raise ConversionError(f"relative position bias table has {value.shape[1]} heads, the "
                              f"model {shape[3]}")
    target = tuple(shape[:3])
    dims = _table_dims(value.shape[0], target)
    table = value.reshape(*dims, value.shape[1])
    if dims == target:
        return table
    resized = table.astype(np.float64)
    for axis, size in enumerate(target):
        resized = _linear_resize_axis(resized, axis, size)
    return resized.astype(value.dtype)


_BLOCK = r"features\.(\d+)\.(\d+)"
_MERGE = r"features\.(\d+)"

TABLE = [
    Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", "conv"),
    Rule(r"patch_embed\.proj\.bias", "patch_embed.proj.bias"),
    Rule(r"(patch_embed\.norm|norm)\.weight", "{0}.scale"),
    Rule(r"(patch_embed\.norm|norm)\.bias", "{0}.bias"),
    Rule(rf"{_BLOCK}\.(norm[12])\.weight", "layers.{0}.{1}.{2}.scale"),
    Rule(rf"{_BLOCK}\.(norm[12])\.bias", "layers.{0}.{1}.{2}.bias"),
    Rule(rf"{_BLOCK}\.attn\.(qkv|proj)\.weight", "layers.{0}.{1}.attn.{2}.kernel", "linear"),
    Rule(rf"{_BLOCK}\.attn\.(qkv|proj)\.bias", "layers.{0}.{1}.attn.{2}.bias"),
    Rule(rf"{_BLOCK}\.attn\.relative_position_bias_table",
         "layers.{0}.{1}.attn.relative_position_bias_table", resize_bias_table),
    Ignore(rf"{_BLOCK}\.attn\.relative_position_index",
           "a constant computed from the window size (the model builds it in numpy)"),
    Rule(rf"{_BLOCK}\.mlp\.0\.weight", "layers.{0}.{1}.mlp.fc1.kernel", "linear"),
    Rule(rf"{_BLOCK}\.mlp\.0\.bias", "layers.{0}.{1}.mlp.fc1.bias"),
    Rule(rf"{_BLOCK}\.mlp\.3\.weight", "layers.{0}.{1}.mlp.fc2.kernel", "linear"),
    Rule(rf"{_BLOCK}\.mlp\.3\.bias", "layers.{0}.{1}.mlp.fc2.bias"),
    Rule(rf"{_MERGE}\.reduction\.weight", "layers.{0}.reduction.kernel", "linear"),
    Rule(rf"{_MERGE}\.norm\.weight", "layers.{0}.norm.scale"),
    Rule(rf"{_MERGE}\.norm\.bias", "layers.{0}.norm.bias"),
    Rule(r"head\.weight", "head.kernel", "linear"),
    Rule(r"head\.bias", "head.bias"),
]
HEAD_KEYS = ("head.weight", "head.bias")
# torchvision's SwinTransformer3d kwargs (patch_size, embed_dim, depths, num_heads,
# window_size, mlp_ratio, dropout, attention_dropout, stochastic_depth_prob) are the config's.
CONFIG_KWARGS: dict[str, str] = {}
