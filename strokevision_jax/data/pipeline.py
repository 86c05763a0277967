"""Input pipelines: how StrokeVision records become model inputs, and batches of them per epoch.

A record is the dict the simulator yields and the TFDS source returns (the builder's features): uint8
'video' (T0, H0, W0, 3), COCO-17 pixel 'keypoints' (T0, 17, 2), 'keypoint_scores' (T0, 17),
'label', plus strings and simulator ground truth that the batches do not carry.

    source = strokevision_jax.dataset.load_source("train", "synthetic", data_dir)
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

Spatial (video), in `resample`: the stored frame is conceptually resized to `resize` and a `crop`
is cut from it; only the crop box is resampled.

Batches: `make_loader` (in `loader`, re-exported here with `retain_freed_memory` and
`RecordTransform`) draws every random choice for a record from np.random.default_rng([seed, epoch,
record_index]), so batches depend only on (seed, epoch) and not on the worker count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from strokevision_jax.data import keypoints as kp
from strokevision_jax.data.loader import (
    RecordTransform,
    make_loader,
    retain_freed_memory,
)
from strokevision_jax.data.resample import crop_and_resize, crop_box, person_region

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "RecordTransform",
    "SkeletonConfig",
    "PairedTransform",
    "SkeletonTransform",
    "VideoConfig",
    "VideoTransform",
    "compact_box",
    "compact_keypoints",
    "flip_compact",
    "make_loader",
    "paired_transform",
    "retain_freed_memory",
    "sample_frame_indices",
    "skeleton_transform",
    "video_transform",
]

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
# Per-record transforms


def _label(record: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(record["label"], dtype=np.int32)


def _record_keypoints(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(T0, 17, 2) pixel coordinates and (T0, 17) scores of a record, checked."""
    coords = np.asarray(record["keypoints"], np.float32)
    scores = np.asarray(record["keypoint_scores"], np.float32)
    if coords.ndim != 3 or coords.shape[1:] != (17, 2) or scores.shape != coords.shape[:2]:
        raise ValueError("record['keypoints'] must be (T, 17, 2) and record['keypoint_scores'] (T, 17), got "
                         f"{coords.shape} and {scores.shape}.")
    return coords, scores


@dataclasses.dataclass(frozen=True)
class VideoTransform:
    """record -> {'video': (T, h, w, 3) normalised, 'label': int32}."""

    config: VideoConfig
    train: bool

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        rng = rng if self.train else None
        stored, frame_indices, box, flip = self.sample(record, rng)
        return {"video": self.clip(stored, frame_indices, box, flip), "label": _label(record)}

    def sample(self, record: Mapping[str, Any], rng: np.random.Generator | None):
        """The random choices for one clip: (stored frames, frame indices, crop box in
        stored-frame pixels, flip); rng None = evaluation."""
        config = self.config
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
        return stored, frame_indices, box, flip

    def clip(self, stored: np.ndarray, frame_indices: np.ndarray, box, flip: bool) -> np.ndarray:
        clip = crop_and_resize(stored[frame_indices], box, self.config.crop, self.config.resize_method, flip)
        return self._normalize(clip)

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
        coords, scores = _record_keypoints(record)
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


@dataclasses.dataclass(frozen=True)
class PairedTransform:
    """record -> {'video': as VideoTransform, 'keypoints': (T', 17, 3) or (M, T', 17, 3), 'label'}
    for a two-pathway RGB + pose network: the keypoints are pixels of a `compact_size`
    (training) or `compact_eval_size` (evaluation) frame showing exactly the video's crop, so
    that the pose heatmaps and the RGB frames see the same region (pyskl's MMCompact). One flip
    decision (the video's `flip`) mirrors both; the skeleton config's own `flip`, `compact_*`
    box and crop settings are not used. T' = the skeleton config's `num_frames`, sampled
    independently of the video's (as MMUniformSampleFrames)."""

    video: VideoConfig
    skeleton: SkeletonConfig
    train: bool

    def __post_init__(self):
        if self.skeleton.normalization != "compact" or self.skeleton.layout != "coco":
            raise ValueError("PairedTransform: the pose pathway reads COCO keypoints in heatmap-frame "
                             f"pixels; set SkeletonConfig(layout='coco', normalization='compact'), got "
                             f"layout={self.skeleton.layout!r}, normalization={self.skeleton.normalization!r}.")

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        rng = rng if self.train else None
        videos = VideoTransform(self.video, self.train)
        stored, frame_indices, box, flip = videos.sample(record, rng)
        coords, scores = _record_keypoints(record)
        config = self.skeleton
        pose_indices = sample_frame_indices(coords.shape[0], config.num_frames, rng,
                                            sampling=config.sampling, frame_stride=config.frame_stride)
        out_h, out_w = config.compact_size if rng is not None else config.compact_eval_size
        xy = coords[pose_indices]
        present = xy != 0  # missing keypoints stay at zero, as upstream
        scaled = (xy - np.array([box.left, box.top], np.float32)) * np.array(
            [out_w / box.width, out_h / box.height], np.float32)
        joints = np.concatenate([np.where(present, scaled, 0.0), scores[pose_indices, :, None]], axis=-1)
        if flip:
            joints = flip_compact(joints, out_w)
        if config.num_persons is not None:
            persons = np.zeros((config.num_persons, *joints.shape), np.float32)
            persons[0] = joints
            joints = persons
        return {"video": videos.clip(stored, frame_indices, box, flip),
                "keypoints": joints.astype(np.float32, copy=False), "label": _label(record)}


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


def paired_transform(video: VideoConfig, skeleton: SkeletonConfig, train: bool) -> PairedTransform:
    return PairedTransform(video, skeleton, train)
