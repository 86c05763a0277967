"""Shared fixtures: one `synthetic_small` build per test session (per xdist worker)."""

import pytest

from strokevision_jax.data import dataset as dataset_lib


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    dataset_lib.ensure_built("synthetic_small", path)
    return path

