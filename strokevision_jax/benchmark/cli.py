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
stored shape (`benchmark.pipeline.FakeSource`) through the recipe's transform, placed on the
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
(`registry.torch_reference`: the model family's `torch_reference`), its BatchNorm statistics randomised and its weights
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

--modes=layers times each stage of a video ResNet (stem, layer1 .. layer4) alone, forward
(infer) and forward + backward (train), in JAX and in PyTorch eager, in alternating rounds: where
a whole step's gap comes from (see benchmark/layers.py).

--processes=1,2 runs the train and infer steps as a job of 1, then 2 processes on this machine
(over 127.0.0.1, the global batch split over every process's devices) and prints their clips/s
side by side (see benchmark/processes.py). One process of such a job is what
--coordinator_address, --num_processes and --process_id start, as in train.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence

import jax

from strokevision_jax import distributed, presets
from strokevision_jax import models as models_lib
from strokevision_jax import train as train_lib
from strokevision_jax.benchmark.ab import run_ab
from strokevision_jax.benchmark.hardware import backend_started, environment
from strokevision_jax.benchmark.model import benchmark_model
from strokevision_jax.benchmark.pipeline import pipeline_records
from strokevision_jax.benchmark.processes import run_processes
from strokevision_jax.benchmark.report import command_line, markdown, write_outputs
from strokevision_jax.benchmark.settings import (
    DTYPES,
    MODES,
    Settings,
    UsageError,
    benchmark_recipe,
    check_batch,
)
from strokevision_jax.models import registry


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
    parser.add_argument("--modes", default="train,infer",
                        help="train, infer, pipeline and/or layers (each stage of a video ResNet, "
                             "JAX against PyTorch eager)")
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
    parser.add_argument("--processes", default=None,
                        help="process counts, e.g. 1,2: the train and infer steps as a job of that many "
                             "processes on this machine, each count in fresh processes, side by side")
    distributed.add_flags(parser)
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
        return [registry.resolve(name.strip()) for name in text.split(",") if name.strip()]
    except registry.UnknownModelError as error:
        raise UsageError(f"--models: {error}") from None


def apply_xla_flags(flags: str | None) -> None:
    """Appends `flags` to XLA_FLAGS; only possible before JAX has started a backend."""
    if not flags:
        return
    if backend_started():
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
    if settings.compare_torch or "layers" in modes:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as error:
            raise UsageError(f"--compare=torch and --modes=layers need torch and torchvision ({error}): "
                             "pip install -e '.[parity]'.") from None
    job = jax.process_count() > 1
    if job and (set(modes) - {"train", "infer"} or settings.compare_torch):
        raise UsageError("a multi-process job measures the train and infer steps only (--modes=train,infer).")
    if not distributed.is_primary():  # process 0 of a job logs and writes the report
        log = lambda *a, **k: None  # noqa: E731
    report = {"command": command_line(argv), "environment": environment(settings),
              "settings": dataclasses.asdict(settings) | {"models": models, "modes": modes},
              "results": [], "pipeline": []}
    env = report["environment"]
    log(f"benchmark: {env['device_count']} x {env['device_kind']} ({env['backend']}), preset {preset}, "
        f"models {', '.join(models)}")
    step_modes = [m for m in modes if m not in ("pipeline", "layers")]
    if step_modes:
        for model in models:
            report["results"] += benchmark_model(model, settings, step_modes, mesh, log)
            # After every model: a run stopped at a time limit keeps what it measured.
            if distributed.is_primary():
                write_outputs(args, report, markdown(report), log=None)
    if "pipeline" in modes:
        workers = (_int_list(args.workers, "--workers") if args.workers else
                   [0] + [2**i for i in range(int(math.log2(os.cpu_count() or 1)) + 1)])
        report["pipeline"] = pipeline_records(models, settings, workers, args.pipeline_source,
                                              args.data_dir, args.pipeline_batches, log)
    table = markdown(report)
    if "layers" in modes:
        from strokevision_jax.benchmark import layers as layers_lib

        report["layers"] = []
        for model in models:
            if not layers_lib.supports(model):
                log(f"{model}: --modes=layers profiles the video ResNets only; skipped")
                continue
            report["layers"] += layers_lib.profile_layers(model, settings, ("train", "infer"), log)
        table += "\n\n" + layers_lib.layers_markdown(report["layers"])
    if distributed.is_primary():
        print(table)
        write_outputs(args, report, table)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.ab_xla_flags:
            return run_ab(args, argv)
        if args.processes:
            return run_processes(args, argv)
        # Before a multi-process job starts JAX's backend (XLA reads XLA_FLAGS then); applied once.
        apply_xla_flags(args.xla_flags)
        args.xla_flags = None
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    local = ("process_id", "initialization_timeout", "out", "markdown", "data_dir", "cache_dir")
    return distributed.run_command(args, {k: v for k, v in vars(args).items() if k not in local},
                                   lambda: _run(args, argv))


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
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
