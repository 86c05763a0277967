"""MotionBERT action recognition (DSTformer backbone + classification head) in Flax NNX.

Zhu et al., "MotionBERT: A Unified Perspective on Learning Human Motion Representations",
ICCV 2023; the code reproduced is github.com/Walter0807/MotionBERT at dccfe7b
(lib/model/DSTformer.py, lib/model/model_action.py, lib/utils/learning.py `load_backbone`,
configs/action/MB_ft_NTU60_xsub.yaml).

Input: `(N, M, T, J, 3)` float32: N clips, M persons (upstream always feeds M = 2, a missing
person being all zeros: it still goes through the backbone and into the mean over persons),
T <= maxlen frames, J = 17 joints in H36M order, (x, y, confidence) with x, y in [-1, 1].

- Embedding: `joints_embed` Linear(3, dim_feat) per joint, plus `pos_embed` (J, dim_feat) and
  `temp_embed[:T]` (maxlen, dim_feat): a model built for maxlen frames runs on any T <= maxlen.
- `depth` pairs of blocks. Both blocks of a pair read the same x: `blocks_st[i]` runs spatial
  attention + MLP then temporal attention + MLP, `blocks_ts[i]` the other order; every step is
  a pre-norm residual with its own LayerNorm (`norm1_s/_t` before the attentions, `norm2_s/_t`
  before the MLPs). Spatial attention attends over the J joints of each frame, temporal
  attention over the T frames of each joint.
- Fusion (`att_fuse`): alpha = softmax(ts_attn[i](concat(x_st, x_ts)), over the 2 streams),
  x = alpha_0 x_st + alpha_1 x_ts, per token; without it the mean of the two streams.
- `norm` (LayerNorm), then `pre_logits` (Linear(dim_feat, dim_rep) + tanh): the representation.
  `backbone.head` (Linear(dim_rep, dim_out), upstream's 3D pose output) is kept, as upstream
  keeps it in the model and its checkpoints, but the action model does not use it.
- Head ("class" version): dropout, mean over T, flatten (J, dim_rep) joint-major, mean over M,
  fc1 (J dim_rep -> hidden_dim), BatchNorm1d, ReLU, fc2.

Upstream behaviour reproduced:
- LayerNorm eps 1e-6 (load_backbone passes `partial(nn.LayerNorm, eps=1e-6)`; DSTformer's own
  default of 1e-5 is not what upstream trains with), exact (erf) GELU, two-pass variance.
- qkv Linear output split as (3, heads, head_dim): q/k/v outer, heads inner; the attention
  output re-concatenated head-major (channel h * head_dim + d); logits scaled by
  `qk_scale or head_dim ** -0.5` after the product.
- The class head's width: ActionNet does not pass `hidden_dim` to ActionHeadClassification,
  so upstream's head is always 2048 wide, whatever the config says. Here `hidden_dim` is the
  width actually built; its default, 2048, is upstream's effective value.
- Stochastic depth (`drop_path_rate`, linearly 0 .. rate over the depth) drops a residual
  branch per token row of upstream's (N M T, J, C) layout, i.e. per (clip, person, frame),
  not per clip. Dropout (`drop_rate`) follows the embedding, the MLP's GELU, the MLP and the
  attention projection; `attn_drop_rate` acts on the attention probabilities.
- BatchNorm1d as torch's: eps 1e-5, running statistics updated with momentum 0.1 and the
  unbiased batch variance, normalisation with the biased one.

The published action configuration (MB_ft_NTU60_xsub: dim_feat = dim_rep = 512, depth 5,
8 heads, mlp_ratio 2, maxlen 243, head dropout 0.5, no dropout / drop path in the backbone since
load_backbone passes none) is the default; `PRESETS["small"]` is 64 / 64 / depth 2 / 4 heads.

Parameter paths follow upstream's state_dict (`backbone.*`, `head.*`) with these renames (the
converter is `TORCH_KEYS` below): `pre_logits.fc` -> `pre_logits`,
LayerNorm `weight` -> `scale`, BatchNorm `weight` / `running_mean` / `running_var` ->
`scale` / `mean` / `var`, Linear `weight` (out, in) -> `kernel` (in, out). The embeddings drop
their singleton axes: `temp_embed` (1, maxlen, 1, C) -> (maxlen, C), `pos_embed` (1, J, C) ->
(J, C).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.models import layers
from strokevision_jax.models.torch_keys import ConversionError, Ignore, Rule, TorchKeys


@dataclasses.dataclass(frozen=True)
class MotionBERTConfig:
    """DSTformer + ActionNet("class") arguments, under upstream's names.

    Backbone: dim_in, dim_out (the unused pose head; 0: none), dim_feat, dim_rep, depth,
    num_heads, mlp_ratio, num_joints, maxlen, att_fuse, qkv_bias, qk_scale, drop_rate,
    attn_drop_rate, drop_path_rate, norm_eps. Head: hidden_dim, dropout_ratio, num_classes.
    """

    dim_in: int = 3
    dim_out: int = 3
    dim_feat: int = 512
    dim_rep: int = 512
    depth: int = 5
    num_heads: int = 8
    mlp_ratio: float = 2.0
    num_joints: int = 17
    maxlen: int = 243
    att_fuse: bool = True
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    hidden_dim: int = 2048
    dropout_ratio: float = 0.5
    num_classes: int = 60
    dtype: Any = jnp.float32  # compute dtype (e.g. jnp.bfloat16); logits are float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("dim_in", "dim_feat", "dim_rep", "depth", "num_heads", "num_joints",
                     "maxlen", "hidden_dim", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.dim_out < 0:
            raise ValueError(f"dim_out must be >= 0 (0: no pose head), got {self.dim_out}.")
        if self.dim_feat % self.num_heads:
            raise ValueError(f"dim_feat ({self.dim_feat}) must be a multiple of num_heads "
                             f"({self.num_heads}).")
        if int(self.dim_feat * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves the MLP without hidden units.")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate", "dropout_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")

    @property
    def head_dim(self) -> int:
        return self.dim_feat // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim_feat * self.mlp_ratio)  # upstream truncates, as int()

    @property
    def drop_path_rates(self) -> tuple[float, ...]:
        """Block i's rate: torch.linspace(0, drop_path_rate, depth) (in float32)."""
        return tuple(float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth,
                                                   dtype=np.float32))


