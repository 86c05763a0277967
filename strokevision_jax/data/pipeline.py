"""grain input pipelines: one epoch of batches from a random-access source of StrokeVision records.

A record is the dict the simulator yields and the TFDS source returns (the builder's features): uint8
'video' (T0, H0, W0, 3), COCO-17 pixel 'keypoints' (T0, 17, 2), 'keypoint_scores' (T0, 17),
'label', plus strings and simulator ground truth that the batches do not carry.

    source = strokevision_jax.data.dataset.load_source("synthetic", "train", data_dir)
    transform = video_transform(VideoConfig(), train=True)  # 16 x 112 x 112, torchvision's
    for epoch in range(num_epochs):
        for batch in make_loader(source, transform, batch_size=16, train=True, seed=0, epoch=epoch):
            batch["video"]  # (16, 16, 112, 112, 3) float32, normalised
            batch["label"], batch["index"], batch["mask"]  # (16,) int32, int32, bool

Temporal sampling (`sample_frame_indices`), for a clip of L stored frames and T output frames:
  'uniform' (default): frames evenly spaced over the whole clip, stride L / T (fractional), frame
      k = floor(offset + k * L / T). Training draws offset ~ U[0, L / T) once per clip (a random
      shift of the whole window, frames stay evenly spaced); evaluation uses offset = L / (2T)
      (each frame at the centre of its segment). The window always covers the clip; for T > L
      frames repeat.
  'strided': T frames `frame_stride` apart (torchvision's clip sampling); training picks a random
      start, evaluation centres the window; a window longer than the clip repeats edge frames.

Spatial (video): the stored frame is conceptually resized to `resize` and a `crop` is cut from it
(random position in training, optionally a random scale, the centre in evaluation). The crop box
is mapped back to stored-frame coordinates and only that box is resampled, so the full-frame
resize is never computed. The result equals resize-then-crop for the 'bilinear' method.

Randomness: every random choice for a record comes from np.random.default_rng([seed, epoch,
record_index]), so batches depend only on (seed, epoch) and not on the worker count, and a
resumed run at epoch e reproduces epoch e exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import grain
import ml_dtypes
import numpy as np
from absl import flags
from PIL import Image

from strokevision_jax.data import keypoints as kp

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_SAMPLING_RULES = ("uniform", "strided")
_RESIZE_METHODS = ("bilinear", "pil")
_REGIONS = ("frame", "person")
_NORMALIZATIONS = ("screen", "centre", "compact", "none")


def _check_choice(owner: str, field: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field}={value!r} is not supported; choose one of {choices}.")


def _check_pair(owner: str, field: str, value: tuple[int, int]) -> None:
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{owner}.{field}={value!r} must be a (height, width) pair of positive ints.")


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """How a stored clip becomes the (T, h, w, 3) model input.

    resize: (h, w) the stored frame is (conceptually) resized to before cropping.
    crop: (h, w) of the output; random crop in training, centre crop in evaluation.
    scale_jitter: training only; the crop box side is `crop * s` (in resized-frame pixels) with
        s ~ U[lo, hi], clipped to the resized frame, then resampled to `crop`. (1, 1) = plain crop.
    flip: training only; mirror the clip with probability 0.5.
    resize_method: 'bilinear' (vectorised numpy over all T frames, half-pixel centres and no
        antialiasing, like torchvision's video presets) or 'pil' (per frame, antialiased).
    region: what `resize` applies to. 'frame': the whole stored frame (torchvision's transforms).
        'person': a person-centred box from the clip's keypoints (see `person_region`): the box
        around the subject's head, shoulders, elbows and wrists over all frames, grown by
        `region_margin` of its size on each side and to the aspect ratio of `resize`. It
        normalises the patient's distance to the camera and spends the pixels on the arms and
        the box instead of the room, as person-centred crops do in skeleton-aided video models.
    """

    num_frames: int = 16
    resize: tuple[int, int] = (128, 171)
    crop: tuple[int, int] = (112, 112)
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    flip: bool = True
    scale_jitter: tuple[float, float] = (1.0, 1.0)
    dtype: str = "float32"
    sampling: str = "uniform"
    frame_stride: int = 1
    resize_method: str = "bilinear"
    region: str = "frame"
    region_margin: float = 0.2

    def __post_init__(self):
        if self.num_frames <= 0:
            raise ValueError(f"VideoConfig.num_frames={self.num_frames} must be positive.")
        _check_choice("VideoConfig", "region", self.region, _REGIONS)
        if self.region_margin < 0:
            raise ValueError(f"VideoConfig.region_margin={self.region_margin} must be >= 0.")
        _check_pair("VideoConfig", "resize", self.resize)
        _check_pair("VideoConfig", "crop", self.crop)
        if self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]:
            raise ValueError(f"VideoConfig.crop={self.crop} is larger than resize={self.resize}.")
        if not 0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            raise ValueError(f"VideoConfig.scale_jitter={self.scale_jitter} must be (lo, hi) with 0 < lo <= hi.")
        if self.frame_stride <= 0:
            raise ValueError(f"VideoConfig.frame_stride={self.frame_stride} must be positive.")
        _check_choice("VideoConfig", "dtype", self.dtype, tuple(_DTYPES))
        _check_choice("VideoConfig", "sampling", self.sampling, _SAMPLING_RULES)
        _check_choice("VideoConfig", "resize_method", self.resize_method, _RESIZE_METHODS)


@dataclasses.dataclass(frozen=True)
class SkeletonConfig:
    """How stored COCO-17 pixel keypoints become the (T, J, 3) = (x, y, score) model input.

    layout: 'coco' (stored order) or 'h36m' (MotionBERT, via `keypoints.coco_to_h36m`).
    normalization:
        'screen'  MotionBERT: x in [-1, 1], y scaled by the same factor;
        'centre'  pyskl's PreNormalize2D (MS-G3D): x and y each to [-1, 1] over the frame;
        'compact' PoseConv3D's pipeline: pixels of a `compact_size` (training) or
                  `compact_eval_size` (evaluation) frame around the person: pyskl's PoseCompact
                  (the box of all non-zero keypoints of the clip, grown by `compact_padding`,
                  made square, allowed past the image border), then in training a random crop
                  of a fraction `compact_area` of it with aspect ratio in [3/4, 4/3]
                  (RandomResizedCrop), each resized to its output size;
        'none'    pixels of the stored frame.
    flip: training only; with probability 0.5 mirror x (x -> W - 1 - x) and swap left/right joints.
    num_persons: None -> (T, J, 3); M -> (M, T, J, 3), person 0 is the subject, the rest zeros.
    frame_size: (H, W) of the stored frames; None reads it from record['video'].shape. Set it when
        the source skips decoding the video.
    """

    num_frames: int = 30
    layout: str = "h36m"
    normalization: str = "screen"
    flip: bool = True
    num_persons: int | None = None
    sampling: str = "uniform"
    frame_stride: int = 1
    frame_size: tuple[int, int] | None = None
    compact_size: tuple[int, int] = (56, 56)
    compact_eval_size: tuple[int, int] = (64, 64)
    compact_padding: float = 0.25
    compact_area: tuple[float, float] = (0.56, 1.0)

    def __post_init__(self):
        if self.num_frames <= 0:
            raise ValueError(f"SkeletonConfig.num_frames={self.num_frames} must be positive.")
        _check_choice("SkeletonConfig", "layout", self.layout, ("coco", "h36m"))
        _check_choice("SkeletonConfig", "normalization", self.normalization, _NORMALIZATIONS)
        _check_pair("SkeletonConfig", "compact_size", self.compact_size)
        _check_pair("SkeletonConfig", "compact_eval_size", self.compact_eval_size)
        if not 0 < self.compact_area[0] <= self.compact_area[1] <= 1:
            raise ValueError(f"SkeletonConfig.compact_area={self.compact_area} must be (lo, hi) "
                             "with 0 < lo <= hi <= 1.")
        _check_choice("SkeletonConfig", "sampling", self.sampling, _SAMPLING_RULES)
        if self.num_persons is not None and self.num_persons <= 0:
            raise ValueError(f"SkeletonConfig.num_persons={self.num_persons} must be None or positive.")
        if self.frame_stride <= 0:
            raise ValueError(f"SkeletonConfig.frame_stride={self.frame_stride} must be positive.")
        if self.frame_size is not None:
            _check_pair("SkeletonConfig", "frame_size", self.frame_size)


# ----------------------------------------------------------------------------------------------
# Temporal sampling


def sample_frame_indices(
    clip_length: int,
    num_frames: int,
    rng: np.random.Generator | None,
    *,
    sampling: str = "uniform",
    frame_stride: int = 1,
) -> np.ndarray:
    """(num_frames,) int indices into a clip of `clip_length` frames; rng None = evaluation (centred)."""
    if clip_length <= 0:
        raise ValueError(f"Cannot sample frames from an empty clip (clip_length={clip_length}).")
    if sampling == "uniform":
        step = clip_length / num_frames
        offset = step / 2 if rng is None else rng.uniform(0.0, step)
        indices = np.floor(offset + step * np.arange(num_frames)).astype(np.int64)
    elif sampling == "strided":
        span = (num_frames - 1) * frame_stride + 1
        slack = clip_length - span
        start = rng.integers(0, slack + 1) if (rng is not None and slack > 0) else slack // 2
        indices = start + frame_stride * np.arange(num_frames)
    else:
        raise ValueError(f"Unknown temporal sampling rule {sampling!r}; choose one of {_SAMPLING_RULES}.")
    return np.clip(indices, 0, clip_length - 1)


# ----------------------------------------------------------------------------------------------
# Spatial: crop box and resampling


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


# ----------------------------------------------------------------------------------------------
# Per-record transforms


class RecordTransform(Protocol):
    """What make_loader applies to each record: (record, rng) -> dict of numpy arrays with 'label'."""

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]: ...


def _label(record: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(record["label"], dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class VideoTransform:
    """record -> {'video': (T, h, w, 3) normalised, 'label': int32}."""

    config: VideoConfig
    train: bool

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        config = self.config
        rng = rng if self.train else None
        stored = np.asarray(record["video"])
        if stored.ndim != 4 or stored.shape[-1] != 3:
            raise ValueError(f"record['video'] must be (T, H, W, 3) uint8, got shape {stored.shape}.")
        frame_indices = sample_frame_indices(
            stored.shape[0], config.num_frames, rng, sampling=config.sampling, frame_stride=config.frame_stride
        )
        region = None
        if config.region == "person":
            region = person_region(record["keypoints"], record["keypoint_scores"], stored.shape[1:3],
                                   config.resize, config.region_margin)
        box = crop_box(stored.shape[1:3], config, rng, region)
        flip = rng is not None and config.flip and rng.random() < 0.5
        clip = crop_and_resize(stored[frame_indices], box, config.crop, config.resize_method, flip)
        return {"video": self._normalize(clip), "label": _label(record)}

    def _normalize(self, clip: np.ndarray) -> np.ndarray:
        """(x / 255 - mean) / std as one multiply-add per element, then the output dtype.

        clip: a fresh contiguous (T, h, w, 3) array (uint8, or float32 that may be overwritten).
        """
        frames_count, height, width, channels = clip.shape
        std = np.asarray(self.config.std, np.float32)
        # Per-channel constants tiled along (w * 3) rows: numpy is slow on an innermost axis of 3.
        scale = np.tile(1.0 / (255.0 * std), width)
        shift = np.tile(-np.asarray(self.config.mean, np.float32) / std, width)
        rows = clip.reshape(frames_count, height, width * channels)
        if rows.dtype == np.float32:
            rows *= scale
        else:
            rows = np.multiply(rows, scale, dtype=np.float32)
        rows += shift
        return rows.reshape(clip.shape).astype(_DTYPES[self.config.dtype], copy=False)


@dataclasses.dataclass(frozen=True)
class SkeletonTransform:
    """record -> {'keypoints': (T, J, 3) or (M, T, J, 3) float32 (x, y, score), 'label': int32}."""

    config: SkeletonConfig
    train: bool

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        config = self.config
        rng = rng if self.train else None
        coords = np.asarray(record["keypoints"], np.float32)  # (T0, 17, 2) pixels
        scores = np.asarray(record["keypoint_scores"], np.float32)  # (T0, 17)
        if coords.ndim != 3 or coords.shape[1:] != (17, 2) or scores.shape != coords.shape[:2]:
            raise ValueError(
                "record['keypoints'] must be (T, 17, 2) and record['keypoint_scores'] (T, 17), got "
                f"{coords.shape} and {scores.shape}."
            )
        height, width = self._frame_size(record)
        frame_indices = sample_frame_indices(
            coords.shape[0], config.num_frames, rng, sampling=config.sampling, frame_stride=config.frame_stride
        )
        joints = np.concatenate([coords[frame_indices], scores[frame_indices, :, None]], axis=-1)  # (T, 17, 3)
        flip = rng is not None and config.flip and rng.random() < 0.5
        if config.normalization == "compact":  # pyskl flips after the crop, non-zero x only
            joints = compact_keypoints(joints, config, rng)
            if flip:
                joints = flip_compact(joints, config.compact_size[1])
        elif flip:
            joints = kp.flip_keypoints(joints, width, kp.COCO17_FLIP_INDEX)
        if config.layout == "h36m":
            joints = kp.coco_to_h36m(joints)
        if config.normalization == "screen":
            joints = kp.normalize_screen(joints, width, height)
        elif config.normalization == "centre":
            joints = kp.normalize_centre(joints, width, height)
        if config.num_persons is not None:
            persons = np.zeros((config.num_persons, *joints.shape), np.float32)
            persons[0] = joints
            joints = persons
        return {"keypoints": joints.astype(np.float32, copy=False), "label": _label(record)}

    def _frame_size(self, record: Mapping[str, Any]) -> tuple[int, int]:
        if self.config.frame_size is not None:
            return self.config.frame_size
        if "video" not in record:
            raise ValueError(
                "SkeletonTransform needs the stored frame size to flip and normalise keypoints: the record "
                "has no 'video'; set SkeletonConfig.frame_size=(height, width)."
            )
        height, width = np.shape(record["video"])[1:3]
        return int(height), int(width)


_COMPACT_MIN_EXTENT = 10.0  # pyskl's PoseCompact threshold (pixels): a smaller box is left alone
_CROP_ASPECT = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range


def compact_box(xy: np.ndarray, padding: float) -> tuple[float, float, float, float] | None:
    """pyskl's PoseCompact(padding, threshold=10, hw_ratio=1, allow_imgpad=True) on (..., 2)
    pixel keypoints: (left, top, width, height) of the square box around every non-zero
    coordinate, grown by `padding`, with integer edges; None when the keypoints span less than
    10 px (upstream then keeps the whole frame)."""
    x, y = xy[..., 0], xy[..., 1]
    x, y = x[x != 0], y[y != 0]
    if x.size == 0 or y.size == 0:
        return None
    (x0, x1), (y0, y1) = (x.min(), x.max()), (y.min(), y.max())
    if x1 - x0 < _COMPACT_MIN_EXTENT or y1 - y0 < _COMPACT_MIN_EXTENT:
        return None
    half = max(x1 - x0, y1 - y0) / 2 * (1 + padding)  # hw_ratio 1: a square
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top, right, bottom = int(cx - half), int(cy - half), int(cx + half), int(cy + half)
    return float(left), float(top), float(right - left), float(bottom - top)


def compact_keypoints(joints: np.ndarray, config: SkeletonConfig, rng: np.random.Generator | None) -> np.ndarray:
    """(T, J, 3) stored-frame pixels -> pixels of the compact frame (see SkeletonConfig)."""
    out = joints.astype(np.float32, copy=True)
    out_h, out_w = config.compact_size if rng is not None else config.compact_eval_size
    box = compact_box(joints[..., :2], config.compact_padding)
    if box is None:
        return out  # as upstream: too small a person to compact, nothing moves
    left, top, width, height = box
    if rng is not None:  # RandomResizedCrop of the compact box, area and aspect jittered
        area = rng.uniform(*config.compact_area)
        aspect = math.exp(rng.uniform(math.log(_CROP_ASPECT[0]), math.log(_CROP_ASPECT[1])))
        crop_w = min(1.0, math.sqrt(area * aspect)) * width
        crop_h = min(1.0, math.sqrt(area / aspect)) * height
        left += rng.uniform(0.0, width - crop_w)
        top += rng.uniform(0.0, height - crop_h)
        width, height = crop_w, crop_h
    present = joints[..., :2] != 0  # upstream moves only non-zero coordinates
    shifted = joints[..., :2] - np.array([left, top], np.float32)
    scaled = shifted * np.array([out_w / width, out_h / height], np.float32)
    out[..., :2] = np.where(present, scaled, 0.0)
    return out


def flip_compact(joints: np.ndarray, width: int) -> np.ndarray:
    """pyskl's Flip on compact-frame keypoints: x -> width - x where x is non-zero, left and
    right COCO joints swapped."""
    flipped = joints[:, list(kp.COCO17_FLIP_INDEX)].copy()
    x = flipped[..., 0]
    flipped[..., 0] = np.where(x != 0, width - x, 0.0)
    return flipped


def video_transform(config: VideoConfig, train: bool) -> VideoTransform:
    return VideoTransform(config, train)


def skeleton_transform(config: SkeletonConfig, train: bool) -> SkeletonTransform:
    return SkeletonTransform(config, train)


# ----------------------------------------------------------------------------------------------
# Loader


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Asks glibc to keep freed blocks up to `mmap_threshold` bytes in the heap instead of the OS.

    By default glibc serves blocks >= 128 KiB (every clip here) with fresh mmaps and unmaps them on
    free, so each clip pays a page fault per 4 KiB touched; on VMs with slow page faults that costs
    several times the arithmetic (16x112x112 bilinear crop on this project's 2-core VM: 13 ms -> 3 ms).
    Called in grain worker processes; call it once in the main process when num_workers=0.
    Returns False where there is no glibc mallopt (other platforms): nothing changes there.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    retain_freed_memory()


_PADDING_INDEX = -1


def fold_seed(seed: int, epoch: int) -> int:
    """One 32-bit shuffle seed per (seed, epoch); unlike seed + epoch, (0, 1) and (1, 0) differ."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _padding_index(_: int) -> int:
    return _PADDING_INDEX


@dataclasses.dataclass(frozen=True)
class _ReadExample:
    """Record index -> transformed example with 'index' and 'mask'; index -1 -> a masked zero example."""

    source: Any
    transform: RecordTransform
    seed: int
    epoch: int
    template_index: int = 0  # record whose transformed shapes the padding copies

    def __call__(self, record_index: int) -> dict[str, np.ndarray]:
        record_index = int(record_index)
        if record_index == _PADDING_INDEX:
            example = self._example(self.template_index)
            example = {key: np.zeros_like(value) for key, value in example.items()}
            example["index"] = np.int32(_PADDING_INDEX)
            return example
        return self._example(record_index)

    def _example(self, record_index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, record_index])
        example = dict(self.transform(self.source[record_index], rng))
        example["index"] = np.int32(record_index)
        example["mask"] = np.True_
        return example


def _shard_of_epoch(
    num_records: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    shard_index: int,
    shard_count: int,
    batch_size: int,
    drop_remainder: bool,
) -> grain.MapDataset:
    """This shard's record indices for the epoch, padded with -1 so every shard has equal length.

    Training shuffles all records with the same seed on every process, then shard k takes positions
    k, k + S, ...: shards are disjoint and together cover the epoch. With drop_remainder every shard
    keeps num_records // S records (the batcher then drops partial batches); otherwise each shard is
    padded to ceil(ceil(num_records / S) / batch_size) full batches, so all processes run the same
    number of steps.
    """
    indices = grain.MapDataset.range(num_records)
    if train:
        indices = indices.shuffle(seed=fold_seed(seed, epoch))
    if drop_remainder:
        per_shard = num_records // shard_count
        return indices[shard_index : per_shard * shard_count : shard_count]
    indices = indices[shard_index::shard_count]
    batches_per_shard = math.ceil(math.ceil(num_records / shard_count) / batch_size)
    num_padding = batches_per_shard * batch_size - len(indices)
    if num_padding == 0:
        return indices
    padding = grain.MapDataset.range(num_padding).map(_padding_index)
    return grain.MapDataset.concatenate([indices, padding])


class EpochLoader:
    """One epoch of batches; iterate it (more than once gives the same batches) or ask its len()."""

    def __init__(self, dataset: grain.IterDataset, num_batches: int):
        self.dataset = dataset
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        iterator = iter(self.dataset)
        try:
            yield from iterator
        finally:
            # Stops grain's worker processes now instead of at garbage collection.
            iterator.close()


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; a program without absl.app never parses them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # every flag keeps its default


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None and shard_count is None:
        options = grain.sharding.ShardByJaxProcess()
        return options.shard_index, options.shard_count
    if shard_index is None or shard_count is None:
        raise ValueError(f"Pass both shard_index and shard_count or neither (got {shard_index}, {shard_count}).")
    grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count)  # validates the pair
    return shard_index, shard_count


