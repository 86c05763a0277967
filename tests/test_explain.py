"""explain / attribution: Grad-CAM reads the right gradient, integrated gradients are complete,
both maps change when the weights are randomised (Adebayo et al., 2018), and the command writes
its maps for a real run (or nothing, on bad input)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from strokevision_jax import attribution, explain, inference, presets, train
from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.steps import input_adapter
from strokevision_jax.weights import create_model


def _weights(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, (params, rest)


def _video_model(seed: int):
    return create_model(presets.recipe("r2plus1d", "cpu"), NUM_CLASSES, seed, None, None)


def _clip(seed: int = 0):
    """A (1, 8, 42, 56, 3) clip with structure: a bright moving square on noise."""
    rng = np.random.default_rng(seed)
    clip = rng.normal(0.0, 0.3, (1, 8, 42, 56, 3)).astype(np.float32)
    for t in range(8):
        clip[0, t, 10:22, 4 + 5 * t:16 + 5 * t] += 2.0
    return jnp.asarray(clip)


def _rank_correlation(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.ravel(x))) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def test_grad_cam_weights_are_the_gradient_of_the_logit_at_the_stage():
    """alpha = mean over (T', H', W') of d logit_c / d layer3, checked against running layer4,
    the pooling and the classifier by hand on the stage's activation."""
    model = _video_model(0)
    graphdef, weights = _weights(model)
    video = _clip()
    out = attribution.grad_cam(graphdef, weights, video, "layer3")
    activation = model.features(video)["layer3"]

    def head(x):
        x = model.layer4(x, train=False)
        return model.fc(jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)))[0]

    gradients = jax.jit(jax.jacrev(head))(activation)  # (C, 1, T', H', W', K)
    np.testing.assert_allclose(out["weights"][:, 0], gradients[:, 0].mean(axis=(1, 2, 3)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["logits"], nnx.jit(lambda m, v: m(v))(model, video), rtol=1e-5, atol=1e-6)
    maps = np.asarray(out["maps"])
    assert maps.shape == (NUM_CLASSES, 1, 8, 42, 56)
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(2, 3, 4)), 1.0)


def test_grad_cam_maps_change_when_the_weights_are_randomised():
    """Adebayo et al.'s model-randomisation test: re-initialising the top of the network (the
    classifier and the stage read, cascading) must change the maps; the same weights give the
    same map."""
    video = _clip()
    model = _video_model(0)
    graphdef, weights = _weights(model)
    reference = np.asarray(attribution.grad_cam(graphdef, weights, video, "layer3")["coarse"])
    again = np.asarray(attribution.grad_cam(graphdef, weights, video, "layer3")["coarse"])
    np.testing.assert_array_equal(reference, again)
    other = _video_model(1)
    model.fc, model.layer4 = other.fc, other.layer4  # cascading randomisation: classifier, then layer4
    graphdef, weights = _weights(model)
    randomised = np.asarray(attribution.grad_cam(graphdef, weights, video, "layer3")["coarse"])
    for c in range(NUM_CLASSES):
        assert _rank_correlation(reference[c], randomised[c]) < 0.8, c


def test_mvit_and_swin_maps_come_from_their_stages():
    """The transformers: MViT's tokens (class token dropped) and Swin's stages are laid out as
    (T', H', W') grids; the logits are the model's."""
    for name in ("mvit_v2_s", "swin3d_t"):
        recipe = presets.recipe(name, "cpu")
        model = create_model(recipe, NUM_CLASSES, 0, None, None)
        crop = recipe.video.crop
        video = jax.random.normal(jax.random.key(0), (1, recipe.video.num_frames, *crop, 3))
        graphdef, weights = _weights(model)
        stage = attribution.stage_names(model)[-1]
        out = attribution.grad_cam(graphdef, weights, video, stage)
        np.testing.assert_allclose(out["logits"], nnx.jit(lambda m, v: m(v))(model, video), rtol=1e-4, atol=1e-5)
        assert out["maps"].shape == (NUM_CLASSES, 1, recipe.video.num_frames, *crop)
        assert np.isfinite(np.asarray(out["maps"])).all()


def _skeleton():
    recipe = presets.recipe("motionbert", "cpu")
    rng = np.random.default_rng(0)
    t = np.arange(recipe.skeleton.num_frames)[:, None]
    keypoints = rng.normal(0.0, 0.2, (1, 2, recipe.skeleton.num_frames, 17, 3)).astype(np.float32)
    keypoints[..., 0] += 0.3 * np.sin(t / 4.0)  # every joint sways
    keypoints[..., 2] = 0.9
    keypoints[:, 1] = 0.0  # the second person is absent
    return recipe, jnp.asarray(keypoints)


