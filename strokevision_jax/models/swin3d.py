"""Video Swin Transformer (Swin3D-T / -S / -B) in Flax NNX, channels-last.

The architecture follows torchvision.models.video.swin_transformer (Liu et al., "Video Swin
Transformer", CVPR 2022): a 2x4x4 patch embedding (Conv3d with stride = kernel, then
LayerNorm), four stages of Swin blocks (LayerNorm, windowed multi-head self-attention with a
relative position bias, LayerNorm, GELU MLP; every second block shifts its windows by half a
window), a PatchMerging between stages (2x2 spatial merge, time is kept), a final LayerNorm,
a global average pool and a linear head. Inputs are `(N, T, H, W, 3)` normalised frames.

State paths mirror torchvision's state_dict keys, except that torchvision's `features`
Sequential is called `layers` here (`features()` is the method returning intermediates): an
`nnx.List` with torchvision's indices (stages at 0, 2, 4, 6, PatchMerging at 1, 3, 5), so
torch `features.2.1.attn.qkv.weight` is NNX path `('layers', 2, 1, 'attn', 'qkv', 'kernel')`.
The MLP's linears are named `fc1` / `fc2` (torch `mlp.0` / `mlp.3`). Each block's
`relative_position_bias_table` is stored as `(2Wd-1, 2Wh-1, 2Ww-1, heads)`: the same numbers
as torchvision's `((2Wd-1)(2Wh-1)(2Ww-1), heads)` table (a reshape), but the shape names the
window size, so a checkpoint converter can resize it unambiguously. The
`relative_position_index` (a torch buffer) and the shifted-window attention masks are not
variables: they are numpy constants computed from the window / input sizes at trace time.

Other input sizes: nothing in the parameters depends on the clip size, so any
`(N, T, H, W, 3)` with T, H, W >= 1 works with the same weights, exactly as in torchvision:
- the patch embedding zero-pads T, H, W at the end to multiples of the patch size (2, 4, 4);
- in each block, along any axis where the token grid is not larger than the window
  (size <= window), the window shrinks to the grid size and the shift along that axis
  becomes 0 (no shift at all if every axis shrinks); the relative position bias of a shrunk
  window of volume V is torchvision's: the first V x V entries of the full window's
  relative position index (exact when only the temporal window shrinks);
- the (normalised) tokens are zero-padded at the end to multiples of the window, attended
  together with the real ones (as torchvision does), and cropped again after attention;
  shifted windows use torchvision's -100 attention mask, built for the padded grid;
- PatchMerging zero-pads odd H / W at the end.
A different window size (`window_size=...`) changes the relative position bias tables; the
converter interpolates pretrained tables to it (`TORCH_KEYS` below).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.torch_keys import ConversionError, Ignore, Rule, TorchKeys

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Swin3dConfig:
    """One Video Swin Transformer. The defaults are torchvision's swin3d_t.

    `stochastic_depth_prob` is the rate of the last block; block i of all `sum(depths)`
    blocks drops its residual branches with rate `stochastic_depth_prob * i / (blocks - 1)`.
    """

    patch_size: Triple = (2, 4, 4)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: Triple = (8, 7, 7)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.1
    num_classes: int = 400
    dtype: Any = jnp.float32  # compute dtype (e.g. jnp.bfloat16); logits are float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        # Accept lists (torchvision's builder kwargs are lists); keep the config hashable.
        for name in ("patch_size", "depths", "num_heads", "window_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.patch_size) != 3 or len(self.window_size) != 3:
            raise ValueError(f"patch_size and window_size need 3 entries (T, H, W); got "
                             f"{self.patch_size}, {self.window_size}.")
        if min(self.patch_size) < 1 or min(self.window_size) < 1:
            raise ValueError(f"patch_size and window_size must be positive; got "
                             f"{self.patch_size}, {self.window_size}.")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths and num_heads need one entry per stage; got "
                             f"{self.depths}, {self.num_heads}.")
        for stage, heads in enumerate(self.num_heads):
            dim = self.stage_dims[stage]
            if heads < 1 or dim % heads:
                raise ValueError(f"stage {stage + 1}: width {dim} is not divisible by "
                                 f"{heads} heads.")
        if self.embed_dim < 1 or self.num_classes < 1 or min(self.depths) < 1:
            raise ValueError(f"embed_dim, num_classes and depths must be positive; got "
                             f"{self.embed_dim}, {self.num_classes}, {self.depths}.")

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    def block_drop_rates(self) -> list[float]:
        """torchvision's linearly increasing stochastic depth rate of every block."""
        total = sum(self.depths)
        # torchvision divides by (total - 1); a one-block model would divide by zero there.
        return [self.stochastic_depth_prob * i / max(total - 1, 1) for i in range(total)]


