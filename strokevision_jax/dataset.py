"""Finding, building and opening the `strokevision` TFDS dataset (no TensorFlow needed).

The `manual` config is built from the user's recordings: pass `manual_dir` (a directory with
labels.csv, see tfds_builder/strokevision/README.md) the first time; later calls reuse the build
and refuse a manual_dir whose labels.csv differs from the one it was built from.
"""

from __future__ import annotations

import json
import os
import pathlib

DATASET_NAME = "strokevision"
DEFAULT_CONFIG = "synthetic"
MANUAL_CONFIG = "manual"


class DatasetError(RuntimeError):
    """The dataset directory cannot be read or built."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """`data_dir` if given, else $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)."""
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    if os.environ.get("TFDS_DATA_DIR"):
        return pathlib.Path(os.environ["TFDS_DATA_DIR"]).expanduser()
    return pathlib.Path("~/tensorflow_datasets").expanduser()


def builder(config: str = DEFAULT_CONFIG, data_dir: str | os.PathLike | None = None, *,
            skip_invalid: bool | None = None):
    """The `strokevision/<config>` builder, registered with TFDS (skip_invalid: see `ensure_built`)."""
    from tfds_builder.strokevision import Builder  # registers the builder with TFDS

    names = [c.name for c in Builder.BUILDER_CONFIGS]
    if config not in names:
        raise DatasetError(f"Unknown dataset config {config!r}; valid configs: {', '.join(names)}.")
    root = resolve_data_dir(data_dir)
    try:
        return Builder(config=config, data_dir=os.fspath(root), skip_invalid=skip_invalid)
    except Exception as error:  # a damaged dataset_info.json, unreadable files, ...
        path = root / DATASET_NAME / config / str(Builder.VERSION)
        raise DatasetError(
            f"Cannot read the dataset directory {path}: {type(error).__name__}: {error}. "
            f"If it is damaged or was built by another version, delete {path} and run again "
            "to rebuild it.") from error


def ensure_built(config: str = DEFAULT_CONFIG, data_dir: str | os.PathLike | None = None, *,
                 manual_dir: str | os.PathLike | None = None, skip_invalid: bool = False):
    """Builds the dataset on first use (prints where); returns its builder.

    manual_dir, skip_invalid: the `manual` config only. manual_dir defaults to TFDS's
    <data_dir>/downloads/manual; skip_invalid skips bad rows of labels.csv (listed in the summary
    printed at the end of the build) instead of stopping at them.
    """
    if manual_dir is not None and config != MANUAL_CONFIG:
        raise DatasetError(f"manual_dir is only read by the {MANUAL_CONFIG!r} config, not {config!r}.")
    dataset = builder(config, data_dir, skip_invalid=skip_invalid)
    path = pathlib.Path(dataset.data_path)
    if (path / "dataset_info.json").exists():
        if config == MANUAL_CONFIG and manual_dir is not None:
            _check_same_labels(path, pathlib.Path(manual_dir))
        return dataset
    root = resolve_data_dir(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(
            f"Cannot create the TFDS data dir {root}: {error}. "
            "Pass --data_dir (or set TFDS_DATA_DIR) to a writable directory.") from error
    if config != MANUAL_CONFIG:
        print(f"Building {DATASET_NAME}/{config} into {path} (first use; reused afterwards)", flush=True)
        dataset.download_and_prepare()
        return dataset
    return _build_manual(dataset, root, manual_dir)


def _build_manual(dataset, root: pathlib.Path, manual_dir):
    import tensorflow_datasets as tfds

    from strokevision_jax.data import recordings
    from tfds_builder.strokevision import manual

    manual_dir = pathlib.Path(manual_dir).expanduser() if manual_dir else root / "downloads" / "manual"
    if not (manual_dir / manual.LABELS_FILE).is_file():
        raise DatasetError(
            f"{DATASET_NAME}/{MANUAL_CONFIG} is built from your recordings, and {manual_dir} has no "
            f"{manual.LABELS_FILE}. Pass --manual_dir (manual_dir=...) pointing at a directory laid out "
            "as tfds_builder/strokevision/README.md describes (python -m strokevision_jax.data.cut_clips "
            "writes one from long recordings).")
    print(f"Building {DATASET_NAME}/{MANUAL_CONFIG} from {manual_dir} into {dataset.data_path} "
          "(first use; reused afterwards)", flush=True)
    try:
        dataset.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    except recordings.RecordingsError as error:
        raise DatasetError(str(error)) from None
    return dataset


def _check_same_labels(version_dir: pathlib.Path, manual_dir: pathlib.Path) -> None:
    """A built `manual` dataset must come from this manual_dir's labels.csv and recordings as they
    are now (else: stale data); each recording's fingerprint is in the build's import record."""
    from tfds_builder.strokevision import manual

    record_path = version_dir / manual.IMPORT_RECORD
    try:
        record = json.loads(record_path.read_text())
        current = manual.labels_fingerprint(manual_dir)
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"Cannot compare {manual_dir / manual.LABELS_FILE} with the build in {version_dir}: "
                           f"{error}. Delete {version_dir} to rebuild.") from None
    if record.get("labels_sha256") != current:
        raise DatasetError(
            f"{version_dir} was built from another labels.csv ({record.get('manual_dir')}) than "
            f"{manual_dir / manual.LABELS_FILE}. Delete {version_dir} to rebuild from {manual_dir}, or "
            "pass another --data_dir.")
    changed = manual.changed_recordings(manual_dir, record.get("files", {}))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise DatasetError(
            f"{len(changed)} recording file(s) in {manual_dir} changed since {version_dir} was built "
            f"from them: {shown}. The build holds the old clips: delete {version_dir} and run again to "
            "rebuild from the recordings as they are now (or put the old files back).")


def load_source(split: str, config: str = DEFAULT_CONFIG,
                data_dir: str | os.PathLike | None = None, *, build: bool = True,
                manual_dir: str | os.PathLike | None = None, skip_invalid: bool = False):
    """A random-access source of example dicts for `split` (grain reads it; no TensorFlow).

    manual_dir, skip_invalid: see `ensure_built` (the `manual` config's first build).
    """
    import tensorflow_datasets as tfds

    dataset = (ensure_built(config, data_dir, manual_dir=manual_dir, skip_invalid=skip_invalid)
               if build else builder(config, data_dir))
    path = pathlib.Path(dataset.data_path)
    try:
        return tfds.data_source(f"{DATASET_NAME}/{config}", split=split,
                                data_dir=os.fspath(resolve_data_dir(data_dir)))
    except Exception as error:  # TFDS raises several types for a damaged directory
        raise DatasetError(
            f"Cannot read split {split!r} of {DATASET_NAME}/{config} from {path}: "
            f"{type(error).__name__}: {error}. If the directory is damaged or was built by another "
            f"version, delete {path} and run again to rebuild it.") from error
