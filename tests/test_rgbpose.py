"""The two-pathway RGB + pose network (early fusion): shapes, laterals, heads, its input
pipeline, a training run on tiny data, and its converter table."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from checkpoints_convert import api as convert
from strokevision_jax import fusion, presets, train
from strokevision_jax.data import pipeline
from strokevision_jax.data.pipeline import SkeletonConfig, VideoConfig
from strokevision_jax.models import registry, rgbpose

TINY = dataclasses.replace(rgbpose.PRESETS["tiny"], num_classes=4)


def _inputs(batch=2, frames=4, size=(32, 32), cfg=TINY, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(batch, frames, *size, 3)).astype(np.float32)
    heatmaps = rng.uniform(size=(batch, cfg.speed_ratio * frames, size[0] // 4, size[1] // 4, 17))
    return {"video": jnp.asarray(video), "heatmaps": jnp.asarray(heatmaps, jnp.float32)}


def test_shapes_heads_and_fused_prediction():
    model = rgbpose.RGBPoseConv3D(TINY, rngs=nnx.Rngs(0))
    heads = model.heads(_inputs(), train=False)
    assert {k: v.shape for k, v in heads.items()} == {"rgb": (2, 4), "pose": (2, 4), "fused": (2, 4)}
    expected = (jax.nn.softmax(heads["rgb"]) + jax.nn.softmax(heads["pose"])) / 2
    np.testing.assert_allclose(np.exp(heads["fused"]), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model(_inputs(), train=False), heads["fused"])
    # Widths: each receiving stage's first block reads its input plus the lateral.
    rgb3 = model.backbone.rgb_path.layer3[0].conv1.conv.kernel.shape
    pose2 = model.backbone.pose_path.layer2[0].conv1.conv.kernel.shape
    assert rgb3[-2] == 4 * 8 + TINY.rgb_lateral_width(2)  # RGB layer2 outputs 4 x 8
    assert pose2[-2] == 4 * 4 + TINY.pose_lateral_width(1)  # pose layer1 outputs 4 x 4
    assert model.backbone.pose_path.layer1_lateral.conv.kernel.shape == (7, 1, 1, 32, TINY.pose_lateral_width(1))


def test_the_published_configuration_matches_pyskl_widths():
    cfg = rgbpose.RGBPoseConfig()
    assert cfg.feature_channels == (2048, 512)  # pyskl's RGBPoseHead in_channels
    # laterals: pose layer1 (128) -> 128 into RGB layer3, RGB layer2 (512) -> 32 into pose layer2
    assert [cfg.rgb_lateral_width(s) for s in (2, 3)] == [128, 256]
    assert [cfg.pose_lateral_width(s) for s in (1, 2)] == [32, 64]


def test_bad_inputs_are_named():
    model = rgbpose.RGBPoseConv3D(TINY, rngs=nnx.Rngs(0))
    inputs = _inputs()
    with pytest.raises(ValueError, match="lack heatmaps"):
        model({"video": inputs["video"]})
    with pytest.raises(ValueError, match="speed_ratio=2"):
        model({"video": inputs["video"], "heatmaps": inputs["heatmaps"][:, :4]})
    with pytest.raises(ValueError, match="laterals need equal sizes"):
        model({"video": inputs["video"], "heatmaps": jnp.zeros((2, 8, 16, 16, 17))})
    with pytest.raises(ValueError, match="4 stages"):
        rgbpose.RGBPoseConfig(rgb_stage_blocks=(1, 1, 1))


def _pathway_grads(cfg, head):
    model = rgbpose.RGBPoseConv3D(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    inputs = _inputs(cfg=cfg)

    def score(params):
        return jnp.sum(nnx.merge(graphdef, params, rest).heads(inputs, train=False)[head])

    grads = jax.grad(score)(params)
    stems = grads["backbone"]
    return (float(jnp.abs(stems["rgb_path"]["conv1"]["conv"]["kernel"][...]).sum()),
            float(jnp.abs(stems["pose_path"]["conv1"]["conv"]["kernel"][...]).sum()))


def test_laterals_carry_gradients_across_pathways():
    # zero_init_residual would make every block the identity at first; switch it off so the
    # gradients flow through the blocks as after training.
    cfg = dataclasses.replace(TINY, zero_init_residual=False)
    rgb_from_fused, pose_from_fused = _pathway_grads(cfg, "fused")
    assert rgb_from_fused > 0 and pose_from_fused > 0
    # Each pathway's own head reaches the other pathway's stem only through the laterals.
    assert _pathway_grads(cfg, "rgb")[1] > 0 and _pathway_grads(cfg, "pose")[0] > 0
    apart = dataclasses.replace(cfg, lateral=False)
    assert _pathway_grads(apart, "rgb")[1] == 0 and _pathway_grads(apart, "pose")[0] == 0


def test_transposed_lateral_conv_matches_torch():
    torch = pytest.importorskip("torch")
    for kernel, stride in ((7, 4), (7, 2), (3, 2)):
        reference = torch.nn.ConvTranspose3d(6, 5, (kernel, 1, 1), stride=(stride, 1, 1),
                                             padding=((kernel - 1) // 2, 0, 0), bias=False).double()
        x = torch.randn(2, 6, 8, 3, 4, dtype=torch.float64)
        expected = reference(x, output_size=(2, 5, 8 * stride, 3, 4)).detach().numpy()
        layer = rgbpose.TemporalConvTranspose(6, 5, kernel, stride, dtype=None, param_dtype=jnp.float32,
                                              rngs=nnx.Rngs(0))
        layer.kernel.value = jnp.asarray(rgbpose._conv_transpose(reference.weight.detach().numpy(), None))
        out = layer(jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1), jnp.float32))
        np.testing.assert_allclose(np.asarray(out).transpose(0, 4, 1, 2, 3), expected, atol=1e-5)


def _record(seed=0, frames=30, size=(120, 160)):
    """A clip whose frames and keypoints do not move (so frame sampling changes nothing)."""
    rng = np.random.default_rng(seed)
    keypoints = np.repeat(rng.uniform([40, 30], [120, 90], size=(1, 17, 2)).astype(np.float32), frames, 0)
    keypoints[:, 3] = 0.0  # a missing joint (left ear) stays missing
    frame = rng.integers(0, 255, (1, *size, 3), dtype=np.uint8)
    return {"video": np.repeat(frame, frames, 0), "keypoints": keypoints,
            "keypoint_scores": np.ones((frames, 17), np.float32), "label": 2}


def test_paired_transform_puts_the_keypoints_in_the_video_crop():
    # the crop is the whole 120 x 160 frame; the heatmap frame is a quarter of it
    video = VideoConfig(num_frames=4, resize=(120, 160), crop=(120, 160), flip=True)
    skeleton = SkeletonConfig(num_frames=8, layout="coco", normalization="compact", num_persons=1,
                              compact_size=(30, 40), compact_eval_size=(30, 40))
    record = _record()
    out = pipeline.paired_transform(video, skeleton, train=False)(record, None)
    assert out["video"].shape == (4, 120, 160, 3) and out["keypoints"].shape == (1, 8, 17, 3)
    np.testing.assert_allclose(out["keypoints"][0, :, :, :2], np.broadcast_to(record["keypoints"][0] / 4, (8, 17, 2)),
                               rtol=1e-6)
    assert (out["keypoints"][0, :, 3, :2] == 0).all()
    # training: one flip decision mirrors both inputs (COCO 1 / 2 = left / right eye, 3 / 4 ears)
    transform = pipeline.paired_transform(video, skeleton, train=True)
    mirrored_count = 0
    for seed in range(8):
        o = transform(record, np.random.default_rng(seed))
        mirrored = np.allclose(o["video"], out["video"][:, :, ::-1])
        assert mirrored or np.allclose(o["video"], out["video"])
        if mirrored:
            mirrored_count += 1
            np.testing.assert_allclose(o["keypoints"][0, :, 2, 0], 40 - record["keypoints"][0, 1, 0] / 4, rtol=1e-5)
            np.testing.assert_allclose(o["keypoints"][0, :, 2, 1], record["keypoints"][0, 1, 1] / 4, rtol=1e-5)
            assert (o["keypoints"][0, :, 4, :2] == 0).all()
        else:
            np.testing.assert_allclose(o["keypoints"], out["keypoints"], rtol=1e-6)
    assert 0 < mirrored_count < 8  # both cases drawn
    with pytest.raises(ValueError, match="normalization='compact'"):
        pipeline.paired_transform(video, dataclasses.replace(skeleton, normalization="screen"), train=False)


def tiny_recipe(**changes) -> presets.Recipe:
    recipe = presets.recipe("rgbpose", "cpu").replace(
        dataset="synthetic_small", epochs=1, batch_size=8,
        video=VideoConfig(num_frames=4, resize=(36, 48), crop=(32, 32), region="person"),
        skeleton=SkeletonConfig(num_frames=8, layout="coco", normalization="compact", num_persons=1,
                                compact_size=(8, 8), compact_eval_size=(8, 8)),
        model_overrides=(("rgb_base_channels", 4), ("rgb_stage_blocks", (1, 1, 1, 1)),
                         ("pose_base_channels", 4), ("pose_stage_blocks", (1, 1, 1)),
                         ("speed_ratio", 2), ("pose_lateral_infl", 4)))
    return recipe.replace(**changes)


def test_one_training_step_updates_both_pathways_and_the_laterals():
    from strokevision_jax import benchmark

    recipe = tiny_recipe(warmup_epochs=0.0)  # (a warm-up's first step has learning rate 0)
    model = train.create_model(recipe, 4, seed=0, log=None)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = train.make_optimizer(recipe, steps_per_epoch=4)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
    before = jax.tree.map(np.array, params)
    step = train.make_train_step(graphdef, tx, np.ones(4, np.float32), recipe.input_key, 0.0, 0,
                                 adapt=train.input_adapter(recipe, train=True))
    batch = benchmark.random_batch(recipe, train=True)
    assert set(recipe.input_key) <= set(batch)
    state, metrics = step(state, {k: batch[k] for k in (*recipe.input_key, "label")})
    assert np.isfinite(float(metrics["loss"]))
    # the loss is the sum of both heads' cross-entropies: about 2 log 4 at the start
    assert float(metrics["loss"]) == pytest.approx(2 * np.log(4), rel=0.1)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(changed["backbone"]["rgb_path"]["layer2_lateral"]))
    assert all(jax.tree.leaves(changed["backbone"]["pose_path"]["layer1_lateral"]))


def test_train_and_evaluate_on_tiny_data(small_data_dir, tmp_path):
    report = train.train_and_evaluate(tiny_recipe(), tmp_path / "run", small_data_dir, log=None)
    assert report["test"]["num_examples"] > 0 and 0 <= report["test"]["accuracy"] <= 1
    heads = report["test"]["heads"]  # each pathway's head, and their fusion (the run's prediction)
    assert set(heads) == {"rgb", "pose", "fused"}
    assert heads["fused"]["accuracy"] == pytest.approx(report["test"]["accuracy"])
    assert "rgb head: accuracy" in (tmp_path / "run" / "report.txt").read_text()
    from strokevision_jax import inference

    model = inference.load_run(tmp_path / "run", recipe=tiny_recipe(), seed=0)
    record = _record(size=(120, 160))
    probabilities = model.probabilities([record, record])
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_recipes_and_fusion_guards():
    recipe = presets.recipe("rgbpose", "cpu")
    assert recipe.input_key == ("video", "keypoints")
    with pytest.raises(ValueError, match="need heatmaps"):
        recipe.replace(heatmaps=None)
    with pytest.raises(ValueError, match="eval_flip"):
        recipe.replace(eval_flip=True)
    assert registry.get("rgbpose").family.modality == "rgb+skeleton"
    video = fusion.RunInfo("a", "video", "synthetic", None)
    both = fusion.RunInfo("b", "video+heatmaps", "synthetic", None)
    with pytest.raises(fusion.FusionError, match="already reads RGB and keypoints"):
        fusion.check_pair(video, both)


def test_converter_table_maps_every_pyskl_key():
    """A state_dict with pyskl's names and layouts (ConvTranspose3d weights are (in, out, ...))
    converts strictly onto the model, every array landing where it belongs."""
    spec = registry.get("rgbpose")
    overrides = {k: v for k, v in dataclasses.asdict(TINY).items()
                 if k not in ("num_classes", "dtype", "param_dtype")}
    model = spec.build(num_classes=4, rngs=nnx.Rngs(0), **overrides)
    leaves = {"scale": "weight", "mean": "running_mean", "var": "running_var"}
    state_dict, expected = {}, {}
    rng = np.random.default_rng(0)
    for path, shape in convert.variable_shapes(model).items():
        *module, leaf = map(str, path)
        value = rng.normal(size=shape).astype(np.float32)
        expected[path] = value
        if leaf != "kernel":
            state_dict[".".join(module) + "." + leaves.get(leaf, leaf)] = value
        elif len(shape) == 2:
            state_dict[".".join(module) + ".weight"] = value.T
        elif module[-2].endswith("_lateral") and module[1] == "pose_path":  # ConvTranspose3d
            state_dict[".".join(module) + ".weight"] = value.transpose(3, 4, 0, 1, 2)
        else:
            state_dict[".".join(module) + ".weight"] = value.transpose(4, 3, 0, 1, 2)
    state_dict["backbone.rgb_path.conv1.bn.num_batches_tracked"] = np.zeros((), np.int64)
    converted = convert.from_state_dict("rgbposeconv3d", state_dict, **overrides)
    for path, var in nnx.to_flat_state(nnx.state(converted, nnx.Any(nnx.Param, nnx.BatchStat))):
        np.testing.assert_array_equal(np.asarray(var.value), expected[tuple(path)], err_msg=str(path))
    with pytest.raises(convert.ConversionError):
        convert.from_state_dict("rgbposeconv3d", {**state_dict, "backbone.extra.weight": np.zeros(1)},
                                **overrides)


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_both_presets_feed_the_network_shapes_it_accepts(preset):
    """The recipe's RGB clip and heatmaps meet at the laterals (checked by tracing, not running)."""
    recipe = presets.recipe("rgbpose", preset)
    model = nnx.eval_shape(lambda: train.create_model(recipe, 4, seed=0, log=None))
    config = model.config
    assert recipe.skeleton.num_frames == config.speed_ratio * recipe.video.num_frames
    for is_train in (True, False):
        size = recipe.skeleton.compact_size if is_train else recipe.skeleton.compact_eval_size
        inputs = {"video": jax.ShapeDtypeStruct((2, recipe.video.num_frames, *recipe.video.crop, 3), jnp.float32),
                  "heatmaps": jax.ShapeDtypeStruct((2, recipe.skeleton.num_frames, *size, 17), jnp.float32)}
        graphdef, state = nnx.split(model)
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, inputs)
        assert out.shape == (2, 4)