# torchvision's three sizes (the registry names them).
TINY = Swin3dConfig()
SMALL = Swin3dConfig(depths=(2, 2, 18, 2))
BASE = Swin3dConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))


# ---------------------------------------------------------------------------
# Initialisers (torchvision's)


def _torch_trunc_normal(std: float):
    """torch.nn.init.trunc_normal_(std=std): normal(0, std) cut at the absolute values +-2."""

    def init(key, shape, dtype=jnp.float32):
        bound = 2.0 / std
        return (std * jax.random.truncated_normal(key, -bound, bound, shape, jnp.float32)
                ).astype(dtype)

    return init


_linear_init = _torch_trunc_normal(0.02)


def _linear(cfg: Swin3dConfig, din: int, dout: int, rngs: nnx.Rngs, *,
            use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=_linear_init,
                      bias_init=nnx.initializers.zeros, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs)


def _layer_norm(cfg: Swin3dConfig, features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         rngs=rngs)


# ---------------------------------------------------------------------------
# Constants of the windowed attention (numpy, computed at trace time)


def _pad_amount(size: int, multiple: int) -> int:
    return (multiple - size % multiple) % multiple


def window_and_shift(size: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """torchvision's rule: along an axis no larger than the window, window = size, no shift."""
    w, s = list(window), list(shift)
    for i in range(3):
        if size[i] <= w[i]:
            w[i], s[i] = size[i], 0
    return tuple(w), tuple(s)


@functools.cache
def relative_position_index(window: Triple) -> np.ndarray:
    """(V, V) int32, V = Wd*Wh*Ww: the flat bias-table row of each (query, key) pair."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :] + np.array(window)[:, None, None] - 1
    strides = ((2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1)
    index = sum(rel[i] * strides[i] for i in range(3)).astype(np.int32)
    index.setflags(write=False)  # cached: shared by every caller
    return index


@functools.cache
def shifted_window_mask(padded: Triple, window: Triple, shift: Triple) -> np.ndarray:
    """(num_windows, V, V) float32: 0 within a region of the shifted grid, -100 across.

    The regions follow torchvision's slicing exactly (including its behaviour along axes
    whose shift is 0, where the last slice covers the whole axis).
    """
    labels = np.zeros(padded, np.float32)
    slices = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    count = 0
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                labels[d[0]:d[1], h[0]:h[1], w[0]:w[1]] = count
                count += 1
    labels = _partition_np(labels, window)
    mask = np.where(labels[:, None, :] != labels[:, :, None], -100.0, 0.0).astype(np.float32)
    mask.setflags(write=False)
    return mask


def _partition_np(grid: np.ndarray, window: Triple) -> np.ndarray:
    (t, h, w), (wd, wh, ww) = grid.shape, window
    grid = grid.reshape(t // wd, wd, h // wh, wh, w // ww, ww)
    return grid.transpose(0, 2, 4, 1, 3, 5).reshape(-1, wd * wh * ww)


# ---------------------------------------------------------------------------
# Layers


class _PatchConv(nnx.Module):
    """The parameters of torchvision's patch Conv3d: kernel (pt, ph, pw, in, out), bias."""

    def __init__(self, cfg: Swin3dConfig, in_channels: int, *, rngs: nnx.Rngs):
        shape = (*cfg.patch_size, in_channels, cfg.embed_dim)
        fan_in = int(np.prod(shape[:-1]))
        self.kernel = nnx.Param(layers.TORCH_DEFAULT_KERNEL(rngs.params(), shape, cfg.param_dtype))
        self.bias = nnx.Param(layers.torch_default_uniform(fan_in)(rngs.params(), (cfg.embed_dim,),
                                                         cfg.param_dtype))


