"""Attributions of a network's class scores: Grad-CAM for the video networks, integrated
gradients for the skeleton networks. Pure, jitted functions of (graphdef, weights, inputs);
`explain` is the command that feeds them a clip and draws the maps.

Grad-CAM (Selvaraju et al., 2017) on a stage of a video network: the stage's activation A
(N, T', H', W', K) and the gradient of a class's logit with respect to it; each channel weighs
alpha_k = mean over (T', H', W') of the gradient; the map is relu(sum_k alpha_k A_k), upsampled
to the clip's (T, H, W) and divided by its maximum. The gradient is taken by adding a zero
tensor to the stage's output (the `_Tap` below) and differentiating the logits with respect to
it: no change to the networks, one forward and one backward pass per class.

Integrated gradients (Sundararajan et al., 2017) on the keypoint input of a skeleton network:
(x - x0) * mean over alpha of d logit / d x at x0 + alpha (x - x0), with `steps` midpoints of
the straight path. The baseline x0 is the clip's own motionless skeleton (every joint at its mean
position and confidence over the clip), so an attribution says how much a joint's movement at a
frame moved the class's score; completeness (sum of attributions = f(x) - f(x0)) is measured and
reported. Attributions are summed over persons and the (x, y, score) channels into one number per
(frame, joint) of the model's input layout; for PoseConv3D the heatmaps are drawn from the
keypoints inside the function, so its attributions are the keypoints' too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from strokevision_jax.models.mvit import MViT
from strokevision_jax.models.swin3d import Stage, SwinTransformer3d
from strokevision_jax.models.video_resnet import VideoResNet

GRAD_CAM_FAMILIES = (VideoResNet, SwinTransformer3d, MViT)


class AttributionError(ValueError):
    """A model or stage these methods do not cover; the message says which exist."""


# ----------------------------------------------------------------------------- where Grad-CAM reads

def stage_names(model) -> list[str]:
    """The stages of a video network whose output Grad-CAM can read, shallow to deep."""
    if isinstance(model, VideoResNet):
        return [f"layer{i + 1}" for i in range(model.num_stages)]
    if isinstance(model, SwinTransformer3d):
        return [f"stage{i + 1}" for i in range(sum(isinstance(layer, Stage) for layer in model.layers))]
    if isinstance(model, MViT):
        return [f"stage{i + 1}" for i in range(len(model.stage_ends))]
    raise AttributionError(f"Grad-CAM covers the video networks ({', '.join(c.__name__ for c in GRAD_CAM_FAMILIES)}), "
                           f"not {type(model).__name__}.")


def _stage_slot(model, stage: str) -> tuple[object, object]:
    """(container, attribute name or index) holding the module whose output is `stage`."""
    names = stage_names(model)
    if stage not in names:
        raise AttributionError(f"--layer={stage}: {type(model).__name__} has the stages {', '.join(names)}.")
    number = names.index(stage)
    if isinstance(model, VideoResNet):
        return model, stage
    if isinstance(model, SwinTransformer3d):
        positions = [i for i, layer in enumerate(model.layers) if isinstance(layer, Stage)]
        stage_module = model.layers[positions[number]]  # its output is its last block's
        return stage_module, len(stage_module) - 1
    return model.blocks, sorted(model.stage_ends)[number]


class _Tap:
    """Stands in for a module: calls it, adds `delta` to its output (the first element when it
    returns a tuple, as MViT's blocks return (tokens, thw)) and records the result."""

    def __init__(self, module, delta, record: dict):
        self.module, self.delta, self.record = module, delta, record

    def __call__(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        first, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        if self.delta is not None:
            first = first + self.delta.astype(first.dtype)
        self.record["activation"], self.record["rest"] = first, rest
        return first if rest is None else (first, *rest)


def _tapped_forward(graphdef, weights, stage: str, video, delta):
    """(logits, stage activation as (N, T', H', W', K), the token layout if any)."""
    model = nnx.merge(graphdef, *weights)
    record: dict = {}
    container, slot = _stage_slot(model, stage)
    if isinstance(slot, str):
        setattr(container, slot, _Tap(getattr(container, slot), delta, record))
    else:
        container[slot] = _Tap(container[slot], delta, record)
    logits = model(video, train=False).astype(jnp.float32)
    return logits, record["activation"], record["rest"]


def stage_output_shape(graphdef, weights, stage: str, video_shape) -> tuple[tuple[int, ...], tuple | None]:
    """(shape of the stage's output, its token layout (T', H', W') for MViT, else None)."""
    box: list = []

    def forward():
        _, activation, rest = _tapped_forward(graphdef, weights, stage, jnp.zeros(video_shape, jnp.float32), None)
        box.append(rest)
        return activation

    shape = jax.eval_shape(forward).shape
    rest = box[0]
    return tuple(shape), None if rest is None else tuple(int(v) for v in rest[0])


def _as_grid(activation, rest):
    """MViT's tokens (N, 1 + T'H'W', K) with the class token first -> (N, T', H', W', K)."""
    if rest is None:
        return activation
    t, h, w = rest[0]
    return activation[:, 1:].reshape(activation.shape[0], t, h, w, activation.shape[-1])


@functools.partial(jax.jit, static_argnames=("graphdef", "stage"))
def grad_cam(graphdef, weights, video: jax.Array, stage: str) -> dict[str, jax.Array]:
    """Grad-CAM of every class on `stage` of a video network.

    video: (N, T, H, W, 3), the model's normalised input. Returns 'logits' (N, C), 'maps'
    (C, N, T, H, W) in [0, 1] at the clip's size, 'coarse' (C, N, T', H', W') before upsampling
    and normalisation (>= 0), and 'weights' (C, N, K), the channel weights alpha."""
    shape, _ = stage_output_shape(graphdef, weights, stage, video.shape)
    zeros = jnp.zeros(shape, jnp.float32)
    logits, vjp, (activation, rest) = _vjp_with_aux(graphdef, weights, stage, video, zeros)
    classes = logits.shape[-1]
    cotangents = jnp.eye(classes, dtype=jnp.float32)[:, None, :] * jnp.ones_like(logits)[None]  # (C, N, C)
    (gradients,) = jax.vmap(vjp)(cotangents)  # (C, *activation.shape)
    grid = _as_grid(activation.astype(jnp.float32), rest)
    gradient_grid = jax.vmap(lambda g: _as_grid(g, rest))(gradients)
    alpha = jnp.mean(gradient_grid, axis=(2, 3, 4))  # (C, N, K)
    coarse = jax.nn.relu(jnp.einsum("cnk,nthwk->cnthw", alpha, grid))
    size = video.shape[1:4]
    fine = jax.image.resize(coarse, coarse.shape[:2] + size, method="linear")
    fine = jnp.maximum(fine, 0.0)
    maps = fine / jnp.maximum(jnp.max(fine, axis=(2, 3, 4), keepdims=True), 1e-12)
    return {"logits": logits, "maps": maps, "coarse": coarse, "weights": alpha}


def _vjp_with_aux(graphdef, weights, stage, video, zeros):
    """(logits, vjp of the logits with respect to the stage's output, (activation, token layout))."""
    rest_box: list = []

    def forward(delta):
        logits, activation, rest = _tapped_forward(graphdef, weights, stage, video, delta)
        rest_box.append(rest)
        return logits, activation

    logits, vjp, activation = jax.vjp(forward, zeros, has_aux=True)
    return logits, vjp, (activation, rest_box[0])


# ----------------------------------------------------------------------------- integrated gradients

def motionless_baseline(keypoints: jax.Array) -> jax.Array:
    """Every joint at its mean (x, y, score) over the clip: keypoints (..., T, V, C)."""
    return jnp.broadcast_to(jnp.mean(keypoints, axis=-3, keepdims=True), keypoints.shape)


@functools.partial(jax.jit, static_argnames=("graphdef", "adapt", "steps"))
def integrated_gradients(graphdef, weights, keypoints: jax.Array, adapt, steps: int = 32,
                         baseline: jax.Array | None = None) -> dict[str, jax.Array]:
    """Integrated gradients of every class's logit on a skeleton network's keypoint input.

    keypoints: (N, T, V, C) or (N, M, T, V, C), the model's input before `adapt` (the jitted
    part of the input pipeline, e.g. PoseConv3D's heatmaps). Returns 'logits' (N, C) at x,
    'baseline_logits' (N, C), 'attributions' (C, N, *keypoints.shape[1:]), 'maps' (C, N, T, V)
    (summed over persons and channels) and 'completeness_error' (C, N): sum of attributions
    minus (f(x) - f(x0))."""
    x0 = motionless_baseline(keypoints) if baseline is None else baseline
    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
    difference = keypoints - x0
    path = x0[None] + alphas.reshape((steps,) + (1,) * keypoints.ndim) * difference[None]  # (S, N, ...)
    batch = keypoints.shape[0]

    def logits_of(x):
        model = nnx.merge(graphdef, *weights)
        return model(adapt(x), train=False).astype(jnp.float32)

    flat = path.reshape((steps * batch,) + keypoints.shape[1:])
    path_logits, vjp = jax.vjp(logits_of, flat)
    classes = path_logits.shape[-1]
    cotangents = jnp.eye(classes, dtype=jnp.float32)[:, None, :] * jnp.ones_like(path_logits)[None]
    (gradients,) = jax.vmap(vjp)(cotangents)  # (C, S*N, ...)
    mean_gradient = gradients.reshape((classes, steps, batch) + keypoints.shape[1:]).mean(axis=1)
    attributions = mean_gradient * difference[None]
    ends = logits_of(jnp.concatenate([keypoints, x0]))
    logits, baseline_logits = ends[:batch], ends[batch:]
    sums = attributions.reshape(classes, batch, -1).sum(-1)
    completeness = sums - (logits - baseline_logits).T
    # (C, N, ..., T, V, channels) -> (C, N, T, V): over persons and channels
    maps = attributions.sum(axis=-1)
    if maps.ndim == 5:
        maps = maps.sum(axis=2)
    return {"logits": logits, "baseline_logits": baseline_logits, "attributions": attributions,
            "maps": maps, "completeness_error": completeness}
