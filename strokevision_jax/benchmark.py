"""Throughput of the model zoo: what a training run and an evaluation run get per second.

    python -m strokevision_jax.benchmark                                  # every model, train + infer
    python -m strokevision_jax.benchmark --models=r2plus1d_18,swin3d_t --preset=paper --dtype=bf16 \
        --compare=torch --out=results.json --markdown=table.md
    python -m strokevision_jax.benchmark --modes=pipeline --workers=0,4,8,16   # the grain loaders only
    python -m strokevision_jax.benchmark --models=r3d_18 --ab_xla_flags=--xla_gpu_force_conv_nhwc=true
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m strokevision_jax.benchmark --preset=cpu

What runs is what training runs: `train.create_model(recipe, 4, seed)`, the recipe's optimiser,
`train.make_train_step` (jitted, the state donated) on a batch sharded over the 'data' axis of
`train.make_mesh()` (all devices JAX sees: the global batch is split over them, so it must be a
multiple of the device count), and for `infer` `train.make_eval_step` (one view per clip: the
recipe's mirrored second view, where it has one, would double the work). PoseConv3D's heatmaps
are generated inside both steps, as in training. The input is one batch of random records of the
stored shape (`benchmark_pipeline.FakeSource`) through the recipe's transform, placed on the
devices once: step times exclude the host-to-device transfer and the input pipeline, whose
rate is measured on its own (`--modes=pipeline`).

Per model and mode:
  compile s       `lower` + `compile` of the step, timed apart from every run (with --cache_dir
                  set, a rerun reads XLA's persistent cache: that time is then the cache's)
  first step s    the first run after compiling (allocation, one-time set-up), not in the stats
  step ms         median and p10-p90 of --steps steps after --warmup, each timed on the host
                  clock until `jax.block_until_ready` of its outputs (the new state) returns
  clips/s         global batch / median step time
  GFLOP/clip      XLA's cost analysis of the compiled step (per device, x devices, / batch);
                  multiply-adds count 2. These are the FLOPs executed: with several devices the
                  replicated optimiser update is counted once per device
  MFU             achieved FLOP/s / (peak FLOP/s per device x devices); the peak comes from
                  PEAK_TFLOPS by device kind and compute dtype (datasheet dense rates) or
                  --peak_tflops; n/a on CPUs unless --peak_tflops is given
  mem plan GiB    XLA's memory plan of the step per device: arguments + outputs + temporaries
                  - aliased (donated) buffers
  peak mem GiB    accelerators: `memory_stats()['peak_bytes_in_use']` (the most over the local
                  devices; the process's peak so far, so with several models in one run an
                  earlier, larger model can set it); CPU: the process's peak resident set (VmHWM)

--compare=torch (video models) runs torchvision's network of the same configuration
(`torch_reference.torch_reference`), its BatchNorm statistics randomised and its weights
converted to the JAX model through `checkpoints_convert`, so both hold the same weights, on the
same clips, batch and precision:
PyTorch eager (channels_last_3d; bf16 through autocast, float32 weights) and `torch.compile`
(reported as failed, with the reason, when it does not compile), the train step (loss,
backward, the recipe's SGD / AdamW) and inference (`no_grad`). The frameworks are timed in
--rounds alternating rounds (JAX, eager, compiled, JAX, ...) in one process, so a machine that
slows down or speeds up mid-run affects all of them alike; each row's ratio is JAX clips/s over
that row's. In infer mode the largest |logit difference| between JAX and torch eager is shown
(float32: ~1e-5 expected; bf16: ~1e-2). The skeleton models have no PyTorch reference here and
are skipped with a note. JAX's allocator is then set not to preallocate
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so that both frameworks fit on one GPU.

XLA flags. `--xla_flags='--flag=value ...'` appends to XLA_FLAGS before JAX starts its backend
(an unknown flag aborts the process: XLA checks them). `--ab_xla_flags=FLAGS` runs the same
benchmark twice in fresh processes, without and with FLAGS, and prints B/A ratios. On Hopper
GPUs these are the ones to measure:
  --xla_gpu_force_conv_nhwc=true          XLA keeps 3D convolutions channels-first on GPUs
                                          (its NHWC layout heuristic skips more than 2 spatial
                                          dims), with transposes around them; this forces NHWC.
  --xla_gpu_enable_latency_hiding_scheduler=true   overlaps the gradient all-reduce with
                                          compute: matters with several GPUs, not one.
  --xla_gpu_enable_command_buffer=        (empty) turns CUDA graphs off, to see what they save
  --xla_gpu_autotune_level=0..4           convolution / GEMM autotuning effort (compile time)
All four exist in this jaxlib; on CPUs they parse and do nothing. XLA_PYTHON_CLIENT_MEM_FRACTION
and XLA_PYTHON_CLIENT_PREALLOCATE are environment variables, not flags.

--cache_dir=DIR turns on JAX's persistent compilation cache there (the train CLI keeps one in
~/.cache/strokevision_jax/xla): run twice to see the compile time a rerun pays.

--modes=pipeline adds the loader table: clips/s that the grain loader delivers per --workers
count for each model's preset transform (the built dataset with --pipeline_source=tfds or when
it is built, else fake records of the stored shape), next to the JAX training rate of the same
run, so a reader sees whether the loader or the device is the bottleneck.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx

from checkpoints_convert import api as convert
from strokevision_jax import torch_reference, presets
from strokevision_jax import models as models_lib
from strokevision_jax import train as train_lib
from strokevision_jax.data import benchmark_pipeline, pipeline

MODES = ("train", "infer", "pipeline")
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}

# Dense (no sparsity) peak TFLOP/s per device from the vendors' datasheets: (kind pattern,
# bfloat16, float32). GPUs' float32 figure is the TF32 tensor-core rate: XLA's default precision
# runs float32 dots and convolutions on TF32 (V100, which has none, the plain FP32 rate).
# Patterns are matched against `device.device_kind` in this order (first match wins).
PEAK_TFLOPS: tuple[tuple[str, str, float | None, float | None], ...] = (
    ("B200", r"\bB200\b", 2250.0, 1100.0),
    ("H200 NVL", r"\bH200 NVL\b", 835.5, 417.5),
    ("GH200", r"\bGH200\b", 989.4, 494.7),
    ("H200 SXM", r"\bH200\b", 989.4, 494.7),
    ("H100 NVL", r"\bH100 NVL\b", 835.5, 417.5),
    ("H100 PCIe", r"\bH100 PCIe\b", 756.5, 378.0),
    ("H100 SXM", r"\bH100\b", 989.4, 494.7),
    ("A100", r"\bA100\b", 312.0, 156.0),
    ("L40S", r"\bL40S\b", 362.1, 183.0),
    ("L40", r"\bL40\b", 181.0, 90.5),
    ("L4", r"\bL4\b", 121.0, 60.0),
    ("A10", r"\bA10\b", 125.0, 62.5),
    ("V100", r"\bV100\b", None, 15.7),
    ("TPU v6e", r"TPU v6( lite|e)", 918.0, None),
    ("TPU v5e", r"TPU v5( lite|e)", 197.0, None),
    ("TPU v5p", r"TPU v5p?$", 459.0, None),
    ("TPU v4", r"TPU v4", 275.0, None),
)


class UsageError(ValueError):
    """A bad command-line value (exit status 2)."""


# ----------------------------------------------------------------------------- small figures

def peak_flops(device_kind: str, dtype: str, override_tflops: float | None = None
               ) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where it came from); (None, why) when unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"--peak_tflops={override_tflops:g}"
    for label, pattern, bf16, fp32 in PEAK_TFLOPS:
        if re.search(pattern, device_kind):
            value = bf16 if dtype == "bfloat16" else fp32
            if value is None:
                return None, f"{label}: no {dtype} peak in PEAK_TFLOPS; pass --peak_tflops"
            return value * 1e12, f"{label} datasheet, dense {dtype}"
    return None, f"no peak known for {device_kind!r}; pass --peak_tflops"


def step_stats(times: Sequence[float]) -> dict[str, float]:
    """Median and spread (seconds) of per-step times."""
    values = np.asarray(times, np.float64)
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
            "min_s": float(values.min()), "max_s": float(values.max()), "steps": int(values.size)}


def check_batch(batch_size: int, device_count: int, where: str) -> None:
    if batch_size % device_count:
        lower = batch_size // device_count * device_count
        choices = ", ".join(str(n) for n in (lower, lower + device_count) if n > 0)
        raise UsageError(
            f"{where}: the global batch of {batch_size} clips is split over the 'data' axis of "
            f"{device_count} devices, so it must be a multiple of {device_count}; pass "
            f"--batch_size={choices.split(', ')[-1]} (or another multiple: {choices}).")


def host_peak_rss_bytes() -> int | None:
    """VmHWM of this process (Linux), else None."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_peak_memory() -> tuple[int | None, str]:
    """(bytes, label): the accelerators' peak bytes in use, or the host's peak RSS on CPUs."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        return max(peaks), "device peak_bytes_in_use (process so far, max over devices)"
    return host_peak_rss_bytes(), "host RSS peak (whole process so far)"


def compiled_figures(compiled, device_count: int, batch_size: int) -> dict[str, Any]:
    """FLOPs per clip and the memory plan from XLA's analyses of a compiled step."""
    figures: dict[str, Any] = {"flops_per_clip": None, "memory_plan_bytes": None}
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
            analysis = analysis[0] if analysis else {}
        flops = float((analysis or {}).get("flops", 0.0))
        if flops > 0:  # the partitioned program: one device's share
            figures["flops_per_clip"] = flops * device_count / batch_size
    except Exception as error:  # noqa: BLE001 (reported, and the run goes on)
        figures["cost_analysis_error"] = f"{type(error).__name__}: {error}"
    try:
        memory = compiled.memory_analysis()
        if memory is not None:
            figures["memory_plan_bytes"] = int(
                memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    except Exception as error:  # noqa: BLE001 (reported, and the run goes on)
        figures["memory_analysis_error"] = f"{type(error).__name__}: {error}"
    return figures


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class Settings:
    """What the command line decides (see parse_args)."""
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


def random_batch(recipe, train: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """`batch_size` random stored-shape records through the recipe's transform, stacked."""
    if recipe.video is not None:
        transform = pipeline.video_transform(recipe.video, train=train)
    else:
        transform = pipeline.skeleton_transform(recipe.skeleton, train=train)
    source = benchmark_pipeline.FakeSource(recipe.batch_size, num_distinct=min(recipe.batch_size, 8),
                                           seed=seed)
    examples = [transform(source[i], np.random.default_rng([seed, i])) for i in range(len(source))]
    batch = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
    batch["mask"] = np.ones(recipe.batch_size, bool)
    return batch


def input_description(recipe, batch: dict[str, np.ndarray], train: bool) -> str:
    array = batch[recipe.input_key]
    text = "x".join(map(str, array.shape[1:])) + f" {array.dtype}"
    if recipe.heatmaps is not None:  # generated inside the step (train.input_adapter)
        height, width = recipe.skeleton.compact_size if train else recipe.skeleton.compact_eval_size
        text += f" -> {height}x{width} heatmaps"
    return text


# ----------------------------------------------------------------------------- timed runners

@dataclasses.dataclass
class Runner:
    """One framework's step on one model and mode: `step()` runs a step to completion."""
    framework: str
    step: Callable[[], Any] | None
    record: dict[str, Any]
    times: list[float] = dataclasses.field(default_factory=list)
    last_output: Any = None

    def run(self, count: int, timed: bool) -> None:
        for _ in range(count):
            start = time.perf_counter()
            self.last_output = self.step()
            if timed:
                self.times.append(time.perf_counter() - start)


def _copy_tree(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def jax_runner(recipe, model, mode: str, batch: dict[str, np.ndarray], mesh) -> Runner:
    """The real jitted train step (state donated) or eval step, compiled ahead, on the mesh."""


    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Copies: the train step donates its state, and the model's arrays serve the next mode too.
    params, rest = _copy_tree(params), _copy_tree(rest)
    class_weights = np.ones(4, np.float32)
    is_train = mode == "train"
    keys = [recipe.input_key, "label"] + ([] if is_train else ["mask"])
    on_mesh = train_lib.shard_batch({k: batch[k] for k in keys}, data)
    if is_train:
        tx = train_lib.make_optimizer(recipe, steps_per_epoch=100)
        ema = _copy_tree((params, rest)) if recipe.ema_decay else None
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params), ema)
        function = train_lib.make_train_step(
            graphdef, tx, class_weights, recipe.input_key, recipe.label_smoothing, 0, recipe.ema_decay,
            train_lib.input_adapter(recipe, train=True))
    else:
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, rest, None)
        function = train_lib.make_eval_step(graphdef, class_weights, recipe.input_key, False,
                                            train_lib.input_adapter(recipe, train=False))
    state = jax.device_put(state, replicated)
    jax.block_until_ready((state, on_mesh))

    start = time.perf_counter()
    lowered = function.lower(state, on_mesh)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    record = {"lower_s": lowered_at - start, "compile_s": compiled_at - start,
              "xla_compile_s": compiled_at - lowered_at,
              **compiled_figures(compiled, mesh.size, recipe.batch_size)}
    holder = {"state": state}

    def train_step():
        holder["state"], metrics = compiled(holder["state"], on_mesh)
        jax.block_until_ready((holder["state"], metrics))
        return metrics

    def eval_step():
        return jax.block_until_ready(compiled(holder["state"], on_mesh))

    return Runner("jax", train_step if is_train else eval_step, record)


