"""MotionBERT (DSTformer + action head): parity with upstream's PyTorch outputs, the converter,
and the model's training-mode behaviour.

Reference data: ../shared/fixtures/skeleton/motionbert_small.{pth,npz,json} (outputs of the
unmodified upstream model in eval mode, random weights) and motionbert_full_manifest.json (key /
shape of every entry of the published NTU-60 model). Tolerance: the fixture's suggested
atol 5e-5, rtol 1e-5 (LayerNorm eps 1e-5 instead of 1e-6 moves the logits by 1.8e-4, tanh-GELU
by 6.6e-4, so these are caught).
"""

from __future__ import annotations

import json
import logging
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from checkpoints_convert import ConversionError, load_torch_checkpoint
from checkpoints_convert.api import from_state_dict, variable_shapes
from checkpoints_convert.rules import map_state_dict
from checkpoints_convert.torch_io import read_checkpoint
from strokevision_jax.models import fast_init, layers
from strokevision_jax.models import motionbert as family
from strokevision_jax.models import motionbert as mb
from strokevision_jax.models.registry import MODELS as _MODELS

MOTIONBERT = _MODELS["motionbert"]


def mb_small_config() -> dict:
    """The small DSTformer of the fixtures (mb.PRESETS['small']) as config fields."""
    small = mb.PRESETS["small"]
    return {k: getattr(small, k) for k in ("dim_feat", "dim_rep", "depth", "num_heads")}


FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "skeleton"
SMALL_PTH = FIXTURES / "motionbert_small.pth"
needs_fixtures = pytest.mark.skipif(
    not SMALL_PTH.is_file(),
    reason=f"MotionBERT fixtures not found at {FIXTURES} (the shared reference data lives next "
           "to the repository, in ../shared/fixtures/skeleton)")

ATOL, RTOL = 5e-5, 1e-5
# The fixture's DSTformer sizes (its JSON's `constructor`); the head is 2048 wide (the default).
SMALL = dict(dim_feat=64, dim_rep=64, depth=2, num_heads=4)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Small models: compile time dominates, so skip XLA's optimisations in this module."""
    with fast_init():
        yield


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "motionbert_small.npz"))


@pytest.fixture(scope="module")
def state_dict():
    return read_checkpoint(SMALL_PTH)


@pytest.fixture(scope="module")
def converted():
    return load_torch_checkpoint("motionbert", SMALL_PTH, **SMALL)


def _compare(outputs: dict, reference: dict) -> dict[str, float]:
    """Every fixture output (logits, features, inter/*) against ours; returns max |error|s."""
    errors = {}
    names = ["logits", "features"] + sorted(k for k in reference if k.startswith("inter/"))
    for name in names:
        ours = np.asarray(outputs[name.removeprefix("inter/")])
        ref = reference[name]
        assert ours.shape == ref.shape, f"{name}: shape {ours.shape}, upstream {ref.shape}"
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=RTOL, err_msg=name)
        errors[name] = float(np.max(np.abs(ours - ref)))
    return errors


def _write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


# ----------------------------------------------------------------------------- parity


