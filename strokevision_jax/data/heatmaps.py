"""Pseudo-heatmap volumes for PoseConv3D, in JAX: pyskl's `GeneratePoseTarget`, on the device.

pyskl (`pyskl/datasets/pipelines/heatmap_related.py`) loops over frames, then keypoints (or
limbs), then persons, and for each draws a Gaussian into a window of the (H, W) map with
`np.maximum`. Here every loop is an array axis: the Gaussian of every (person, frame, channel)
is evaluated on the whole pixel grid at once, laid out `(..., M, T, H, W, K)`, set to exactly 0
outside pyskl's window, and the maximum over persons M is taken (a map starts at 0, so the
running `np.maximum` is a max over persons clipped at 0). Upstream details kept:
- the window is pyskl's truncated 3-sigma box: columns `max(int(x - 3 sigma), 0)` to
  `min(int(x + 3 sigma) + 1, W)` (exclusive), the same for rows; `int` truncates towards
  zero, so a point up to 3 sigma + 1 px left of the frame still lights column 0;
- a keypoint (limb: the smaller of its two scores) below `EPS` = 1e-3 draws nothing; with
  `use_score=False` every score is 1, so nothing is skipped and every peak is 1;
- limbs: distance to the segment (to the nearer end where the projection falls outside), in
  the bounding box of both ends widened by 3 sigma; a limb shorter than 1 px (squared length
  < 1) draws its start keypoint instead, peak the start's score;
- `scaling` multiplies the image size (`int(size * scaling + 0.5)`) and the coordinates.
Not covered: `double=True` (flipped copies); flip the keypoints and call again instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-3  # pyskl's score threshold

# GeneratePoseTarget's default `skeletons`: the COCO-17 limbs, as (start, end) keypoints.
COCO17_LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (5, 7), (7, 9), (0, 6), (6, 8), (8, 10),
    (5, 11), (11, 13), (13, 15), (6, 12), (12, 14), (14, 16), (11, 12),
)


def _grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Pixel rows (H, 1, 1) and columns (W, 1), broadcasting against (..., H, W, K)."""
    rows = jnp.arange(height, dtype=jnp.float32)[:, None, None]
    cols = jnp.arange(width, dtype=jnp.float32)[:, None]
    return rows, cols


def _in_window(pixels: jax.Array, low: jax.Array, high: jax.Array, sigma: float) -> jax.Array:
    """pyskl's window [max(int(low - 3s), 0), min(int(high + 3s) + 1, size)): the clamps are
    the grid's own bounds, so only the truncated ends remain."""
    return (pixels >= jnp.trunc(low - 3 * sigma)) & (pixels <= jnp.trunc(high + 3 * sigma))


def _gaussian(d2: jax.Array, sigma: float) -> jax.Array:
    return jnp.exp(-d2 / 2 / sigma**2)  # the operation order of pyskl's float32 expression


def _keypoint_maps(xy: jax.Array, peak: jax.Array, height: int, width: int,
                   sigma: float) -> jax.Array:
    """xy (..., K, 2), peak (..., K) -> (..., H, W, K): one Gaussian per channel, 0 outside
    its window or when the peak is below EPS."""
    rows, cols = _grid(height, width)
    x, y = xy[..., None, None, :, 0], xy[..., None, None, :, 1]  # (..., 1, 1, K)
    peak = peak[..., None, None, :]
    d2 = (cols - x) ** 2 + (rows - y) ** 2
    drawn = _in_window(cols, x, x, sigma) & _in_window(rows, y, y, sigma) & (peak >= EPS)
    return jnp.where(drawn, _gaussian(d2, sigma) * peak, 0.0)


