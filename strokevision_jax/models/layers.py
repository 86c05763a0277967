"""Layers and initialisers shared by the model families."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_DN2 = ("NHWC", "HWIO", "NHWC")
_LECUN_NORMAL = nnx.initializers.lecun_normal()

# ---------------------------------------------------------------------------
# torch's initialisers, for models that start as their PyTorch originals do

# kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated like torch's (torchvision's
# video ResNets, mmcv's ConvModule).
KAIMING_NORMAL_FAN_OUT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch ConvNd / Linear default weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
TORCH_DEFAULT_KERNEL = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_uniform(fan_in: int):
    """torch's default bias (and Linear weight) init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def trunc_normal_02():
    """timm / torchvision's trunc_normal_(std=0.02) cuts at +-2 absolute, i.e. +-100 std: a plain
    normal in practice (jax's truncated_normal would cut at +-2 std)."""
    return jax.nn.initializers.normal(0.02)


# ---------------------------------------------------------------------------
# Stochastic depth


class StochasticDepth(nnx.Module):
    """Drops a residual branch at random in training, scaling kept branches by 1 / (1 - rate):
    torchvision's StochasticDepth(p, "row") and timm's / MotionBERT's DropPath.

    `row_dims`: how many leading axes draw their own keep/drop (1: per sample; MotionBERT's
    (B, T, J, C) layout: 2, per sample and frame, as upstream's DropPath on its (B T, J, C)).
    A branch whose rate is 0 holds no random stream.
    """

    def __init__(self, rate: float, *, row_dims: int = 1, rngs: nnx.Rngs):
        self.rate = rate
        self.row_dims = row_dims
        self.rngs = rngs["dropout"].fork() if rate > 0.0 else nnx.data(None)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        survival = 1.0 - self.rate
        if survival == 0.0:
            return jnp.zeros_like(x)
        shape = x.shape[:self.row_dims] + (1,) * (x.ndim - self.row_dims)
        keep = jax.random.bernoulli(self.rngs(), survival, shape)
        return x * keep.astype(x.dtype) / jnp.asarray(survival, x.dtype)


def _conv2d(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN2)


class Conv3d(nnx.Module):
    """Bias-free 3D convolution on (N, T, H, W, C) with a (kt, kh, kw, in, out) kernel.

    Padding is explicit and symmetric per axis, as torch's `Conv3d(padding=p)`. With
    `factorize=True` (the default) kernels that are flat in time (kt = 1, e.g. R(2+1)D's
    1x3x3) run as 2D convolutions over the N*T frames, and kernels that are flat in space
    (kh = kw = 1: the 3x1x1 temporal convs and the 1x1x1 shortcuts) as 2D convolutions over
    (T, H*W); strides of a size-1 kernel axis become slices. The result equals the 3D
    convolution; the lowering is what changes: XLA on CPU runs these 2D convolutions several
    times faster than its generic 3D ones (`python -m strokevision_jax.benchmark
    --models=r2plus1d_18 --overrides='{"factorize_convs": false}'` against the default measures
    it; tests/test_layers.py checks the equality).
    On the CPU backend, kernels with kt > 1 in time and in space (R3D's 3x3x3, the 3x7x7 stem)
    also run as one 2D convolution, the kt input frames of each output frame stacked along
    channels (`_temporal_taps_as_channels`): XLA's CPU 3D convolution is about 10x slower than
    that. Other backends keep the native 3D convolution for them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        strides: Sequence[int] = (1, 1, 1),
        padding: Sequence[int] = (0, 0, 0),
        *,
        kernel_init: Callable = _LECUN_NORMAL,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        factorize: bool = True,
        rngs: nnx.Rngs,
    ):
        shape = (*kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.strides = tuple(strides)
        self.padding = tuple(padding)
        self.dtype = dtype
        self.factorize = factorize

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = kernel.shape[:3], self.strides, self.padding
        if self.factorize and kt == 1 and pt == 0:
            x = x[:, ::st]
            n, t, h, w, c = x.shape
            y = _conv2d(x.reshape(n * t, h, w, c), kernel[0], (sh, sw), [(ph, ph), (pw, pw)])
            return y.reshape(n, t, *y.shape[1:])
        if self.factorize and kh == kw == 1 and ph == pw == 0:
            x = x[:, :, ::sh, ::sw]
            n, t, h, w, c = x.shape
            y = _conv2d(x.reshape(n, t, h * w, c), kernel[:, 0], (st, 1), [(pt, pt), (0, 0)])
            return y.reshape(n, y.shape[1], h, w, y.shape[-1])
        if self.factorize and kt > 1 and jax.default_backend() == "cpu":
            return _temporal_taps_as_channels(x, kernel, self.strides, self.padding)
        padding = [(p, p) for p in self.padding]
        return jax.lax.conv_general_dilated(x, kernel, self.strides, padding, dimension_numbers=_DN3)


def _temporal_taps_as_channels(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    """A kt x kh x kw convolution as one 2D convolution over the output frames: the kt input
    frames under each output frame are stacked along channels (tap-major), and the kernel
    (kt, kh, kw, C, O) is regrouped to (kh, kw, kt*C, O) to match. Same sums as the 3D
    convolution, in another order."""
    (kt, kh, kw, c, o), (st, sh, sw), (pt, ph, pw) = kernel.shape, strides, padding
    x = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0)))
    n, t, h, w, _ = x.shape
    t_out = (t - kt) // st + 1
    taps = [x[:, dt: dt + st * (t_out - 1) + 1: st] for dt in range(kt)]  # kt x (N, T', H, W, C)
    stacked = jnp.concatenate(taps, axis=-1).reshape(n * t_out, h, w, kt * c)
    flat_kernel = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, o)
    y = _conv2d(stacked, flat_kernel, (sh, sw), [(ph, ph), (pw, pw)])
    return y.reshape(n, t_out, *y.shape[1:])
