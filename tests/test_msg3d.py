"""MS-G3D (pyskl, COCO graph): parity with upstream's outputs, converter strictness, tiny preset.

The golden fixtures (../shared/fixtures/skeleton/msg3d_coco*.{pth,npz,json}, see its
README.md) hold pyskl's eval-mode outputs for random weights; the .pth files go through the
user-facing `load_torch_checkpoint` and every compared array must satisfy
|ours - upstream| <= ATOL + RTOL * |upstream| elementwise (the README's pyskl tolerance).
Our intermediates are channels-last; they are transposed to upstream's layout here.
"""

import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from checkpoints_convert import api, load_torch_checkpoint
from checkpoints_convert.rules import ConversionError, map_state_dict
from checkpoints_convert.torch_io import read_checkpoint
from strokevision_jax.models import fast_init, registry
from strokevision_jax.models import graph as graph_lib
from strokevision_jax.models import msg3d as family
from strokevision_jax.models import msg3d as msg3d_lib

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "skeleton"
ATOL = RTOL = 1e-4
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "msg3d_coco.pth").is_file(),
    reason=f"MS-G3D golden fixtures not found in {FIXTURES}")


def _fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _upstream_layout(key: str, array) -> np.ndarray:
    """Our channels-last output -> pyskl's layout of the fixture key."""
    array = np.asarray(array)
    if key == "features":  # (N, M, T, V, C) -> (N, M, C, T, V)
        return array.transpose(0, 1, 4, 2, 3)
    if key == "data_bn":  # (N, T, M*V*C) -> (N, M*V*C, T)
        return array.transpose(0, 2, 1)
    if array.ndim == 4:  # (N*M, T, V, C) -> (N*M, C, T, V)
        return array.transpose(0, 3, 1, 2)
    return array


