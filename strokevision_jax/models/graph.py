"""Skeleton graphs and the adjacency matrices of pyskl's graph convolutions, in numpy.

Everything here is a constant of the architecture (computed from the joint layout, never
learned), built the way pyskl's `pyskl/utils/graph.py` builds it so that the numbers equal
the `.A` buffers pyskl stores in its checkpoints:

- `graph_adjacency(layout, "binary_adj")`: the symmetric 0/1 bone matrix, zero diagonal.
- `k_hop_adjacency(A, k)`: joints exactly k hops apart, plus self-loops (k = 0: identity).
- `normalize_columns(A)`: A @ diag(1 / column sums) (pyskl's `normalize_digraph`).
- `multiscale_adjacency(A, K)`: the K normalised hop matrices stacked, (K, V, V).
- `window_graph(A, w)`: the spatio-temporal graph of a window of w frames, (w*V, w*V).

Matrices are indexed [source v, destination u]: a graph convolution computes
out[u] = sum_v A[v, u] x[v] (pyskl's einsum 'kvu,nctv->nkctu', i.e. x @ A).
"""

from __future__ import annotations

import functools

import numpy as np

# pyskl's `coco` layout: 17 COCO keypoints, (child, parent) bones towards the nose.
COCO_INWARD_EDGES: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5),
    (10, 8), (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2),
)
LAYOUTS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {"coco": (17, COCO_INWARD_EDGES)}
MODES = ("binary_adj",)


def _read_only(array: np.ndarray) -> np.ndarray:
    # Cached results are shared: nobody may modify them in place.
    array.setflags(write=False)
    return array


def check_graph(layout: str, mode: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown graph layout {layout!r}; supported layouts: "
                         f"{', '.join(LAYOUTS)}.")
    if mode not in MODES:
        raise ValueError(f"Unknown graph mode {mode!r}; MS-G3D uses one of: {', '.join(MODES)}.")


@functools.cache
def graph_adjacency(layout: str = "coco", mode: str = "binary_adj") -> np.ndarray:
    """(V, V) float32 0/1 matrix of the layout's bones, both directions, zero diagonal."""
    check_graph(layout, mode)
    num_joints, inward = LAYOUTS[layout]
    adjacency = np.zeros((num_joints, num_joints), np.float32)
    for child, parent in inward:
        adjacency[child, parent] = adjacency[parent, child] = 1.0
    return _read_only(adjacency)


def k_hop_adjacency(adjacency: np.ndarray, k: int) -> np.ndarray:
    """0/1 matrix of the node pairs exactly `k` hops apart, plus the identity.

    pyskl writes this as min((A+I)^k, 1) - min((A+I)^(k-1), 1) + I with matrix powers; the
    same sets are computed here by boolean reachability, which cannot overflow for large k.
    """
    num_nodes = adjacency.shape[0]
    identity = np.eye(num_nodes, dtype=bool)
    if k == 0:
        return identity.astype(np.float64)
    step = (adjacency != 0) | identity
    within = identity  # reachable in <= j hops, starting with j = 0
    for _ in range(k - 1):
        within = (within.astype(np.int64) @ step.astype(np.int64)) > 0
    within_k = (within.astype(np.int64) @ step.astype(np.int64)) > 0
    return (within_k & ~within).astype(np.float64) + identity


def normalize_columns(adjacency: np.ndarray) -> np.ndarray:
    """A @ diag(1 / column sums); all-zero columns stay zero (pyskl's normalize_digraph)."""
    column_sums = adjacency.sum(axis=0)
    scale = np.divide(1.0, column_sums, out=np.zeros_like(column_sums, dtype=np.float64),
                      where=column_sums > 0)
    return adjacency * scale[None, :]


def multiscale_adjacency(adjacency: np.ndarray, num_scales: int) -> np.ndarray:
    """(num_scales, V, V) float32: column-normalised k-hop matrices, k = 0 .. num_scales-1.

    Scales beyond the graph's diameter are the identity (no node pair is that far apart).
    """
    scales = [normalize_columns(k_hop_adjacency(adjacency, k)) for k in range(num_scales)]
    return np.stack(scales).astype(np.float32)


def window_graph(adjacency: np.ndarray, window_size: int) -> np.ndarray:
    """(w*V, w*V): every frame of a w-frame window joins each joint to itself and its bone
    neighbours in every frame of the window (tile(A + I, (w, w)); node index = frame*V + joint)."""
    with_self = adjacency + np.eye(adjacency.shape[0], dtype=adjacency.dtype)
    return np.tile(with_self, (window_size, window_size))


@functools.cache
def msgcn_adjacency(layout: str, mode: str, num_scales: int) -> np.ndarray:
    """(K, V, V) fixed adjacency of an MS-GCN (pyskl `MSGCN.A`)."""
    return _read_only(multiscale_adjacency(graph_adjacency(layout, mode), num_scales))


@functools.cache
def g3d_adjacency(layout: str, mode: str, num_scales: int, window_size: int) -> np.ndarray:
    """(K, w*V, w*V) fixed adjacency of a windowed G3D graph conv (pyskl `ST_MSGCN.A`)."""
    large = window_graph(graph_adjacency(layout, mode), window_size)
    return _read_only(multiscale_adjacency(large, num_scales))
