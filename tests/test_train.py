"""The training loop end to end on `synthetic_small`: train, validate, checkpoint, resume, report."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import loop, presets, train
from strokevision_jax import report as report_lib
from strokevision_jax.data.pipeline import VideoConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_recipe(**changes) -> presets.Recipe:
    recipe = presets.recipe("r2plus1d_18", "cpu").replace(
        dataset="synthetic_small", epochs=2, batch_size=8, learning_rate=1e-3,
        video=VideoConfig(num_frames=4, resize=(36, 48), crop=(32, 32)),
        model_overrides=(("base_width", 8),))
    return recipe.replace(**changes)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    dataset_lib.ensure_built("synthetic_small", path)
    return path


def test_weighted_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1, 1])
    weights = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_example = -log_softmax[np.arange(6), labels]
    expected = (weights[labels] * per_example).sum() / weights[labels].sum()
    got = train.weighted_cross_entropy(logits, labels, weights)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    expected_masked = (weights[labels] * per_example)[:4].sum() / weights[labels][:4].sum()
    np.testing.assert_allclose(float(train.weighted_cross_entropy(logits, labels, weights, mask)),
                               expected_masked, rtol=1e-5)


def test_class_weights_are_inverse_frequency():
    weights = train.class_weights(np.array([0, 0, 0, 1, 2, 3]), 4)
    np.testing.assert_allclose(weights, [6 / 12, 6 / 4, 6 / 4, 6 / 4])
    with pytest.raises(train.TrainingError, match="transport_without_object"):
        train.class_weights(np.array([0, 1, 2]), 4)


def test_weight_average_ramps_up_and_copies_non_float_leaves():
    import jax.numpy as jnp

    ema = {"w": jnp.zeros(3), "count": jnp.array(5, jnp.uint32)}
    new = {"w": jnp.ones(3), "count": jnp.array(6, jnp.uint32)}
    # Step 0: d = min(0.999, 1 / 10) = 0.1, so the average moves 90 % of the way.
    first = train.update_ema(ema, new, jnp.array(0), 0.999)
    np.testing.assert_allclose(np.asarray(first["w"]), 0.9, rtol=1e-6)
    assert int(first["count"]) == 6
    # Late in training the decay itself applies.
    late = train.update_ema(ema, new, jnp.array(100_000), 0.999)
    np.testing.assert_allclose(np.asarray(late["w"]), 0.001, rtol=1e-3)


def test_head_learning_rate_and_exponential_schedule():
    """MotionBERT's recipe: the head learns head_lr_scale times faster; x lr_decay per epoch."""
    import jax.numpy as jnp

    recipe = presets.recipe("motionbert", "paper").replace(
        optimizer="sgd", weight_decay=0.0, learning_rate=0.1, head_lr_scale=10.0, lr_decay=0.5,
        warmup_epochs=0.0, epochs=3)
    params = {"backbone": {"w": jnp.ones((2, 2))}, "head": {"fc2": {"kernel": jnp.ones((2, 2))}}}
    grads = {"backbone": {"w": jnp.full((2, 2), 2.0)}, "head": {"fc2": {"kernel": jnp.full((2, 2), 2.0)}}}
    tx = train.make_optimizer(recipe, steps_per_epoch=4)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["backbone"]["w"]), -0.2)
    np.testing.assert_allclose(np.asarray(updates["head"]["fc2"]["kernel"]), -2.0)
    schedule = train.learning_rate_schedule(recipe, 4, 0.1)
    assert [float(schedule(step)) for step in (0, 3, 4, 8)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_weight_decay_on_kernels_only_unless_decay_all():
    import jax.numpy as jnp

    params = {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zero = {"fc": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
    for decay_all, bias_update in ((False, 0.0), (True, -0.1 * 0.5)):
        recipe = tiny_recipe(optimizer="sgd", learning_rate=0.1, weight_decay=0.5, warmup_epochs=0.0,
                             decay_all=decay_all)
        tx = train.make_optimizer(recipe, steps_per_epoch=10)
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(np.asarray(updates["fc"]["kernel"]), -0.05, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(updates["fc"]["bias"]), bias_update, rtol=1e-6)


def test_poseconv3d_heatmaps_are_made_inside_the_step():
    recipe = presets.recipe("poseconv3d", "cpu")
    keypoints = np.zeros((2, 1, 16, 17, 3), np.float32)
    keypoints[..., 0], keypoints[..., 1], keypoints[..., 2] = 10.0, 20.0, 1.0
    train_maps = np.asarray(train.input_adapter(recipe, train=True)(keypoints))
    eval_maps = np.asarray(train.input_adapter(recipe, train=False)(keypoints))
    assert train_maps.shape == (2, 16, *recipe.skeleton.compact_size, 17)
    assert eval_maps.shape == (2, 16, *recipe.skeleton.compact_eval_size, 17)
    assert train_maps[0, 0, 20, 10, 0] == pytest.approx(1.0) and train_maps[0, 0, 0, 0, 0] == 0.0
    video = presets.recipe("r2plus1d_18", "cpu")
    assert train.input_adapter(video, train=True)(keypoints) is keypoints


def test_flip_view_averages_the_probabilities_of_both_views():
    import jax
    from flax import nnx

    recipe = tiny_recipe()
    model = train.create_model(recipe, 4, seed=0, log=None)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = train.TrainState(np.int32(0), params, rest, None)
    clips = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
    batch = {"video": clips, "label": np.array([0, 3]), "mask": np.array([1, 1])}
    weights = np.ones(4, np.float32)
    logits, _ = train.make_eval_step(graphdef, weights, "video", flip_view=True)(state, batch)
    one_view = np.asarray(train.make_eval_step(graphdef, weights, "video")(state, batch)[0])
    mirrored = np.asarray(train.make_eval_step(graphdef, weights, "video")(
        state, dict(batch, video=clips[:, :, :, ::-1]))[0])
    expected = (jax.nn.softmax(one_view) + jax.nn.softmax(mirrored)) / 2
    np.testing.assert_allclose(np.exp(np.asarray(logits)), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(one_view, mirrored)  # the two views differ, so the test can fail


def test_unknown_model_lists_the_valid_names(capsys):
    assert train.main(["--model=resnet50"]) == 2
    message = capsys.readouterr().err
    assert "--model: Unknown model 'resnet50'" in message
    assert "r2plus1d_18" in message and "r2plus1d -> r2plus1d_18" in message


def test_aliases_resolve():
    assert train.resolve_model("r2plus1d") == "r2plus1d_18"
    assert train.resolve_model("r3d_18") == "r3d_18"


def test_workdir_of_another_model_is_refused(tmp_path):
    train.check_workdir(tmp_path, {"model": "r3d_18", "preset": "cpu", "overrides": {}, "seed": 0})
    with pytest.raises(train.TrainingError, match="holds checkpoints of model 'r3d_18'"):
        train.check_workdir(tmp_path, {"model": "r2plus1d_18", "preset": "cpu", "overrides": {}, "seed": 0})


def test_unreadable_dataset_directory_names_the_path(tmp_path):
    version_dir = tmp_path / "strokevision" / "synthetic_small" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{ not json")
    with pytest.raises(dataset_lib.DatasetError, match=str(version_dir)):
        dataset_lib.load_source("train", "synthetic_small", tmp_path)


def test_train_resume_and_report(data_dir, tmp_path, monkeypatch, capfd):
    recipe = tiny_recipe()
    uninterrupted = train.train_and_evaluate(recipe, tmp_path / "a", data_dir, log=None)

    # Same run, interrupted after its first epoch, then rerun: resumes from the checkpoint.
    original = train.train_one_epoch
    calls = []

    def interrupt_second_epoch(run, state, epoch, log):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return original(run, state, epoch, log)

    monkeypatch.setattr(loop, "train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(recipe, tmp_path / "b", data_dir, log=None)
    monkeypatch.setattr(loop, "train_one_epoch", original)
    resumed = train.train_and_evaluate(recipe, tmp_path / "b", data_dir, log=None)
    assert calls == [0, 1]

    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    for a, b in zip(uninterrupted["history"], resumed["history"]):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert resumed["test"]["accuracy"] == pytest.approx(uninterrupted["test"]["accuracy"])
    assert resumed["test"]["confusion_matrix"] == uninterrupted["test"]["confusion_matrix"]

    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert set(saved["test"]) >= {"accuracy", "per_class_accuracy", "macro_f1", "confusion_matrix"}
    assert sum(map(sum, saved["test"]["confusion_matrix"])) == len(
        dataset_lib.load_source("test", "synthetic_small", data_dir))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (tmp_path / "b" / "confusion_matrix.png").exists()
    validation = report_lib.read_predictions(tmp_path / "b" / report_lib.VALIDATION_PREDICTIONS)
    assert len(validation) == len(dataset_lib.load_source("validation", "synthetic_small", data_dir))
    assert {row["split"] for row in validation} == {"validation"}

    # The newest checkpoint damaged (its metadata file truncated, as a full disk leaves it): the
    # rerun sets it aside, says so, goes back one epoch and ends exactly as the uninterrupted run.
    damaged = tmp_path / "c"
    shutil.copytree(tmp_path / "a", damaged, ignore=shutil.ignore_patterns("lock", "report.json"))
    meta = next((damaged / "checkpoints" / "latest" / "2").rglob("metadata"))
    meta.write_bytes(meta.read_bytes()[:5])
    lines = []
    again = train.train_and_evaluate(recipe, damaged, data_dir, log=lines.append)
    assert any("latest/2 is damaged and skipped" in line for line in lines), lines
    assert any("Resuming from the checkpoint of epoch 1" in line for line in lines), lines
    assert (damaged / "checkpoints" / "damaged" / "latest-2").is_dir()  # set aside, not deleted
    assert [r["epoch"] for r in again["history"]] == [1, 2]
    assert again["history"][1]["train_loss"] == pytest.approx(uninterrupted["history"][1]["train_loss"], rel=1e-5)
    assert again["test"]["confusion_matrix"] == uninterrupted["test"]["confusion_matrix"]
    assert "Traceback" not in capfd.readouterr().err

    # The finished run for inference: its best checkpoint through the evaluation transform gives
    # the probabilities its report wrote for the test clips.
    from strokevision_jax import inference, report
    from strokevision_jax.data.classes import CLASS_NAMES

    model = inference.load_run(tmp_path / "a", recipe=recipe)  # a run made from Python: no run_config
    source = dataset_lib.load_source("test", "synthetic_small", data_dir)
    rows = report.read_predictions(tmp_path / "a" / report.PREDICTIONS)[:10]
    probabilities = model.probabilities([source[int(row["index"])] for row in rows])
    expected = np.array([[float(row[f"p_{name}"]) for name in CLASS_NAMES] for row in rows])
    np.testing.assert_allclose(probabilities, expected, atol=2e-5)


def test_non_finite_loss_stops_with_a_message(data_dir, tmp_path, monkeypatch):
    original_loader = train.Run.loader

    def poisoned(self, split, epoch):
        for batch in original_loader(self, split, epoch):
            if split == "train":
                batch = dict(batch, video=np.full_like(batch["video"], np.nan))
            yield batch

    monkeypatch.setattr(train.Run, "loader", poisoned)
    with pytest.raises(train.TrainingError, match=r"Non-finite loss \(nan\) at epoch 1"):
        train.train_and_evaluate(tiny_recipe(epochs=1), tmp_path, data_dir, log=None)


_DEVICE_SCRIPT = """
import json, sys
import time
import jax, numpy as np
jax.config.update("jax_disable_most_optimizations", True)  # compile time dominates here
from strokevision_jax import train
started = time.time()
from tests.test_train import tiny_recipe
run = train.Run(tiny_recipe(), None, sys.argv[1], 0, 0, train.make_mesh())
state = run.initial_state
losses, first_step_leaf = [], None
for batch, _ in zip(run.loader("train", 0), range(3)):
    state, metrics = run.train_step(state, train.shard_batch(train._model_inputs(batch, "video"), run.data_sharding))
    losses.append(float(metrics["loss"]))
    if first_step_leaf is None:
        first_step_leaf = np.concatenate([np.ravel(x)[:4] for x in jax.tree.leaves(state.params)]).tolist()
print(f"{time.time() - started:.1f} s", file=sys.stderr)
print(json.dumps({"devices": jax.device_count(), "losses": losses, "first_step_leaf": first_step_leaf}))
"""


def _run_on_devices(count: int, data_dir) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, str(data_dir)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_one_device_result(data_dir):
    one, four = _run_on_devices(1, data_dir), _run_on_devices(4, data_dir)
    assert (one["devices"], four["devices"]) == (1, 4)
    # Three steps agree to float precision. (Over a long run they drift apart slowly: Adam divides
    # by sqrt(v) and so amplifies the reduction-order differences of the sharded BatchNorm.)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(four["first_step_leaf"], one["first_step_leaf"], rtol=1e-4, atol=1e-6)


def test_evaluate_rebuilds_the_architecture_of_a_pretrained_run(tmp_path, data_dir):
    """A --pretrained run has torchvision's full mc3_18, not the cpu preset's slim one: evaluate
    must rebuild that network and reproduce the run's test accuracy exactly."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from strokevision_jax import evaluate

    torch.manual_seed(0)
    checkpoint = tmp_path / "mc3_18_random.pth"
    torch.save(torchvision.models.video.mc3_18().state_dict(), checkpoint)
    recipe = presets.recipe("mc3_18", "cpu").replace(dataset="synthetic_small", epochs=1)
    workdir = tmp_path / "run"
    train.check_workdir(workdir, train.run_config(recipe, {"dataset": "synthetic_small", "epochs": 1}, 0,
                                                  str(checkpoint)))
    report = train.train_and_evaluate(recipe, workdir, data_dir, init=str(checkpoint), log=None, progress=False)
    again = evaluate.evaluate_workdir(workdir, data_dir, log=lambda *a: None)
    assert again["test"]["accuracy"] == report["test"]["accuracy"]
    assert again["test"]["confusion_matrix"] == report["test"]["confusion_matrix"]
