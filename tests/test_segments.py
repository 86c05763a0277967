"""Segments, the segmentation metrics and the HSMM decoder, on hand-made sequences."""

import numpy as np
import pytest

from strokevision_jax import segments as seg

G, N, W, R = 0, 1, 2, 3  # grasping, non_task_movement, transport_with_object, transport_without_object


def labels(*runs):
    return np.concatenate([np.full(n, c) for c, n in runs])


def test_segments_round_trip():
    x = labels((G, 3), (W, 2), (R, 4))
    assert seg.to_segments(x) == [(0, 3, G), (3, 5, W), (5, 9, R)]
    np.testing.assert_array_equal(seg.from_segments(seg.to_segments(x)), x)
    assert seg.count_blocks(labels((G, 2), (W, 3), (R, 2), (G, 2), (W, 1), (N, 5))) == 2


def test_edit_score_by_hand():
    truth = labels((G, 5), (W, 5), (R, 5))
    assert seg.edit_score(truth, truth) == 100.0
    # One spurious segment: G W N W R vs G W R -> 2 insertions over max(5, 3) segments.
    predicted = labels((G, 5), (W, 2), (N, 1), (W, 2), (R, 5))
    assert seg.edit_score(predicted, truth) == pytest.approx(100 * (1 - 2 / 5))
    # Same segments, other boundaries: the edit score does not see boundaries.
    assert seg.edit_score(labels((G, 2), (W, 10), (R, 3)), truth) == 100.0


def test_f1_by_hand():
    truth = labels((G, 10), (W, 10), (R, 10))
    # G [0, 8) against [0, 10): IoU 0.8; W [8, 20) against [10, 20): 10/12; R exact.
    predicted = labels((G, 8), (W, 12), (R, 10))
    assert seg.f1_at(predicted, truth, 0.10) == pytest.approx(100.0)
    assert seg.f1_at(predicted, truth, 0.50) == pytest.approx(100.0)
    # At 0.85 only R passes: precision 1/3, recall 1/3.
    assert seg.f1_at(predicted, truth, 0.85) == pytest.approx(100 / 3)
    # A second predicted G segment cannot match the same true G: a false positive.
    split_g = labels((G, 4), (N, 1), (G, 5), (W, 10), (R, 10))
    # TP: G (first piece IoU 0.4 >= 0.1; the second piece finds G taken), W, R; FP: N, G -> P 3/5, R 3/3.
    assert seg.f1_at(split_g, truth, 0.10) == pytest.approx(100 * 2 * (3 / 5) / (3 / 5 + 1))


def _decoder():
    cycle = labels(*([(G, 5), (W, 6), (R, 5)] * 4), (N, 8), (G, 5), (W, 6), (R, 5))
    return seg.SegmentDecoder.fit([cycle], min_quantile=0.0, max_scale=2.0)


def test_decoder_measures_durations_and_order():
    decoder = _decoder()
    assert decoder.min_frames[G] == 5 and decoder.min_frames[W] == 6
    transitions = np.exp(np.asarray(decoder.log_transitions))
    assert transitions[G, W] > 0.5 and transitions[W, R] > 0.5  # the task's order
    assert transitions[W, G] < transitions[W, R]


def test_decoder_removes_flicker_and_counts_exactly():
    """Posteriors of 5 transfers with one-frame flickers (which one argmax per frame turns into
    extra segments): the decoder gives back exactly the 5 blocks and the true timeline."""
    truth = labels(*([(G, 6), (W, 8), (R, 6)] * 5))
    rng = np.random.default_rng(0)
    posteriors = np.full((truth.size, 4), 0.1)
    posteriors[np.arange(truth.size), truth] = 0.7
    flicker = rng.choice(truth.size, 12, replace=False)
    posteriors[flicker] = 0.1
    posteriors[flicker, W] = 0.7  # spurious "with object" frames everywhere
    argmax = posteriors.argmax(axis=1)
    assert seg.count_blocks(argmax) > 5
    decoder = seg.SegmentDecoder.fit([truth], min_quantile=0.0, max_scale=2.0)
    decoded = decoder.decode(np.log(posteriors))
    assert seg.count_blocks(decoded) == 5
    np.testing.assert_array_equal(decoded, truth)
    assert seg.edit_score(decoded, truth) == 100.0 and seg.edit_score(argmax, truth) < 100.0


def test_decoder_respects_minimum_durations():
    decoder = seg.SegmentDecoder((3, 3, 3, 3), (50, 50, 50, 50),
                                 tuple(tuple(-np.inf if i == j else np.log(1 / 3) for j in range(4)) for i in range(4)),
                                 tuple(np.log([0.25] * 4)))
    scores = np.log(np.full((12, 4), 0.05))
    scores[:, G] = np.log(0.85)
    one = scores.copy()
    one[5] = np.log([0.05, 0.05, 0.85, 0.05])  # one frame of W: not worth a 3-frame segment
    assert (decoder.decode(one) == G).all()
    two = one.copy()
    two[6] = one[5]  # two frames of W: a W segment, stretched to the minimum of 3 frames
    decoded = decoder.decode(two)
    assert [(e - s, c) for s, e, c in seg.to_segments(decoded) if c == W] == [(3, W)]
    assert all(end - start >= 3 for start, end, _ in seg.to_segments(decoded))


def test_decoder_input_checks():
    decoder = _decoder()
    with pytest.raises(ValueError, match="3 classes of scores, the decoder has 4"):
        decoder.decode(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="1 <= min <= max"):
        seg.SegmentDecoder((0, 1), (1, 1), ((-np.inf, 0.0), (0.0, -np.inf)), (0.0, 0.0))
