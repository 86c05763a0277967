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


def _fake_run(path, model, probabilities_by_split, labels_by_split, split=None):
    import json

    from strokevision_jax import report as report_lib

    path.mkdir(parents=True)
    config = {"model": model, "preset": "cpu", "overrides": {}, "seed": 0}
    if split is not None:
        config["split"] = split
    (path / "run_config.json").write_text(json.dumps(config))
    for filename, part in ((report_lib.PREDICTIONS, "test"), (report_lib.VALIDATION_PREDICTIONS, "validation")):
        p = np.asarray(probabilities_by_split[part])
        refs = [(part, i) for i in range(len(p))]
        report_lib.write_predictions(path / filename, refs, np.asarray(labels_by_split[part]), np.log(np.maximum(p, 1e-9)))
    return path


def test_fuse_command_on_two_runs(tmp_path, capsys):
    import json

    from strokevision_jax import fuse
    from strokevision_jax.models import registry

    video_model = next(s.name for s in registry.MODELS.values() if s.family.input_kind == "video")
    skeleton_model = next(s.name for s in registry.MODELS.values() if s.family.input_kind == "keypoints")
    labels = {"validation": [0, 0, 1, 1], "test": [0, 1, 2, 3]}
    eye = np.eye(4) * 0.6 + 0.1
    video = _fake_run(tmp_path / "v", video_model,
                      {"validation": [[.5, .5, 0, 0], [.9, .1, 0, 0], [.5, .5, 0, 0], [.1, .9, 0, 0]],
                       "test": [[.4, .1, .1, .4], [.1, .7, .1, .1], [.1, .1, .7, .1], [.4, .1, .1, .4]]}, labels)
    skeleton = _fake_run(tmp_path / "s", skeleton_model,
                         {"validation": [[.9, .1, 0, 0], [.5, .5, 0, 0], [.1, .9, 0, 0], [.5, .5, 0, 0]], "test": eye},
                         labels)
    assert fuse.main([f"--video={video}", f"--skeleton={skeleton}", f"--out={tmp_path / 'f'}"]) == 0
    result = json.loads((tmp_path / "f" / "fusion.json").read_text())
    assert result["weight"] == 0.5  # the symmetric validation scores: an even mix
    assert result["test"]["fusion"]["accuracy"] == 1.0 and result["test"]["video"]["accuracy"] == 0.75
    assert "weight of the video run 0.50" in capsys.readouterr().out

    other_fold = _fake_run(tmp_path / "s2", skeleton_model, {"validation": eye, "test": eye}, labels,
                           split={"name": "fold1"})
    assert fuse.main([f"--video={video}", f"--skeleton={other_fold}"]) == 2
    assert "different splits or folds" in capsys.readouterr().err
    assert fuse.main([f"--video={video}", f"--skeleton={video}"]) == 2
    assert "both video runs" in capsys.readouterr().err


def test_fused_model_mixes_each_window_of_the_two_runs():
    from strokevision_jax import fuse

    class Fake:
        clip_frames, batch_size, checkpoint_id, recipe = 30, 8, "step 1", None

        def __init__(self, value):
            self.value = np.asarray(value)
            self.name, self.workdir = f"model{value.index(max(value))}", "runs/x"

        def probabilities(self, records):
            return np.tile(self.value, (len(records), 1))

    model = fuse.FusedModel(Fake([1.0, 0, 0, 0]), Fake([0, 0, 0.5, 0.5]), 0.25)
    np.testing.assert_allclose(model.probabilities([{}, {}]), [[0.25, 0, 0.375, 0.375]] * 2)
    assert model.clip_frames == 30 and "weight 0.25" in model.checkpoint_id and model.name == "model0 + model2"
