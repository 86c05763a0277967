"""The patient bootstrap against cases with known answers."""

import numpy as np
import pytest

from strokevision_jax import stats


def confusions_for(per_patient):
    """[(label, prediction) pairs per patient] -> (P, 4, 4) counts."""
    patients, labels, predictions = [], [], []
    for p, pairs in enumerate(per_patient):
        for label, prediction in pairs:
            patients.append(f"p{p}"), labels.append(label), predictions.append(prediction)
    return stats.patient_confusions(patients, labels, predictions)[1]


def test_statistics_of_a_hand_made_confusion_matrix():
    matrix = np.array([[5, 1, 0, 0],
                       [0, 4, 0, 0],
                       [0, 0, 3, 2],
                       [0, 0, 1, 4]])
    s = stats.statistics(matrix)
    assert s["accuracy"] == pytest.approx(16 / 20)
    np.testing.assert_allclose(s["per_class_accuracy"], [5 / 6, 1.0, 3 / 5, 4 / 5])
    precision = np.array([1.0, 4 / 5, 3 / 4, 4 / 6])
    recall = np.array([5 / 6, 1.0, 3 / 5, 4 / 5])
    assert s["macro_f1"] == pytest.approx(np.mean(2 * precision * recall / (precision + recall)))
    assert s["transport_confusion"] == pytest.approx(3 / 10)  # 2 + 1 swapped of 5 + 5 transports


def test_bootstrap_resamples_patients_not_clips():
    """Two patients, one always right and one always wrong, 100 clips each: a resample draws
    {right, right}, {right, wrong} or {wrong, wrong}, so accuracy is 1, 0.5 or 0 and the 95 %
    interval is [0, 1]. A clip bootstrap would give about [0.43, 0.57]."""
    c = confusions_for([[(0, 0)] * 100, [(1, 0)] * 100])
    result = stats.bootstrap(c, resamples=4000, seed=0)
    assert result["accuracy"].value == 0.5
    assert (result["accuracy"].low, result["accuracy"].high) == (0.0, 1.0)
    counts = stats.resample_counts(2, 4000, 0)
    share_mixed = np.mean(counts[:, 0] == 1)
    assert share_mixed == pytest.approx(0.5, abs=0.03)


def test_bootstrap_of_one_clip_per_patient_is_the_binomial():
    """With one clip per patient the bootstrap distribution of accuracy is Binomial(P, p) / P."""
    from scipy.stats import binom

    n, right = 200, 150
    c = confusions_for([[(0, 0)]] * right + [[(0, 1)]] * (n - right))
    result = stats.bootstrap(c, resamples=20000, seed=1)
    assert result["accuracy"].low == pytest.approx(binom.ppf(0.025, n, right / n) / n, abs=0.006)
    assert result["accuracy"].high == pytest.approx(binom.ppf(0.975, n, right / n) / n, abs=0.006)


def test_paired_difference():
    a = confusions_for([[(0, 0)] * 4, [(1, 1)] + [(1, 0)] * 3])  # 4/4 and 1/4 right
    b = confusions_for([[(0, 0)] * 2 + [(0, 1)] * 2, [(1, 1)] * 2 + [(1, 0)] * 2])  # 2/4 and 2/4
    d = stats.paired_difference(b, a, resamples=4000, seed=0)
    # b - a on {p0, p0}: 0.5 - 1 = -0.5; mixed: 0.5 - 0.625; {p1, p1}: 0.5 - 0.25 = 0.25.
    assert d.interval.value == pytest.approx(-0.125)
    assert (d.interval.low, d.interval.high) == (-0.5, 0.25)
    assert d.p_value == pytest.approx(0.5, abs=0.06)  # 2 x P(difference >= 0) = 2 x 1/4
    same = stats.paired_difference(a, a, resamples=1000)
    assert (same.interval.value, same.interval.low, same.interval.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same clips"):
        stats.paired_difference(a, confusions_for([[(0, 0)] * 3, [(1, 1)] * 4]))


def test_a_single_patient_has_no_bootstrap():
    with pytest.raises(ValueError, match="at least 2 patients"):
        stats.bootstrap(confusions_for([[(0, 0)] * 5]))
