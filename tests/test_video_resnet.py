"""Video ResNets: shapes, jit, gradients, BatchNorm modes, sizes and torchvision key layout.

Numerical parity with torchvision itself is tests/test_parity.py (needs torch); here the
torchvision state_dict layout is also pinned without torch, by parameter counts and a
fingerprint of its keys and shapes.
"""

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from checkpoints_convert.rules import map_state_dict
from strokevision_jax.models import MODELS, fast_init
from strokevision_jax.models import video_resnet as vr


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Tiny models: compile time dominates, so skip XLA's optimisations in this module only
    (a process-wide switch would slow the training tests that share an xdist worker)."""
    with fast_init():
        yield

FACTORIES = ["r2plus1d_18", "r3d_18", "mc3_18"]
# (N, T, H, W, 3): small enough to compile fast, big enough that every stage has
# a spatial extent (16 -> 8 after the stem -> 4, 2, 1).
CLIP_SHAPE = (2, 4, 16, 16, 3)

# torchvision 0.29.1 figures: sum(p.numel() for p in model.parameters()), the number of
# state_dict entries without num_batches_tracked, and sha256 of the sorted lines
# f"{key} {tuple(tensor.shape)}" over those entries (num_classes=400).
TORCHVISION = {
    "r2plus1d_18": (31_505_325, 187,
                    "f5a2e675e59909eb2169e5e3ac0eddd59a6a9a6ceecd91687c38deb084e4b47d"),
    "r3d_18": (33_371_472, 102,
               "2c3da3d3efd68ae9a1f97af4db8c51ae251602bab055c63266900d25a664afb0"),
    "mc3_18": (11_695_440, 102,
               "1ff969b39341fa0a5ee0973c47de6f3f66335b19bc904c0bf221ef5f65d9d47c"),
}


@functools.cache
def abstract_model(name, num_classes, **overrides):
    return nnx.eval_shape(lambda: MODELS[name](num_classes=num_classes, base_width=8,
                                               rngs=nnx.Rngs(0), **overrides))


def tiny(name, num_classes=5, seed=0, **overrides):
    """A base-width-8 model with numpy-drawn weights and BatchNorm statistics.

    The real initialisers are checked in `test_initializers_follow_torchvision`; building
    the whole model with them costs ~10 s of XLA compile on 2 CPU cores (one threefry
    kernel per parameter), far more than the forward pass.
    """
    # clone: the cached abstract model must not share Variables with the models built.
    graphdef, state = nnx.split(nnx.clone(abstract_model(name, num_classes, **overrides)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        shape, leaf = var.shape, path[-1]
        if leaf == "kernel" and len(shape) == 5:  # He normal, fan_out = T*H*W*out
            value = rng.standard_normal(shape) * np.sqrt(2.0 / (np.prod(shape[:3]) * shape[4]))
        elif leaf == "kernel":
            value = rng.standard_normal(shape) * 0.01
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.75, 1.25, shape)
        else:  # bias, mean
            value = rng.standard_normal(shape) * 0.1
        var.set_value(jnp.asarray(value, var.dtype))
    return nnx.merge(graphdef, state)


def clip(seed=0, shape=CLIP_SHAPE):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def flat(model, *filters):
    state = nnx.state(model, *filters) if filters else nnx.state(model)
    return {path: np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


def shapes(model, *filters):
    state = nnx.state(model, *filters) if filters else nnx.state(model)
    return {path: tuple(var.shape) for path, var in nnx.to_flat_state(state)}


def torch_shape(path, shape):
    """NNX leaf shape -> torchvision tensor shape (THWIO -> OITHW, (in, out) -> (out, in))."""
    if path[-1] == "kernel" and len(shape) == 5:
        return (shape[4], shape[3], shape[0], shape[1], shape[2])
    if path[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_layout(model) -> dict[str, tuple]:
    """The torchvision state_dict {key: shape} this model corresponds to (no num_batches_tracked)."""
    return {".".join([*map(str, path[:-1]), _TORCH_LEAF[path[-1]]]): torch_shape(path, shape)
            for path, shape in shapes(model).items()}


@pytest.mark.parametrize("name", FACTORIES)
def test_full_size_matches_torchvision_keys_and_counts(name):
    """Without torch: parameter count and state_dict layout equal torchvision's, and the
    converter's table maps that state_dict onto the model, transposing kernels."""
    params, entries, fingerprint = TORCHVISION[name]
    model = nnx.eval_shape(lambda: MODELS[name](rngs=nnx.Rngs(0)))
    assert sum(int(np.prod(shape)) for shape in shapes(model, nnx.Param).values()) == params
    layout = torch_layout(model)
    assert len(layout) == entries
    lines = "\n".join(sorted(f"{key} {shape}" for key, shape in layout.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == fingerprint, lines

    state_dict = {key: np.zeros(shape, np.float32) for key, shape in layout.items()}
    state_dict.update({key.replace("running_mean", "num_batches_tracked"): np.zeros((), np.int64)
                       for key in layout if key.endswith("running_mean")})
    converted = map_state_dict(vr.TORCH_KEYS.rules, state_dict, shapes(model))
    assert set(converted) == set(shapes(model))


def test_table_examples():
    rules = [r for r in vr.TORCH_KEYS.rules if hasattr(r, "target")]

    def path(key):
        (found,) = [p for p in (r.apply(key) for r in rules) if p is not None]
        return found

    assert path("layer1.0.conv1.0.0.weight") == ("layer1", 0, "conv1", 0, 0, "kernel")
    assert path("layer1.0.conv1.0.1.weight") == ("layer1", 0, "conv1", 0, 1, "scale")
    assert path("layer1.0.conv2.1.running_var") == ("layer1", 0, "conv2", 1, "var")
    assert path("stem.1.running_mean") == ("stem", 1, "mean")
    assert path("stem.4.weight") == ("stem", 4, "scale")
    assert path("layer2.0.downsample.0.weight") == ("layer2", 0, "downsample", 0, "kernel")
    assert path("fc.weight") == ("fc", "kernel")
    model = nnx.eval_shape(lambda: MODELS["r2plus1d_18"].build(rngs=nnx.Rngs(0)))
    # (2+1)D middle widths: both convs of a block use the first conv's rule value.
    assert model.layer2[0].conv1[0][0].kernel.shape == (1, 3, 3, 64, 230)
    assert model.layer2[0].conv2[0][0].kernel.shape == (1, 3, 3, 128, 230)
    assert model.layer2[1].conv1[0][0].kernel.shape == (1, 3, 3, 128, 288)
    assert model.stem[0].kernel.shape == (1, 7, 7, 3, 45)


def test_initializers_follow_torchvision():
    cfg = vr.VideoResNetConfig()
    rngs = nnx.Rngs(0)
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (27 * 64)).
    kernel = np.asarray(vr._conv(cfg, 64, 64, (3, 3, 3), (1, 1, 1), (1, 1, 1), rngs).kernel)
    assert abs(kernel.std() / np.sqrt(2 / (27 * 64)) - 1) < 0.02
    assert abs(kernel.mean()) < 0.002
    # Untruncated like torch's: a 4-sigma tail exists among 110k draws.
    assert np.abs(kernel).max() > 3.5 * np.sqrt(2 / (27 * 64))
    fc = vr._linear(cfg, 512, 400, rngs)
    assert abs(np.asarray(fc.kernel).std() / 0.01 - 1) < 0.02
    np.testing.assert_array_equal(fc.bias, np.zeros(400))
    bn = vr._batch_norm(cfg, 7, rngs)
    np.testing.assert_array_equal(bn.scale, np.ones(7))
    np.testing.assert_array_equal(bn.bias, np.zeros(7))
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)


