"""The model registry: one typed description per model, and the only place that names one."""

from __future__ import annotations

import ast
import pathlib
import re

import jax
import pytest
from flax import nnx

from checkpoints_convert import api as convert
from strokevision_jax import presets
from strokevision_jax.models import registry
from tests.torch_names import torch_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_model_is_described_once():
    assert set(registry.MODELS) == {spec.name for spec in registry._SPECS}
    assert len(registry.ALIASES) == sum(len(s.aliases) for s in registry.MODELS.values())
    for spec in registry.MODELS.values():
        family = spec.family
        assert isinstance(spec.config, family.config_class)
        assert family.input_kind in ("video", "keypoints", "heatmaps", "video+heatmaps")
        # weight and bias of each classifier
        assert len(family.torch_keys.head) == 2 * len(family.classifiers) and family.torch_keys.rules
        for preset in presets.PRESETS:  # every model trains under both presets
            assert presets.recipe(spec.name, preset).model == spec.name


@pytest.mark.parametrize("name", sorted(registry.MODELS))
def test_head_and_classifier_paths_exist(name):
    spec = registry.get(name)
    model = nnx.eval_shape(lambda: spec.build(num_classes=7, rngs=nnx.Rngs(0)))
    for dotted in spec.family.classifiers:
        classifier = model
        for part in dotted.split("."):
            classifier = getattr(classifier, part)
        assert classifier.kernel.shape[-1] == 7  # a Linear that outputs the classes
        assert dotted.split(".")[0] == spec.family.head
    # the converter's head keys map onto the classifiers
    rules = [r for r in spec.family.torch_keys.rules if hasattr(r, "target")]
    paths = {tuple(map(str, r.apply(key))) for key in spec.family.torch_keys.head for r in rules
             if r.apply(key) is not None}
    assert paths == {(*c.split("."), leaf) for c in spec.family.classifiers for leaf in ("kernel", "bias")}


def test_names_aliases_and_unknown_names():
    assert registry.resolve("r2plus1d") == registry.resolve("r2plus1d_18") == "r2plus1d_18"
    with pytest.raises(registry.UnknownModelError, match="r3d_18.*short names: .*r3d -> r3d_18"):
        registry.get("r4d")
    with pytest.raises(TypeError, match="unknown config field.*depthh"):
        registry.get("swin").make_config(depthh=2)
    assert registry.family_of_config(registry.get("mvit").config) is registry.MVIT


def test_transfer_weights_keeps_only_the_classifier_fresh():
    spec = registry.get("mc3_18")
    source = spec.build(num_classes=400, rngs=nnx.Rngs(0), base_width=4)
    target = spec.build(num_classes=4, rngs=nnx.Rngs(1), base_width=4)
    copied, fresh = convert.transfer_weights(source, target)
    assert fresh == ["fc.bias", "fc.kernel"]
    narrower = spec.build(num_classes=4, rngs=nnx.Rngs(1), base_width=8)
    with pytest.raises(convert.ConversionError, match="layer1"):
        convert.transfer_weights(source, narrower)


def _model_name_strings(path: pathlib.Path, pattern: re.Pattern) -> list[str]:
    """String literals naming a registered model in `path`, docstrings left out (docs)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and pattern.search(node.value)]


def test_model_names_appear_only_in_the_registry():
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, registry.MODELS)) + r")\b")
    registry_file = ROOT / "strokevision_jax" / "models" / "registry.py"
    files = [f for package in ("strokevision_jax", "tfds_builder", "checkpoints_convert")
             for f in sorted((ROOT / package).rglob("*.py"))
             if f != registry_file and not f.name.endswith("_test.py")]
    found = [hit for path in files for hit in _model_name_strings(path, pattern)]
    assert not found, "model names outside the registry:\n" + "\n".join(found)
    assert _model_name_strings(registry_file, pattern)  # the check does see them


def test_library_code_leaves_xla_optimisations_alone(monkeypatch):
    """`models.fast_init` flips a process-wide flag: building a model, converting a checkpoint or
    creating a run's model must not, unless the caller (a command) opts in."""
    from strokevision_jax import weights

    monkeypatch.delenv("STROKEVISION_FAST_INIT", raising=False)  # conftest opts the suite in
    updates = []
    real_update = jax.config.update
    monkeypatch.setattr(jax.config, "update", lambda name, value: (updates.append(name), real_update(name, value)))
    recipe = presets.recipe("mc3", "cpu").replace(model_overrides=(("base_width", 4), ("stage_blocks", (1, 1, 1, 1))))
    weights.create_model(recipe, 4, seed=0)
    spec = registry.get("mc3_18")
    state = torch_state_dict(spec, base_width=4, stage_blocks=(1, 1, 1, 1))
    convert.from_state_dict("mc3_18", state, base_width=4, stage_blocks=(1, 1, 1, 1))
    assert "jax_disable_most_optimizations" not in updates
    weights.create_model(recipe, 4, seed=0, fast_init=True)
    assert updates.count("jax_disable_most_optimizations") == 2  # on, then back
    monkeypatch.setenv("STROKEVISION_FAST_INIT", "1")  # the process owner opts in for everything
    weights.create_model(recipe, 4, seed=0)
    assert updates.count("jax_disable_most_optimizations") == 4
    assert not jax.config.read("jax_disable_most_optimizations")
