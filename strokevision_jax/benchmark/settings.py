"""What a benchmark run is asked for: the command line's choices (`Settings`), the recipe they
give each model (`benchmark_recipe`), and the check that its batch splits over the devices."""

from __future__ import annotations

import dataclasses
from typing import Any

from strokevision_jax import presets

MODES = ("train", "infer", "pipeline", "layers")
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


class UsageError(ValueError):
    """A bad command-line value (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the command line decides (see cli.parse_args)."""
    preset: str
    dtype: str | None = None  # "bfloat16" / "float32"; None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    steps: int = 20
    warmup: int = 3
    rounds: int = 1
    seed: int = 0
    frames: int | None = None  # clip overrides (tests, other sizes)
    crop: tuple[int, int] | None = None
    overrides: tuple[tuple[str, Any], ...] = ()  # model config fields
    compare_torch: bool = False
    torch_variants: tuple[str, ...] = ("eager", "compile")
    peak_tflops: float | None = None


def benchmark_recipe(model: str, settings: Settings):
    """The recipe of (model, preset) with the command line's batch, dtype, clip and overrides."""
    recipe = presets.recipe(model, settings.preset)
    changes: dict[str, Any] = {}
    if settings.dtype is not None:
        changes["compute_dtype"] = settings.dtype
    if settings.batch_size is not None:
        changes["batch_size"] = settings.batch_size
    if settings.overrides:
        merged = dict(recipe.model_overrides) | dict(settings.overrides)
        changes["model_overrides"] = tuple(merged.items())
    recipe = recipe.replace(**changes)
    if recipe.video is not None and (settings.frames or settings.crop):
        crop = tuple(settings.crop or recipe.video.crop)
        resize = tuple(max(r, c) for r, c in zip(recipe.video.resize, crop))
        recipe = presets.with_clip(recipe, num_frames=settings.frames or recipe.video.num_frames,
                                   crop=crop, resize=resize)
    elif recipe.skeleton is not None and settings.frames:
        recipe = recipe.replace(skeleton=dataclasses.replace(recipe.skeleton, num_frames=settings.frames))
    return recipe


def check_batch(batch_size: int, device_count: int, where: str) -> None:
    if batch_size % device_count:
        lower = batch_size // device_count * device_count
        choices = ", ".join(str(n) for n in (lower, lower + device_count) if n > 0)
        raise UsageError(
            f"{where}: the global batch of {batch_size} clips is split over the 'data' axis of "
            f"{device_count} devices, so it must be a multiple of {device_count}; pass "
            f"--batch_size={choices.split(', ')[-1]} (or another multiple: {choices}).")
