"""Difficulty: class counts, clips per patient and a fixed keypoint baseline.

The baseline is deliberately blind to the tested side (its features do not change under
mirroring), so it measures how far kinematics go when direction alone must not give the label
away: telling the transports apart needs which hand moves together with its direction, or the
cube seen in RGB.
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.data.keypoints import COCO17
from strokevision_jax.data.synthetic.clip import simulate_clip
from strokevision_jax.data.synthetic.config import SimulatorConfig
from strokevision_jax.data.synthetic.patients import patient_ids, split_patients
from strokevision_jax.data.synthetic.sessions import clip_specs

BASELINE_DESCRIPTION = (
    "nearest class centroid (standardised features) on mirror-invariant wrist trajectories: both "
    "wrists, ordered by how much they move (not by the estimator's left/right names), each as "
    "distance from the shoulder midline |x| and height y relative to the clip's median shoulder "
    "midpoint, in shoulder widths, at 8 time points, plus its mean speed in 8 segments; "
    "positions with score < 0.3 interpolated, a wrist never seen held at its median guess")
_BASELINE_POINTS = 8


def wrist_trajectory_features(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(T, 17, 2) keypoints and (T, 17) scores -> (48,) features of the difficulty baseline.

    The features do not change when the clip is mirrored or the joints' left/right names are
    swapped, so the baseline cannot tell the tested side: it measures how far kinematics go
    without knowing which compartment is the source (direction alone must not give the label
    away).
    """
    keypoints = np.asarray(keypoints, float)
    scores = np.asarray(scores, float)
    shoulders = [COCO17["left_shoulder"], COCO17["right_shoulder"]]
    both = np.all(scores[:, shoulders] > 0.3, axis=1)
    if not both.any():
        both[:] = True
    midpoint = np.median(keypoints[both][:, shoulders].mean(1), axis=0)
    width = max(1.0, np.median(np.linalg.norm(np.diff(keypoints[both][:, shoulders], axis=1)[:, 0], axis=-1)))
    frames = np.arange(len(keypoints))
    samples = np.linspace(0, len(keypoints) - 1, _BASELINE_POINTS)
    wrists = []
    for joint in (COCO17["left_wrist"], COCO17["right_wrist"]):
        valid = scores[:, joint] > 0.3
        xy = (keypoints[:, joint] - midpoint) / width
        if valid.sum() >= 2:
            filled = np.stack([np.interp(frames, frames[valid], xy[valid, a]) for a in range(2)], 1)
        else:  # never seen well (e.g. hidden in the lap): held still at the median of the guesses
            filled = np.repeat(np.median(xy, axis=0, keepdims=True), len(frames), axis=0)
        positions = np.stack([np.interp(samples, frames, filled[:, a]) for a in range(2)], 1)  # (8, 2)
        speed = np.linalg.norm(np.diff(filled, axis=0), axis=1)  # (T - 1,)
        speed = np.array([chunk.mean() for chunk in np.array_split(speed, _BASELINE_POINTS)])
        motion = speed.sum() + positions.std(0).sum()
        wrists.append((motion, np.concatenate([np.abs(positions[:, 0]), positions[:, 1], speed])))
    wrists.sort(key=lambda item: -item[0])
    return np.concatenate([features for _, features in wrists])


