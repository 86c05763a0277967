"""Finding, building and opening the `strokevision` TFDS dataset (no TensorFlow needed)."""

from __future__ import annotations

import os
import pathlib

DATASET_NAME = "strokevision"
DEFAULT_CONFIG = "synthetic"


class DatasetError(RuntimeError):
    """The dataset directory cannot be read or built."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """`data_dir` if given, else $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)."""
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    if os.environ.get("TFDS_DATA_DIR"):
        return pathlib.Path(os.environ["TFDS_DATA_DIR"]).expanduser()
    return pathlib.Path("~/tensorflow_datasets").expanduser()


def builder(config: str = DEFAULT_CONFIG, data_dir: str | os.PathLike | None = None):
    """The `strokevision/<config>` builder, registered with TFDS."""
    from tfds_builder.strokevision import Builder  # registers the builder with TFDS

    names = [c.name for c in Builder.BUILDER_CONFIGS]
    if config not in names:
        raise DatasetError(f"Unknown dataset config {config!r}; valid configs: {', '.join(names)}.")
    root = resolve_data_dir(data_dir)
    try:
        return Builder(config=config, data_dir=os.fspath(root))
    except Exception as error:  # a damaged dataset_info.json, unreadable files, ...
        path = root / DATASET_NAME / config / str(Builder.VERSION)
        raise DatasetError(
            f"Cannot read the dataset directory {path}: {type(error).__name__}: {error}. "
            f"If it is damaged or was built by another version, delete {path} and run again "
            "to rebuild it.") from error


def ensure_built(config: str = DEFAULT_CONFIG, data_dir: str | os.PathLike | None = None):
    """Builds the dataset on first use (prints where); returns its builder."""
    dataset = builder(config, data_dir)
    path = pathlib.Path(dataset.data_path)
    if not (path / "dataset_info.json").exists():
        root = resolve_data_dir(data_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DatasetError(
                f"Cannot create the TFDS data dir {root}: {error}. "
                "Pass --data_dir (or set TFDS_DATA_DIR) to a writable directory.") from error
        print(f"Building {DATASET_NAME}/{config} into {path} (first use; reused afterwards)", flush=True)
        dataset.download_and_prepare()
    return dataset


def load_source(split: str, config: str = DEFAULT_CONFIG,
                data_dir: str | os.PathLike | None = None, *, build: bool = True):
    """A random-access source of example dicts for `split` (grain reads it; no TensorFlow)."""
    import tensorflow_datasets as tfds

    dataset = ensure_built(config, data_dir) if build else builder(config, data_dir)
    path = pathlib.Path(dataset.data_path)
    try:
        return tfds.data_source(f"{DATASET_NAME}/{config}", split=split,
                                data_dir=os.fspath(resolve_data_dir(data_dir)))
    except Exception as error:  # TFDS raises several types for a damaged directory
        raise DatasetError(
            f"Cannot read split {split!r} of {DATASET_NAME}/{config} from {path}: "
            f"{type(error).__name__}: {error}. If the directory is damaged or was built by another "
            f"version, delete {path} and run again to rebuild it.") from error