def test_mid_planes_rule():
    assert vr.mid_planes(64, 64) == 144
    assert vr.mid_planes(64, 128) == 230
    assert vr.mid_planes(128, 128) == 288
    assert vr.mid_planes(128, 256) == 460
    assert vr.mid_planes(256, 512) == 921
    assert vr.mid_planes(512, 512) == 1152
    assert vr.mid_planes(8, 8) == 18


def test_presets_and_width_rule():
    r2plus1d = MODELS["r2plus1d_18"].config
    assert r2plus1d == vr.VideoResNetConfig()
    assert r2plus1d.stage_widths == (64, 128, 256, 512)
    assert r2plus1d.stem_mid_width == 45
    assert MODELS["r2plus1d_18"].make_config(base_width=16).stage_widths == (16, 32, 64, 128)
    assert MODELS["r2plus1d_18"].make_config(base_width=16).stem_mid_width == 11
    assert MODELS["r2plus1d_18"].make_config(base_width=8).stem_mid_width == 5
    assert MODELS["mc3_18"].config.stage_convs == ("3d", "no_temporal", "no_temporal", "no_temporal")
    assert MODELS["r3d_18"].config.stem == "basic"
    with pytest.raises(ValueError, match="Unknown stage conv 'conv4d'"):
        vr.VideoResNetConfig(stage_convs=("conv4d",) * 4)
    with pytest.raises(ValueError, match="one entry per stage"):
        vr.VideoResNetConfig(stage_blocks=(2, 2, 2))


@pytest.mark.parametrize("name", FACTORIES)
def test_tiny_output_shape_and_eval_independent_of_batch(name):
    model = tiny(name)
    forward = nnx.jit(lambda m, x: m(x, train=False))
    video = clip()
    logits = forward(model, video)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # Eval mode uses running statistics, so a sample's logits don't depend on its batch.
    np.testing.assert_allclose(forward(model, video[:1]), logits[:1], rtol=1e-5, atol=1e-6)


