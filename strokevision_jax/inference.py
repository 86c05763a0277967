"""A trained run for inference on long recordings: its best weights, its evaluation transform,
and the clip window slid over the recording.

    model = inference.load_run("runs/r2plus1d_18_cpu")
    starts = inference.window_starts(num_frames, model.clip_frames, stride=7)
    probabilities = model.probabilities([record(start) for start in starts])   # (windows, classes)
    per_frame = timeline.frame_probabilities(starts, probabilities, num_frames, model.clip_frames)

A record is what the dataset stores for a clip (`video` (T, H, W, 3) uint8 at the stored size,
`keypoints` (T, 17, 2), `keypoint_scores` (T, 17)); the run's own evaluation transform makes the
model's input from it, as in training, and the jitted evaluation step of training (weight average
and mirrored view included, where the recipe has them) gives the probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax import presets
from strokevision_jax.checkpoints import Checkpoints
from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.errors import TrainingError
from strokevision_jax.loop import RUN_CONFIG, recipe_from_config
from strokevision_jax.steps import (
    TrainState,
    input_adapter,
    make_eval_step,
    make_optimizer,
)
from strokevision_jax.weights import create_model


@dataclasses.dataclass
class TrainedModel:
    """A run's best checkpoint, ready to classify clip records."""

    recipe: presets.Recipe
    workdir: pathlib.Path
    state: TrainState
    eval_step: object
    batch_size: int
    checkpoint_id: str  # which weights: the best checkpoint's training step
    frame_size: tuple[int, int]  # (height, width) of the stored frames the run was trained on
    graphdef: object = None  # the network's structure: nnx.merge(graphdef, *state.eval_weights())

    @property
    def input_key(self) -> str | tuple[str, ...]:
        return self.recipe.input_key

    @property
    def needs_keypoints(self) -> bool:
        return needs_keypoints(self.recipe)

    @property
    def name(self) -> str:
        return self.recipe.model

    @functools.cached_property
    def clip_frames(self) -> int:
        """Stored frames one window covers (the dataset's clip length)."""
        return stored_format(self.recipe.dataset)[3]

    def transform(self):
        # Keypoint records need not carry their frames: the stored size normalises them.
        return self.recipe.transform(train=False, frame_size=self.frame_size)

    def probabilities(self, records: Sequence[dict]) -> np.ndarray:
        """(len(records), classes) softmax probabilities, computed `batch_size` records at a time
        (the last batch padded, so one compiled program serves every batch)."""
        transform = self.transform()
        out = []
        for first in range(0, len(records), self.batch_size):
            chunk = [transform(dict(record, label=0), None) for record in records[first:first + self.batch_size]]
            count = len(chunk)
            chunk += [chunk[-1]] * (self.batch_size - count)
            keys = [self.input_key] if isinstance(self.input_key, str) else self.input_key
            batch = {key: np.stack([item[key] for item in chunk]) for key in keys}
            batch |= {"label": np.zeros(self.batch_size, np.int32), "mask": np.arange(self.batch_size) < count}
            logits, _ = self.eval_step(self.state, batch)
            out.append(np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))[:count])
        return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def needs_keypoints(recipe: presets.Recipe) -> bool:
    """Skeleton models and the two-pathway network read keypoints; video models with a
    person-centred region read keypoints to place it."""
    return recipe.skeleton is not None or recipe.video.region == "person"


def load_run(workdir: str | pathlib.Path, *, recipe: presets.Recipe | None = None, seed: int = 0,
             batch_size: int | None = None, log=None, fast_init: bool | None = None) -> TrainedModel:
    """The best checkpoint of a training run (TrainingError when `workdir` is not a finished run).

    The run's settings come from its run_config.json (written by the train command); a run made
    from Python with `train.train_and_evaluate` has none: pass its `recipe` and `seed` then."""
    workdir = pathlib.Path(workdir).absolute()
    config_path = workdir / RUN_CONFIG
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        recipe, seed, init = recipe_from_config(config), config["seed"], config.get("init")
    elif recipe is not None and (workdir / "checkpoints").is_dir():
        init = None
    else:
        raise TrainingError(f"{workdir} is not a training run (no {RUN_CONFIG}); pass the --workdir of "
                            "a run of python -m strokevision_jax.train.")
    model = create_model(recipe, NUM_CLASSES, seed, init, log or (lambda *a: None), fast_init=fast_init)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(recipe, 1)
    ema = jax.tree.map(jnp.copy, (params, rest)) if recipe.ema_decay else None
    like = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params), ema)
    checkpoints = Checkpoints(workdir, log)
    try:
        restored = checkpoints.restore(checkpoints.best, like)
    finally:
        checkpoints.close()
    if restored is None:
        raise TrainingError(f"{workdir / 'checkpoints' / 'best'} holds no checkpoint: the run has not "
                            "finished an epoch; train it first.")
    weights = np.ones(NUM_CLASSES, np.float32)  # the loss is not used here
    step = make_eval_step(graphdef, weights, recipe.input_key, recipe.eval_flip, input_adapter(recipe, train=False))
    height, width, _, _ = stored_format(recipe.dataset)
    return TrainedModel(recipe, workdir, restored[0], step, batch_size or recipe.batch_size,
                        f"step {int(restored[0].step)}", (height, width), graphdef)


def stored_format(dataset: str) -> tuple[int, int, float, int]:
    """(height, width, fps, clip frames) of the clips of a dataset config."""
    from tfds_builder.strokevision import strokevision_dataset_builder as builder

    config = builder.config_named(dataset) or builder.MANUAL
    if config.source == "manual":
        r = config.recordings
        return r.height, r.width, float(r.fps), r.num_frames
    s = config.simulator
    return s.height, s.width, float(s.fps), s.num_frames


def window_starts(num_frames: int, clip_frames: int, stride: int) -> np.ndarray:
    """First frames of windows of `clip_frames` every `stride` frames, the last one ending on the
    recording's last frame (so every frame is covered); empty when the recording is shorter."""
    if stride < 1:
        raise ValueError(f"stride={stride}: must be at least one frame.")
    if num_frames < clip_frames:
        return np.zeros(0, np.int64)
    starts = np.arange(0, num_frames - clip_frames + 1, stride)
    if starts[-1] != num_frames - clip_frames:
        starts = np.append(starts, num_frames - clip_frames)
    return starts.astype(np.int64)
