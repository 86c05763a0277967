"""Confidence intervals that respect the patient: bootstrap resampling of patients, not clips.

Clips of one patient are not independent (same body, same impairment, same camera), so an
interval computed over clips is too narrow. Every statistic here is a function of a confusion
matrix, and a resample of patients is a weighted sum of the patients' own confusion matrices:

    C_b = sum_p m_bp C_p,    m_b ~ Multinomial(P, 1/P each)   (patients drawn with replacement)

so B resamples cost one (B, P) x (P, K*K) product. Intervals are percentile intervals of the B
resampled statistics (Efron & Tibshirani, ch. 13). Paired comparisons resample the same patients
for both models, so the difference is measured on the same clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES

WITH_OBJECT = CLASS_NAMES.index("transport_with_object")
WITHOUT_OBJECT = CLASS_NAMES.index("transport_without_object")
METHOD = ("95 % percentile bootstrap over patients ({resamples} resamples of the patients with "
          "replacement, each patient's clips kept together; seed {seed})")


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the data as observed
    low: float
    high: float

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        return f"{self.value * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def patient_confusions(patients: Sequence[str], labels: Sequence[int], predictions: Sequence[int],
                       order: Sequence[str] | None = None, num_classes: int = len(CLASS_NAMES)):
    """(patient order, (P, K, K) counts): one confusion matrix per patient (rows: true class)."""
    patients = np.asarray(patients)
    order = sorted(set(patients.tolist())) if order is None else list(order)
    position = {p: i for i, p in enumerate(order)}
    if not set(patients.tolist()) <= set(position):
        raise ValueError("patient_confusions: some patients are not in `order`.")
    counts = np.zeros((len(order), num_classes, num_classes), np.int64)
    rows = np.array([position[p] for p in patients.tolist()], np.int64)
    np.add.at(counts, (rows, np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return order, counts


def statistics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 (over the classes present), per-class accuracy (recall) and the rate at
    which transport clips are given the other transport class, for (..., K, K) matrices."""
    confusion = np.asarray(confusion, np.float64)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    true = confusion.sum(-1)
    predicted = confusion.sum(-2)
    total = true.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true > 0, hits / true, np.nan)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
        present = true > 0
        macro_f1 = np.where(present.any(-1), (f1 * present).sum(-1) / present.sum(-1), np.nan)
        accuracy = np.where(total > 0, hits.sum(-1) / total, np.nan)
        transports = true[..., WITH_OBJECT] + true[..., WITHOUT_OBJECT]
        swapped = confusion[..., WITH_OBJECT, WITHOUT_OBJECT] + confusion[..., WITHOUT_OBJECT, WITH_OBJECT]
        transport_confusion = np.where(transports > 0, swapped / transports, np.nan)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "per_class_accuracy": recall,
            "transport_confusion": transport_confusion}


def resample_counts(num_patients: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_patients): how often each patient is drawn in each bootstrap resample."""
    if num_patients < 2:
        raise ValueError(f"A patient bootstrap needs at least 2 patients, got {num_patients}.")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_patients, np.full(num_patients, 1.0 / num_patients), size=resamples)


def _interval(observed: float, samples: np.ndarray, level: float) -> Interval:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return Interval(float(observed), float("nan"), float("nan"))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return Interval(float(observed), float(low), float(high))


def bootstrap(confusions: np.ndarray, resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict[str, Interval | list[Interval]]:
    """Every `statistics` entry of the pooled matrix with its patient-bootstrap interval.

    confusions: (P, K, K), one matrix per patient (summed over seeds when a clip is predicted by
    several runs)."""
    confusions = np.asarray(confusions)
    counts = resample_counts(len(confusions), resamples, seed)
    observed = statistics(confusions.sum(0))
    resampled = statistics(np.einsum("bp,pij->bij", counts, confusions))
    result: dict[str, Interval | list[Interval]] = {}
    for name, value in observed.items():
        if np.ndim(value) == 0:
            result[name] = _interval(value, resampled[name], level)
        else:
            result[name] = [_interval(v, resampled[name][:, k], level) for k, v in enumerate(value)]
    return result


@dataclasses.dataclass(frozen=True)
class Difference:
    """Statistic of model a minus that of model b on the same patients' clips."""

    interval: Interval
    p_value: float  # two-sided: 2 x the smaller share of resampled differences on either side of 0


def paired_difference(confusions_a: np.ndarray, confusions_b: np.ndarray, statistic: str = "accuracy",
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Difference:
    """The difference of `statistic` between two models, with a paired patient-bootstrap interval.

    Both (P, K, K) stacks must list the same patients in the same order (the same clips)."""
    a, b = np.asarray(confusions_a), np.asarray(confusions_b)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: the two models' patients differ ({a.shape} vs {b.shape}).")
    if not np.array_equal(a.sum(-1), b.sum(-1)):
        raise ValueError("paired_difference: the two models were not scored on the same clips.")
    counts = resample_counts(len(a), resamples, seed)
    observed = statistics(a.sum(0))[statistic] - statistics(b.sum(0))[statistic]
    samples = (statistics(np.einsum("bp,pij->bij", counts, a))[statistic]
               - statistics(np.einsum("bp,pij->bij", counts, b))[statistic])
    samples = samples[np.isfinite(samples)]
    p_value = min(1.0, 2.0 * min(np.mean(samples <= 0.0), np.mean(samples >= 0.0)))
    return Difference(_interval(float(observed), samples, level), float(p_value))
