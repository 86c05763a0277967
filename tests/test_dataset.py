"""The `strokevision` TFDS dataset: one build, read without TensorFlow (data_source + grain) and
with it (tfds.load), splits disjoint by patient."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax.data.classes import CLASS_NAMES

REPO = pathlib.Path(__file__).resolve().parents[1]

# Hides TensorFlow from the import system the way an environment without it would: find_spec
# returns None and `import tensorflow` raises ModuleNotFoundError.
_WITHOUT_TENSORFLOW = """
import importlib.machinery, sys
class _HideTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [_HideTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""

_READ_WITH_GRAIN = _WITHOUT_TENSORFLOW + """
import json, sys
import numpy as np
import tensorflow_datasets as tfds
from strokevision_jax.data import pipeline
source = tfds.data_source("strokevision/synthetic_small", split="train", data_dir=sys.argv[1])
record = source[0]
transform = pipeline.video_transform(pipeline.VideoConfig(num_frames=4, resize=(36, 48), crop=(32, 32)), train=True)
batch = next(iter(pipeline.make_loader(source, transform, batch_size=4, train=True, seed=0)))
print(json.dumps({
    "tensorflow_imported": "tensorflow" in sys.modules,
    "length": len(source),
    "video": [list(record["video"].shape), str(record["video"].dtype)],
    "keypoints": [list(record["keypoints"].shape), str(record["keypoints"].dtype)],
    "batch_video": list(batch["video"].shape),
    "clip_ids": sorted(str(source[i]["clip_id"], "utf-8") if isinstance(source[i]["clip_id"], bytes)
                       else str(source[i]["clip_id"]) for i in range(len(source))),
}))
"""


def _clip_id(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_build_writes_both_formats_and_the_report(small_data_dir):
    version_dir = dataset_lib.builder("synthetic_small", small_data_dir).data_path
    names = sorted(p.name for p in pathlib.Path(version_dir).iterdir())
    for split in ("train", "validation", "test"):
        assert any(n.startswith(f"strokevision-{split}.array_record-") for n in names)
        assert any(n.startswith(f"strokevision-{split}.tfrecord-") for n in names)
    info = json.loads((pathlib.Path(version_dir) / "dataset_info.json").read_text())
    assert info["fileFormat"] == "tfrecord" and info["alternativeFileFormats"] == ["array_record"]
    report = (pathlib.Path(version_dir) / "difficulty_report.txt").read_text()
    assert "baseline" in report.lower()


def test_data_source_and_grain_without_tensorflow(small_data_dir):
    out = subprocess.run([sys.executable, "-c", _READ_WITH_GRAIN, str(small_data_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tensorflow_imported"] is False
    assert result["video"] == [[30, 64, 86, 3], "uint8"]
    assert result["keypoints"] == [[30, 17, 2], "float32"]
    assert result["batch_video"] == [4, 4, 32, 32, 3]
    source = dataset_lib.load_source("train", "synthetic_small", small_data_dir)
    assert result["length"] == len(source)


def test_tfds_load_reads_the_same_examples(small_data_dir):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    loaded = tfds.load("strokevision/synthetic_small", split="validation", data_dir=str(small_data_dir))
    source = dataset_lib.load_source("validation", "synthetic_small", small_data_dir)
    by_clip = {_clip_id(source[i]["clip_id"]): i for i in range(len(source))}
    count = 0
    for example in tfds.as_numpy(loaded):
        record = source[by_clip[_clip_id(example["clip_id"])]]
        np.testing.assert_array_equal(example["video"], record["video"])
        np.testing.assert_array_equal(example["keypoints"], record["keypoints"])
        assert int(example["label"]) == int(record["label"])
        count += 1
    assert count == len(source)


def test_splits_are_disjoint_by_patient_and_labels_are_named(small_data_dir):
    patients = {}
    for split in ("train", "validation", "test"):
        source = dataset_lib.load_source(split, "synthetic_small", small_data_dir)
        patients[split] = {_clip_id(source[i]["patient_id"]) for i in range(len(source))}
        labels = {int(source[i]["label"]) for i in range(len(source))}
        assert labels <= set(range(len(CLASS_NAMES)))
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    builder = dataset_lib.builder("synthetic_small", small_data_dir)
    assert builder.info.features["label"].names == list(CLASS_NAMES)


def test_unknown_config_lists_the_valid_ones(tmp_path):
    with pytest.raises(dataset_lib.DatasetError, match="synthetic_small"):
        dataset_lib.builder("syntetic", tmp_path)
