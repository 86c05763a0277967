"""Timing the steps: a `Runner` per framework (the compiled JAX train / eval step, torch
eager or compiled), the warm-up and interleaved timed rounds (`measure`), and the figures of a
run: step statistics, XLA's FLOPs and memory plan of the compiled step, peak memory."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax import distributed
from strokevision_jax import train as train_lib
from strokevision_jax.benchmark import torch_side

# ----------------------------------------------------------------------------- figures

def step_stats(times: Sequence[float]) -> dict[str, float]:
    """Median and spread (seconds) of per-step times."""
    values = np.asarray(times, np.float64)
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
            "min_s": float(values.min()), "max_s": float(values.max()), "steps": int(values.size)}


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


# ----------------------------------------------------------------------------- runners

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
    rows = slice(*distributed.process_rows(data, recipe.batch_size))  # this process's rows (all, alone)
    on_mesh = train_lib.shard_batch({k: batch[k][rows] for k in keys}, data)
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
    state = train_lib.replicate(state, replicated)
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
            step = torch_side.torch_step(
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