def _fit_nearest_centroid(features: np.ndarray, labels: np.ndarray):
    """Nearest class centroid on standardised features (train statistics); returns predict(X)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    centroids = np.stack([((features[labels == c] - mean) / std).mean(0) if np.any(labels == c)
                          else np.full(features.shape[1], np.inf) for c in range(NUM_CLASSES)])

    def predict(x):
        distances = ((((x - mean) / std)[:, None, :] - centroids[None]) ** 2).sum(-1)
        return np.argmin(distances, 1)

    return predict


def _confusion(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(C, C) counts: rows true class, columns predicted."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(confusion, (true, predicted), 1)
    return confusion


def _hardest_pair(confusion) -> tuple[str, str, float]:
    """The two classes most often taken for each other: (a, b, rate a->b + rate b->a)."""
    confusion = np.asarray(confusion, float)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    pairs = [(rates[i, j] + rates[j, i], i, j) for i in range(NUM_CLASSES) for j in range(i + 1, NUM_CLASSES)]
    rate, i, j = max(pairs)
    return CLASS_NAMES[i], CLASS_NAMES[j], float(rate)


@dataclasses.dataclass(frozen=True)
class DifficultyReport:
    """How hard the simulated data is: class counts and a fixed keypoint baseline.

    The baseline is trained on the train split and scored on the test split; as the test split
    holds few patients, it is also scored by 5-fold cross-validation over all patients (folds by
    patient), which varies less from seed to seed.
    """

    num_patients: int
    num_clips: int
    patients_per_split: dict  # split -> number of patients
    class_counts: dict  # split -> tuple of counts in CLASS_NAMES order
    clips_per_patient: tuple  # (min, median, max)
    baseline: str
    baseline_accuracy: float  # on the test split
    baseline_train_accuracy: float
    baseline_per_class_accuracy: tuple  # recall per class on the test split
    baseline_confusion: tuple  # (C, C) rows: true class, columns: predicted, test split
    majority_class_accuracy: float  # predicting train's most frequent class on test
    cross_validated_accuracy: float  # 5 folds by patient, all clips
    cross_validated_confusion: tuple  # (C, C), all clips

    def hardest_confusion(self, cross_validated: bool = False) -> tuple[str, str, float]:
        """The pair of classes the baseline confuses most: (a, b, rate a->b + rate b->a)."""
        return _hardest_pair(self.cross_validated_confusion if cross_validated else self.baseline_confusion)

    def format(self) -> str:
        width = max(len(n) for n in CLASS_NAMES)
        splits = list(self.class_counts)
        lines = [
            f"patients: {self.num_patients} ("
            + ", ".join(f"{s} {self.patients_per_split[s]}" for s in splits) + f"); clips: {self.num_clips}",
            "clips per patient: min {} / median {:g} / max {}".format(*self.clips_per_patient),
            f"{'class counts':<{width}}  " + "  ".join(f"{s:>10}" for s in splits),
        ]
        for c, name in enumerate(CLASS_NAMES):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{self.class_counts[s][c]:>10}" for s in splits))
        lines += textwrap.wrap(f"baseline: {self.baseline}", 100, subsequent_indent="  ")
        lines += [
            f"  test accuracy {self.baseline_accuracy:.3f} (train {self.baseline_train_accuracy:.3f}; "
            f"majority class {self.majority_class_accuracy:.3f})",
            "  per-class test accuracy:",
        ]
        lines += [f"    {name:<{width}}  {accuracy:.3f}"
                  for name, accuracy in zip(CLASS_NAMES, self.baseline_per_class_accuracy)]
        lines.append("  test confusion (rows true, columns predicted, in class order):")
        lines += [f"    {name:<{width}}  " + " ".join(f"{v:>4d}" for v in row)
                  for name, row in zip(CLASS_NAMES, self.baseline_confusion)]
        a, b, rate = self.hardest_confusion()
        lines.append(f"  hardest confusion (test): {a} <-> {b} (sum of both error rates {rate:.3f})")
        a, b, rate = self.hardest_confusion(cross_validated=True)
        lines.append(f"  5-fold cross-validation by patient, all clips: accuracy "
                     f"{self.cross_validated_accuracy:.3f}; hardest confusion {a} <-> {b} ({rate:.3f})")
        return "\n".join(lines)


def _cross_validated_predictions(features: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                                 seed: int, folds: int = 5) -> np.ndarray:
    """Each clip predicted by the baseline trained on the other folds' patients."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 3]))
    fold_of = {p: i % folds for i, p in enumerate(rng.permutation(np.unique(patients)))}
    fold = np.array([fold_of[p] for p in patients])
    predicted = np.empty(len(labels), int)
    for k in range(folds):
        held_out = fold == k
        predicted[held_out] = _fit_nearest_centroid(features[~held_out], labels[~held_out])(features[held_out])
    return predicted


def difficulty_report(config: SimulatorConfig) -> DifficultyReport:
    """Class counts per split, clips per patient, and the baseline (train -> test, and cross-validated)."""
    names = patient_ids(config)
    splits = split_patients(config)
    split_of = {p: s for s, members in splits.items() for p in members}
    specs = clip_specs(config)
    features = np.stack([wrist_trajectory_features(clip["keypoints"], clip["keypoint_scores"])
                         for clip in (simulate_clip(config, spec, render=False) for spec in specs)])
    labels = np.array([spec.label for spec in specs])
    patients = np.array([spec.patient_index for spec in specs])
    split = np.array([split_of[names[p]] for p in patients])
    train, test = split == "train", split == "test"

    predict = _fit_nearest_centroid(features[train], labels[train])
    predicted = predict(features[test])
    confusion = _confusion(labels[test], predicted)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    cross_validated = _cross_validated_predictions(features, labels, patients, config.seed)
    per_patient = np.bincount(patients, minlength=config.num_patients)
    majority = np.argmax(np.bincount(labels[train], minlength=NUM_CLASSES))
    return DifficultyReport(
        num_patients=config.num_patients,
        num_clips=len(specs),
        patients_per_split={s: len(m) for s, m in splits.items()},
        class_counts={s: tuple(int(v) for v in np.bincount(labels[split == s], minlength=NUM_CLASSES))
                      for s in splits},
        clips_per_patient=(int(per_patient.min()), float(np.median(per_patient)), int(per_patient.max())),
        baseline=BASELINE_DESCRIPTION,
        baseline_accuracy=float(np.mean(predicted == labels[test])),
        baseline_train_accuracy=float(np.mean(predict(features[train]) == labels[train])),
        baseline_per_class_accuracy=tuple(float(v) for v in per_class),
        baseline_confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        majority_class_accuracy=float(np.mean(labels[test] == majority)),
        cross_validated_accuracy=float(np.mean(cross_validated == labels)),
        cross_validated_confusion=tuple(
            tuple(int(v) for v in row) for row in _confusion(labels, cross_validated)),
    )
