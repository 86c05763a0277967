"""A run's model: freshly initialised, or started from a converted checkpoint or a PyTorch file."""

from __future__ import annotations

import contextlib
import json
import pathlib

import jax.numpy as jnp
from flax import nnx

from strokevision_jax import models as models_lib
from strokevision_jax import presets
from strokevision_jax.errors import TrainingError, UsageError
from strokevision_jax.models import registry


def create_model(recipe: presets.Recipe, num_classes: int, seed: int, init: str | None = None,
                 log=print, *, fast_init: bool | None = None) -> nnx.Module:
    """The recipe's model, freshly initialised, or with the weights of `init`.

    `init`: a directory written by `python -m checkpoints_convert` or a torchvision `.pth` /
    `.safetensors` file. A checkpoint fixes the architecture (torchvision's, or the converted
    config), so the preset's width/depth overrides are not applied; input-size fields (MViT's
    `temporal_size` / `spatial_size`) are, and position embeddings are interpolated to them
    when a `.pth` is converted. The classifier is re-initialised for `num_classes`.

    `fast_init`: initialise under `models.fast_init`, which switches XLA's optimisations off for
    the whole process while it lasts: for programs that own their process (the commands pass
    True). None: as $STROKEVISION_FAST_INIT says (off when unset).
    """
    dtype = jnp.dtype(recipe.compute_dtype)
    spec = registry.get(recipe.model)
    with models_lib.fast_init() if models_lib.fast_init_requested(fast_init) else contextlib.nullcontext():
        if init is None:
            return spec.build(num_classes=num_classes, rngs=nnx.Rngs(seed), dtype=dtype,
                              **dict(recipe.model_overrides))
        from checkpoints_convert import api as convert

        sizes = {k: v for k, v in recipe.model_overrides if k in spec.family.input_size_fields}
        dropped = sorted(k for k, _ in recipe.model_overrides if k not in sizes)
        if dropped:
            log(f"--init_from/--pretrained: the checkpoint's architecture is used; the preset's "
                f"{', '.join(dropped)} overrides are not applied")
        path = pathlib.Path(init)
        try:
            target, copied, reset = _load_initial_weights(recipe, path, num_classes, seed, dtype, sizes)
        except (convert.ConversionError, convert.CheckpointError, FileNotFoundError) as error:
            raise TrainingError(f"--init_from/--pretrained: {error}") from None
        log(f"initialised from {init}" + (f" ({copied} arrays; re-initialised: {', '.join(reset)})"
                                          if reset else ""))
        return target


def _load_initial_weights(recipe, path: pathlib.Path, num_classes: int, seed: int, dtype, sizes: dict):
    """(model, arrays copied, paths re-initialised) from a converted directory or a .pth file."""
    from checkpoints_convert import api as convert

    if path.is_file():
        model = convert.load_torch_checkpoint(recipe.model, path, num_classes, seed=seed,
                                              dtype=dtype, **sizes)
        return model, None, None
    if not path.is_dir():
        raise UsageError(f"--init_from/--pretrained={path}: no such file or directory.")
    meta = convert.load_converted_meta(path)
    if meta.get("model") != recipe.model:
        raise UsageError(f"{path} holds a converted {meta.get('model')!r} checkpoint, not {recipe.model!r}.")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    if any(config.get(k) != v for k, v in sizes.items()):
        raise UsageError(f"{path} was converted with config {meta['config']}, but the preset needs "
                         f"{sizes}: convert again with --config='{json.dumps(sizes)}'.")
    factory = registry.get(recipe.model)
    source = factory(num_classes=meta["num_classes"], rngs=nnx.Rngs(seed), dtype=dtype, **config)
    convert.restore_converted(source, path)
    model = factory(num_classes=num_classes, rngs=nnx.Rngs(seed), dtype=dtype, **config)
    copied, reset = convert.transfer_weights(source, model)
    return model, copied, reset