class PatchEmbed3d(nnx.Module):
    """Non-overlapping (pt, ph, pw) patches -> linear embedding (the Conv3d), LayerNorm.

    The Conv3d's stride equals its kernel, so it runs as a reshape and one matmul (much
    faster than a generic 3D convolution on CPU); the kernel keeps the conv layout
    (pt, ph, pw, in, out).
    """

    def __init__(self, cfg: Swin3dConfig, in_channels: int = 3, *, rngs: nnx.Rngs):
        self.proj = _PatchConv(cfg, in_channels, rngs=rngs)
        self.norm = _layer_norm(cfg, cfg.embed_dim, rngs)
        self.patch_size = cfg.patch_size
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, h, w, c = x.shape
        (pt, ph, pw) = self.patch_size
        pads = [_pad_amount(s, p) for s, p in zip((t, h, w), self.patch_size)]
        if any(pads):
            x = jnp.pad(x, [(0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)])
        t, h, w = t + pads[0], h + pads[1], w + pads[2]
        x = x.reshape(n, t // pt, pt, h // ph, ph, w // pw, pw, c)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(n, t // pt, h // ph, w // pw, -1)
        kernel, bias = self.proj.kernel[...], self.proj.bias[...]
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        x = x @ kernel.reshape(-1, kernel.shape[-1]) + bias
        return self.norm(x)


class ShiftedWindowAttention3d(nnx.Module):
    """Multi-head self-attention inside (shifted) 3D windows, with a relative position bias."""

    def __init__(self, cfg: Swin3dConfig, dim: int, num_heads: int, shift: Triple, *,
                 rngs: nnx.Rngs):
        self.window_size = cfg.window_size
        self.shift_size = shift
        self.num_heads = num_heads
        self.dtype = cfg.dtype
        self.qkv = _linear(cfg, dim, 3 * dim, rngs)
        self.proj = _linear(cfg, dim, dim, rngs)
        table_shape = (*(2 * w - 1 for w in cfg.window_size), num_heads)
        self.relative_position_bias_table = nnx.Param(
            _linear_init(rngs.params(), table_shape, cfg.param_dtype))
        self.attn_drop = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
        self.proj_drop = nnx.Dropout(cfg.dropout, rngs=rngs)

    def relative_position_bias(self, window: Triple) -> jax.Array:
        """(heads, V, V) for a (possibly shrunk) window of volume V, as torchvision."""
        volume = int(np.prod(window))
        index = relative_position_index(self.window_size)[:volume, :volume].reshape(-1)
        table = self.relative_position_bias_table[...]
        table = table.reshape(-1, table.shape[-1])
        return jnp.take(table, index, axis=0).reshape(volume, volume, -1).transpose(2, 0, 1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        b, t, h, w, c = x.shape
        window, shift = window_and_shift((t, h, w), self.window_size, self.shift_size)
        pads = [_pad_amount(s, ws) for s, ws in zip((t, h, w), window)]
        if any(pads):
            x = jnp.pad(x, [(0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)])
        padded = (t + pads[0], h + pads[1], w + pads[2])
        shifted = sum(shift) > 0
        if shifted:
            x = jnp.roll(x, tuple(-s for s in shift), axis=(1, 2, 3))

        # Partition: (B, T, H, W, C) -> (B * nW, V, C).
        (wd, wh, ww), (tp, hp, wp) = window, padded
        grid = (tp // wd, hp // wh, wp // ww)
        num_windows, volume = int(np.prod(grid)), wd * wh * ww
        x = x.reshape(b, grid[0], wd, grid[1], wh, grid[2], ww, c)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * num_windows, volume, c)

        heads, head_dim = self.num_heads, c // self.num_heads
        qkv = self.qkv(x).reshape(b * num_windows, volume, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)
        attn = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32)
        attn = attn + self.relative_position_bias(window).astype(jnp.float32)
        if shifted:
            mask = jnp.asarray(shifted_window_mask(padded, window, shift))
            attn = attn.reshape(b, num_windows, heads, volume, volume) + mask[None, :, None]
            attn = attn.reshape(b * num_windows, heads, volume, volume)
        attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
        attn = self.attn_drop(attn, deterministic=not train)
        x = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(b * num_windows, volume, c)
        x = self.proj_drop(self.proj(x), deterministic=not train)

        # Reverse the partition, the shift and the padding.
        x = x.reshape(b, *grid, wd, wh, ww, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        x = x.reshape(b, tp, hp, wp, c)
        if shifted:
            x = jnp.roll(x, shift, axis=(1, 2, 3))
        return x[:, :t, :h, :w]


class Mlp(nnx.Module):
    """Linear, GELU (exact), dropout, linear, dropout (torchvision.ops.MLP's layout)."""

    def __init__(self, cfg: Swin3dConfig, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = _linear(cfg, dim, hidden, rngs)
        self.fc2 = _linear(cfg, hidden, dim, rngs)
        self.drop1 = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.drop2 = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.drop1(jax.nn.gelu(self.fc1(x), approximate=False), deterministic=not train)
        return self.drop2(self.fc2(x), deterministic=not train)


class SwinTransformerBlock(nnx.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x)))."""

    def __init__(self, cfg: Swin3dConfig, dim: int, num_heads: int, shift: Triple,
                 drop_rate: float, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg, dim, rngs)
        self.attn = ShiftedWindowAttention3d(cfg, dim, num_heads, shift, rngs=rngs)
        self.norm2 = _layer_norm(cfg, dim, rngs)
        self.mlp = Mlp(cfg, dim, int(dim * cfg.mlp_ratio), rngs=rngs)
        # Stochastic depth "row": drop a sample's whole branch, scale survivors by 1/(1-p).
        self.drop_path = layers.StochasticDepth(drop_rate, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x + self.drop_path(self.attn(self.norm1(x), train=train), train=train)
        x = x + self.drop_path(self.mlp(self.norm2(x), train=train), train=train)
        return x


class PatchMerging(nnx.Module):
    """2x2 spatial merge (odd H / W zero-padded): concat 4C, LayerNorm, linear to 2C."""

    def __init__(self, cfg: Swin3dConfig, dim: int, *, rngs: nnx.Rngs):
        self.norm = _layer_norm(cfg, 4 * dim, rngs)
        self.reduction = _linear(cfg, 4 * dim, 2 * dim, rngs, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, [(0, 0), (0, 0), (0, h % 2), (0, w % 2), (0, 0)])
            h, w = h + h % 2, w + w % 2
        # torchvision concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]:
        # the row offset varies fastest, so order the 2x2 block as (column, row).
        x = x.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 5, 3, 6)
        x = x.reshape(b, t, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class Stage(nnx.List):
    """The Swin blocks of one stage (torchvision's per-stage nn.Sequential)."""

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for block in self:
            x = block(x, train=train)
        return x


class SwinTransformer3d(nnx.Module):
    """patch_embed, pos_drop, layers (stages and PatchMergings), norm, mean pool, head."""

    def __init__(self, config: Swin3dConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.patch_embed = PatchEmbed3d(config, rngs=rngs)
        self.pos_drop = nnx.Dropout(config.dropout, rngs=rngs)
        rates = iter(config.block_drop_rates())
        features = nnx.List()
        for stage, (depth, heads, dim) in enumerate(
                zip(config.depths, config.num_heads, config.stage_dims)):
            blocks = Stage()
            for index in range(depth):
                shift = (0, 0, 0) if index % 2 == 0 else tuple(w // 2 for w in config.window_size)
                blocks.append(SwinTransformerBlock(config, dim, heads, shift, next(rates),
                                                   rngs=rngs))
            features.append(blocks)
            if stage < len(config.depths) - 1:
                features.append(PatchMerging(config, dim, rngs=rngs))
        self.layers = features
        self.norm = _layer_norm(config, config.stage_dims[-1], rngs)
        self.head = _linear(config, config.stage_dims[-1], config.num_classes, rngs)

    def _forward(self, video: jax.Array, train: bool, taps: dict | None) -> jax.Array:
        x = self.pos_drop(self.patch_embed(video), deterministic=not train)  # (N, T', H', W', C)
        if taps is not None:
            taps["patch_embed"] = x
        stage = 0
        for layer in self.layers:
            if isinstance(layer, Stage):
                x = layer(x, train=train)
                stage += 1
                if taps is not None:
                    taps[f"stage{stage}"] = x
            else:
                x = layer(x)
        x = self.norm(x)
        # (N, T', H', W', C) -> (N, C); the mean is taken in float32 for bf16 runs.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        logits = self.head(pooled).astype(jnp.float32)
        if taps is not None:
            taps["logits"] = logits
        return logits

    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """video (N, T, H, W, 3) -> logits (N, num_classes) float32."""
        return self._forward(video, train, None)

    def features(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Ordered intermediates: "patch_embed" (after pos_drop), "stage1".."stage4" (each
        stage's blocks, before the following PatchMerging), "logits"; (N, T', H', W', C)."""
        taps: dict[str, jax.Array] = {}
        self._forward(video, train, taps)
        return taps


# ---------------------------------------------------------------------------
# The PyTorch side: the converter's key table (`TORCH_KEYS`)
#
# torchvision's Video Swin Transformers (`swin3d_t`, `swin3d_s`, `swin3d_b`).
#
# The NNX model nests as torchvision's, with torchvision's `features` Sequential named `layers`
# (same indices: stages at 0, 2, 4, 6, PatchMerging at 1, 3, 5) and the MLP's `mlp.0` / `mlp.3`
# named `fc1` / `fc2`. Transforms: the patch Conv3d (O, I, T, H, W) -> (T, H, W, I, O), Linear
# (O, I) -> (I, O), LayerNorm weight -> scale.
#
# Relative position bias tables: torchvision stores `((2Wd-1)(2Wh-1)(2Ww-1), heads)`, the NNX
# model `(2Wd-1, 2Wh-1, 2Ww-1, heads)` (same values, reshaped). The table's size depends only on
# the window size; for the window the model was built with it is a reshape, for another window
# (`window_size=...`) the table is resized timm-style, by interpolating the relative offsets
# (trilinear, align_corners=False, as torch's `F.interpolate`; timm's 2D resize is bicubic, which
# torch does not offer in 3D). The checkpoint's window is read off the table's length: among
# the factorisations (2a-1)(2b-1)(2c-1) of it, torchvision's (8, 7, 7) when it fits, else the
# one closest to the model's window. The `relative_position_index` buffers are not stored: the
# model computes them from its window size.

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

_TORCH_RULES = (
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
)
_TORCH_HEAD = ("head.weight", "head.bias")


TORCH_KEYS = TorchKeys(rules=_TORCH_RULES, head=_TORCH_HEAD)


def torch_reference(config: Swin3dConfig):
    """torchvision's SwinTransformer3d with the config's patch, window, depths, heads and rates."""
    from torchvision.models.video import swin_transformer as tv

    return tv.SwinTransformer3d(
        patch_size=list(config.patch_size), embed_dim=config.embed_dim, depths=list(config.depths),
        num_heads=list(config.num_heads), window_size=list(config.window_size),
        mlp_ratio=config.mlp_ratio, dropout=config.dropout, attention_dropout=config.attention_dropout,
        stochastic_depth_prob=config.stochastic_depth_prob, num_classes=config.num_classes)
