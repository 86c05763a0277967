"""Numerical parity with torchvision, through the user-facing converter.

For every model of tests/parity/*.py: build the torchvision model with random weights (and
random normalisation parameters and running statistics, so that nothing is an identity),
torch.save its state_dict, load that file with `checkpoints_convert.load_torch_checkpoint`
(which does not use torch), and compare logits and intermediate features on each spec's input
shapes: max |difference| <= 1e-4 x max(1, max |reference|), float32.

Needs the `parity` extra (torch, torchvision); skipped, saying so, without it.
"""

import importlib
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install -e '.[parity]'")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision: pip install -e '.[parity]'")

from checkpoints_convert import load_torch_checkpoint  # noqa: E402
from strokevision_jax.models import registry  # noqa: E402

# Every family with a PyTorch original has a spec module tests/parity/<family>.py.
FAMILIES = [family.name for family in registry.FAMILIES if family.torch_reference is not None]
RTOL = 1e-4


def _specs():
    out = []
    for family in FAMILIES:
        module = importlib.import_module(f"tests.parity.{family}")
        for spec in module.SPECS:
            out.append(pytest.param(spec, id=spec["name"] + ("-train" if spec.get("train_mode") else "")))
    return out


def randomise(model: "torch.nn.Module", seed: int) -> None:
    """Random values everywhere an initialiser leaves constants (norms, zero-init embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        for name, param in model.named_parameters():
            if param.ndim == 1 or param.abs().max() == 0 or torch.all(param == param.flatten()[0]):
                centre = 1.0 if name.endswith("weight") and param.ndim == 1 else 0.0
                param.copy_(centre + 0.1 * torch.randn(param.shape, generator=generator))


def to_channels_last(key, output):
    if isinstance(output, (tuple, list)):
        output = output[0]
    array = output.detach().numpy()
    return np.moveaxis(array, 1, -1) if array.ndim == 5 else array


def assert_close(name: str, ours, reference) -> float:
    ours = np.asarray(ours, np.float32)
    assert ours.shape == reference.shape, f"{name}: shape {ours.shape} != torch {reference.shape}"
    error = float(np.max(np.abs(ours - reference)))
    bound = RTOL * max(1.0, float(np.max(np.abs(reference))))
    assert error <= bound, f"{name}: max |difference| {error:.3g} > {bound:.3g}"
    return error


@pytest.fixture(scope="module")
def tmp_checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.mark.parametrize("spec", _specs())
def test_parity(spec, tmp_checkpoints: pathlib.Path):
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    builder = spec.get("torch_builder") or getattr(torchvision.models.video, spec["name"])
    reference = builder(**spec["torch_kwargs"])
    randomise(reference, seed=1)
    path = tmp_checkpoints / f"{spec['name']}.pth"
    torch.save(reference.state_dict(), path)
    model = load_torch_checkpoint(spec["name"], path, **spec["config"])

    train = bool(spec.get("train_mode"))
    reference.train(train)
    captured = {}
    for key, module_path in spec["features"].items():
        reference.get_submodule(module_path).register_forward_hook(
            lambda module, args, output, key=key: captured.__setitem__(key, output))
    convert = spec.get("torch_feature", to_channels_last)
    forward = jax.jit(lambda m, x: m.features(x, train=train)) if not train else None

    errors = {}
    for shape in spec["shapes"]:
        n, t, h, w = shape
        x = torch.randn(n, 3, t, h, w, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            logits = reference(x).numpy()
        x_cl = np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).numpy())
        ours = forward(model, x_cl) if forward else model.features(x_cl, train=True)
        for key in spec["features"]:
            errors[f"{shape} {key}"] = assert_close(f"{spec['name']} {shape} {key}", ours[key],
                                                    convert(key, captured[key]))
        errors[f"{shape} logits"] = assert_close(f"{spec['name']} {shape} logits", ours["logits"], logits)
    print(spec["name"], "train" if train else "eval", "max |difference|:",
          ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
