"""Figures of whole recordings: a timeline (probabilities over time with the segments) and the
Bland-Altman plot of counts. PNGs written with matplotlib's Agg backend."""

from __future__ import annotations

import pathlib

import numpy as np

from strokevision_jax import segments
from strokevision_jax.data.classes import CLASS_NAMES

COLOURS = ("#1f77b4", "#7f7f7f", "#d62728", "#2ca02c")  # grasp, non-task, with object, without


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(axis, labels: np.ndarray, fps: float, name: str):
    for start, end, label in segments.to_segments(labels):
        axis.axvspan(start / fps, end / fps, color=COLOURS[label], lw=0)
    axis.set_yticks([])
    axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)


def plot_timeline(path: pathlib.Path, timeline, title: str, truth: np.ndarray | None = None,
                  true_count: int | None = None) -> None:
    """Per-frame probabilities (lines) above bands of the decoded, argmax and (if known) true
    segments; the counts in the title."""
    plt = _pyplot()
    rows = 4 if truth is not None else 3
    figure, axes = plt.subplots(rows, 1, figsize=(12, 2.2 + 0.45 * rows), sharex=True,
                                gridspec_kw={"height_ratios": [5] + [1] * (rows - 1)})
    times = np.arange(len(timeline.probabilities)) / timeline.fps
    for c, name in enumerate(CLASS_NAMES):
        axes[0].plot(times, timeline.probabilities[:, c], color=COLOURS[c], lw=1, label=name)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("probability")
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    if timeline.start_frame is not None:
        for axis in axes:
            axis.axvline(timeline.start_frame / timeline.fps, color="k", lw=0.8, ls="--")
    low, high = timeline.count_interval
    counts = f"decoded {timeline.count} [{low}, {high}], argmax {timeline.count_argmax}"
    if true_count is not None:
        counts += f", true {true_count}"
    axes[0].set_title(f"{title}: blocks {counts}", fontsize=10)
    _band(axes[1], timeline.decoded, timeline.fps, "decoded")
    _band(axes[2], timeline.argmax, timeline.fps, "argmax")
    if truth is not None:
        _band(axes[3], truth, timeline.fps, "truth")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_bland_altman(path: pathlib.Path, truth: np.ndarray, predicted: np.ndarray, agreement, hands: list[str],
                      title: str) -> None:
    plt = _pyplot()
    truth, predicted = np.asarray(truth, float), np.asarray(predicted, float)
    figure, axis = plt.subplots(figsize=(6, 4.5))
    mean, difference = (truth + predicted) / 2, predicted - truth
    for hand, marker in (("more_affected", "o"), ("less_affected", "s")):
        chosen = np.array([h == hand for h in hands])
        if chosen.any():
            axis.scatter(mean[chosen], difference[chosen], marker=marker, label=hand.replace("_", " "), alpha=0.8)
    axis.axhline(agreement.bias, color="k", lw=1, label=f"bias {agreement.bias:+.2f}")
    for limit in (agreement.loa_lower, agreement.loa_upper):
        axis.axhline(limit, color="k", lw=1, ls="--")
    axis.set_xlabel("mean of true and predicted count (blocks)")
    axis.set_ylabel("predicted - true (blocks)")
    axis.set_title(f"{title}\nlimits of agreement [{agreement.loa_lower:+.2f}, {agreement.loa_upper:+.2f}]", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
