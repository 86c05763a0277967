"""Crop boxes and resampling of stored frames, for the video pipeline.

The stored frame is conceptually resized to `VideoConfig.resize` and a `crop` is cut from it
(random position in training, optionally a random scale, the centre in evaluation). The crop box
is mapped back to stored-frame coordinates and only that box is resampled, so the full-frame
resize is never computed. The result equals resize-then-crop for the 'bilinear' method. What is
resized is the whole frame, or a person-centred region (`person_region`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from strokevision_jax.data.pipeline import VideoConfig


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A box in stored-frame pixels (edges, not centres): rows [top, top + height), cols [left, left + width)."""

    top: float
    left: float
    height: float
    width: float


# COCO-17 joints that outline the working upper body: nose, shoulders, elbows, wrists.
_REGION_JOINTS = np.array([0, 5, 6, 7, 8, 9, 10])
_REGION_MIN_SCORE = 0.3


def person_region(keypoints: np.ndarray, scores: np.ndarray, stored_hw: tuple[int, int],
                  aspect_hw: tuple[int, int], margin: float) -> CropBox:
    """The person-centred box of a clip, in stored-frame pixels.

    keypoints (T, 17, 2) pixels and scores (T, 17): the box spans the confident (score >= 0.3)
    nose, shoulder, elbow and wrist positions of all frames, grows by `margin` times its size on
    each side, then along one axis to the aspect ratio of `aspect_hw`, and is shifted (never
    shrunk) to lie inside the frame. A clip without confident joints, or whose box would not fit,
    gets the whole frame.
    """
    height, width = stored_hw
    whole = CropBox(0.0, 0.0, float(height), float(width))
    joints = np.asarray(keypoints, np.float32)[:, _REGION_JOINTS]
    confident = np.asarray(scores, np.float32)[:, _REGION_JOINTS] >= _REGION_MIN_SCORE
    points = joints[confident & np.isfinite(joints).all(-1)]
    if len(points) < 2:
        return whole
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    box_w, box_h = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    ratio = aspect_hw[1] / aspect_hw[0]  # width / height
    box_w, box_h = max(box_w, box_h * ratio, 1.0), max(box_h, box_w / ratio, 1.0)
    if box_w > width or box_h > height:
        return whole
    left = float(np.clip((x0 + x1 - box_w) / 2, 0.0, width - box_w))
    top = float(np.clip((y0 + y1 - box_h) / 2, 0.0, height - box_h))
    return CropBox(top, left, float(box_h), float(box_w))


def crop_box(stored_hw: tuple[int, int], config: VideoConfig, rng: np.random.Generator | None,
             region: CropBox | None = None) -> CropBox:
    """Picks the crop in resized-frame pixels (integer offsets) and maps it to stored-frame pixels.

    `region` (stored-frame pixels, default the whole frame) is what is resized to `config.resize`.
    """
    region = region or CropBox(0.0, 0.0, float(stored_hw[0]), float(stored_hw[1]))
    resized_h, resized_w = config.resize
    crop_h, crop_w = config.crop
    if rng is None:
        box_h, box_w = float(crop_h), float(crop_w)
        # torchvision's CenterCrop rounding.
        top, left = round((resized_h - crop_h) / 2), round((resized_w - crop_w) / 2)
    else:
        scale = rng.uniform(*config.scale_jitter) if config.scale_jitter != (1.0, 1.0) else 1.0
        box_h, box_w = min(resized_h, crop_h * scale), min(resized_w, crop_w * scale)
        top = rng.integers(0, math.floor(resized_h - box_h) + 1)
        left = rng.integers(0, math.floor(resized_w - box_w) + 1)
    scale_y, scale_x = region.height / resized_h, region.width / resized_w
    return CropBox(region.top + top * scale_y, region.left + left * scale_x, box_h * scale_y, box_w * scale_x)


def _box_is_plain_slice(box: CropBox, out_hw: tuple[int, int]) -> bool:
    values = (box.top, box.left, box.height, box.width)
    return all(float(v).is_integer() for v in values) and (box.height, box.width) == tuple(map(float, out_hw))


