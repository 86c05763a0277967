"""Whole recordings: windows over a stream, per-frame probabilities, the trial's count, and the
decoder's posterior samples."""

import numpy as np
import pytest

from strokevision_jax import inference, segments, timeline

G, N, W, R = 0, 1, 2, 3


def labels(*runs):
    return np.concatenate([np.full(n, c) for c, n in runs])


def _chunks(num_frames, size):
    frames = np.arange(num_frames)
    for first in range(0, num_frames, size):
        part = frames[first:first + size]
        yield {"keypoints": part[:, None, None] * np.ones((1, 17, 2)), "keypoint_scores": np.ones((len(part), 17))}


@pytest.mark.parametrize("num_frames,chunk,stride", [(100, 7, 7), (100, 64, 7), (30, 4, 7), (61, 1, 3), (95, 200, 30)])
def test_sliding_windows_match_window_starts_whatever_the_chunks(num_frames, chunk, stride):
    windows = list(timeline.sliding_windows(_chunks(num_frames, chunk), 30, stride))
    assert [s for s, _ in windows] == inference.window_starts(num_frames, 30, stride).tolist()
    for start, record in windows:  # each window holds exactly its own frames
        np.testing.assert_array_equal(record["keypoints"][:, 0, 0], np.arange(start, start + 30))


def test_sliding_windows_of_a_short_stream_are_none():
    assert list(timeline.sliding_windows(_chunks(29, 10), 30, 7)) == []


def test_frame_probabilities_interpolate_between_window_centres():
    starts = np.array([0, 4])  # centres 1.5 and 5.5 for windows of 4 frames
    windows = np.array([[1.0, 0.0], [0.0, 1.0]])
    per_frame = timeline.frame_probabilities(starts, windows, 8, 4)
    np.testing.assert_allclose(per_frame[:, 1], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1])
    np.testing.assert_allclose(per_frame.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="shorter than one clip"):
        timeline.frame_probabilities(np.zeros(0, int), np.zeros((0, 2)), 8, 4)


def test_trial_count_takes_releases_within_the_trial_seconds_of_the_first_grasp():
    # fps 1, a 10 s trial from the first grasp at frame 3: releases at 6 and 12 inside, 16 outside.
    x = labels((N, 3), (G, 1), (W, 2), (R, 1), (G, 2), (W, 3), (R, 1), (G, 1), (W, 2), (N, 2))
    assert timeline.trial_count(x, fps=1.0, trial_seconds=10) == (2, 3)
    assert timeline.trial_count(x, fps=1.0, trial_seconds=100) == (3, 3)
    assert timeline.trial_count(labels((N, 5), (W, 3)), fps=1.0) == (0, None)


def _cycle_decoder():
    truth = labels(*([(G, 6), (W, 8), (R, 6)] * 5))
    return truth, segments.SegmentDecoder.fit([truth], min_quantile=0.0, max_scale=2.0)


def test_decode_counts_and_samples_agree_when_the_classifier_is_sure():
    truth, decoder = _cycle_decoder()
    probabilities = np.full((truth.size, 4), 0.02)
    probabilities[np.arange(truth.size), truth] = 0.94
    line = timeline.decode(probabilities, decoder, fps=1.0, evidence_frames=1.0, num_samples=50, trial_seconds=1000)
    assert line.count == 5 and line.count_argmax == 5 and line.start_frame == 0
    assert line.count_interval == (5, 5) and (line.sample_counts == 5).all()
    assert [s["label"] for s in line.segments()][:3] == ["grasping", "transport_with_object", "transport_without_object"]


def test_posterior_samples_spread_when_a_transfer_is_ambiguous():
    """The last transfer's frames are 50/50 between the transfer and non-task movement of the
    same length: the count is 4 or 5, and the posterior samples hold both about equally."""
    cycle = [(G, 6), (W, 8), (R, 6)]
    decoder = segments.SegmentDecoder.fit([labels(*(cycle * 4), (N, 20)), labels((N, 20), *(cycle * 4))],
                                          min_quantile=0.0, max_scale=2.0)
    truth = labels(*(cycle * 5))
    probabilities = np.full((truth.size, 4), 0.02)
    probabilities[np.arange(truth.size), truth] = 0.94
    last = slice(80, 100)
    probabilities[last] = 0.03
    probabilities[np.arange(80, 100), truth[last]] = 0.47
    probabilities[last, N] = 0.47
    line = timeline.decode(probabilities, decoder, fps=1.0, evidence_frames=1.0, num_samples=400, trial_seconds=1000)
    assert line.count in (4, 5)
    share = np.mean(line.sample_counts == 5)
    assert set(np.unique(line.sample_counts)) == {4, 5} and 0.1 < share < 0.9
    assert line.count_interval == (4, 5)


