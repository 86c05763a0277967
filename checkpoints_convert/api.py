"""PyTorch checkpoint -> Flax NNX model, and NNX model -> orbax checkpoint directory."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from checkpoints_convert.rules import ConversionError, count_fitting, map_state_dict
from checkpoints_convert.torch_io import CheckpointError, read_checkpoint
from strokevision_jax import models as models_lib
from strokevision_jax.models import registry

__all__ = ["CheckpointError", "ConversionError", "from_state_dict", "load_torch_checkpoint",
           "model_names", "restore_converted", "save_converted", "transfer_weights"]

log = logging.getLogger("checkpoints_convert")


def model_names() -> list[str]:
    """The models with a converter: every registered model."""
    return registry.names()


def spec_of(name: str) -> registry.ModelSpec:
    try:
        return registry.get(name)
    except registry.UnknownModelError as error:
        raise ValueError(f"No converter for model {name!r}: {error}") from None


def variable_shapes(model: nnx.Module) -> dict[tuple, tuple[int, ...]]:
    """{NNX path: shape} of every Param and BatchStat (what a checkpoint must fill)."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {tuple(path): tuple(var.shape) for path, var in nnx.to_flat_state(state)}


def variable_shapes_of_kind(model: nnx.Module, kind: str = "params") -> list:
    """The Params ("params") or BatchStats ("batch_stats") of `model`, as variables."""
    filt = nnx.Param if kind == "params" else nnx.BatchStat
    return [var for _, var in nnx.to_flat_state(nnx.state(model, filt))]


def checkpoint_num_classes(name: str, state_dict: Mapping[str, np.ndarray]) -> int:
    head = spec_of(name).family.torch_keys.head[0]
    if head not in state_dict:
        raise ConversionError(f"{diagnose(state_dict, name)}\nThe checkpoint has no classifier weight "
                              f"{head!r}, which every {name} state_dict holds.")
    return int(np.shape(state_dict[head])[0])


def from_state_dict(name: str, state_dict: Mapping[str, np.ndarray], num_classes: int | None = None,
                    *, seed: int = 0, fast_init: bool | None = None, **config: Any) -> nnx.Module:
    """An NNX `name` model holding the torchvision `state_dict` ({key: numpy array}).

    `num_classes` defaults to the checkpoint's; another value re-initialises the classifier
    (fine-tuning, e.g. Kinetics' 400 classes -> 4) and logs it. `config` goes to the model
    factory (fields of the model's config, e.g. `dtype=jnp.bfloat16` or input sizes; named as
    the upstream constructor's arguments). `fast_init`: initialise under `models.fast_init`
    (process-wide; for programs that own their process; None: $STROKEVISION_FAST_INIT).
    """
    spec = spec_of(name)
    keys = spec.family.torch_keys
    if keys.prepare is not None:  # e.g. strip a `module.` (DataParallel) prefix
        state_dict = keys.prepare(state_dict)
    head_classes = checkpoint_num_classes(name, state_dict)
    num_classes = head_classes if num_classes is None else int(num_classes)
    reinit_head = num_classes != head_classes
    if reinit_head:
        log.warning("%s: the checkpoint's classifier has %d classes, the model %d: the classifier "
                    "(%s) is re-initialised.", name, head_classes, num_classes,
                    ", ".join(keys.head))
    with models_lib.fast_init() if models_lib.fast_init_requested(fast_init) else contextlib.nullcontext():
        model = spec.build(num_classes=num_classes, rngs=nnx.Rngs(seed), **config)
    if keys.check_fixed is not None:  # fixed buffers (e.g. a graph's adjacency) compared, then dropped
        state_dict = keys.check_fixed(state_dict, model)
    try:
        values = map_state_dict(keys.rules, state_dict, variable_shapes(model),
                                skip=lambda key: reinit_head and key in keys.head)
    except ConversionError as error:
        raise ConversionError(f"{diagnose(state_dict, name)}\n{error}") from None
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    for path, var in nnx.to_flat_state(state):
        value = values.get(tuple(path))
        if value is not None:
            var.value = jnp.asarray(value.astype(np.float32) if value.dtype.kind == "V" else value,
                                    dtype=var.value.dtype)
    nnx.update(model, state)
    return model


