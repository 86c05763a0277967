"""Resizing parameter tables to another input size: the interpolation matrices of torch's
`F.interpolate` (linear; bicubic with antialiasing), as numpy constants.

MViT interpolates its relative position tables with them at run time (as torchvision does), and
the converter resizes position embeddings of checkpoints made for another clip size.
"""

from __future__ import annotations

import numpy as np


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's `F.interpolate(mode="linear", align_corners=False)`."""
    # Source positions in float32 arithmetic, as torch's CPU kernel computes them.
    matrix = np.zeros((out_size, in_size), np.float32)
    scale = np.float32(in_size / out_size)
    for i in range(out_size):
        src = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = np.float32(src - np.float32(i0))
        matrix[i, i0] += np.float32(1.0) - lam
        matrix[i, i1] += lam
    return matrix


def _cubic_aa(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def bicubic_aa_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's `F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)` along one axis (PIL's filter: a = -0.5, widened when shrinking)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        weights = np.array([_cubic_aa((j - center + 0.5) * inv) for j in range(lo, hi)])
        matrix[i, lo:hi] = weights / weights.sum()
    return matrix


def resize_rows(value: np.ndarray, size: int) -> np.ndarray:
    """Linear resize of axis 0 (torchvision's `_interpolate`); the identity at equal size."""
    if value.shape[0] == size:
        return value
    out = linear_resize_matrix(value.shape[0], size) @ value.reshape(value.shape[0], -1)
    return out.reshape(size, *value.shape[1:]).astype(value.dtype)


def resize_grid(value: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic antialiased resize of axes 0, 1 of an (H, W, C) grid; identity at equal size."""
    if tuple(value.shape[:2]) == tuple(size):
        return value
    rows = bicubic_aa_resize_matrix(value.shape[0], size[0])
    cols = bicubic_aa_resize_matrix(value.shape[1], size[1])
    out = np.einsum("ih,jw,hwc->ijc", rows, cols, value.astype(np.float64))
    return out.astype(value.dtype)
