"""Converted models next to torchvision's: forward time and largest logit difference.

    python -m checkpoints_convert.benchmark                       # every model, its paper clip
    python -m checkpoints_convert.benchmark --models=r3d_18,swin3d_t --batch_size=2 --frames=8 --size=112

For each model: torchvision's network with random weights (and random normalisation statistics)
is saved with torch.save, converted with `load_torch_checkpoint`, and both run in eval mode on
the same clip. Prints median wall ms per forward over --repeats runs (after a warm-up run that
includes JAX's compile, reported separately), the ratio, and max |logit difference|. Needs the
`parity` extra. The two frameworks run one after the other in one process, on the same threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from checkpoints_convert import api

# torchvision's Kinetics-400 clip per model (frames, side).
PAPER_CLIPS = {
    "r3d_18": (16, 112), "mc3_18": (16, 112), "r2plus1d_18": (16, 112),
    "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224),
    "swin3d_t": (32, 224), "swin3d_s": (32, 224), "swin3d_b": (32, 224),
}


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def compare(name: str, batch_size: int, frames: int | None, size: int | None, repeats: int) -> dict:
    import torch
    import torchvision

    default_frames, default_size = PAPER_CLIPS[name]
    frames, size = frames or default_frames, size or default_size
    torch.manual_seed(0)
    if name.startswith("mvit") and (frames, size) != (default_frames, default_size):
        raise SystemExit(f"{name}: torchvision's builder is fixed to {default_frames} x {default_size}")
    reference = getattr(torchvision.models.video, name)().eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{name}.pth"
        torch.save(reference.state_dict(), path)
        model = api.load_torch_checkpoint(name, path)
    x = torch.randn(batch_size, 3, frames, size, size)
    x_cl = jax.device_put(np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).numpy()))

    def run_torch():
        with torch.no_grad():
            return reference(x)

    forward = jax.jit(lambda m, v: m(v, train=False))

    def run_jax():
        return forward(model, x_cl).block_until_ready()

    torch_first, torch_times = _timed(run_torch, repeats)
    jax_first, jax_times = _timed(run_jax, repeats)
    difference = float(np.max(np.abs(np.asarray(run_jax()) - run_torch().numpy())))
    params = sum(int(np.prod(v.shape)) for v in api.variable_shapes_of_kind(model, "params"))
    return dict(model=name, clip=f"{batch_size}x{frames}x{size}x{size}", params=params,
                torch_ms=1e3 * statistics.median(torch_times), jax_ms=1e3 * statistics.median(jax_times),
                jax_first_s=jax_first, max_diff=difference)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m checkpoints_convert.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PAPER_CLIPS))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=None, help="default: the model's paper clip")
    parser.add_argument("--size", type=int, default=None, help="default: the model's paper crop")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'model':<12} {'clip':<16} {'params':>11} {'torch ms':>9} {'jax ms':>9} {'torch/jax':>9} "
          f"{'jax 1st s':>9} {'max|diff|':>9}")
    for name in args.models.split(","):
        r = compare(name, args.batch_size, args.frames, args.size, args.repeats)
        print(f"{r['model']:<12} {r['clip']:<16} {r['params']:>11,} {r['torch_ms']:>9.1f} {r['jax_ms']:>9.1f} "
              f"{r['torch_ms'] / r['jax_ms']:>9.2f} {r['jax_first_s']:>9.1f} {r['max_diff']:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
