"""ICC(2,1) and Bland-Altman against published values."""

import numpy as np
import pytest

from strokevision_jax import agreement

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges. Their ICC(2,1) is 0.29; the
# interval [0.02, 0.76] is pingouin 0.7.0's intraclass_corr (ICC(A,1), McGraw & Wong's formula)
# on the same table, to its two decimals.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_matches_shrout_and_fleiss():
    icc = agreement.icc_a1(SHROUT_FLEISS)
    assert icc.value == pytest.approx(0.2898, abs=5e-5)
    assert (round(icc.low, 2), round(icc.high, 2)) == (0.02, 0.76)
    assert (icc.subjects, icc.raters) == (6, 4)


def test_icc_of_two_raters_and_perfect_agreement():
    truth = np.array([20, 35, 41, 28, 50, 12, 33, 45])
    predicted = np.array([22, 33, 44, 27, 47, 15, 30, 46])
    icc = agreement.icc_a1(np.stack([truth, predicted], axis=1))
    # pingouin 0.7.0 on the same pairs: ICC(A,1) 0.980890, CI95 [0.91, 1.0]
    assert icc.value == pytest.approx(0.980890, abs=1e-6)
    assert round(icc.low, 2) == 0.91 and round(icc.high, 2) == 1.0
    # A constant offset lowers absolute agreement (ICC(A,1)), unlike consistency.
    shifted = agreement.icc_a1(np.stack([truth, truth + 5], axis=1))
    assert shifted.value < 0.95
    exact = agreement.icc_a1(np.stack([truth, truth], axis=1))
    assert exact.value == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(n >= 2 subjects, k >= 2 raters\)"):
        agreement.icc_a1([[1, 2]])


def test_bland_altman_by_hand():
    # differences 2, -2, 3, -1, -3, 3, -3, 1: mean 0, sample SD sqrt(46 / 7)
    truth = [20, 35, 41, 28, 50, 12, 33, 45]
    predicted = [22, 33, 44, 27, 47, 15, 30, 46]
    result = agreement.bland_altman(truth, predicted)
    sd = np.sqrt(46 / 7)
    assert result.bias == pytest.approx(0.0)
    assert result.sd == pytest.approx(sd)
    assert (result.loa_lower, result.loa_upper) == pytest.approx((-1.96 * sd, 1.96 * sd))
    assert agreement.bland_altman([1, 2, 3], [2, 3, 4]).bias == pytest.approx(1.0)
