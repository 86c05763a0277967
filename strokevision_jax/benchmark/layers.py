"""Where the time goes: each stage of a video ResNet timed alone, in JAX and in PyTorch eager.

`python -m strokevision_jax.benchmark --modes=layers --models=r2plus1d_18,r3d_18,mc3_18` builds
the recipe's network in both frameworks (torchvision's at the same widths), feeds every stage
(`stem`, `layer1` .. `layer4`) the previous stage's output, and times each stage's forward pass
(`infer`) or forward plus backward with respect to its input and parameters (`train`), in
alternating rounds in one process. A stage whose ratio stands out is where a whole-step gap
comes from; the rows sum to less than a step (no optimiser, loss or head).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax.benchmark.convs import median_ms
from strokevision_jax.benchmark.model import random_batch
from strokevision_jax.benchmark.settings import Settings, benchmark_recipe
from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.models import registry

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def supports(model: str) -> bool:
    """Models whose JAX and PyTorch networks both have the stages above (the video ResNets)."""
    spec = registry.get(model)
    return spec.family.torch_reference is not None and spec.family is registry.VIDEO_RESNET


def _jax_stage(module, train: bool):
    graphdef, state = nnx.split(module)
    if not train:
        step = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
    else:
        def loss(state, x):
            y = nnx.merge(graphdef, state)(x, train=True)
            return jnp.sum(y.astype(jnp.float32) ** 2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda x: jax.block_until_ready(step(state, x))


def _torch_stage(module, train: bool):
    import torch

    module.train(train)

    def run(x):
        if not train:
            with torch.no_grad():
                return module(x)
        x = x.detach().requires_grad_(True)
        y = module(x)
        (y * y).sum().backward()
        return None

    return run


def profile_layers(model: str, settings: Settings, modes, log=print) -> list[dict[str, Any]]:
    """Rows {model, mode, stage, input, jax_ms, torch_ms, ratio} for every stage and mode."""
    import torch

    recipe = benchmark_recipe(model, settings)
    spec = registry.get(model)
    config = spec.make_config(NUM_CLASSES, **dict(recipe.model_overrides))
    network = spec.family.network(config, rngs=nnx.Rngs(settings.seed))
    reference = registry.torch_reference(config)
    clips = random_batch(recipe, train=False)["video"]
    rows = []
    for mode in modes:
        train = mode == "train"
        x_jax = jnp.asarray(clips)
        x_torch = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))).contiguous(
            memory_format=torch.channels_last_3d)
        for stage in STAGES:
            jax_run = _jax_stage(getattr(network, stage), train)
            torch_run = _torch_stage(getattr(reference, stage), train)
            for _ in range(settings.warmup + 1):  # compile, then warm up both
                jax_run(x_jax)
                torch_run(x_torch)
            jax_ms, torch_ms = [], []
            for _ in range(max(1, settings.rounds or 3)):  # alternating rounds
                jax_ms.append(median_ms(lambda: jax_run(x_jax), settings.steps, warmup=0))
                torch_ms.append(median_ms(lambda: torch_run(x_torch), settings.steps, warmup=0))
            row = {"model": model, "mode": mode, "stage": stage,
                   "input": "x".join(map(str, x_jax.shape[1:])),
                   "jax_ms": float(np.median(jax_ms)), "torch_ms": float(np.median(torch_ms))}
            row["jax_over_torch_speed"] = row["torch_ms"] / row["jax_ms"]
            rows.append(row)
            log(f"{model} {mode} {stage:6s} in {row['input']:>12s}: JAX {row['jax_ms']:7.2f} ms, "
                f"torch eager {row['torch_ms']:7.2f} ms, JAX / torch speed {row['jax_over_torch_speed']:.2f}")
            with torch.no_grad():
                x_torch = getattr(reference.eval(), stage)(x_torch).contiguous(memory_format=torch.channels_last_3d)
            x_jax = getattr(network, stage)(x_jax, train=False)
    return rows


def layers_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | mode | stage | input (per clip) | JAX ms | torch eager ms | JAX ÷ torch (speed) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mode']} | {r['stage']} | {r['input']} | {r['jax_ms']:.2f} | "
              f"{r['torch_ms']:.2f} | {r['jax_over_torch_speed']:.2f} |" for r in rows]
    return "\n".join(lines)
