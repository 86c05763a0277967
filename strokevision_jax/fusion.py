"""Late fusion of a video run and a skeleton run: a weighted mean of their class probabilities.

    p = w * p_video + (1 - w) * p_skeleton

The weight w is chosen on the validation patients (never on the test ones): the value of a grid
over [0, 1] with the lowest validation log-loss (negative log-likelihood of the true class), which
is smoother than accuracy on a few hundred clips; ties go to the weight nearest 0.5. Both runs
must have seen the same clips: the same dataset and the same split or fold, one of each modality.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GRID = np.round(np.linspace(0.0, 1.0, 21), 2)
_FLOOR = 1e-7


class FusionError(ValueError):
    """Runs that cannot be fused; the message says why and what to give instead."""


@dataclasses.dataclass(frozen=True)
class WeightChoice:
    weight: float  # of the video run
    log_loss: float  # validation log-loss at that weight
    accuracy: float  # validation accuracy at that weight
    table: tuple[tuple[float, float, float], ...]  # (weight, log-loss, accuracy) over the grid


def fuse(p_video: np.ndarray, p_skeleton: np.ndarray, weight: float) -> np.ndarray:
    p_video, p_skeleton = np.asarray(p_video, np.float64), np.asarray(p_skeleton, np.float64)
    if p_video.shape != p_skeleton.shape:
        raise FusionError(f"the runs' probabilities have shapes {p_video.shape} and {p_skeleton.shape}: they "
                          "were computed on different clips.")
    if not 0.0 <= weight <= 1.0:
        raise FusionError(f"fusion weight {weight} is outside [0, 1].")
    return weight * p_video + (1.0 - weight) * p_skeleton


def choose_weight(p_video: np.ndarray, p_skeleton: np.ndarray, labels: np.ndarray, grid=GRID) -> WeightChoice:
    """The grid weight with the lowest validation log-loss (ties: nearest 0.5)."""
    labels = np.asarray(labels, np.int64)
    if labels.size == 0:
        raise FusionError("no validation clips to choose the fusion weight on.")
    rows = []
    for weight in grid:
        fused = fuse(p_video, p_skeleton, float(weight))
        log_loss = float(-np.mean(np.log(np.maximum(fused[np.arange(labels.size), labels], _FLOOR))))
        accuracy = float(np.mean(fused.argmax(axis=1) == labels))
        rows.append((float(weight), log_loss, accuracy))
    best = min(rows, key=lambda row: (round(row[1], 12), abs(row[0] - 0.5)))
    return WeightChoice(best[0], best[1], best[2], tuple(rows))


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What fusion needs to know of a run: its name, its model's input kind (video / keypoints /
    heatmaps), its dataset and its split (a study fold's JSON, or None for the dataset's own)."""

    name: str
    kind: str
    dataset: str
    split: dict | None


def check_pair(video: RunInfo, skeleton: RunInfo) -> None:
    """Refuses two runs that share a modality or did not see the same clips."""
    for run in (video, skeleton):
        if run.kind == "video+heatmaps":
            raise FusionError(f"{run.name} already reads RGB and keypoints (a two-pathway run): late fusion "
                              "combines one video run with one skeleton run.")
    if (video.kind == "video") == (skeleton.kind == "video"):
        modality = "video" if video.kind == "video" else "skeleton"
        raise FusionError(f"{video.name} and {skeleton.name} are both {modality} runs: late fusion combines one "
                          "video run with one skeleton run (keypoints or heatmaps).")
    if video.kind != "video":
        raise FusionError(f"give the video run first: {video.name} is a {video.kind} run.")
    if video.dataset != skeleton.dataset:
        raise FusionError(f"{video.name} was trained on {video.dataset!r} and {skeleton.name} on "
                          f"{skeleton.dataset!r}: fuse runs of the same dataset.")
    if video.split != skeleton.split:
        raise FusionError(f"{video.name} and {skeleton.name} were trained on different splits or folds: their "
                          "validation and test clips differ; fuse runs of the same split or fold.")