def make_loader(
    source: Any,
    transform: RecordTransform,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool | None = None,
    num_threads: int = 2,
) -> EpochLoader:
    """One epoch of batches from `source` (random access: len() and [i] -> record dict).

    Batches are dicts of stacked numpy arrays: the transform's outputs ('video' or 'keypoints',
    'label' int32), 'index' int32 (the record index; -1 for padding) and 'mask' bool (False for
    padding). Every batch has exactly batch_size rows.
      train=True: records shuffled with fold_seed(seed, epoch), drop_remainder defaults to True.
      train=False: records in order; drop_remainder defaults to False, so the last partial batch
        is padded with masked zero examples and every record appears exactly once with mask True.
    Sharding: defaults to this JAX process's share (jax.process_index() of jax.process_count());
    all shards yield the same number of batches.
    num_workers > 0 runs the transforms in that many grain worker processes (each computes whole
    batches, so batches are identical for any worker count; the calling script needs an
    `if __name__ == "__main__":` guard, as workers are spawned). num_threads > 0 computes that many
    batches ahead in background threads of each process (numpy releases the GIL, so on 2 cores 2
    threads nearly double the rate); 0 computes each batch when it is asked for.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive.")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed={seed} and epoch={epoch} must be non-negative.")
    if num_workers < 0 or num_threads < 0:
        raise ValueError(f"num_workers={num_workers} and num_threads={num_threads} must be non-negative.")
    num_records = len(source)
    if num_records == 0:
        raise ValueError("The source has no records; check the split and data_dir.")
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    drop_remainder = train if drop_remainder is None else drop_remainder

    indices = _shard_of_epoch(
        num_records,
        train=train,
        seed=seed,
        epoch=epoch,
        shard_index=shard_index,
        shard_count=shard_count,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
    )
    num_batches = len(indices) // batch_size if drop_remainder else math.ceil(len(indices) / batch_size)
    if num_batches == 0:
        raise ValueError(
            f"{num_records} records over {shard_count} shard(s) leave {len(indices)} per shard, fewer than "
            f"batch_size={batch_size}, and drop_remainder=True drops them all; lower batch_size or pass "
            "drop_remainder=False."
        )
    examples = indices.map(_ReadExample(source, transform, seed, epoch))
    batches = examples.batch(batch_size, drop_remainder=drop_remainder)
    # Elements here are whole batches, so the read-ahead buffer is counted in batches.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads))
    dataset = batches.to_iter_dataset(read_options)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
            worker_init_fn=_init_worker,
        )
    return EpochLoader(dataset, num_batches)
