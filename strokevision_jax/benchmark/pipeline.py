"""Measuring the grain input pipelines: clips per second delivered, per worker count.

This is the pipeline section of `python -m strokevision_jax.benchmark --modes=pipeline`: each
model's preset transform, per --workers count (`pipeline_records`). Its parts:

- `FakeSource`: in-memory random records of the stored shape (30, 128, 171, 3), so a loader can
  be timed without a built dataset (the transforms alone, no decoding);
- `open_source`: the built dataset when there is one (decoding included), else `FakeSource`;
- `measure_loader`: one training epoch through `pipeline.make_loader`, reporting the time to the
  first batch (worker start-up included) and the steady rate over the following batches.

This was `strokevision_jax.data.benchmark_pipeline`: benchmark code, which also opens the TFDS
dataset (`strokevision_jax.dataset`, a command-level module the data package may not import), so
it lives with the command rather than in the data package.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from strokevision_jax.benchmark.settings import Settings, benchmark_recipe
from strokevision_jax.data import pipeline as data_pipeline

STORED_SHAPE = (30, 128, 171, 3)  # frames, height, width, channels of the default 'synthetic' config


class FakeSource:
    """`num_records` records that cycle through a few random ones of the stored shape."""

    def __init__(self, num_records: int, num_distinct: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        frames, height, width, _ = STORED_SHAPE
        self._records = [
            {
                "video": rng.integers(0, 256, STORED_SHAPE, dtype=np.uint8),
                "keypoints": rng.uniform([0, 0], [width, height], (frames, 17, 2)).astype(np.float32),
                "keypoint_scores": rng.uniform(0, 1, (frames, 17)).astype(np.float32),
                "label": i % 4,
                "patient_id": "P000",
                "clip_id": f"P000_C{i:04d}",
            }
            for i in range(num_distinct)
        ]
        self._num_records = num_records

    def __len__(self) -> int:
        return self._num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[index % len(self._records)]


def open_source(choice: str, config: str, data_dir: str | None, min_records: int,
                split: str = "train", log=print) -> tuple[Any, str]:
    """(source, description). choice: 'fake'; 'tfds' (builds the dataset if needed); 'auto'
    (the dataset when it is already built, else fake records, saying so)."""
    fake = FakeSource(min_records), f"fake records {STORED_SHAPE} (transforms only, no decoding)"
    if choice == "fake":
        return fake
    from strokevision_jax import dataset

    if choice == "auto":  # tfds would build a missing dataset on reading: check first
        try:
            path = pathlib.Path(dataset.builder(config, data_dir).data_path)
        except ImportError as error:  # no tensorflow_datasets (e.g. on an accelerator image)
            log(f"Cannot open strokevision/{config} ({error}); timing fake records instead.")
            return fake
        if not (path / "dataset_info.json").exists():
            log(f"No built strokevision/{config} dataset in {path}; timing fake records instead "
                "(--pipeline_source=tfds builds and reads the dataset).")
            return fake
    source = dataset.load_source(split=split, config=config, data_dir=data_dir, build=choice == "tfds")
    if len(source) < min_records:
        log(f"strokevision/{config} {split} has {len(source)} records, fewer than the {min_records} "
            "the timed batches need; timing fake records instead.")
        return fake
    return source, f"tfds strokevision/{config} split={split} ({len(source)} records, decoding included)"


def measure_loader(source: Any, transform: data_pipeline.RecordTransform, output_key: str, *,
                   batch_size: int, num_workers: int, batches: int, num_threads: int = 2) -> dict[str, Any]:
    """One shuffled training epoch: {'first_batch_s', 'clips_per_s' (steady, after the first
    batch), 'batches' (timed), 'output' (shape and dtype of one example)}."""
    loader = data_pipeline.make_loader(source, transform, batch_size=batch_size, train=True, seed=0,
                                       num_workers=num_workers, num_threads=num_threads, shard_index=0,
                                       shard_count=1)
    start = time.perf_counter()
    steady_start, steady_batches, output = None, 0, None
    for batch_number, batch in enumerate(loader):
        if batch_number == 0:
            steady_start = time.perf_counter()
            example = batch[output_key]
            output = "x".join(map(str, example.shape[1:])) + f" {example.dtype}"
        else:
            steady_batches += 1
        if steady_batches >= batches:
            break
    end = time.perf_counter()
    if steady_start is None:
        raise ValueError(f"The loader produced no batch of {batch_size}; lower the batch size.")
    rate = steady_batches * batch_size / (end - steady_start) if steady_batches else float("nan")
    return {"first_batch_s": steady_start - start, "clips_per_s": rate, "batches": steady_batches,
            "output": output}


def pipeline_records(models: Sequence[str], settings: Settings, workers: Sequence[int], source_choice: str,
                     data_dir: str | None, batches: int, log) -> list[dict]:
    """clips/s of the grain loader for each model's preset transform, per worker count."""
    data_pipeline.retain_freed_memory()  # as the train CLI does
    records, sources = [], {}
    for model in models:
        recipe = benchmark_recipe(model, settings)
        if recipe.video is not None:
            transform, key = data_pipeline.video_transform(recipe.video, train=True), "video"
        else:
            transform, key = data_pipeline.skeleton_transform(recipe.skeleton, train=True), "keypoints"
        needed = (batches + 1) * recipe.batch_size
        if (recipe.dataset, needed) not in sources:
            sources[(recipe.dataset, needed)] = open_source(
                source_choice, recipe.dataset, data_dir, needed, log=log)
        source, description = sources[(recipe.dataset, needed)]
        for count in workers:
            figures = measure_loader(source, transform, key, batch_size=recipe.batch_size,
                                     num_workers=count, batches=batches)
            record = {"model": model, "preset": recipe.preset, "batch_size": recipe.batch_size,
                      "workers": count, "source": description, **figures}
            log(f"  {model} pipeline, {count} workers: {figures['clips_per_s']:.1f} clips/s "
                f"(first batch {figures['first_batch_s']:.2f} s)")
            records.append(record)
    return records