@needs_fixtures
def test_fixture_parity(converted, reference, capsys):
    """The .pth (train_action.py format, `module.` keys) through the user-facing loader: logits,
    features and every intermediate equal upstream's within atol 5e-5, rtol 1e-5."""
    outputs = converted.features(jnp.asarray(reference["input"]), train=False)
    errors = _compare(outputs, reference)
    # pooled = what fc1 receives: mean over T, (J, C) joint-major, mean over persons.
    feats = reference["features"]
    pooled = feats.mean(axis=2).reshape(*feats.shape[:2], -1).mean(axis=1)
    np.testing.assert_allclose(np.asarray(outputs["pooled"]), pooled, atol=ATOL, rtol=RTOL)
    jitted = nnx.jit(lambda model, x: model(x, train=False))(converted, reference["input"])
    np.testing.assert_allclose(np.asarray(jitted), reference["logits"], atol=ATOL, rtol=RTOL)
    errors["logits (jit)"] = float(np.max(np.abs(np.asarray(jitted) - reference["logits"])))
    with capsys.disabled():
        print("\nmotionbert_small max |error|: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


@needs_fixtures
def test_every_param_converted(converted, state_dict):
    """Each checkpoint tensor lands, transformed, at its NNX path (the npz params equal the
    .pth's too); num_batches_tracked is the only key left out."""
    npz = np.load(FIXTURES / "motionbert_small.npz")
    flat = {".".join(map(str, p)): np.asarray(v.value)
            for p, v in nnx.to_flat_state(nnx.state(converted, nnx.Any(nnx.Param, nnx.BatchStat)))}
    assert len(flat) == len(state_dict) - 1  # minus head.bn.num_batches_tracked
    np.testing.assert_array_equal(flat["backbone.temp_embed"],
                                  state_dict["module.backbone.temp_embed"][0, :, 0])
    np.testing.assert_array_equal(flat["backbone.blocks_ts.1.attn_t.qkv.kernel"],
                                  state_dict["module.backbone.blocks_ts.1.attn_t.qkv.weight"].T)
    np.testing.assert_array_equal(flat["backbone.pre_logits.kernel"],
                                  state_dict["module.backbone.pre_logits.fc.weight"].T)
    np.testing.assert_array_equal(flat["backbone.head.kernel"],
                                  state_dict["module.backbone.head.weight"].T)
    np.testing.assert_array_equal(flat["head.bn.var"], state_dict["module.head.bn.running_var"])
    np.testing.assert_array_equal(flat["head.bn.var"], npz["param/module.head.bn.running_var"])


@needs_fixtures
def test_without_module_prefix(state_dict, reference, tmp_path):
    """A CPU-trained checkpoint (no DataParallel prefix), as .safetensors, loads the same."""
    plain = {key.removeprefix("module."): value for key, value in state_dict.items()}
    path = tmp_path / "motionbert_plain.safetensors"
    _write_safetensors(path, plain)
    model = load_torch_checkpoint("motionbert", path, **SMALL)
    _compare(model.features(jnp.asarray(reference["input"])), reference)


@needs_fixtures
def test_shorter_maxlen_takes_leading_frames(state_dict, reference):
    """maxlen=30 keeps temp_embed[:30], all upstream uses on 30-frame clips: same outputs."""
    model = from_state_dict("motionbert", state_dict, maxlen=30, **SMALL)
    assert model.backbone.temp_embed.shape == (30, 64)
    _compare(model.features(jnp.asarray(reference["input"])), reference)
    with pytest.raises(ValueError, match="31 frames, more than maxlen=30"):
        model(jnp.zeros((1, 2, 31, 17, 3)))


# ----------------------------------------------------------------------------- full size


def _manifest():
    return json.loads((FIXTURES / "motionbert_full_manifest.json").read_text())


@needs_fixtures
def test_full_manifest_matches_key_for_key():
    """The published config (built abstractly: no 60M parameters materialised) takes every key
    of the full checkpoint with its shape, nothing missing, and has its parameter count."""
    manifest = _manifest()
    model = nnx.eval_shape(lambda: MOTIONBERT.build(num_classes=manifest["config"]["action_classes"],
                                                 rngs=nnx.Rngs(0)))
    # Zero-strided views: the shapes without the memory.
    fake = {key: np.broadcast_to(np.zeros((), entry["dtype"]), entry["shape"])
            for key, entry in manifest["state_dict"].items()}
    assert len(fake) == manifest["num_entries"] == 269
    fake = family.TORCH_KEYS.prepare(fake)
    family.TORCH_KEYS.check_fixed(fake, model)
    values = map_state_dict(family.TORCH_KEYS.rules, fake, variable_shapes(model))
    assert set(values) == set(variable_shapes(model))
    assert len(values) == 268  # all but head.bn.num_batches_tracked
    params = nnx.state(model, nnx.Param)
    count = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(params))
    assert count == manifest["num_parameters"] == 60_421_193


