"""One model benchmarked: its random input batch, the JAX model (or, with --compare=torch, the
JAX model holding torchvision's converted weights), the runners of each mode measured together,
and their result records (step statistics, clips/s, MFU, JAX over torch, logit difference)."""

from __future__ import annotations

import gc
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from checkpoints_convert import api as convert
from strokevision_jax import models as models_lib
from strokevision_jax import train as train_lib
from strokevision_jax.benchmark import torch_side
from strokevision_jax.benchmark.hardware import peak_flops
from strokevision_jax.benchmark.pipeline import FakeSource
from strokevision_jax.benchmark.report import one_line
from strokevision_jax.benchmark.settings import Settings, benchmark_recipe, check_batch
from strokevision_jax.benchmark.timing import (
    Runner,
    device_peak_memory,
    jax_runner,
    measure,
    step_stats,
    torch_runners,
)
from strokevision_jax.models import registry


def random_batch(recipe, train: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """`batch_size` random stored-shape records through the recipe's transform, stacked."""
    transform = recipe.transform(train)
    source = FakeSource(recipe.batch_size, num_distinct=min(recipe.batch_size, 8), seed=seed)
    examples = [transform(source[i], np.random.default_rng([seed, i])) for i in range(len(source))]
    batch = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
    batch["mask"] = np.ones(recipe.batch_size, bool)
    return batch


def input_description(recipe, batch: dict[str, np.ndarray], train: bool) -> str:
    """Shape and dtype of one clip of the batch, as the table shows it."""
    keys = [recipe.input_key] if isinstance(recipe.input_key, str) else recipe.input_key
    text = " + ".join("x".join(map(str, batch[key].shape[1:])) + f" {batch[key].dtype}" for key in keys)
    if recipe.heatmaps is not None:  # generated inside the step (train.input_adapter)
        height, width = recipe.skeleton.compact_size if train else recipe.skeleton.compact_eval_size
        text += f" -> {height}x{width} heatmaps"
    return text


def _result(model: str, recipe, mode: str, runner: Runner, input_desc: str, mesh,
            settings: Settings) -> dict[str, Any]:
    record = {"model": model, "preset": recipe.preset, "mode": mode, "framework": runner.framework,
              "batch_size": recipe.batch_size, "input": input_desc, "compute_dtype": recipe.compute_dtype,
              **runner.record}
    if runner.step is None or not runner.times:
        return record
    stats = step_stats(runner.times)
    record["step"] = stats
    record["clips_per_s"] = recipe.batch_size / stats["median_s"]
    if runner.framework == "jax":
        if jax.default_backend() == "cpu" and settings.peak_tflops is None:
            peak, source = None, "CPU: no peak table; pass --peak_tflops"
        else:
            peak, source = peak_flops(jax.devices()[0].device_kind, recipe.compute_dtype,
                                      settings.peak_tflops)
        record["peak_flops_per_device"], record["peak_source"] = peak, source
        record["peak_memory_bytes"], record["peak_memory_kind"] = device_peak_memory()
    return record


def _add_ratios(records: list[dict], device_count: int) -> None:
    """MFU of every row (torch rows at the FLOPs XLA counts for the same model) and, on the
    torch rows, JAX clips/s over theirs."""
    jax_record = records[0]
    flops, peak = jax_record.get("flops_per_clip"), jax_record.get("peak_flops_per_device")
    for record in records:
        rate = record.get("clips_per_s")
        record["mfu"] = flops * rate / (peak * device_count) if flops and peak and rate else None
        if record is not jax_record and rate and jax_record.get("clips_per_s"):
            record["jax_over_this"] = jax_record["clips_per_s"] / rate


def benchmark_model(model: str, settings: Settings, modes: Sequence[str], mesh, log) -> list[dict]:
    """Result records of one model in each of `modes` ('train' / 'infer')."""
    recipe = benchmark_recipe(model, settings)
    check_batch(recipe.batch_size, mesh.size, f"{model} (batch {recipe.batch_size})")
    records, reference, setup, torch_note, model_object = [], None, None, None, None
    if settings.compare_torch:
        config = _model_config(recipe)
        reference = registry.torch_reference(config)
        if reference is None:
            torch_note = (f"{model}: no PyTorch reference in this project (its parity tests use "
                          "stored upstream outputs); torch skipped")
        else:
            setup = torch_side.torch_setup(recipe.compute_dtype, reference,
                                           random_batch(recipe, False)[recipe.input_key])
            model_object = _converted_model(reference, recipe, settings.seed)
    if model_object is None:
        # The benchmark command owns its process: initialise without XLA's optimisations.
        model_object = train_lib.create_model(recipe, 4, settings.seed, log=log, fast_init=True)
    for mode in modes:
        batch = random_batch(recipe, train=mode == "train", seed=settings.seed)
        description = input_description(recipe, batch, mode == "train")
        log(f"  {model} {mode}: batch {recipe.batch_size} x {description}, {recipe.compute_dtype}")
        try:
            runners = [jax_runner(recipe, model_object, mode, batch, mesh)]
        except Exception as error:  # noqa: BLE001 (reported, and the run goes on)
            log(f"  {model} {mode}: JAX failed: {type(error).__name__}: {error}")
            records.append({"model": model, "preset": recipe.preset, "mode": mode, "framework": "jax",
                            "batch_size": recipe.batch_size, "input": description,
                            "compute_dtype": recipe.compute_dtype,
                            "error": f"{type(error).__name__}: {str(error)[:500]}"})
            continue
        if reference is not None:
            runners += torch_runners(reference, recipe, mode, batch, settings.torch_variants, setup)
        measure(runners, settings.steps, settings.warmup, settings.rounds, log)
        mode_records = [_result(model, recipe, mode, r, description, mesh, settings) for r in runners]
        _add_ratios(mode_records, mesh.size)
        difference = _logit_difference(runners) if mode == "infer" else None
        for record in mode_records:
            if record["framework"] == "torch eager" and difference is not None:
                record["max_abs_logit_diff"] = difference
        if torch_note:
            mode_records[0]["note"] = torch_note
        for record in mode_records:
            log("    " + one_line(record))
        records += mode_records
        del runners
        _release_memory()
    return records


def _model_config(recipe):
    """The NNX model config the recipe builds (shapes only, nothing allocated)."""
    factory = models_lib.MODELS[recipe.model]
    abstract = nnx.eval_shape(lambda: factory(num_classes=4, rngs=nnx.Rngs(0),
                                              dtype=jnp.dtype(recipe.compute_dtype),
                                              **dict(recipe.model_overrides)))
    return abstract.config


def _converted_model(reference, recipe, seed: int):
    """The JAX model holding `reference`'s weights, through checkpoints_convert."""
    import torch

    torch_side.randomise_batch_norm(reference, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / f"{recipe.model}.pth"
        torch.save(reference.state_dict(), path)
        return convert.load_torch_checkpoint(recipe.model, path, num_classes=4, seed=seed,
                                             dtype=jnp.dtype(recipe.compute_dtype),
                                             **dict(recipe.model_overrides))


def _logit_difference(runners: Sequence[Runner]) -> float | None:
    jax_runner_, eager = runners[0], next((r for r in runners if r.framework == "torch eager"), None)
    if eager is None or eager.step is None or jax_runner_.last_output is None:
        return None
    logits = np.asarray(jax_runner_.last_output[0], np.float32)
    reference = eager.last_output.detach().float().cpu().numpy()
    return float(np.max(np.abs(logits - reference)))


def _release_memory() -> None:
    gc.collect()
    jax.clear_caches()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
