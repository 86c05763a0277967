"""The machine a benchmark runs on: the peak FLOP/s table behind MFU, the environment (devices,
library versions, XLA settings) recorded with every report, and whether JAX's backend has
started (after which XLA_FLAGS no longer reach XLA)."""

from __future__ import annotations

import os
import platform
import re
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax

from strokevision_jax.benchmark.settings import Settings

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


def backend_started() -> bool:
    """Whether JAX has started a backend in this process (XLA has then read XLA_FLAGS).

    JAX has no public query for this (`jax._src.xla_bridge.backends_are_initialized` is
    private). Its public `jax_num_cpu_devices` option must be set before any backend starts:
    `jax.config.update` raises RuntimeError for a new value once one has. So this sets another
    value and, when that is accepted (nothing started yet), puts the old one back: the option
    is left as it was either way. A JAX without the option counts as not started (the flags are
    then applied, as before this check existed)."""
    name = "jax_num_cpu_devices"
    try:
        current = getattr(jax.config, name)
    except AttributeError:
        return False
    try:
        jax.config.update(name, 1 if current != 1 else 2)
    except RuntimeError:
        return True
    jax.config.update(name, current)
    return False