@needs_fixtures
def test_full_forward_shapes():
    """Full size, traced only: (1, 2, 243, 17, 3) -> features (1, 2, 243, 17, 512), logits."""
    model = nnx.eval_shape(lambda: MOTIONBERT.build(num_classes=60, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m.features(x), model,
                         jax.ShapeDtypeStruct((1, 2, 243, 17, 3), jnp.float32))
    assert out["features"].shape == (1, 2, 243, 17, 512)
    assert out["blocks_ts.4"].shape == (2 * 243, 17, 512)
    assert out["ts_attn.4"].shape == (2 * 243, 17, 2)
    assert out["pooled"].shape == (1, 17 * 512)
    assert out["logits"].shape == (1, 60) and out["logits"].dtype == jnp.float32


# ----------------------------------------------------------------------------- converter errors


@needs_fixtures
def test_num_classes_mismatch_reinitialises_head(state_dict, reference, caplog):
    with caplog.at_level(logging.WARNING, logger="checkpoints_convert"):
        model = from_state_dict("motionbert", state_dict, num_classes=7, **SMALL)
    assert "4 classes, the model 7" in caplog.text and "head.fc2.weight" in caplog.text
    assert model.head.fc2.kernel.shape == (2048, 7)
    out = model.features(jnp.asarray(reference["input"]))
    np.testing.assert_allclose(np.asarray(out["features"]), reference["features"],
                               atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(np.asarray(model.head.fc1.kernel[...]),
                                  state_dict["module.head.fc1.weight"].T)
    assert out["logits"].shape == (2, 7)


@needs_fixtures
def test_wrong_shaped_key_is_named(state_dict):
    broken = dict(state_dict)
    key = "module.backbone.blocks_ts.1.attn_t.proj.weight"
    broken[key] = np.zeros((64, 63), np.float32)
    with pytest.raises(ConversionError, match=r"blocks_ts\.1\.attn_t\.proj\.weight: shape \(64, 63\)"):
        from_state_dict("motionbert", broken, **SMALL)


@needs_fixtures
def test_unknown_and_missing_keys_are_named(state_dict):
    broken = dict(state_dict)
    broken["module.backbone.extra.weight"] = np.zeros((3,), np.float32)
    del broken["module.backbone.ts_attn.1.bias"]
    with pytest.raises(ConversionError) as error:
        from_state_dict("motionbert", broken, **SMALL)
    assert "unexpected keys (no rule matches them): backbone.extra.weight" in str(error.value)
    assert "missing: no key fills these model variables: backbone.ts_attn.1.bias" in str(error.value)


@needs_fixtures
def test_architecture_mismatch_names_the_config(state_dict):
    """A checkpoint into a model of other sizes: one message naming the config to pass (not
    a list of every mis-shaped tensor). Small wrong sizes keep the model cheap to build."""
    with pytest.raises(ConversionError) as error:
        load_torch_checkpoint("motionbert", SMALL_PTH, dim_feat=32, dim_rep=64, depth=3,
                              num_heads=4)
    message = str(error.value)
    assert str(SMALL_PTH) in message
    assert "dim_feat=64 (from backbone.joints_embed.weight)" in message
    assert "depth=2 (from backbone.blocks_st.*)" in message and "num_heads" in message
    assert "dim_rep" not in message  # what fits is not reported
    with pytest.raises(ConversionError, match="243 frames, the model maxlen=300"):
        from_state_dict("motionbert", state_dict, maxlen=300, **SMALL)


def test_prefix_handling():
    value = np.zeros(1, np.float32)
    assert set(family.TORCH_KEYS.prepare({"module.head.fc2.weight": value, "backbone.norm.bias": value})) \
        == {"head.fc2.weight", "backbone.norm.bias"}
    with pytest.raises(ConversionError, match="'head.fc2.bias' appears both with and without"):
        family.TORCH_KEYS.prepare({"module.head.fc2.bias": value, "head.fc2.bias": value})
    with pytest.raises(ConversionError, match="version='embed'"):
        family.TORCH_KEYS.prepare({"module.head.fc1.weight": value})


# ----------------------------------------------------------------------------- tiny model

TINY = dict(dim_feat=16, dim_rep=8, depth=2, num_heads=2, maxlen=12, hidden_dim=32)
CLIP = (3, 2, 6, 17, 3)  # N, M, T, J, C


def _clip(seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), CLIP, minval=-1.0, maxval=1.0)


def test_tiny_shapes_under_jit():
    model = MOTIONBERT.build(num_classes=4, rngs=nnx.Rngs(0), **{**mb_small_config(), **TINY})
    x = _clip()
    out = nnx.jit(lambda model, x: model.features(x, train=False))(model, x)
    n, m, t, j, _ = CLIP
    assert set(out) == {"embed", "blocks_st.0", "blocks_ts.0", "ts_attn.0", "blocks_st.1",
                        "blocks_ts.1", "ts_attn.1", "norm", "features", "pooled", "logits"}
    assert out["embed"].shape == out["norm"].shape == (n * m * t, j, 16)
    assert out["ts_attn.0"].shape == (n * m * t, j, 2)
    assert out["features"].shape == (n, m, t, j, 8)
    assert out["pooled"].shape == (n, j * 8)
    assert out["logits"].shape == (n, 4) and out["logits"].dtype == jnp.float32
    # upstream's init: equal fusion (weight 0, bias 0.5), so alpha = (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(out["ts_attn.1"]), 0.5)


def test_input_checks():
    model = MOTIONBERT.build(num_classes=4, rngs=nnx.Rngs(0), **{**mb_small_config(), **TINY})
    with pytest.raises(ValueError, match=r"takes \(N, M, T, 17, 3\).*got shape \(2, 6, 17, 3\)"):
        model(jnp.zeros((2, 6, 17, 3)))
    with pytest.raises(ValueError, match="13 frames, more than maxlen=12"):
        model(jnp.zeros((1, 2, 13, 17, 3)))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        mb.MotionBERTConfig(dim_feat=10, num_heads=4)
    with pytest.raises(TypeError, match="motionbert: unknown config field.s. dim; the fields of MotionBERTConfig"):
        MOTIONBERT.build(rngs=nnx.Rngs(0), dim=3)


def test_gradient_step():
    """Train mode without dropout is deterministic: one SGD step lowers the loss; gradients
    reach every parameter except the unused pose head (exactly zero there); BN moves."""
    model = MOTIONBERT.build(num_classes=4, rngs=nnx.Rngs(0), dropout_ratio=0.0, **{**mb_small_config(), **TINY})
    x, labels = _clip(), jnp.array([0, 1, 3])
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    def loss_fn(model):
        logits = model(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    loss0, grads = step(model, optimizer)
    for path, grad in nnx.to_flat_state(grads):
        name = ".".join(map(str, path))
        grad = np.asarray(grad.value)
        assert np.all(np.isfinite(grad)), name
        if name.startswith("backbone.head."):
            assert np.all(grad == 0), f"{name}: the pose head is not part of the action model"
        else:
            assert np.any(grad != 0), f"{name}: no gradient"
    assert not np.allclose(np.asarray(model.head.bn.mean[...]), 0.0)
    loss1, _ = step(model, optimizer)
    assert float(loss1) < float(loss0)


def test_batchnorm_follows_torch():
    torch = pytest.importorskip("torch", reason="the BatchNorm1d comparison needs torch")
    cfg = mb.MotionBERTConfig(**TINY)
    bn = mb.BatchNorm1d(cfg, 5, rngs=nnx.Rngs(0))
    reference = torch.nn.BatchNorm1d(5, momentum=0.1)
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5)).astype(np.float32)
    for _ in range(2):
        ours = np.asarray(bn(jnp.asarray(x), train=True))
        theirs = reference.train()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), reference.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), reference.running_var.numpy(), rtol=1e-6)
    theirs = reference.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x), train=False)), theirs, atol=1e-5)
    with pytest.raises(ValueError, match="more than 1 sample"):
        bn(jnp.zeros((1, 5)), train=True)