def diagnose(state_dict: Mapping[str, np.ndarray], asked: str) -> str:
    """One line saying which registered model the state_dict's keys and shapes look like, with
    how many of its keys fit it and how many fit `asked` (each model at its published size)."""
    total = len(state_dict)
    fits: dict[str, tuple[int, int]] = {}
    for spec in registry.MODELS.values():
        keys = spec.family.torch_keys
        try:
            prepared = keys.prepare(state_dict) if keys.prepare is not None else state_dict
        except ConversionError:
            continue
        if not any(rule.apply(k) if hasattr(rule, "apply") else rule.matches(k)
                   for k in prepared for rule in keys.rules):
            continue
        head = prepared.get(keys.head[0])
        classes = int(np.shape(head)[0]) if head is not None else None
        model = nnx.eval_shape(lambda spec=spec, classes=classes: spec.build(num_classes=classes, rngs=nnx.Rngs(0)))
        fits[spec.name] = count_fitting(keys.rules, prepared, variable_shapes(model))
    if not fits:
        first = ", ".join(list(state_dict)[:4])
        return (f"none of the file's {total} keys belong to a model this project converts (first keys: "
                f"{first}); models: {', '.join(registry.names())}.")
    best = max(fits, key=lambda n: (fits[n][0] / max(fits[n][1], 1), fits[n][0], n == asked))
    fit, weights = fits[best]
    asked_fit = fits.get(asked, (0, 0))[0]
    if best == asked or fit == asked_fit:
        return (f"the file's keys are those of {asked}, but only {asked_fit} of its {weights} weights fit "
                f"{asked} at its published size (another size, number of layers or config?).")
    return (f"the file looks like a {best} checkpoint ({fit} of its {weights} weights fit {best} at its "
            f"published size, {asked_fit} fit {asked}): pass --model={best}.")


def load_torch_checkpoint(name: str, path: str | pathlib.Path, num_classes: int | None = None,
                          *, fast_init: bool | None = None, **config: Any) -> nnx.Module:
    """The torchvision `name` model (e.g. "r3d_18", "swin3d_b") with the weights of `path`.

    `path`: a `.pth` written by `torch.save(model.state_dict())` (zip or legacy format; read
    without PyTorch and without executing anything from the file) or a `.safetensors` file.
    The model takes (N, T, H, W, 3) float32 normalised frames: `model(x, train=False)` gives
    logits.
    """
    spec_of(name)  # an unknown name fails before the file is read
    state_dict = read_checkpoint(path)
    try:
        return from_state_dict(name, state_dict, num_classes, fast_init=fast_init, **config)
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from None


def transfer_weights(source: nnx.Module, target: nnx.Module) -> tuple[int, list[str]]:
    """Copies every Param/BatchStat of `source` into `target` where path and shape agree.

    Only the classifiers (the family's `classifiers` Linears) may differ (another number of
    classes): they keep `target`'s fresh initialisation. Returns (arrays copied, paths kept
    fresh); raises ConversionError when anything else differs.
    """
    classifiers = {tuple(c.split(".")) for c in registry.family_of_config(target.config).classifiers}
    src = dict(nnx.to_flat_state(nnx.state(source, nnx.Any(nnx.Param, nnx.BatchStat))))
    state = nnx.state(target, nnx.Any(nnx.Param, nnx.BatchStat))
    copied, fresh, problems = 0, [], []
    for path, var in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        if path not in src:
            problems.append(f"{name} is not in the source")
        elif src[path].shape == var.shape:
            var.value = src[path].value
            copied += 1
        elif tuple(map(str, path[:-1])) in classifiers:
            fresh.append(name)
        else:
            problems.append(f"{name}: source {src[path].shape}, target {var.shape}")
    if problems:
        raise ConversionError("the weights do not fit the model: " + "; ".join(problems))
    nnx.update(target, state)
    return copied, fresh


# ----------------------------------------------------------------------------- orbax export

CONVERTED_META = "converted.json"


def save_converted(model: nnx.Module, out: str | pathlib.Path, meta: dict) -> pathlib.Path:
    """Writes the model's Params and BatchStats as an orbax checkpoint `out/state` and
    `out/converted.json` (model name, num_classes, config, source file)."""
    import orbax.checkpoint as ocp

    out = pathlib.Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / "state", nnx.to_pure_dict(state), force=True)
    (out / CONVERTED_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def load_converted_meta(directory: str | pathlib.Path) -> dict:
    directory = pathlib.Path(directory)
    meta_file = directory / CONVERTED_META
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{directory}: not a converted checkpoint (no {CONVERTED_META}); make one with "
            "python -m checkpoints_convert --model=NAME --src=FILE.pth --out=DIR")
    return json.loads(meta_file.read_text())


def restore_converted(model: nnx.Module, directory: str | pathlib.Path) -> nnx.Module:
    """Fills `model` (built with the same name, num_classes and sizes) from `save_converted`'s
    directory; shapes are checked."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    target = nnx.to_pure_dict(state)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(directory / "state")
        stored = getattr(stored, "item_metadata", stored)
        wanted, found = _flat_shapes(target), _flat_shapes(stored)
        if wanted != found:
            diff = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
            raise ConversionError(
                f"{directory}: the converted checkpoint does not fit the model "
                f"({len(diff)} differences): "
                + ", ".join(f"{k} (model {wanted.get(k)}, file {found.get(k)})" for k in diff[:20]))
        abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), target)
        restored = checkpointer.restore(directory / "state", abstract)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def _flat_shapes(tree) -> dict[str, tuple]:
    """{'a/0/kernel': shape}: orbax stores list indices as strings, so compare as strings."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in leaves}