def torch_runners(reference, recipe, mode: str, batch: dict[str, np.ndarray],
                  variants: Sequence[str], setup) -> list[Runner]:
    """One Runner per torch variant ('eager', 'compile'), each on its own copy of `reference`;
    a variant that fails to build or compile is a Runner without a step, its error recorded."""
    import copy

    import torch

    runners = []
    for variant in variants:
        framework = f"torch {variant}"
        record: dict[str, Any] = {"torch_precision": "bf16 autocast" if setup.autocast else "float32"}
        if setup.note:
            record["note"] = setup.note
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            step = torch_reference.torch_step(
                copy.deepcopy(reference), recipe, mode == "train", batch[recipe.input_key],
                batch["label"], setup, compile_model=variant == "compile")
            start = time.perf_counter()
            output = step()  # torch.compile compiles here; eager: cudnn autotuning, allocation
            record["first_step_s"] = time.perf_counter() - start
            if variant == "compile":
                record["compile_s"] = record["first_step_s"]
            if setup.device.type == "cuda":
                record["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
                record["peak_memory_kind"] = "torch.cuda.max_memory_allocated (its first step)"
        except Exception as error:  # noqa: BLE001 (reported, and the run goes on)
            first_line = (str(error).strip().splitlines() or [""])[0]
            record["error"] = f"torch {variant} failed: {type(error).__name__}: {first_line[:300]}"
            runners.append(Runner(framework, None, record))
            continue
        runner = Runner(framework, step, record, last_output=output)
        runners.append(runner)
    return runners


def measure(runners: Sequence[Runner], steps: int, warmup: int, rounds: int, log) -> None:
    """Warm-up, then `rounds` interleaved rounds (each runner in turn), `steps` in all."""
    active = [r for r in runners if r.step is not None]
    for runner in active:
        if "first_step_s" not in runner.record:
            start = time.perf_counter()
            runner.last_output = runner.step()
            runner.record["first_step_s"] = time.perf_counter() - start
        runner.run(warmup, timed=False)
    per_round = max(1, math.ceil(steps / rounds))
    for round_index in range(rounds):
        for runner in active:
            runner.run(per_round, timed=True)
        if rounds > 1 and len(active) > 1:
            log(f"    round {round_index + 1}/{rounds}: " + ", ".join(
                f"{r.framework} {1e3 * float(np.median(r.times[-per_round:])):.1f} ms" for r in active))


# ----------------------------------------------------------------------------- one model

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
        reference = torch_reference.torch_reference(config)
        if reference is None:
            torch_note = (f"{model}: no PyTorch reference in this project (its parity tests use "
                          "stored upstream outputs); torch skipped")
        else:
            setup = torch_reference.torch_setup(recipe.compute_dtype, reference,
                                                 random_batch(recipe, False)[recipe.input_key])
            model_object = _converted_model(reference, recipe, settings.seed)
    if model_object is None:
        model_object = train_lib.create_model(recipe, 4, settings.seed, log=log)
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
            log("    " + _one_line(record))
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

    torch_reference.randomise_batch_norm(reference, seed)
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


def _one_line(record: dict) -> str:
    if "error" in record and "step" not in record:
        return f"{record['framework']}: {record['error']}"
    step = record["step"]
    return (f"{record['framework']}: {1e3 * step['median_s']:.1f} ms/step "
            f"(p10 {1e3 * step['p10_s']:.1f}, p90 {1e3 * step['p90_s']:.1f}), "
            f"{record['clips_per_s']:.1f} clips/s" +
            (f", compile {record['compile_s']:.1f} s" if record.get("compile_s") else ""))


# ----------------------------------------------------------------------------- pipeline

def pipeline_records(models: Sequence[str], settings: Settings, workers: Sequence[int], source_choice: str,
                     data_dir: str | None, batches: int, log) -> list[dict]:
    """clips/s of the grain loader for each model's preset transform, per worker count."""
    pipeline.retain_freed_memory()  # as the train CLI does
    records, sources = [], {}
    for model in models:
        recipe = benchmark_recipe(model, settings)
        if recipe.video is not None:
            transform, key = pipeline.video_transform(recipe.video, train=True), "video"
        else:
            transform, key = pipeline.skeleton_transform(recipe.skeleton, train=True), "keypoints"
        needed = (batches + 1) * recipe.batch_size
        if (recipe.dataset, needed) not in sources:
            sources[(recipe.dataset, needed)] = benchmark_pipeline.open_source(
                source_choice, recipe.dataset, data_dir, needed, log=log)
        source, description = sources[(recipe.dataset, needed)]
        for count in workers:
            figures = benchmark_pipeline.measure_loader(source, transform, key, batch_size=recipe.batch_size,
                                                        num_workers=count, batches=batches)
            record = {"model": model, "preset": recipe.preset, "batch_size": recipe.batch_size,
                      "workers": count, "source": description, **figures}
            log(f"  {model} pipeline, {count} workers: {figures['clips_per_s']:.1f} clips/s "
                f"(first batch {figures['first_batch_s']:.2f} s)")
            records.append(record)
    return records


# ----------------------------------------------------------------------------- environment, output

def environment(settings: Settings) -> dict[str, Any]:
    devices = jax.devices()
    env = {
        "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(), "process_count": jax.process_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "host_cpus": os.cpu_count(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "timing": ("host clock around each step until jax.block_until_ready (torch: "
                   "cuda.synchronize); inputs placed on the devices once, so host-to-device "
                   "transfer is excluded"),
    }
    if settings.compare_torch:
        try:
            import torch
            import torchvision

            env.update(torch=torch.__version__, torchvision=torchvision.__version__,
                       torch_threads=torch.get_num_threads(), torch_cuda=torch.cuda.is_available())
        except ImportError as error:
            env["torch"] = f"not installed ({error})"
    return env


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _gib(value) -> str:
    return _fmt(None if value is None else value / 2**30, ".2f")


def _precision(record: dict) -> str:
    if "torch_precision" in record:
        return record["torch_precision"]
    return {"bfloat16": "bf16", "float32": "fp32"}.get(record["compute_dtype"], record["compute_dtype"])


def markdown(report: dict) -> str:
    """The tables of a report (see run()), as markdown."""
    env = report["environment"]
    lines = [f"**{env['device_count']} x {env['device_kind']}** ({env['backend']}), jax {env['jax']}, "
             f"jaxlib {env['jaxlib']}, flax {env['flax']}"
             + (f", torch {env['torch']}" if "torch" in env else "")
             + f"; XLA_FLAGS=`{env['XLA_FLAGS'] or '(none)'}`", "",
             f"`{report['command']}`", ""]
    results = report.get("results", [])
    if results:
        lines += [("| model | mode | framework | precision | batch | input (per clip) | compile s "
                   "| step ms median (p10–p90) | clips/s | GFLOP/clip | MFU | mem plan GiB | peak mem GiB "
                   "| JAX ÷ this |"), "|" + "---|" * 14]
        for r in results:
            step = r.get("step")
            timing = (f"{1e3 * step['median_s']:.1f} ({1e3 * step['p10_s']:.1f}–{1e3 * step['p90_s']:.1f})"
                      if step else r.get("error", "—"))
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['framework']} | {_precision(r)} | {r['batch_size']} "
                f"| {r['input']} "
                f"| {_fmt(r.get('compile_s'), '.1f')} | {timing} | {_fmt(r.get('clips_per_s'), '.1f')} "
                f"| {_fmt(None if r.get('flops_per_clip') is None else r['flops_per_clip'] / 1e9, '.3g')} "
                f"| {_fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f', 'n/a')}"
                f"{'%' if r.get('mfu') is not None else ''} "
                f"| {_gib(r.get('memory_plan_bytes'))} | {_gib(r.get('peak_memory_bytes'))} "
                f"| {_fmt(r.get('jax_over_this'), '.2f')} |")
        notes = sorted({r["note"] for r in results if r.get("note")})
        diffs = [f"{r['model']}: {r['max_abs_logit_diff']:.1e}" for r in results
                 if r.get("max_abs_logit_diff") is not None]
        kinds = sorted({r["peak_memory_kind"] for r in results if r.get("peak_memory_kind")})
        peaks = sorted({r["peak_source"] for r in results if r.get("peak_source")})
        lines.append("")
        lines += [f"- peak mem: {kind}" for kind in kinds]
        lines += [f"- MFU peak: {peak}" for peak in peaks]
        if diffs:
            lines.append("- max |logit difference| JAX vs torch eager (same weights, infer): "
                         + ", ".join(diffs))
        lines += [f"- {note}" for note in notes]
    pipeline_rows = report.get("pipeline", [])
    if pipeline_rows:
        train_rates = {r["model"]: r["clips_per_s"] for r in results
                       if r["mode"] == "train" and r["framework"] == "jax" and r.get("clips_per_s")}
        lines += ["", ("| model | preset | batch | workers | source | first batch s | loader clips/s "
                       "| JAX train clips/s | loader ÷ device |"), "|" + "---|" * 9]
        for p in pipeline_rows:
            device_rate = train_rates.get(p["model"])
            lines.append(
                f"| {p['model']} | {p['preset']} | {p['batch_size']} | {p['workers']} | {p['source']} "
                f"| {p['first_batch_s']:.2f} | {p['clips_per_s']:.1f} | {_fmt(device_rate, '.1f')} "
                f"| {_fmt(p['clips_per_s'] / device_rate if device_rate else None, '.2f')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- A/B of XLA flags

def compare_reports(a: dict, b: dict) -> list[dict]:
    """Rows matched by (model, mode, framework): clips/s and compile s of A and B, B/A."""
    index = {(r["model"], r["mode"], r["framework"]): r for r in b.get("results", [])}
    rows = []
    for ra in a.get("results", []):
        rb = index.get((ra["model"], ra["mode"], ra["framework"]))
        if rb is None:
            continue
        rate_a, rate_b = ra.get("clips_per_s"), rb.get("clips_per_s")
        rows.append({"model": ra["model"], "mode": ra["mode"], "framework": ra["framework"],
                     "a_clips_per_s": rate_a, "b_clips_per_s": rate_b,
                     "b_over_a": rate_b / rate_a if rate_a and rate_b else None,
                     "a_compile_s": ra.get("compile_s"), "b_compile_s": rb.get("compile_s"),
                     "a_error": ra.get("error"), "b_error": rb.get("error")})
    return rows


def ab_markdown(flags: str, rows: list[dict], a_env: dict) -> str:
    lines = [(f"A/B of XLA flags on {a_env.get('device_count')} x {a_env.get('device_kind')}: "
              f"A = XLA_FLAGS `{a_env.get('XLA_FLAGS') or '(none)'}`, B = A + `{flags}`"), "",
             "| model | mode | framework | A clips/s | B clips/s | B ÷ A | A compile s | B compile s |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['framework']} | {_fmt(r['a_clips_per_s'], '.1f')} "
                     f"| {_fmt(r['b_clips_per_s'], '.1f')} | {_fmt(r['b_over_a'], '.3f')} "
                     f"| {_fmt(r['a_compile_s'], '.1f')} | {_fmt(r['b_compile_s'], '.1f')} |")
    return "\n".join(lines) + "\n"


def _without_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """argv without `--name=value` / `--name value` for each of `names`."""
    kept, skip_value = [], False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        match = re.match(r"--(\w+)(=?)", token)
        if match and match.group(1) in names:
            skip_value = not match.group(2)
            continue
        kept.append(token)
    return kept


def run_ab(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """The same benchmark in two fresh processes, without (A) and with (B) --ab_xla_flags."""
    passed = _without_flags(argv, ("ab_xla_flags", "out", "markdown", "xla_flags"))
    with tempfile.TemporaryDirectory() as tmp:
        reports = {}
        base = args.xla_flags or ""
        for label, extra in (("A", base), ("B", f"{base} {args.ab_xla_flags}")):
            out = pathlib.Path(tmp) / f"{label}.json"
            command = [sys.executable, "-m", "strokevision_jax.benchmark", *passed, f"--out={out}"]
            if extra.strip():
                command.append(f"--xla_flags={extra.strip()}")
            print(f"[{label}] {shlex.join(command[1:])}", flush=True)
            status = subprocess.run(command, check=False).returncode
            if not out.exists():
                print(f"error: run {label} wrote no results (exit status {status}); an unknown XLA flag "
                      "aborts the process: check the flags above.", file=sys.stderr)
                return 1
            reports[label] = json.loads(out.read_text())
    rows = compare_reports(reports["A"], reports["B"])
    table = ab_markdown(args.ab_xla_flags, rows, reports["A"]["environment"])
    print(table)
    combined = {"command": _command(argv), "ab_xla_flags": args.ab_xla_flags, "rows": rows,
                "A": reports["A"], "B": reports["B"]}
    _write_outputs(args, combined, table)
    return 0


# ----------------------------------------------------------------------------- command line

def _command(argv: Sequence[str]) -> str:
    flags = os.environ.get("XLA_FLAGS")
    prefix = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
    return prefix + "python -m strokevision_jax.benchmark " + shlex.join(list(argv))


def _write_outputs(args: argparse.Namespace, report: dict, table: str, log=print) -> None:
    log = log or (lambda *_: None)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"results: {args.out}")
    if args.markdown:
        pathlib.Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.markdown).write_text(table)
        log(f"table: {args.markdown}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}={text!r}: give comma-separated integers, e.g. 0,2,4.") from None
    if not values or min(values) < 0:
        raise UsageError(f"{flag}={text!r}: give non-negative integers, e.g. 0,2,4.")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="'all' (every model with a recipe) or name,name")
    parser.add_argument("--modes", default="train,infer", help="train, infer and/or pipeline")
    parser.add_argument("--preset", choices=("paper", "cpu"), default=None,
                        help="default: paper with a GPU/TPU, cpu otherwise")
    parser.add_argument("--batch_size", type=int, default=None, help="global batch (default: the recipe's)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="compute dtype (default: the recipe's); parameters stay float32")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds (default: 3 with --compare, else 1)")
    parser.add_argument("--compare", choices=("torch",), default=None)
    parser.add_argument("--torch_variants", default="eager,compile", help="eager and/or compile")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak TFLOP/s per device for MFU")
    parser.add_argument("--out", default=None, help="JSON file for every figure and the environment")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--xla_flags", default=None, help="appended to XLA_FLAGS before JAX starts")
    parser.add_argument("--ab_xla_flags", default=None,
                        help="run twice in fresh processes, without and with these flags; print B/A")
    parser.add_argument("--cache_dir", default=None, help="JAX's persistent compilation cache directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=None, help="clip length (default: the recipe's)")
    parser.add_argument("--crop", default=None, help="H,W of the video crop (default: the recipe's)")
    parser.add_argument("--overrides", default=None,
                        help='model config fields as JSON, e.g. \'{"factorize_convs": false}\'')
    parser.add_argument("--workers", default=None,
                        help="grain worker counts for the pipeline mode (default: 0 and powers of 2 "
                             "up to the CPU count)")
    parser.add_argument("--pipeline_source", choices=("auto", "fake", "tfds"), default="auto")
    parser.add_argument("--pipeline_batches", type=int, default=20, help="timed batches per loader row")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir for the pipeline mode")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "batch_size", "frames", "pipeline_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name}={value} must be at least 1.")
    if args.warmup < 0:
        raise UsageError(f"--warmup={args.warmup} must be non-negative.")
    return args


def _settings(args: argparse.Namespace, preset: str) -> Settings:
    crop = None
    if args.crop:
        parts = _int_list(args.crop, "--crop")
        if len(parts) != 2 or min(parts) < 1:
            raise UsageError(f"--crop={args.crop!r}: give H,W, e.g. 112,112.")
        crop = (parts[0], parts[1])
    overrides = ()
    if args.overrides:
        try:
            parsed = json.loads(args.overrides)
        except json.JSONDecodeError as error:
            raise UsageError(f"--overrides={args.overrides!r} is not JSON ({error}).") from None
        if not isinstance(parsed, dict):
            raise UsageError(f"--overrides={args.overrides!r}: give a JSON object of config fields.")
        overrides = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in parsed.items())
    variants = tuple(v.strip() for v in args.torch_variants.split(",") if v.strip())
    unknown = sorted(set(variants) - {"eager", "compile"})
    if unknown:
        raise UsageError(f"--torch_variants: unknown {unknown}; choose eager and/or compile.")
    compare = args.compare == "torch"
    return Settings(preset=preset, dtype=DTYPES.get(args.dtype), batch_size=args.batch_size,
                    steps=args.steps, warmup=args.warmup,
                    rounds=args.rounds or (3 if compare else 1), seed=args.seed, frames=args.frames,
                    crop=crop, overrides=overrides, compare_torch=compare, torch_variants=variants,
                    peak_tflops=args.peak_tflops)


def select_models(text: str, preset: str, log) -> list[str]:
    """'all' -> every registered model with a recipe for `preset` (others skipped, saying so)."""
    if text.strip() == "all":
        chosen = []
        for name in models_lib.MODELS:
            if (name, preset) in presets.RECIPES:
                chosen.append(name)
            else:
                log(f"{name}: no {preset} recipe in presets.py; skipped")
        return chosen
    try:
        return [train_lib.resolve_model(name.strip()) for name in text.split(",") if name.strip()]
    except train_lib.UsageError as error:
        raise UsageError(str(error).replace("--model=", "--models: ")) from None


def apply_xla_flags(flags: str | None) -> None:
    """Appends `flags` to XLA_FLAGS; only possible before JAX has started a backend."""
    if not flags:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise UsageError(f"--xla_flags={flags!r}: JAX's backend already started in this process, so "
                         "XLA would ignore them; run the command in a fresh process.")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def run(args: argparse.Namespace, argv: Sequence[str], log=print) -> dict:
    """The benchmark the arguments describe; returns the report (also written, printed)."""
    apply_xla_flags(args.xla_flags)
    if args.compare == "torch":
        # Both frameworks on one GPU: JAX must not take 75 % of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise UsageError(f"--modes={args.modes!r}: choose from {', '.join(MODES)}.")
    preset = args.preset or train_lib.default_preset()
    settings = _settings(args, preset)
    models = select_models(args.models, preset, log)
    mesh = train_lib.make_mesh()
    for model in models:  # every batch checked before anything is compiled
        recipe = benchmark_recipe(model, settings)
        check_batch(recipe.batch_size, mesh.size, f"{model} (batch {recipe.batch_size})")
    if settings.compare_torch:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as error:
            raise UsageError(f"--compare=torch needs torch and torchvision ({error}): "
                             "pip install -e '.[parity]'.") from None
    report = {"command": _command(argv), "environment": environment(settings),
              "settings": dataclasses.asdict(settings) | {"models": models, "modes": modes},
              "results": [], "pipeline": []}
    env = report["environment"]
    log(f"benchmark: {env['device_count']} x {env['device_kind']} ({env['backend']}), preset {preset}, "
        f"models {', '.join(models)}")
    step_modes = [m for m in modes if m != "pipeline"]
    if step_modes:
        for model in models:
            report["results"] += benchmark_model(model, settings, step_modes, mesh, log)
            # After every model: a run stopped at a time limit keeps what it measured.
            _write_outputs(args, report, markdown(report), log=None)
    if "pipeline" in modes:
        workers = (_int_list(args.workers, "--workers") if args.workers else
                   [0] + [2**i for i in range(int(math.log2(os.cpu_count() or 1)) + 1)])
        report["pipeline"] = pipeline_records(models, settings, workers, args.pipeline_source,
                                              args.data_dir, args.pipeline_batches, log)
    table = markdown(report)
    print(table)
    _write_outputs(args, report, table)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.ab_xla_flags:
            return run_ab(args, argv)
        report = run(args, argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [f"{r['model']} {r['mode']}" for r in report["results"]
              if r["framework"] == "jax" and "error" in r]
    if failed:
        print(f"error: JAX failed on {', '.join(failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
