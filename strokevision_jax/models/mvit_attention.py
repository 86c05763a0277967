"""MViT's pooling attention (`MultiscaleAttention`): q, k and v pooled per head by depthwise 3D
convolutions, the shortcut max-pooled alike, and v2's decomposed relative position tables.
Part of `strokevision_jax.models.mvit` (its docstring describes the whole network).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.resize import linear_resize_matrix

if TYPE_CHECKING:
    from strokevision_jax.models.mvit import MSBlockConfig, MViTConfig

Triple = tuple[int, int, int]


def linear(cfg: MViTConfig, in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, kernel_init=layers.trunc_normal_02(),
                      bias_init=jax.nn.initializers.zeros, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs)


def layer_norm(cfg: MViTConfig, features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=cfg.norm_eps, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, rngs=rngs)

def _pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class Pool(nnx.Module):
    """Per-head pooling of (B, heads, 1 + THW, d): depthwise Conv3d (no bias) then LayerNorm
    over d; the class token skips the convolution but not the norm."""

    def __init__(self, cfg: MViTConfig, dim: int, kernel: Sequence[int], stride: Sequence[int], *,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(layers.TORCH_DEFAULT_KERNEL(rngs.params(), (*kernel, 1, dim), cfg.param_dtype))
        self.strides = tuple(stride)
        self.padding = tuple(k // 2 for k in kernel)
        self.norm = layer_norm(cfg, dim, rngs)
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


def max_pool_skip(x: jax.Array, thw: Triple, stride: Sequence[int]) -> jax.Array:
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
        self.qkv = linear(cfg, embed_dim, 3 * output_dim, rngs)
        self.project = linear(cfg, output_dim, output_dim, rngs)
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
            init = layers.trunc_normal_02()
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
