"""Late fusion: the weight chosen on hand-made validation scores, and pairs that cannot be fused."""

import numpy as np
import pytest

from strokevision_jax import fusion


def test_the_weight_goes_to_the_run_that_is_right_on_validation():
    labels = np.array([0, 1, 2, 3, 0, 1])
    good = np.full((6, 4), 0.1)
    good[np.arange(6), labels] = 0.7
    uninformative = np.full((6, 4), 0.25)
    assert fusion.choose_weight(good, uninformative, labels).weight == 1.0
    assert fusion.choose_weight(uninformative, good, labels).weight == 0.0


def test_complementary_runs_are_mixed_by_hand_computed_log_loss():
    """The video run is sure and right on the first two clips, unsure on the last two; the
    skeleton run the other way round: an equal mix is best."""
    labels = np.array([0, 0, 1, 1])
    video = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5], [0.5, 0.5]])
    skeleton = video[::-1, ::-1].copy()
    choice = fusion.choose_weight(video, skeleton, labels, grid=[0.0, 0.5, 1.0])
    # log-loss at w: -mean(log of the true class): w = 0.5 gives 0.7 everywhere
    assert choice.weight == 0.5 and choice.log_loss == pytest.approx(-np.log(0.7))
    assert choice.table[0][1] == pytest.approx(-np.mean(np.log([0.5, 0.5, 0.9, 0.9])))
    assert choice.accuracy == 1.0
    np.testing.assert_allclose(fusion.fuse(video, skeleton, 0.5), 0.5 * video + 0.5 * skeleton)


def test_ties_go_to_the_even_mix():
    labels = np.array([0, 1])
    same = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert fusion.choose_weight(same, same.copy(), labels).weight == 0.5


def test_pairs_that_cannot_be_fused_are_refused():
    video = fusion.RunInfo("runs/r2plus1d", "video", "synthetic", None)
    skeleton = fusion.RunInfo("runs/motionbert", "keypoints", "synthetic", None)
    fusion.check_pair(video, skeleton)
    with pytest.raises(fusion.FusionError, match="both video runs"):
        fusion.check_pair(video, fusion.RunInfo("runs/r3d", "video", "synthetic", None))
    with pytest.raises(fusion.FusionError, match="both skeleton runs"):
        fusion.check_pair(fusion.RunInfo("runs/pc3d", "heatmaps", "synthetic", None), skeleton)
    with pytest.raises(fusion.FusionError, match="give the video run first"):
        fusion.check_pair(skeleton, video)
    with pytest.raises(fusion.FusionError, match="'synthetic_small'"):
        fusion.check_pair(video, fusion.RunInfo("runs/mb", "keypoints", "synthetic_small", None))
    with pytest.raises(fusion.FusionError, match="different splits or folds"):
        fusion.check_pair(video, fusion.RunInfo("runs/mb", "keypoints", "synthetic", {"name": "fold1"}))
    with pytest.raises(fusion.FusionError, match="computed on different clips"):
        fusion.fuse(np.zeros((3, 4)), np.zeros((2, 4)), 0.5)