def _bilinear_taps(start: float, size: float, out_size: int, limit: int):
    """For each output pixel: the two source pixels and the weight of the second (half-pixel centres)."""
    position = start + (np.arange(out_size) + 0.5) * (size / out_size) - 0.5
    position = np.clip(position, 0.0, limit - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, limit - 1)
    return low, high, (position - low).astype(np.float32)


def _channel_lanes(columns: np.ndarray, channels: int) -> np.ndarray:
    """Column indices -> indices into a (..., W * C) row: numpy loops over an innermost axis of 3 slowly."""
    return (columns[:, None] * channels + np.arange(channels)).ravel()


def resample_bilinear(frames: np.ndarray, box: CropBox, out_hw: tuple[int, int], flip: bool = False) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, h, w, C) float32 in [0, 255]: the box resampled to out_hw, all frames at once.

    flip mirrors the output horizontally by reversing the column taps (free, unlike a strided copy).
    """
    frames_count, height, width, channels = frames.shape
    row_lo, row_hi, row_frac = _bilinear_taps(box.top, box.height, out_hw[0], height)
    col_lo, col_hi, col_frac = _bilinear_taps(box.left, box.width, out_hw[1], width)
    if flip:
        col_lo, col_hi, col_frac = col_lo[::-1], col_hi[::-1], col_frac[::-1]
    row0, row1 = row_lo[0], row_hi[-1] + 1
    col0, col1 = min(col_lo[0], col_lo[-1]), max(col_hi[0], col_hi[-1]) + 1
    window = frames[:, row0:row1, col0:col1].astype(np.float32)
    window = window.reshape(frames_count, row1 - row0, (col1 - col0) * channels)
    left = np.take(window, _channel_lanes(col_lo - col0, channels), axis=2)  # (T, rows, w * C)
    right = np.take(window, _channel_lanes(col_hi - col0, channels), axis=2)
    right -= left
    right *= np.repeat(col_frac, channels)
    left += right
    top = np.take(left, row_lo - row0, axis=1)  # (T, h, w * C)
    bottom = np.take(left, row_hi - row0, axis=1)
    bottom -= top
    bottom *= row_frac[:, None]
    top += bottom
    return top.reshape(frames_count, out_hw[0], out_hw[1], channels)


def resample_pil(frames: np.ndarray, box: CropBox, out_hw: tuple[int, int]) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, h, w, C) uint8: PIL's antialiased bilinear resize of the box, per frame."""
    height, width = frames.shape[1:3]
    # PIL rejects a box that overshoots the image by a rounding error of the stored/resized scale.
    pil_box = (box.left, box.top, min(width, box.left + box.width), min(height, box.top + box.height))
    size = (out_hw[1], out_hw[0])
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR, box=pil_box)) for frame in frames]
    )


def mirror_columns(clip: np.ndarray) -> np.ndarray:
    """(T, h, w, C) contiguous -> a mirrored copy along w.

    Each pixel is moved as one opaque C * itemsize-byte item; numpy's strided per-channel copy
    (`clip[:, :, ::-1].copy()`) is about twice as slow.
    """
    pixel = np.dtype((np.void, clip.shape[-1] * clip.itemsize))
    pixels = np.ascontiguousarray(clip).view(pixel)[..., 0]  # (T, h, w)
    return np.ascontiguousarray(pixels[:, :, ::-1]).view(clip.dtype).reshape(clip.shape)


def crop_and_resize(
    frames: np.ndarray, box: CropBox, out_hw: tuple[int, int], method: str, flip: bool = False
) -> np.ndarray:
    """(T, H, W, C) uint8 -> new contiguous (T, h, w, C): uint8 for a plain slice or 'pil', float32 for 'bilinear'."""
    if _box_is_plain_slice(box, out_hw):
        top, left = int(box.top), int(box.left)
        clip = np.ascontiguousarray(frames[:, top : top + out_hw[0], left : left + out_hw[1]])
    elif method == "pil":
        clip = resample_pil(frames, box, out_hw)
    else:
        return resample_bilinear(frames, box, out_hw, flip)
    return mirror_columns(clip) if flip else clip