def test_samples_follow_the_exact_posterior_on_a_tiny_model():
    """Two classes, four frames, segments of 1-4 frames: the sampled frequency of each
    segmentation matches its probability enumerated by hand."""
    import itertools

    decoder = segments.SegmentDecoder((1, 1), (4, 4), ((-np.inf, np.log(1.0)), (np.log(1.0), -np.inf)),
                                      (np.log(0.5), np.log(0.5)))
    rng = np.random.default_rng(0)
    scores = np.log(rng.uniform(0.2, 0.8, (4, 2)))
    weights = {}
    for seq in itertools.product((0, 1), repeat=4):
        weights[seq] = np.exp(np.log(0.5) + scores[np.arange(4), list(seq)].sum())
    total = sum(weights.values())
    samples = decoder.sample(scores, 20000, np.random.default_rng(1))
    for seq, weight in weights.items():
        frequency = np.mean((samples == np.array(seq)).all(axis=1))
        assert frequency == pytest.approx(weight / total, abs=0.012)
    best = max(weights, key=weights.get)
    assert tuple(decoder.decode(scores)) == best


def test_tested_side_is_the_wrist_that_travels():
    t = np.linspace(0, 6.28, 50)
    keypoints = np.zeros((50, 17, 2))
    keypoints[:, 10] = np.stack([50 + 30 * np.sin(t), 40 + 0 * t], axis=1)  # right wrist moves
    keypoints[:, 9] = [20, 60]
    assert timeline.tested_side(keypoints, np.ones((50, 17))) == "right"
    assert timeline.tested_side(keypoints, np.zeros((50, 17))) is None


def test_adapting_to_the_trial_shares_moves_the_recording_mean_to_them():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 6, 1, 1], size=500)  # a classifier that says non-task too often
    shares = np.array([0.2, 0.35, 0.25, 0.2])
    adapted = timeline.adapt_to_shares(probabilities, shares)
    np.testing.assert_allclose(adapted.sum(axis=1), 1.0)
    # one multiplicative step: much nearer the shares than before; every frame's odds between two
    # classes scaled by the same factor (the recording's evidence is re-weighted, not reordered)
    assert np.abs(adapted.mean(axis=0) - shares).max() < 0.5 * np.abs(probabilities.mean(axis=0) - shares).max()
    shift = np.log(adapted[:, 0] / adapted[:, 1]) - np.log(probabilities[:, 0] / probabilities[:, 1])
    np.testing.assert_allclose(shift, shift[0])
    assert shift[0] > 0  # grasping gains on the over-predicted non-task class
    np.testing.assert_allclose(timeline.adapt_to_shares(probabilities, shares, 0.0), probabilities)


def test_lognormal_durations_are_a_normalised_distribution_that_prefers_typical_lengths():
    truth = labels(*([(G, 6), (W, 8), (R, 6)] * 5), (N, 20))
    decoder = segments.SegmentDecoder.fit([truth], min_quantile=0.0, max_scale=3.0, durations="lognormal")
    table = decoder.log_duration()
    for c in range(4):
        inside = table[c, decoder.min_frames[c]:decoder.max_frames[c] + 1]
        assert np.exp(inside).sum() == pytest.approx(1.0)
        assert np.isneginf(table[c, :decoder.min_frames[c]]).all()
    assert int(np.argmax(table[W])) == 8 and int(np.argmax(table[G])) == 6
    uniform = segments.SegmentDecoder.fit([truth], min_quantile=0.0, max_scale=3.0)
    assert uniform.duration_log_mean is None and (uniform.log_duration()[W, 8:25] == 0).all()
    with pytest.raises(ValueError, match="durations='gamma'"):
        segments.SegmentDecoder.fit([truth], durations="gamma")


def test_windows_stream_from_an_endless_recording_with_a_bounded_buffer():
    """The first windows come out of an endless stream of chunks, and no window's buffer grows:
    memory does not depend on the recording's length."""
    import itertools

    pulled = []

    def endless():
        for index in itertools.count():
            pulled.append(index)
            yield {"keypoints": np.full((16, 17, 2), index, np.float32), "keypoint_scores": np.ones((16, 17))}

    windows = list(itertools.islice(timeline.sliding_windows(endless(), 30, 7), 500))
    assert [s for s, _ in windows[:3]] == [0, 7, 14] and windows[-1][0] == 499 * 7
    assert len(pulled) <= (499 * 7 + 30) // 16 + 2  # chunks read only as far as the windows need
    assert max(record["keypoints"].base.shape[0] if record["keypoints"].base is not None else 30
               for _, record in windows) <= 30 + 16 + 7