def test_integrated_gradients_are_complete_and_change_with_the_weights():
    recipe, keypoints = _skeleton()
    adapt = input_adapter(recipe, train=False)
    model = create_model(recipe, NUM_CLASSES, 0, None, None)
    graphdef, weights = _weights(model)
    out = attribution.integrated_gradients(graphdef, weights, keypoints, adapt, steps=32)
    change = np.asarray(out["logits"] - out["baseline_logits"]).T  # (C, N)
    sums = np.asarray(out["attributions"]).reshape(NUM_CLASSES, 1, -1).sum(-1)
    np.testing.assert_allclose(sums - change, out["completeness_error"], atol=1e-6)
    assert np.abs(out["completeness_error"]).max() < 0.02 * np.abs(change).max()
    np.testing.assert_allclose(out["logits"], nnx.jit(lambda m, v: m(v))(model, keypoints), rtol=1e-5, atol=1e-6)
    maps = np.asarray(out["maps"])
    assert maps.shape == (NUM_CLASSES, 1, keypoints.shape[2], 17)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), sums, rtol=1e-4, atol=1e-6)
    # the motionless baseline: a clip that does not move gets no attribution at all
    still = attribution.motionless_baseline(keypoints)
    assert np.abs(np.asarray(attribution.integrated_gradients(graphdef, weights, still, adapt, steps=4)
                             ["attributions"])).max() < 1e-9
    other = create_model(recipe, NUM_CLASSES, 1, None, None)
    model.head = other.head
    graphdef, weights = _weights(model)
    randomised = np.asarray(attribution.integrated_gradients(graphdef, weights, keypoints, adapt, steps=32)["maps"])
    for c in range(NUM_CLASSES):
        assert _rank_correlation(maps[c], randomised[c]) < 0.8, c


@pytest.fixture(scope="module")
def skeleton_run(small_data_dir, tmp_path_factory):
    """A one-epoch MotionBERT (cpu preset) on synthetic_small, made by the train command."""
    workdir = tmp_path_factory.mktemp("run") / "motionbert"
    assert train.main(["--model=motionbert", "--preset=cpu", "--dataset=synthetic_small", "--epochs=1",
                       f"--workdir={workdir}", f"--data_dir={small_data_dir}"]) == 0
    return workdir


def test_the_command_explains_the_first_test_clip_of_a_run(skeleton_run, small_data_dir, tmp_path, capsys):
    out = tmp_path / "maps"
    assert explain.main([f"--workdir={skeleton_run}", f"--data_dir={small_data_dir}", f"--out={out}",
                         "--steps=8"]) == 0
    reports = list(out.glob("*.json"))
    assert len(reports) == 1
    stem = reports[0].stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for suffix in (".json", ".npz", ".png", "_transport.png", ".gif"))
    report = json.loads(reports[0].read_text())
    assert report["method"] == "integrated-gradients" and report["layout"] == "h36m"
    assert abs(sum(report["probabilities"].values()) - 1.0) < 1e-4
    maps = np.load(out / f"{stem}.npz")["maps"]
    assert maps.shape == (NUM_CLASSES, 30, 17)
    for c, entry in enumerate(report["classes"].values()):
        np.testing.assert_allclose(entry["per_frame"], maps[c].sum(axis=1), atol=1e-5)
    # the probabilities are those the run's evaluation gives the clip (skeleton runs: one view)
    model = inference.load_run(skeleton_run)
    clip_id, record = explain.find_clip(model, report["clip"], small_data_dir)
    assert clip_id == stem and report["label"] is not None
    np.testing.assert_allclose(list(report["probabilities"].values()), model.probabilities([record])[0], atol=1e-5)
    assert "integrated-gradients" in capsys.readouterr().out


def test_a_video_model_explained_end_to_end(tmp_path):
    """explain_record + the pictures for a video network (untrained weights: the plumbing)."""
    recipe = presets.recipe("r2plus1d", "cpu")
    network = create_model(recipe, NUM_CLASSES, 0, None, None)
    graphdef, weights = _weights(network)
    state = type("State", (), {"eval_weights": lambda self: weights})()
    model = inference.TrainedModel(recipe, tmp_path, state, None, 1, "init", (64, 86), graphdef)
    rng = np.random.default_rng(0)
    record = {"video": rng.integers(0, 255, (30, 64, 86, 3), dtype=np.uint8),
              "keypoints": rng.uniform(10, 60, (30, 17, 2)).astype(np.float32),
              "keypoint_scores": np.full((30, 17), 0.9, np.float32)}
    result = explain.explain_record(model, record)
    assert result["layer"] == "layer3"  # layer4 has pooled time to one step
    report = explain.summary(result, "clip", model, 2)
    from strokevision_jax import explain_plots

    paths = explain_plots.draw(result, report, tmp_path, "clip")
    assert all(p.stat().st_size > 1000 for p in paths)
    assert report["label"] == "transport_with_object" and len(report["classes"]) == NUM_CLASSES


def test_bad_input_ends_in_a_clear_error_and_writes_nothing(skeleton_run, small_data_dir, tmp_path, capsys):
    out = tmp_path / "maps"
    assert explain.main([f"--workdir={skeleton_run}", f"--data_dir={small_data_dir}", f"--out={out}",
                         "--clip=P999_C9999"]) == 2
    assert "--clip=P999_C9999" in capsys.readouterr().err
    assert not out.exists()
    assert explain.main([f"--workdir={tmp_path}", f"--out={out}"]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert explain.main([f"--workdir={skeleton_run}", "--keypoints=x.json", f"--out={out}"]) == 2
    assert "--keypoints goes with --video" in capsys.readouterr().err
    assert not out.exists()
