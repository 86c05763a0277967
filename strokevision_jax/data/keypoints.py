"""Keypoint layouts: COCO-17 (what the dataset stores) and H36M-17 (what MotionBERT consumes).

Also the conversions the pipeline needs: COCO -> H36M, MotionBERT screen normalisation, flips.
"""

from collections.abc import Sequence

import numpy as np

COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO17 = {name: index for index, name in enumerate(COCO17_NAMES)}

# Index of each joint's mirror image, for horizontal flips.
COCO17_FLIP_INDEX: tuple[int, ...] = tuple(
    COCO17[name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")]
    for name in COCO17_NAMES
)

H36M17_NAMES: tuple[str, ...] = (
    "root", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "nose", "head", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
H36M17 = {name: index for index, name in enumerate(H36M17_NAMES)}

# Index of each joint's mirror image, for horizontal flips; root, spine, thorax, nose and head map to themselves.
H36M17_FLIP_INDEX: tuple[int, ...] = tuple(
    H36M17[name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")]
    for name in H36M17_NAMES
)


def _coco_sources(h36m_name: str) -> tuple[str, ...]:
    """COCO-17 joints whose mean gives one H36M-17 joint (MotionBERT's convention)."""
    hips = ("left_hip", "right_hip")
    shoulders = ("left_shoulder", "right_shoulder")
    derived = {
        "root": hips,
        "thorax": shoulders,
        "spine": hips + shoulders,  # mean of root and thorax = mean of the four joints
        "head": ("left_eye", "right_eye"),
    }
    if h36m_name in derived:
        return derived[h36m_name]
    return (h36m_name,)  # the nose and the limbs keep their COCO names and sides


def _coco_to_h36m_matrix() -> np.ndarray:
    """(17 H36M, 17 COCO) averaging weights; each row sums to 1."""
    weights = np.zeros((len(H36M17_NAMES), len(COCO17_NAMES)), np.float32)
    for row, name in enumerate(H36M17_NAMES):
        sources = _coco_sources(name)
        for source in sources:
            weights[row, COCO17[source]] = 1.0 / len(sources)
    return weights


COCO_TO_H36M_WEIGHTS: np.ndarray = _coco_to_h36m_matrix()


def coco_to_h36m(keypoints: np.ndarray) -> np.ndarray:
    """COCO-17 -> H36M-17 joints, as MotionBERT converts 2D detections.

    keypoints: (..., 17, C) in COCO-17 order; every channel (x, y and the score, if present) is
    averaged the same way: root = mean of the hips, thorax = mean of the shoulders, spine = mean of
    root and thorax, head = mean of the eyes, nose and limbs copied with their side.
    Returns (..., 17, C) in H36M-17 order, same floating dtype as the input.
    """
    keypoints = np.asarray(keypoints)
    if keypoints.ndim < 2 or keypoints.shape[-2] != len(COCO17_NAMES):
        raise ValueError(f"coco_to_h36m expects (..., 17, C) COCO-17 keypoints, got shape {keypoints.shape}.")
    dtype = keypoints.dtype if np.issubdtype(keypoints.dtype, np.floating) else np.float32
    converted = np.einsum("hc,...cd->...hd", COCO_TO_H36M_WEIGHTS, keypoints.astype(np.float32))
    return converted.astype(dtype, copy=False)


def normalize_screen(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel -> MotionBERT screen coordinates, keeping the aspect ratio.

    x in [0, width] maps to [-1, 1]; y is scaled by the same factor (2 / width) and centred, so it
    spans [-height / width, height / width]. xy: (..., C >= 2); only channels 0 and 1 change, any
    further channel (the score) passes through.
    """
    xy = np.asarray(xy, dtype=np.float32)
    out = xy.copy()
    out[..., 0] = xy[..., 0] / width * 2.0 - 1.0
    out[..., 1] = xy[..., 1] / width * 2.0 - height / width
    return out


def normalize_centre(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel -> pyskl's PreNormalize2D coordinates: x and y each mapped from [0, size] to [-1, 1].

    xy: (..., C >= 2); channels >= 2 (the score) pass through."""
    xy = np.asarray(xy, dtype=np.float32)
    out = xy.copy()
    out[..., 0] = (xy[..., 0] - width / 2) / (width / 2)
    out[..., 1] = (xy[..., 1] - height / 2) / (height / 2)
    return out


def denormalize_screen(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Inverse of `normalize_screen`: screen coordinates -> pixels (channels >= 2 pass through)."""
    xy = np.asarray(xy, dtype=np.float32)
    out = xy.copy()
    out[..., 0] = (xy[..., 0] + 1.0) * width / 2.0
    out[..., 1] = (xy[..., 1] + height / width) * width / 2.0
    return out


def flip_x_pixels(x: np.ndarray, width: int) -> np.ndarray:
    """Mirrors pixel x coordinates: x -> width - 1 - x.

    Convention: x = j is the centre of pixel column j, so this matches reversing the columns of
    the frame (`frames[..., ::-1, :]`): a point on column j lands on column width - 1 - j.
    """
    return (width - 1) - np.asarray(x)


def flip_keypoints(keypoints: np.ndarray, width: int, flip_index: Sequence[int]) -> np.ndarray:
    """Horizontal flip of (..., J, C) pixel keypoints: mirrors x (channel 0) and swaps left/right joints.

    flip_index: COCO17_FLIP_INDEX or H36M17_FLIP_INDEX, matching the layout of `keypoints`. Other
    channels (y, score) move with their joint.
    """
    keypoints = np.asarray(keypoints)
    if keypoints.shape[-2] != len(flip_index):
        raise ValueError(
            f"flip_keypoints: keypoints have {keypoints.shape[-2]} joints but the flip index has "
            f"{len(flip_index)}; pass the flip index of the keypoints' layout."
        )
    flipped = keypoints[..., list(flip_index), :].copy()
    flipped[..., 0] = flip_x_pixels(flipped[..., 0], width)
    return flipped
