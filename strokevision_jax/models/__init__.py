"""The NNX models. `registry` describes each one (network, config, input, converter table,
PyTorch original); `MODELS` and `ALIASES` are its name tables."""

import contextlib

import jax

from strokevision_jax.models.registry import ALIASES, MODELS

__all__ = ["ALIASES", "MODELS", "fast_init"]


@contextlib.contextmanager
def fast_init():
    """Compiles without XLA's optimisations inside the block (process-wide, while it lasts).

    Eager initialisation compiles one small random-number program per parameter shape; XLA's
    optimisations only cost time there (20 s -> 8 s for the cpu preset's R(2+1)D-18). The flag
    is global to the process, so library code never sets it: the command-line programs, which
    own their process, opt in (`train.create_model(..., fast_init=True)` and alike)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
