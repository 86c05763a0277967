"""One 2D convolution at a time, XLA against PyTorch (oneDNN), on the shapes that the `cpu`
preset's video ResNets run (frames as the batch):

    python -m strokevision_jax.benchmark.convs
    XLA_FLAGS=--xla_cpu_use_thunk_runtime=false python -m strokevision_jax.benchmark.convs

prints the median milliseconds of `jax.lax.conv_general_dilated` (channels-last) and, with torch
installed, of `torch.nn.functional.conv2d` (channels_last) for each shape: how far XLA's CPU
convolution is from PyTorch's before any network is involved, and what an `XLA_FLAGS` setting
changes (run it twice, with and without the flags).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

# (frames, height, width, in channels, out channels, kernel, stride)
SHAPES = ((64, 42, 56, 3, 11, 7, 2), (64, 21, 28, 16, 36, 3, 1), (64, 21, 28, 36, 16, 3, 1),
          (64, 11, 14, 32, 32, 3, 1))


def median_ms(function, steps: int, warmup: int = 2) -> float:
    """Median wall milliseconds of `steps` calls of `function` after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def time_convs(shapes=SHAPES, steps: int = 30, with_torch: bool = True) -> list[dict]:
    rows = []
    for frames, height, width, cin, cout, k, s in shapes:
        pad = k // 2
        rng = np.random.default_rng(0)
        x = rng.standard_normal((frames, height, width, cin), np.float32)
        w = rng.standard_normal((k, k, cin, cout), np.float32)
        conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(  # noqa: B023 (called at once)
            x, w, (s, s), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")))
        xj, wj = jax.device_put(x), jax.device_put(w)
        row = {"shape": (frames, height, width, cin, cout, k, s),
               "xla_ms": median_ms(lambda: conv(xj, wj).block_until_ready(), steps)}
        if with_torch:
            import torch

            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
            with torch.no_grad():
                row["torch_ms"] = median_ms(lambda: torch.nn.functional.conv2d(xt, wt, stride=s, padding=pad), steps)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.benchmark.convs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args(argv)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    print("| frames x H x W, in -> out, k, stride | XLA ms | torch ms |\n|---|---|---|")
    for row in time_convs(steps=args.steps, with_torch=not args.no_torch):
        n, h, w, cin, cout, k, s = row["shape"]
        torch_ms = f"{row['torch_ms']:.2f}" if "torch_ms" in row else "—"
        print(f"| {n} x {h} x {w}, {cin} -> {cout}, {k}, {s} | {row['xla_ms']:.2f} | {torch_ms} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
