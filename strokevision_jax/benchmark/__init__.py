"""Throughput of the model zoo: `python -m strokevision_jax.benchmark` (see `cli`'s docstring,
which is also its --help, for what it measures and how).

One job a module:
  cli          the command line: arguments, settings, model selection, `run`, `main`
  settings     `Settings`, the recipe each model is benchmarked with, the batch/device check
  model        one model in each mode: its input batch, runners, result records, ratios
  timing       the runners (JAX, torch), the timed rounds, step statistics, XLA's compiled
               figures (FLOPs, memory plan), peak memory
  hardware     the peak FLOP/s table (MFU), the environment, whether JAX's backend started
  torch_side   the PyTorch steps (`torch_setup`, `torch_step`, `randomise_batch_norm`)
  pipeline     the grain loader rates (`--modes=pipeline`), fake records of the stored shape
  report       the markdown tables (results, loaders, A/B), the log line, --out / --markdown
  ab           --ab_xla_flags: the benchmark in two fresh processes, without and with the flags
  processes    --processes=1,2: the steps as a job of 1, then 2 processes on this machine, side by side

The names below are re-exported so that `from strokevision_jax import benchmark;
benchmark.NAME` reaches them as before the package was split.
"""

from strokevision_jax.benchmark.ab import run_ab
from strokevision_jax.benchmark.cli import (
    apply_xla_flags,
    main,
    parse_args,
    run,
    select_models,
)
from strokevision_jax.benchmark.hardware import (
    PEAK_TFLOPS,
    backend_started,
    environment,
    peak_flops,
)
from strokevision_jax.benchmark.model import (  # the three private ones: tests use them
    _add_ratios,  # noqa: F401
    _converted_model,  # noqa: F401
    _model_config,  # noqa: F401
    benchmark_model,
    input_description,
    random_batch,
)
from strokevision_jax.benchmark.pipeline import (
    FakeSource,
    measure_loader,
    open_source,
    pipeline_records,
)
from strokevision_jax.benchmark.report import ab_markdown, compare_reports, markdown
from strokevision_jax.benchmark.settings import (
    DTYPES,
    MODES,
    Settings,
    UsageError,
    benchmark_recipe,
    check_batch,
)
from strokevision_jax.benchmark.timing import (
    Runner,
    compiled_figures,
    device_peak_memory,
    host_peak_rss_bytes,
    jax_runner,
    measure,
    step_stats,
    torch_runners,
)

__all__ = [
    "DTYPES", "MODES", "PEAK_TFLOPS", "FakeSource", "Runner", "Settings", "UsageError", "ab_markdown",
    "apply_xla_flags", "backend_started", "benchmark_model", "benchmark_recipe", "check_batch",
    "compare_reports", "compiled_figures", "device_peak_memory", "environment", "host_peak_rss_bytes",
    "input_description", "jax_runner", "main", "markdown", "measure", "measure_loader", "open_source",
    "parse_args", "peak_flops", "pipeline_records", "random_batch", "run", "run_ab", "select_models",
    "step_stats", "torch_runners",
]
