"""Agreement between a predicted and a true count (blocks moved in a Box and Block Test trial).

- `icc_a1`: ICC(2,1) in Shrout & Fleiss's notation (1979), ICC(A,1) in McGraw & Wong's (1996):
  two-way random effects, absolute agreement, one measurement. It is the ICC the clinical BBT
  literature reports for test-retest and inter-rater agreement of the count. The 95 % interval is
  McGraw & Wong's (case 2A, their eq. for ICC(A,1)), with Satterthwaite's degrees of freedom.
- `bland_altman`: mean difference (bias, prediction - truth) and 95 % limits of agreement,
  bias +- 1.96 SD of the differences (Bland & Altman, Lancet 1986).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ICC:
    value: float
    low: float  # 95 % interval
    high: float
    subjects: int
    raters: int


def _mean_squares(ratings: np.ndarray) -> tuple[float, float, float]:
    """(MSR, MSC, MSE): between subjects (rows), between raters (columns), residual."""
    n, k = ratings.shape
    grand = ratings.mean()
    ss_rows = k * np.sum((ratings.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((ratings.mean(axis=0) - grand) ** 2)
    ss_error = np.sum((ratings - grand) ** 2) - ss_rows - ss_cols
    return ss_rows / (n - 1), ss_cols / (k - 1), ss_error / ((n - 1) * (k - 1))


def icc_a1(ratings: Sequence[Sequence[float]], confidence: float = 0.95) -> ICC:
    """ICC(2,1) = ICC(A,1) of an (n subjects, k raters) table, with its confidence interval.

    For a count: ratings[:, 0] the true counts, ratings[:, 1] the predicted ones. Needs n >= 2
    subjects and k >= 2 raters."""
    from scipy import stats

    ratings = np.asarray(ratings, np.float64)
    if ratings.ndim != 2 or ratings.shape[0] < 2 or ratings.shape[1] < 2:
        raise ValueError(f"ICC needs an (n >= 2 subjects, k >= 2 raters) table; got shape {ratings.shape}.")
    if not np.all(np.isfinite(ratings)):
        raise ValueError("ICC: the ratings hold NaN or infinite values.")
    n, k = ratings.shape
    msr, msc, mse = _mean_squares(ratings)
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    if denominator <= 0:  # every rating equal: agreement is perfect but undefined as a ratio
        return ICC(float("nan"), float("nan"), float("nan"), n, k)
    value = (msr - mse) / denominator
    alpha = 1.0 - confidence
    # McGraw & Wong (1996), ICC(A,1): Satterthwaite's degrees of freedom for the denominator.
    a = k * value / (n * (1.0 - value)) if value < 1 else np.inf
    b = 1.0 + k * value * (n - 1) / (n * (1.0 - value)) if value < 1 else np.inf
    if not np.isfinite(a) or mse == 0:
        return ICC(float(value), float(value), float(value), n, k)
    v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
    f_low = stats.f.ppf(1.0 - alpha / 2, n - 1, v)
    f_high = stats.f.ppf(1.0 - alpha / 2, v, n - 1)
    low = n * (msr - f_low * mse) / (f_low * (k * msc + (k * n - k - n) * mse) + n * msr)
    high = n * (f_high * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_high * msr)
    return ICC(float(value), float(low), float(high), n, k)


@dataclasses.dataclass(frozen=True)
class BlandAltman:
    bias: float  # mean of prediction - truth
    sd: float  # sample SD of the differences
    loa_lower: float
    loa_upper: float
    n: int


def bland_altman(truth: Sequence[float], prediction: Sequence[float]) -> BlandAltman:
    truth = np.asarray(truth, np.float64)
    prediction = np.asarray(prediction, np.float64)
    if truth.shape != prediction.shape or truth.ndim != 1 or truth.size < 2:
        raise ValueError(f"Bland-Altman needs two equal-length series of >= 2 values; got "
                         f"{truth.shape} and {prediction.shape}.")
    difference = prediction - truth
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1))
    return BlandAltman(bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, int(truth.size))
