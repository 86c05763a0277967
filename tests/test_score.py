"""score's aggregation: count agreement and segmentation metrics over trials, per hand, for the
decoder and the argmax, against figures computed by hand."""

import numpy as np
import pytest

from strokevision_jax import agreement, score, segments, timeline


def _row(trial, hand, true, decoded, argmax, phase, decoded_labels, argmax_labels, low=None, high=None):
    line = timeline.Timeline(1.0, np.full((len(phase), 4), 0.25), np.asarray(argmax_labels), np.asarray(decoded_labels),
                             decoded, argmax, 0, np.array([low if low is not None else decoded, high or decoded]))
    row = score.trial_row({"phase": np.asarray(phase), "trial_id": trial, "patient_id": trial[:4],
                           "hand": score.HANDS.index(hand), "blocks": true}, line)
    return row


def test_scores_match_hand_computed_figures():
    phase = [0, 0, 2, 2, 3, 3]
    rows = [
        _row("P000_more_affected", "more_affected", 10, 12, 15, phase, [0, 0, 2, 2, 3, 3], [0, 2, 2, 2, 3, 3]),
        _row("P000_less_affected", "less_affected", 20, 19, 25, phase, [0, 0, 2, 3, 3, 3], [0, 0, 2, 2, 3, 3], 18, 21),
        _row("P001_more_affected", "more_affected", 8, 8, 9, phase, [0, 2, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3]),
    ]
    scores = score.summarize(rows)
    truth, decoded = np.array([10, 20, 8]), np.array([12, 19, 8])
    assert scores["count_mae"] == pytest.approx(1.0) and scores["count_bias"] == pytest.approx(1 / 3)
    icc = agreement.icc_a1(np.stack([truth, decoded], axis=1))
    assert scores["icc"] == pytest.approx(icc.value) and scores["icc_ci"] == pytest.approx([icc.low, icc.high])
    limits = agreement.bland_altman(truth, decoded)
    assert (scores["loa_lower"], scores["loa_upper"]) == pytest.approx((limits.loa_lower, limits.loa_upper))
    # frames: 6 + 5 + 5 of 18 correct
    assert scores["frame_accuracy"] == pytest.approx(100 * 16 / 18)
    assert scores["edit"] == pytest.approx(100.0)  # every decoding keeps the G W R order
    # F1@50, pooled: trial 1 3 TP; trial 2 G exact, W [2,3) vs [2,4) IoU .5, R [3,6) vs [4,6) IoU 2/3: 3 TP;
    # trial 3 G [0,1) vs [0,2) IoU .5, W [1,4) vs [2,4) 2/3, R exact: 3 TP -> 9 TP, 0 FP, 0 FN
    assert scores["f1_50"] == pytest.approx(100.0)
    matches = np.sum([segments.segment_matches(r, phase, 0.5) for r in
                      ([0, 2, 2, 2, 3, 3], [0, 0, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3])], axis=0)
    assert scores["argmax"]["f1_50"] == pytest.approx(segments.f1_from_matches(*matches))
    assert scores["argmax"]["count_mae"] == pytest.approx((5 + 5 + 1) / 3)
    assert set(scores["per_hand"]) == {"more_affected", "less_affected"}
    assert scores["per_hand"]["more_affected"]["count_mae"] == pytest.approx(1.0)
    assert scores["per_hand"]["less_affected"]["icc"] is None  # one trial: no agreement statistics
    assert scores["count_interval_coverage"] == pytest.approx(2 / 3)  # [18, 21] holds 20, [8, 8] holds 8; [12, 12] misses 10
    text = score.markdown(scores, rows, "t", [])
    assert "| all | HSMM decoder | 3 | 1.00 | +0.33 |" in text and "| P000_less_affected | less_affected | 20 | 19 [18, 21] | 25 |" in text
