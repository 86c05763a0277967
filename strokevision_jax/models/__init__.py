"""The NNX models. `registry` describes each one (network, config, input, converter table,
PyTorch original); `MODELS` and `ALIASES` are its name tables."""

import contextlib
import os

import jax

from strokevision_jax.models.registry import ALIASES, MODELS

__all__ = ["ALIASES", "FAST_INIT_ENV", "MODELS", "fast_init", "fast_init_requested"]

FAST_INIT_ENV = "STROKEVISION_FAST_INIT"


@contextlib.contextmanager
def fast_init():
    """Compiles without XLA's optimisations inside the block (process-wide, while it lasts).

    Eager initialisation compiles one small random-number program per parameter shape; XLA's
    optimisations only cost time there (20 s -> 8 s for the cpu preset's R(2+1)D-18). The flag
    is global to the process, so library code never sets it: the command-line programs, which
    own their process, opt in (`train.create_model(..., fast_init=True)` and alike), or the whole
    process does, with STROKEVISION_FAST_INIT=1 (the test suite sets it)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def fast_init_requested(flag: bool | None) -> bool:
    """`flag` if given, else whether $STROKEVISION_FAST_INIT is set to something other than 0."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(FAST_INIT_ENV, "") not in ("", "0")