def _dropout_model(dropout_seed: int) -> mb.MotionBERT:
    return MOTIONBERT.build(num_classes=4, rngs=nnx.Rngs(params=0, dropout=dropout_seed),
                            drop_rate=0.2, attn_drop_rate=0.1, drop_path_rate=0.3,
                            dropout_ratio=0.5, **{**mb_small_config(), **TINY})


def test_train_mode_dropout_is_deterministic_per_rng():
    x = _clip()
    a, b, c = _dropout_model(1), _dropout_model(1), _dropout_model(2)
    eval_logits = np.asarray(a(x, train=False))
    np.testing.assert_array_equal(eval_logits, np.asarray(c(x, train=False)))
    train_a, train_b, train_c = (np.asarray(m(x, train=True)) for m in (a, b, c))
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, train_c)
    assert not np.allclose(train_a, eval_logits)
    # the training loop's reseeding: the same key gives the same draw
    nnx.reseed(a, dropout=jax.random.key(7))
    again_1 = np.asarray(a(x, train=True))
    nnx.reseed(a, dropout=jax.random.key(7))
    np.testing.assert_array_equal(again_1, np.asarray(a(x, train=True)))


def test_drop_path_drops_whole_frames():
    """Upstream's DropPath acts on (N M T, J, C) rows: one draw per (clip-person, frame)."""
    layer = layers.StochasticDepth(0.5, row_dims=2, rngs=nnx.Rngs(dropout=0))
    out = np.asarray(layer(jnp.ones((4, 16, 17, 8)), train=True))
    per_row = out.reshape(4, 16, -1)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert np.all(per_row == per_row[..., :1])  # constant over joints and channels
    assert len(np.unique(per_row[..., 0])) == 2  # differs between frames
    np.testing.assert_array_equal(np.asarray(layer(jnp.ones((2, 3, 4, 5)), train=False)), 1.0)