@needs_fixtures
@pytest.mark.parametrize("name", ["msg3d_coco", "msg3d_coco_small"])
def test_fixture_parity(name):
    meta = _fixture_json(name)
    backbone = meta["constructor"]["backbone_defaults_in_effect"]
    config = {key: backbone[key] for key in
              ("base_channels", "num_gcn_scales", "num_g3d_scales", "num_person")}
    model = load_torch_checkpoint("msg3d", FIXTURES / f"{name}.pth", **config)
    reference = np.load(FIXTURES / f"{name}.npz")
    outputs = nnx.jit(lambda m, x: m.features(x, train=False))(model, reference["input"])
    keys = [key for key in reference.files if key != "input" and not key.startswith("param/")]
    assert set(meta["npz_keys"]) - {"input"} == set(keys)
    errors = {}
    for key in keys:
        ours = _upstream_layout(key.removeprefix("inter/"), outputs[key.removeprefix("inter/")])
        expected = reference[key]
        assert ours.shape == expected.shape, f"{key}: shape {ours.shape} != {expected.shape}"
        errors[key] = float(np.max(np.abs(ours - expected)))
        np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=RTOL, err_msg=key)
    print(name, "max |ours - upstream|:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert outputs["logits"].dtype == jnp.float32


@needs_fixtures
def test_manifest_maps_completely():
    """The published config (60 classes) fills every NNX variable exactly once, key for key and
    shape for shape, and has upstream's number of parameters."""
    manifest = json.loads((FIXTURES / "msg3d_coco_manifest.json").read_text())
    model = nnx.eval_shape(lambda: registry.MODELS["msg3d"].build(num_classes=60, rngs=nnx.Rngs(0)))
    own = family.fixed_buffers(model)
    entries = manifest["state_dict"]
    assert {k for k in entries if k.endswith(".A")} == set(own)
    state_dict = {key: own[key] if key in own else
                  np.zeros(entry["shape"], np.dtype(entry["dtype"]))
                  for key, entry in entries.items()}
    values = map_state_dict(family.TORCH_KEYS.rules, family.TORCH_KEYS.check_fixed(state_dict, model),
                            api.variable_shapes(model))
    assert set(values) == set(api.variable_shapes(model))
    params = sum(var.size for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert params == manifest["num_parameters"] == 2_975_763


@needs_fixtures
def test_changed_adjacency_is_refused():
    state_dict = read_checkpoint(FIXTURES / "msg3d_coco_small.pth")
    key = "backbone.gcn3d2.gcn3d.1.gcn3d.1.A"
    changed = np.array(state_dict[key])
    changed[2, 40, 7] += 0.25
    state_dict = {**state_dict, key: changed}
    with pytest.raises(ConversionError, match=rf"{key}: differs from the model's adjacency by "
                                              r"up to 0\.25"):
        api.from_state_dict("msg3d", state_dict, base_channels=16)


@needs_fixtures
def test_other_graph_sizes_and_missing_buffers_are_refused():
    state_dict = read_checkpoint(FIXTURES / "msg3d_coco_small.pth")
    fewer_scales = nnx.eval_shape(lambda: registry.MODELS["msg3d"].build(
        num_classes=4, base_channels=16, num_g3d_scales=5, rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError, match=r"backbone\.gcn3d1\.gcn3d\.0\.gcn3d\.1\.A: shape "
                                              r"\(6, 51, 51\), but the model's graph gives "
                                              r"\(5, 51, 51\)"):
        family.TORCH_KEYS.check_fixed(state_dict, fewer_scales)
    model = nnx.eval_shape(lambda: registry.MODELS["msg3d"].build(num_classes=4, base_channels=16,
                                                   rngs=nnx.Rngs(0)))
    without = {k: v for k, v in state_dict.items() if k != "backbone.sgcn3.0.A"}
    with pytest.raises(ConversionError, match=r"missing adjacency buffers .*backbone\.sgcn3\.0\.A"):
        family.TORCH_KEYS.check_fixed(without, model)
    surplus = {**state_dict, "backbone.tcn1.A": np.eye(17, dtype=np.float32)}
    with pytest.raises(ConversionError, match=r"backbone\.tcn1\.A: the model has no adjacency"):
        family.TORCH_KEYS.check_fixed(surplus, model)
    stripped = family.TORCH_KEYS.check_fixed(state_dict, model)
    assert not [k for k in stripped if k.endswith(".A")]
    assert len(stripped) == len(state_dict) - len(family.fixed_buffers(model))


@needs_fixtures
def test_head_reinitialised_on_class_mismatch(caplog):
    reference = np.load(FIXTURES / "msg3d_coco_small.npz")
    with caplog.at_level(logging.WARNING, logger="checkpoints_convert"):
        model = load_torch_checkpoint("msg3d", FIXTURES / "msg3d_coco_small.pth", num_classes=7,
                                      base_channels=16)
    assert "classifier has 4 classes, the model 7" in caplog.text
    assert "cls_head.fc_cls.weight" in caplog.text
    assert model.cls_head.fc_cls.kernel.shape == (64, 7)
    np.testing.assert_array_equal(model.backbone.sgcn2[0].PA[...],
                                  reference["param/backbone.sgcn2.0.PA"])
    np.testing.assert_array_equal(model.backbone.data_bn.mean[...],
                                  reference["param/backbone.data_bn.running_mean"])


def test_graph_is_pyskl_coco_binary_adj():
    adjacency = graph_lib.graph_adjacency("coco", "binary_adj")
    if (FIXTURES / "msg3d_coco.json").is_file():
        layout = _fixture_json("msg3d_coco")["keypoint_layout"]
        np.testing.assert_array_equal(adjacency, np.array(layout["binary_adj"], np.float32))
        assert [list(e) for e in graph_lib.COCO_INWARD_EDGES] == layout["inward_edges"]
    np.testing.assert_array_equal(adjacency, adjacency.T)
    scales = graph_lib.msgcn_adjacency("coco", "binary_adj", 13)
    # Columns sum to 1; the COCO graph's diameter is 8, so scales 9..12 are the identity.
    np.testing.assert_allclose(scales.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(scales[9:], np.broadcast_to(np.eye(17), (4, 17, 17)))
    assert not np.array_equal(scales[8], np.eye(17))
    window = graph_lib.g3d_adjacency("coco", "binary_adj", 6, 3)
    assert window.shape == (6, 51, 51)
    with pytest.raises(ValueError, match="Unknown graph layout 'ntu'"):
        graph_lib.graph_adjacency("ntu", "binary_adj")


def test_config_errors_speak():
    with pytest.raises(ValueError, match="in_channels=2: pyskl's MSG3D builds its first stage"):
        msg3d_lib.MSG3DConfig(in_channels=2)
    with pytest.raises(ValueError, match="base_channels=4 leaves an MS-TCN branch"):
        msg3d_lib.MSG3DConfig(base_channels=4)
    with pytest.raises(ValueError, match="Unknown graph mode 'spatial'"):
        msg3d_lib.MSG3DConfig(mode="spatial")
    assert msg3d_lib.tcn_branch_channels(16) == (2, 2, 2, 2, 2, 6)
    assert msg3d_lib.tcn_branch_channels(96) == (16,) * 6


@pytest.mark.parametrize("stride, frames", [(1, 7), (2, 7), (2, 8)])
def test_temporal_max_pool_and_windows(stride, frames):
    """The shifted-maximum pool equals MaxPool2d((3, 1), (s, 1), padding (1, 0)) (-inf padding,
    odd and even T); windows follow nn.Unfold((w, 1)) with zero padding (w - 1) // 2."""
    x = jax.random.normal(jax.random.key(0), (2, frames, 17, 4)) - 3.0  # mostly negative
    pooled = msg3d_lib.MaxPoolTime(stride)(x)
    expected = nnx.max_pool(x, (3, 1), strides=(stride, 1), padding=((1, 1), (0, 0)))
    np.testing.assert_array_equal(pooled, expected)
    windows = msg3d_lib.UnfoldTemporalWindows(5, stride)(x)
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (0, 0), (0, 0)))
    starts = range(0, frames, stride)
    expected = np.stack([padded[:, s:s + 5].reshape(2, 5 * 17, 4) for s in starts], axis=1)
    np.testing.assert_array_equal(windows, expected)


def test_tiny_shapes_jit_and_grad():
    # Compile time dominates the tiny model: skip XLA's optimisations (this test only).
    with fast_init():
        config = dataclasses.replace(msg3d_lib.PRESETS["tiny"], num_classes=5)
        _check_tiny(msg3d_lib.MSG3D(config, rngs=nnx.Rngs(0)))


def _check_tiny(model):
    x = jax.random.normal(jax.random.key(1), (2, 2, 8, 17, 3))
    outputs = nnx.jit(lambda m, x: m.features(x, train=False))(model, x)
    base = model.config.base_channels
    assert outputs["features"].shape == (2, 2, 2, 17, 4 * base)
    assert outputs["tcn2"].shape == (4, 4, 17, 2 * base)
    assert outputs["logits"].shape == (2, 5) and outputs["logits"].dtype == jnp.float32
    assert np.isfinite(np.asarray(outputs["logits"])).all()
    with pytest.raises(ValueError, match=r"has M\*V\*C = 51, but data_bn was built for 102"):
        model(x[:, :1])

    labels = jnp.array([1, 3])
    mean_before = np.array(model.backbone.tcn3.branches[0][1].mean[...])

    @nnx.jit
    def loss_and_grads(m, x, labels):
        def loss_fn(m):
            logits = m(x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return nnx.value_and_grad(loss_fn)(m)

    loss, grads = loss_and_grads(model, x, labels)
    assert np.isfinite(float(loss))
    flat = {".".join(map(str, path)): np.asarray(var[...])
            for path, var in nnx.to_flat_state(grads)}
    assert all(np.isfinite(g).all() for g in flat.values())
    for name in ("backbone.sgcn1.0.PA", "backbone.gcn3d2.gcn3d.1.gcn3d.1.PA",
                 "backbone.data_bn.scale", "cls_head.fc_cls.kernel"):
        assert np.abs(flat[name]).max() > 0, f"{name} gets no gradient"
    # train=True updates the running statistics (the model is mutated in place).
    assert not np.allclose(model.backbone.tcn3.branches[0][1].mean[...], mean_before)
