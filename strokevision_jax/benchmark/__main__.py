"""`python -m strokevision_jax.benchmark`: see `strokevision_jax.benchmark.cli`."""

import sys

from strokevision_jax.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