def test_stage_shapes_follow_torchvision_strides():
    # r3d halves T in stages 2-4 and mc3 (2D convs there) keeps it.
    video = jax.ShapeDtypeStruct((1, 8, 16, 16, 3), jnp.float32)
    for name, frames in [("r3d_18", [8, 4, 2, 1]), ("mc3_18", [8, 8, 8, 8])]:
        model = abstract_model(name, 5)
        x = nnx.eval_shape(lambda m, v: m.stem(v, train=False), model, video)
        assert x.shape == (1, 8, 8, 8, 8)
        for index, t in enumerate(frames):
            layer = getattr(model, f"layer{index + 1}")
            x = nnx.eval_shape(lambda m, v: m(v, train=False), layer, x)
            side = 8 // 2**index
            assert x.shape == (1, t, side, side, 8 * 2**index), (name, index, x.shape)


def test_every_parameter_gets_a_finite_gradient():
    model = tiny("r2plus1d_18")
    labels = jnp.array([1, 3])

    @nnx.jit
    def grads_of(model, video):
        def loss_fn(model):
            logits = model(video, train=True)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                                 labels[:, None], axis=1))
        return nnx.value_and_grad(loss_fn)(model)

    loss, grads = grads_of(model, clip())
    assert np.isfinite(loss)
    grads = {path: np.asarray(g.get_value()) for path, g in nnx.to_flat_state(grads)}
    assert set(grads) == set(flat(model, nnx.Param))
    for path, grad in grads.items():
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), path


def test_train_updates_running_stats_and_eval_does_not():
    model = tiny("mc3_18")
    forward = nnx.jit(lambda m, x, train: m(x, train=train), static_argnames="train")
    before = flat(model, nnx.BatchStat)
    forward(model, clip(), train=False)
    after_eval = flat(model, nnx.BatchStat)
    for path in before:
        np.testing.assert_array_equal(after_eval[path], before[path], err_msg=str(path))

    forward(model, clip(), train=True)
    after_train = flat(model, nnx.BatchStat)
    for path in before:
        assert not np.allclose(after_train[path], before[path]), path
    # torch momentum 0.1: the running mean moves a tenth of the way to the batch mean.
    stem_out = np.asarray(model.stem[0](clip()))
    expected = 0.9 * before[("stem", 1, "mean")] + 0.1 * stem_out.mean(axis=(0, 1, 2, 3))
    np.testing.assert_allclose(after_train[("stem", 1, "mean")], expected, rtol=1e-4,
                               atol=1e-6)


def test_jax_jit_with_split_merge_matches_nnx_jit():
    model = tiny("mc3_18")
    video = clip()
    reference = nnx.jit(lambda m, x: m(x, train=False))(model, video)
    graphdef, state = nnx.split(model)

    @jax.jit
    def train_forward(state, video):
        model = nnx.merge(graphdef, state)
        logits = model(video, train=True)
        return logits, nnx.state(model)

    eval_logits = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v, train=False))(state, video)
    np.testing.assert_allclose(eval_logits, reference, rtol=1e-5, atol=1e-6)
    _, new_state = train_forward(state, video)
    old_mean = dict(nnx.to_flat_state(state))[("stem", 1, "mean")].get_value()
    new_mean = dict(nnx.to_flat_state(new_state))[("stem", 1, "mean")].get_value()
    assert not np.allclose(new_mean, old_mean)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    model32 = tiny("r3d_18", num_classes=3)
    model16 = tiny("r3d_18", num_classes=3, dtype=jnp.bfloat16)
    assert all(v.dtype == np.float32 for v in flat(model16).values())
    # Same seed, same params: a larger fc init makes the logits comparable in size.
    fc_kernel = np.random.default_rng(3).standard_normal(model32.fc.kernel.shape)
    for model in (model32, model16):
        model.fc.kernel.set_value(jnp.asarray(fc_kernel, jnp.float32))
    video = clip()
    logits32 = nnx.jit(lambda m, x: m(x, train=False))(model32, video)
    logits16 = nnx.jit(lambda m, x: m(x, train=False))(model16, video)
    assert logits16.dtype == jnp.float32
    scale = float(np.abs(logits32).max())
    # bf16 has an 8-bit mantissa; through ~18 layers 5% of the logit scale is ample.
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


def test_overrides_reach_the_config():
    model = nnx.eval_shape(lambda: MODELS["r2plus1d_18"](num_classes=4, base_width=16,
                                                         rngs=nnx.Rngs(0)))
    assert model.config == dataclasses.replace(vr.VideoResNetConfig(), base_width=16, num_classes=4)
    assert model.fc.kernel.shape == (128, 4)
    with pytest.raises(TypeError, match="unknown config field.*widht.*base_width"):
        MODELS["r2plus1d_18"](widht=3, rngs=nnx.Rngs(0))