def _limb_maps(start: jax.Array, end: jax.Array, start_peak: jax.Array, end_peak: jax.Array,
               height: int, width: int, sigma: float) -> jax.Array:
    """start / end (..., L, 2), their peaks (..., L) -> (..., H, W, L): a Gaussian of the
    distance to each segment, 0 outside the widened bounding box or below EPS."""
    rows, cols = _grid(height, width)
    sx, sy = start[..., None, None, :, 0], start[..., None, None, :, 1]  # (..., 1, 1, L)
    ex, ey = end[..., None, None, :, 0], end[..., None, None, :, 1]
    start_peak, end_peak = start_peak[..., None, None, :], end_peak[..., None, None, :]
    peak = jnp.minimum(start_peak, end_peak)
    in_box = (_in_window(cols, jnp.minimum(sx, ex), jnp.maximum(sx, ex), sigma)
              & _in_window(rows, jnp.minimum(sy, ey), jnp.maximum(sy, ey), sigma))
    d2_start = (cols - sx) ** 2 + (rows - sy) ** 2
    d2_end = (cols - ex) ** 2 + (rows - ey) ** 2
    d2_ab = (sx - ex) ** 2 + (sy - ey) ** 2
    short = d2_ab < 1
    # Position of the pixel's projection along the segment (0 at start, 1 at end).
    coeff = (d2_start - d2_end + d2_ab) / 2.0 / jnp.where(short, 1.0, d2_ab)
    d2_line = (cols - (sx + coeff * (ex - sx))) ** 2 + (rows - (sy + coeff * (ey - sy))) ** 2
    d2_segment = jnp.where(coeff <= 0, d2_start, jnp.where(coeff >= 1, d2_end, d2_line))
    limb = jnp.where(in_box & ~short, _gaussian(d2_segment, sigma) * peak, 0.0)
    # A limb under 1 px: its start keypoint, in the keypoint's own (smaller) window.
    point_window = _in_window(cols, sx, sx, sigma) & _in_window(rows, sy, sy, sigma)
    point = jnp.where(point_window & short, _gaussian(d2_start, sigma) * start_peak, 0.0)
    return jnp.where(peak >= EPS, limb + point, 0.0)  # limb and point never overlap


def generate_pose_target(
    keypoints: jax.Array,
    scores: jax.Array | None = None,
    *,
    image_size: tuple[int, int],
    sigma: float = 0.6,
    use_score: bool = True,
    mode: Literal["keypoint", "limb"] = "keypoint",
    skeletons: Sequence[tuple[int, int]] = COCO17_LIMBS,
    scaling: float = 1.0,
) -> jax.Array:
    """Heatmap volume of GeneratePoseTarget(sigma, use_score, with_kp=mode == "keypoint",
    with_limb=mode == "limb", skeletons, scaling), channels-last.

    keypoints: (..., M, T, V, 2) pixel (x, y) of M persons; scores: (..., M, T, V) (None:
    all 1, as upstream without `keypoint_score`); image_size: (H, W), static. Returns
    (..., T, H', W', K) float32 with (H', W') = image_size scaled as upstream and K = V
    ("keypoint") or len(skeletons) ("limb"); upstream's layout is (T, K, H, W) per sample.
    Jittable with `image_size`, `sigma`, `use_score`, `mode`, `skeletons` and `scaling` static.
    """
    keypoints = jnp.asarray(keypoints, jnp.float32)
    if keypoints.ndim < 4 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (..., M, T, V, 2) pixel (x, y); got shape "
                         f"{keypoints.shape}.")
    if scores is None or not use_score:
        scores = jnp.ones(keypoints.shape[:-1], jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    if scores.shape != keypoints.shape[:-1]:
        raise ValueError(f"scores must be (..., M, T, V) = {keypoints.shape[:-1]}; got "
                         f"{scores.shape}.")
    if mode not in ("keypoint", "limb"):
        raise ValueError(f"mode must be 'keypoint' or 'limb', got {mode!r}.")
    height, width = (int(size * scaling + 0.5) for size in image_size)
    if scaling != 1.0:
        keypoints = keypoints * scaling
    if mode == "keypoint":
        maps = _keypoint_maps(keypoints, scores, height, width, sigma)
    else:
        limbs = _limb_indices(skeletons, keypoints.shape[-2])
        maps = _limb_maps(keypoints[..., limbs[:, 0], :], keypoints[..., limbs[:, 1], :],
                          scores[..., limbs[:, 0]], scores[..., limbs[:, 1]], height, width, sigma)
    # (..., M, T, H, W, K) -> (..., T, H, W, K): persons combine by maximum, floor 0.
    return jnp.max(maps, axis=-5)


def _limb_indices(skeletons: Sequence[tuple[int, int]], num_joints: int) -> np.ndarray:
    limbs = [tuple(limb) for limb in skeletons]
    bad = [limb for limb in limbs if len(limb) != 2 or not all(0 <= j < num_joints for j in limb)]
    if not limbs or bad:
        raise ValueError(f"skeletons must be (start, end) pairs of joints 0..{num_joints - 1}; "
                         f"got {'nothing' if not limbs else bad}.")
    return np.asarray(limbs, np.int64)