PRESETS: dict[str, MotionBERTConfig] = {
    # configs/action/MB_ft_NTU60_xsub.yaml (60 classes).
    "ntu60_xsub": MotionBERTConfig(),
    # A small DSTformer (the size of the skeleton parity tests' reference outputs).
    "small": MotionBERTConfig(dim_feat=64, dim_rep=64, depth=2, num_heads=4),
}


# ---------------------------------------------------------------------------
# Initialisers (upstream's: DSTformer._init_weights, torch defaults in the head)


def _linear(cfg: MotionBERTConfig, din: int, dout: int, rngs: nnx.Rngs, *, use_bias: bool = True,
            kernel_init=None, bias_init=None) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=kernel_init or layers.trunc_normal_02(),
                      bias_init=bias_init or jax.nn.initializers.zeros, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs)


def _head_linear(cfg: MotionBERTConfig, din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    init = layers.torch_default_uniform(din)
    return _linear(cfg, din, dout, rngs, kernel_init=init, bias_init=init)


def _layer_norm(cfg: MotionBERTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch: the one-pass E[x^2] - E[x]^2 loses digits for large means.
    return nnx.LayerNorm(cfg.dim_feat, epsilon=cfg.norm_eps, use_fast_variance=False,
                         dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)


# ---------------------------------------------------------------------------
# Layers. Activations inside the backbone are (B, T, J, C), B = N * M.


class Attention(nnx.Module):
    """Multi-head self-attention over the joints of a frame ("spatial") or over the frames of
    a joint ("temporal"); (B, T, J, C) -> (B, T, J, C)."""

    def __init__(self, cfg: MotionBERTConfig, mode: str, *, rngs: nnx.Rngs):
        if mode not in ("spatial", "temporal"):
            raise ValueError(f"attention mode is 'spatial' or 'temporal', got {mode!r}.")
        self.mode = mode
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.qk_scale or cfg.head_dim ** -0.5
        self.qkv = _linear(cfg, cfg.dim_feat, 3 * cfg.dim_feat, rngs, use_bias=cfg.qkv_bias)
        self.proj = _linear(cfg, cfg.dim_feat, cfg.dim_feat, rngs)
        self.attn_drop = nnx.Dropout(cfg.attn_drop_rate, rngs=rngs)
        self.proj_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        b, t, j, c = x.shape
        qkv = self.qkv(x).reshape(b, t, j, 3, self.num_heads, self.head_dim)
        q, k, v = (qkv[:, :, :, i] for i in range(3))  # (B, T, J, heads, d)
        scale = jnp.asarray(self.scale, q.dtype)
        if self.mode == "spatial":
            logits = jnp.einsum("btqhd,btkhd->bthqk", q, k) * scale  # (B, T, heads, J, J)
        else:
            logits = jnp.einsum("bqjhd,bkjhd->bjhqk", q, k) * scale  # (B, J, heads, T, T)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        probs = self.attn_drop(probs, deterministic=not train)
        if self.mode == "spatial":
            out = jnp.einsum("bthqk,btkhd->btqhd", probs, v)
        else:
            out = jnp.einsum("bjhqk,bkjhd->bqjhd", probs, v)
        out = out.reshape(b, t, j, c)  # heads concatenated head-major
        return self.proj_drop(self.proj(out), deterministic=not train)


class MLP(nnx.Module):
    """fc1, exact GELU, dropout, fc2, dropout (one rate for both)."""

    def __init__(self, cfg: MotionBERTConfig, *, rngs: nnx.Rngs):
        self.fc1 = _linear(cfg, cfg.dim_feat, cfg.mlp_hidden, rngs)
        self.fc2 = _linear(cfg, cfg.mlp_hidden, cfg.dim_feat, rngs)
        self.drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.drop(jax.nn.gelu(self.fc1(x), approximate=False), deterministic=not train)
        return self.drop(self.fc2(x), deterministic=not train)


class Block(nnx.Module):
    """Upstream's Block in mode "stage_st" (spatial first) or "stage_ts" (temporal first)."""

    def __init__(self, cfg: MotionBERTConfig, order: str, drop_path: float, *, rngs: nnx.Rngs):
        if order not in ("st", "ts"):
            raise ValueError(f"block order is 'st' or 'ts', got {order!r}.")
        self.order = order
        self.norm1_s = _layer_norm(cfg, rngs)
        self.norm1_t = _layer_norm(cfg, rngs)
        self.attn_s = Attention(cfg, "spatial", rngs=rngs)
        self.attn_t = Attention(cfg, "temporal", rngs=rngs)
        self.norm2_s = _layer_norm(cfg, rngs)
        self.norm2_t = _layer_norm(cfg, rngs)
        self.mlp_s = MLP(cfg, rngs=rngs)
        self.mlp_t = MLP(cfg, rngs=rngs)
        self.drop_path = layers.StochasticDepth(drop_path, row_dims=2, rngs=rngs)

    def _spatial(self, x: jax.Array, train: bool) -> jax.Array:
        x = x + self.drop_path(self.attn_s(self.norm1_s(x), train=train), train=train)
        return x + self.drop_path(self.mlp_s(self.norm2_s(x), train=train), train=train)

    def _temporal(self, x: jax.Array, train: bool) -> jax.Array:
        x = x + self.drop_path(self.attn_t(self.norm1_t(x), train=train), train=train)
        return x + self.drop_path(self.mlp_t(self.norm2_t(x), train=train), train=train)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.order == "st":
            return self._temporal(self._spatial(x, train), train)
        return self._spatial(self._temporal(x, train), train)


class DSTformer(nnx.Module):
    """The dual-stream spatio-temporal transformer; (B, T, J, dim_in) -> representation
    (B, T, J, dim_rep) (`features`) or upstream's pose output (B, T, J, dim_out) (`__call__`)."""

    def __init__(self, cfg: MotionBERTConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.joints_embed = _linear(cfg, cfg.dim_in, cfg.dim_feat, rngs)
        self.pos_embed = nnx.Param(layers.trunc_normal_02()(rngs.params(), (cfg.num_joints, cfg.dim_feat),
                                             cfg.param_dtype))
        self.temp_embed = nnx.Param(layers.trunc_normal_02()(rngs.params(), (cfg.maxlen, cfg.dim_feat),
                                              cfg.param_dtype))
        self.pos_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)
        rates = cfg.drop_path_rates
        self.blocks_st = nnx.List([Block(cfg, "st", rates[i], rngs=rngs) for i in range(cfg.depth)])
        self.blocks_ts = nnx.List([Block(cfg, "ts", rates[i], rngs=rngs) for i in range(cfg.depth)])
        ts_attn = None
        if cfg.att_fuse:
            # upstream starts the fusion at weight 0, bias 0.5: equal weights for both streams.
            ts_attn = nnx.List([
                _linear(cfg, 2 * cfg.dim_feat, 2, rngs, kernel_init=jax.nn.initializers.zeros,
                        bias_init=jax.nn.initializers.constant(0.5))
                for _ in range(cfg.depth)])
        self.ts_attn: nnx.List | None = nnx.data(ts_attn)
        self.norm = _layer_norm(cfg, rngs)
        self.pre_logits = _linear(cfg, cfg.dim_feat, cfg.dim_rep, rngs)
        head = _linear(cfg, cfg.dim_rep, cfg.dim_out, rngs) if cfg.dim_out > 0 else None
        self.head: nnx.Linear | None = nnx.data(head)

    def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, T, J, dim_in) -> (B, T, J, dim_feat): joint Linear + joint and frame embeddings."""
        t = x.shape[1]
        dtype = self.config.dtype
        x = self.joints_embed(x) + self.pos_embed[...].astype(dtype)
        x = x + self.temp_embed[:t].astype(dtype)[:, None, :]
        return self.pos_drop(x, deterministic=not train)

    def fuse(self, index: int, x_st: jax.Array, x_ts: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """(fused x, fusion logits (B, T, J, 2) or None without att_fuse)."""
        if self.ts_attn is None:
            return (x_st + x_ts) * 0.5, None
        logits = self.ts_attn[index](jnp.concatenate([x_st, x_ts], axis=-1))
        alpha = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x_st.dtype)
        return x_st * alpha[..., 0:1] + x_ts * alpha[..., 1:2], logits

    def features(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """{'embed', 'blocks_st.{i}', 'blocks_ts.{i}', 'ts_attn.{i}' (pre-softmax fusion
        logits, with att_fuse), 'norm': (B, T, J, dim_feat or 2); 'representation':
        (B, T, J, dim_rep)}, in order."""
        x = self.embed(x, train=train)
        out = {"embed": x}
        for index, (block_st, block_ts) in enumerate(zip(self.blocks_st, self.blocks_ts)):
            x_st = block_st(x, train=train)
            x_ts = block_ts(x, train=train)
            x, logits = self.fuse(index, x_st, x_ts)
            out[f"blocks_st.{index}"], out[f"blocks_ts.{index}"] = x_st, x_ts
            if logits is not None:
                out[f"ts_attn.{index}"] = logits
        x = self.norm(x)
        out["norm"] = x
        out["representation"] = jnp.tanh(self.pre_logits(x))
        return out

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Upstream's DSTformer.forward: the pose head on the representation."""
        if self.head is None:
            raise ValueError("this DSTformer has no pose head (dim_out=0); use features().")
        return self.head(self.features(x, train=train)["representation"])


class BatchNorm1d(nnx.Module):
    """torch's BatchNorm1d on (N, C): eps 1e-5; in training, normalises with the biased batch
    variance and moves the running statistics by momentum 0.1 towards the batch mean and the
    unbiased batch variance (flax's BatchNorm would use the biased one)."""

    def __init__(self, cfg: MotionBERTConfig, features: int, *, eps: float = 1e-5,
                 momentum: float = 0.1, rngs: nnx.Rngs):
        del rngs  # deterministic init: scale 1, bias 0, mean 0, var 1
        self.scale = nnx.Param(jnp.ones((features,), cfg.param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), cfg.param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.eps = eps
        self.momentum = momentum

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if train:
            count = x.shape[0]
            if count < 2:
                raise ValueError(f"BatchNorm1d in training needs more than 1 sample per batch "
                                 f"(torch refuses it too), got a batch of {count}.")
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            unbiased = jax.lax.stop_gradient(var) * (count / (count - 1))
            self.var[...] = (1.0 - m) * self.var[...] + m * unbiased
        else:
            mean, var = self.mean[...], self.var[...]
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)


class ActionHeadClassification(nnx.Module):
    """(N, M, T, J, dim_rep) representation -> (pooled (N, J dim_rep), logits (N, classes))."""

    def __init__(self, cfg: MotionBERTConfig, *, rngs: nnx.Rngs):
        flat = cfg.num_joints * cfg.dim_rep
        self.dropout = nnx.Dropout(cfg.dropout_ratio, rngs=rngs)
        self.fc1 = _head_linear(cfg, flat, cfg.hidden_dim, rngs)
        self.bn = BatchNorm1d(cfg, cfg.hidden_dim, rngs=rngs)
        self.fc2 = _head_linear(cfg, cfg.hidden_dim, cfg.num_classes, rngs)

    def __call__(self, feat: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        n, m = feat.shape[:2]
        feat = self.dropout(feat, deterministic=not train)
        pooled = jnp.mean(feat, axis=2).reshape(n, m, -1)  # (N, M, J * C), joint-major
        pooled = jnp.mean(pooled, axis=1)
        x = jax.nn.relu(self.bn(self.fc1(pooled), train=train))
        return pooled, self.fc2(x)


class MotionBERT(nnx.Module):
    """ActionNet(DSTformer, version="class"): (N, M, T, J, 3) -> (N, num_classes) logits."""

    def __init__(self, config: MotionBERTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = DSTformer(config, rngs=rngs)
        self.head = ActionHeadClassification(config, rngs=rngs)

    def _check_input(self, x: jax.Array) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[3] != cfg.num_joints or x.shape[4] != cfg.dim_in:
            raise ValueError(f"MotionBERT takes (N, M, T, {cfg.num_joints}, {cfg.dim_in}) "
                             f"keypoints (persons M, frames T, H36M joints, (x, y, score)); "
                             f"got shape {tuple(x.shape)}.")
        if x.shape[2] > cfg.maxlen:
            raise ValueError(f"the clip has {x.shape[2]} frames, more than maxlen={cfg.maxlen} "
                             f"(the temporal embedding's length): sample at most {cfg.maxlen} "
                             f"frames, or build the model with a larger maxlen.")

    def features(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """x (N, M, T, J, 3) -> {'embed', 'blocks_st.{i}', 'blocks_ts.{i}', 'ts_attn.{i}',
        'norm': (N M T, J, C) in upstream's flattened layout (frames the inner index);
        'features': (N, M, T, J, dim_rep), what the head receives; 'pooled': (N, J dim_rep),
        fc1's input; 'logits': (N, num_classes) float32}, in order."""
        self._check_input(x)
        n, m, t, j, c = x.shape
        inner = self.backbone.features(x.reshape(n * m, t, j, c), train=train)
        rep = inner.pop("representation")
        out = {name: value.reshape(n * m * t, j, -1) for name, value in inner.items()}
        out["features"] = rep.reshape(n, m, t, j, -1)
        out["pooled"], logits = self.head(out["features"], train=train)
        out["logits"] = logits.astype(jnp.float32)
        return out

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """x (N, M, T, J, 3) -> logits (N, num_classes) float32."""
        return self.features(x, train=train)["logits"]


# ---------------------------------------------------------------------------
# The PyTorch side: the converter's key table (`TORCH_KEYS`)
#
# MotionBERT action models (DSTformer + ActionNet "class" head) as train_action.py saves them.
#
# Files: `{'model': state_dict, 'epoch', 'lr', 'optimizer', 'best_acc'}` (the reader unwraps
# `model`), keys `backbone.*` / `head.*`, with the `module.` prefix of nn.DataParallel (GPU
# training) or without it (CPU training); `prepare` strips it.
#
# The NNX model nests as upstream's (see strokevision_jax/models/motionbert.py) with these
# renames: `pre_logits.fc` -> `pre_logits`, LayerNorm / BatchNorm `weight` -> `scale`, BatchNorm
# `running_mean` / `running_var` -> `mean` / `var`; Linear (out, in) -> kernel (in, out).
# `temp_embed` (1, maxlen, 1, C) -> (maxlen, C) and `pos_embed` (1, J, C) -> (J, C). A model built
# with a smaller maxlen takes the first maxlen rows of `temp_embed`: exactly what upstream uses on
# clips that short (it slices `temp_embed[:, :T]`).
#
# `backbone.head` (upstream's 3D pose output Linear(dim_rep, 3)) is unused by the action model,
# but it is a parameter of upstream's model and its checkpoints (and counts in its 60.4M), so the
# NNX model keeps it too and it is converted like any other weight.
#
# The architecture is not stored in the file except through the shapes; `check_fixed` reads the
# sizes off the shapes and, when they are not the model's, names the config to pass (num_heads
# does not show in any shape: it must be given when it is not the published 8).

_PREFIX = "module."


def prepare(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips nn.DataParallel's `module.` prefix (present or not, per key)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if name in out:
            raise ConversionError(f"{name!r} appears both with and without the {_PREFIX!r} "
                                  "prefix: the state_dict mixes two models")
        out[name] = value
    if "head.fc1.weight" in out and "head.fc2.weight" not in out:
        raise ConversionError("this is an ActionNet(version='embed') checkpoint (head.fc1 only, "
                              "the one-shot embedding head); only version='class' is supported")
    return out


def _drop_singletons(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """pos_embed (1, J, C) -> (J, C)."""
    if value.ndim != 3 or value.shape[0] != 1:
        raise ConversionError(f"expected a (1, J, C) embedding, got shape {value.shape}")
    return value[0]


def _temp_embed(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """temp_embed (1, L, 1, C) -> (maxlen, C): the first maxlen rows (maxlen <= L)."""
    if value.ndim != 4 or value.shape[0] != 1 or value.shape[2] != 1:
        raise ConversionError(f"expected a (1, maxlen, 1, C) temporal embedding, got shape "
                              f"{value.shape}")
    table = value[0, :, 0]
    if table.shape[0] < shape[0]:
        raise ConversionError(f"the checkpoint's temporal embedding has {table.shape[0]} frames, "
                              f"the model maxlen={shape[0]}: build it with maxlen <= "
                              f"{table.shape[0]}")
    return table[: shape[0]]


_BLOCK = r"backbone\.(blocks_st|blocks_ts)\.(\d+)"

_TORCH_RULES = (
    Rule(r"backbone\.temp_embed", "backbone.temp_embed", _temp_embed),
    Rule(r"backbone\.pos_embed", "backbone.pos_embed", _drop_singletons),
    Rule(r"backbone\.(joints_embed|head)\.weight", "backbone.{0}.kernel", "linear"),
    Rule(r"backbone\.(joints_embed|head)\.bias", "backbone.{0}.bias"),
    Rule(rf"{_BLOCK}\.(norm[12]_[st])\.weight", "backbone.{0}.{1}.{2}.scale"),
    Rule(rf"{_BLOCK}\.(norm[12]_[st])\.bias", "backbone.{0}.{1}.{2}.bias"),
    Rule(rf"{_BLOCK}\.(attn_[st])\.(qkv|proj)\.weight", "backbone.{0}.{1}.{2}.{3}.kernel", "linear"),
    Rule(rf"{_BLOCK}\.(attn_[st])\.(qkv|proj)\.bias", "backbone.{0}.{1}.{2}.{3}.bias"),
    Rule(rf"{_BLOCK}\.(mlp_[st])\.(fc[12])\.weight", "backbone.{0}.{1}.{2}.{3}.kernel", "linear"),
    Rule(rf"{_BLOCK}\.(mlp_[st])\.(fc[12])\.bias", "backbone.{0}.{1}.{2}.{3}.bias"),
    Rule(r"backbone\.ts_attn\.(\d+)\.weight", "backbone.ts_attn.{0}.kernel", "linear"),
    Rule(r"backbone\.ts_attn\.(\d+)\.bias", "backbone.ts_attn.{0}.bias"),
    Rule(r"backbone\.norm\.weight", "backbone.norm.scale"),
    Rule(r"backbone\.norm\.bias", "backbone.norm.bias"),
    Rule(r"backbone\.pre_logits\.fc\.weight", "backbone.pre_logits.kernel", "linear"),
    Rule(r"backbone\.pre_logits\.fc\.bias", "backbone.pre_logits.bias"),
    Rule(r"head\.(fc[12])\.weight", "head.{0}.kernel", "linear"),
    Rule(r"head\.(fc[12])\.bias", "head.{0}.bias"),
    Rule(r"head\.bn\.weight", "head.bn.scale"),
    Rule(r"head\.bn\.bias", "head.bn.bias"),
    Rule(r"head\.bn\.running_mean", "head.bn.mean"),
    Rule(r"head\.bn\.running_var", "head.bn.var"),
    Ignore(r"head\.bn\.num_batches_tracked",
           "BatchNorm's step counter: torch reads it only with momentum=None (a cumulative "
           "average); upstream's BatchNorm1d has momentum 0.1"),
)
_TORCH_HEAD = ("head.fc2.weight", "head.fc2.bias")


def checkpoint_sizes(state_dict: Mapping[str, np.ndarray]) -> dict[str, tuple[int, str]]:
    """{config field: (value, key it was read from)} for the sizes the shapes reveal."""
    shapes = {key: tuple(np.shape(value)) for key, value in state_dict.items()}
    found: dict[str, tuple[int, str]] = {}

    def read(field: str, key: str, axis: int) -> None:
        if key in shapes and len(shapes[key]) > axis:
            found[field] = (shapes[key][axis], key)

    read("dim_feat", "backbone.joints_embed.weight", 0)
    read("dim_in", "backbone.joints_embed.weight", 1)
    read("dim_rep", "backbone.pre_logits.fc.weight", 0)
    read("dim_out", "backbone.head.weight", 0)
    read("num_joints", "backbone.pos_embed", 1)
    read("hidden_dim", "head.fc1.weight", 0)
    blocks = {int(key.split(".")[2]) for key in shapes if key.startswith("backbone.blocks_st.")}
    if blocks:
        found["depth"] = (max(blocks) + 1, "backbone.blocks_st.*")
    hidden = shapes.get("backbone.blocks_st.0.mlp_s.fc1.weight")
    if hidden and "dim_feat" in found:
        found["mlp_ratio"] = (hidden[0] / found["dim_feat"][0], "backbone.blocks_st.0.mlp_s.fc1.weight")
    return found


def check_fixed(state_dict: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    """Raises ConversionError naming the config to pass when the checkpoint's sizes are not
    the model's (rather than a list of every mis-shaped tensor); returns the state_dict."""
    config = model.config
    sizes = checkpoint_sizes(state_dict)
    # mlp_ratio: compare the hidden widths (upstream truncates dim_feat * mlp_ratio to int)
    ours = {field: getattr(config, field) for field in sizes}
    if "mlp_ratio" in sizes and config.mlp_hidden == round(sizes["mlp_ratio"][0] * config.dim_feat):
        ours["mlp_ratio"] = sizes["mlp_ratio"][0]
    wrong = {field: (value, key) for field, (value, key) in sizes.items() if value != ours[field]}
    if "backbone.ts_attn.0.weight" in state_dict and not config.att_fuse:
        wrong["att_fuse"] = (True, "backbone.ts_attn.*")
    elif "backbone.ts_attn.0.weight" not in state_dict and config.att_fuse and sizes:
        wrong["att_fuse"] = (False, "backbone.ts_attn.* (absent)")
    if not wrong:
        return dict(state_dict)
    found = ", ".join(f"{field}={value} (from {key})" for field, (value, key) in wrong.items())
    built = ", ".join(f"{field}={getattr(config, field)}" for field in wrong)
    kwargs = ", ".join(f"{field}={value!r}" for field, (value, _) in wrong.items())
    raise ConversionError(
        f"the checkpoint's architecture is not the model's: the checkpoint has {found}; the "
        f"model was built with {built}. Pass them as config, e.g. load_torch_checkpoint("
        f"name, path, {kwargs}, num_heads=...) (num_heads is in no tensor shape: give "
        f"the one the checkpoint was trained with; the published model uses 8)")


TORCH_KEYS = TorchKeys(rules=_TORCH_RULES, head=_TORCH_HEAD, prepare=prepare, check_fixed=check_fixed)
