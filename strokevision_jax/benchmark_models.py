"""Training-step throughput of the video ResNets, with and without the factorised convolutions.

    python -m strokevision_jax.benchmark_models                      # the cpu preset's network
    python -m strokevision_jax.benchmark_models --model=r2plus1d_18 --frames=16 --size=112 \
        --base_width=64 --batch_size=16

Prints ms per jitted AdamW step (forward, backward, update) and clips/s for `factorize_convs`
True and False, measured side by side in one process on the default JAX backend.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from strokevision_jax.models import MODELS


def time_train_step(model_name: str, shape: tuple[int, int, int], batch_size: int, steps: int,
                    **overrides) -> float:
    """Seconds per training step (after one compile-and-warm-up step)."""
    model = MODELS[model_name](num_classes=4, rngs=nnx.Rngs(0), **overrides)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, video, labels):
        def loss_fn(model):
            logits = model(video, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    video = jax.random.normal(jax.random.key(0), (batch_size, *shape, 3))
    labels = jnp.zeros((batch_size,), jnp.int32)
    step(model, optimizer, video, labels).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(model, optimizer, video, labels)
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="r2plus1d_18", choices=sorted(MODELS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--base_width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=1, help="blocks per stage (torchvision: 2)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    shape = (args.frames, args.size, args.size)
    print(f"{args.model}, input {args.batch_size} x {shape}, base width {args.base_width}, "
          f"{args.blocks} block(s) per stage; backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind})")
    results = {}
    for factorize in (False, True):
        seconds = time_train_step(args.model, shape, args.batch_size, args.steps,
                                  base_width=args.base_width, stage_blocks=(args.blocks,) * 4,
                                  factorize_convs=factorize)
        results[factorize] = seconds
        print(f"  factorize_convs={factorize!s:5}: {seconds * 1e3:8.1f} ms/step "
              f"{args.batch_size / seconds:8.1f} clips/s")
    print(f"  speed-up: {results[False] / results[True]:.2f}x")


if __name__ == "__main__":
    main()
