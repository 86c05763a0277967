"""Sliding a clip window over a long recording: which windows, and per-frame probabilities."""

import numpy as np
import pytest

from strokevision_jax import inference
from strokevision_jax.errors import TrainingError


def test_windows_cover_every_frame_and_end_on_the_last():
    starts = inference.window_starts(100, 30, 7)
    assert starts[0] == 0 and starts[-1] == 70 and np.all(np.diff(starts) <= 7)
    assert inference.window_starts(30, 30, 7).tolist() == [0]
    assert inference.window_starts(29, 30, 7).size == 0
    with pytest.raises(ValueError, match="stride=0"):
        inference.window_starts(100, 30, 0)


def test_a_directory_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(TrainingError, match="is not a training run"):
        inference.load_run(tmp_path)
