"""StrokeVision-Bench as a TFDS dataset: one-second Box and Block Test clips with COCO-17 keypoints.

Configs:
  synthetic        (default) the simulated Box and Block Test, ~1,000 clips from 50 patients,
                   30 frames at 30 fps, 128 x 171 frames (torchvision's video-ResNet resize).
  synthetic_small  the same simulator, tiny: builds in seconds, for tests.
  manual           your recordings: labels.csv, videos and pose-estimator keypoints in
                   `manual_dir` (README.md), imported to the same 30 x 128 x 171 clips.

Storage: one build writes every split twice, as ArrayRecord (random access: `tfds.data_source`
and grain, no TensorFlow needed) and as TFRecord (`tfds.load` / tf.data). The dataset info
names TFRecord as the primary format and ArrayRecord as the alternative, so both readers
find the format they support. Frames are a zlib-compressed uint8 tensor, which needs no
TensorFlow to encode (TFDS's image and video features do).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from strokevision_jax.data import recordings, synthetic
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.data.synthetic import trials
from tfds_builder.strokevision import manual, tfrecord_copy
from tfds_builder.strokevision.workers import WorkerPool

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class StrokeVisionConfig(tfds.core.BuilderConfig):
    """A builder config: where clips come from and their stored size."""

    # "synthetic" (the simulator's clips), "synthetic_trials" (its whole 60 s trials) or "manual"
    # (recordings in manual_dir)
    source: str = "synthetic"
    simulator: synthetic.SimulatorConfig = dataclasses.field(default_factory=synthetic.SimulatorConfig)
    recordings: recordings.ImportConfig = dataclasses.field(default_factory=recordings.ImportConfig)

    @property
    def num_frames(self) -> int | None:
        if self.source == "synthetic_trials":
            return None  # a trial's length varies
        return self.simulator.num_frames if self.source == "synthetic" else self.recordings.num_frames

    @property
    def frame_size(self) -> tuple[int, int]:
        if self.source in ("synthetic", "synthetic_trials"):
            return self.simulator.height, self.simulator.width
        return self.recordings.height, self.recordings.width


SYNTHETIC = StrokeVisionConfig(
    name="synthetic",
    description="Simulated Box and Block Test: ~1,000 clips, 50 patients, 30 x 128 x 171 frames.",
    simulator=synthetic.SimulatorConfig(),
)
SYNTHETIC_SMALL = StrokeVisionConfig(
    name="synthetic_small",
    description="Tiny simulated Box and Block Test for tests: 12 patients, 96 clips, 64 x 86 frames.",
    simulator=synthetic.SimulatorConfig(num_patients=12, num_clips=96, height=64, width=86, seed=1),
)
SYNTHETIC_TRIALS = StrokeVisionConfig(
    name="synthetic_trials",
    description=("Whole simulated Box and Block Test trials of the `synthetic` patients (same splits): "
                 "one 60 s trial per hand, 30 fps, 128 x 171, with per-frame phases and the true count."),
    source="synthetic_trials",
    simulator=SYNTHETIC.simulator,
)
SYNTHETIC_TRIALS_SMALL = StrokeVisionConfig(
    name="synthetic_trials_small",
    description="The trials of `synthetic_small`'s 12 patients (64 x 86 frames), for tests.",
    source="synthetic_trials",
    simulator=SYNTHETIC_SMALL.simulator,
)
MANUAL = StrokeVisionConfig(
    name="manual",
    description="Your recordings (manual_dir: labels.csv, videos, keypoints), as 30 x 128 x 171 clips.",
    source="manual",
    recordings=recordings.ImportConfig(num_frames=30, fps=30.0, height=128, width=171),
)
SKIP_INVALID_ENV = "STROKEVISION_SKIP_INVALID"  # for `tfds build`, which cannot pass builder arguments


class Builder(tfds.core.GeneratorBasedBuilder):
    """StrokeVision-Bench clips: RGB frames, COCO-17 keypoints and scores, four action labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Simulated Box and Block Test configs; `manual` for real recordings."}
    BUILDER_CONFIGS = [SYNTHETIC, SYNTHETIC_SMALL, SYNTHETIC_TRIALS, SYNTHETIC_TRIALS_SMALL, MANUAL]
    DEFAULT_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only the `manual` config needs it: a directory with labels.csv (clip_id, patient_id, label, "
        "video, keypoints[, start, end, split]), the videos and the pose estimator's keypoint files, "
        "laid out as tfds_builder/strokevision/README.md describes.")

    def __init__(self, *, skip_invalid: bool | None = None, **kwargs):
        """skip_invalid (`manual` only): skip bad rows of labels.csv and list them in the summary
        instead of stopping; None reads $STROKEVISION_SKIP_INVALID (1 / true / yes)."""
        super().__init__(**kwargs)
        if skip_invalid is None:
            skip_invalid = os.environ.get(SKIP_INVALID_ENV, "").strip().lower() in ("1", "true", "yes")
        self.skip_invalid = skip_invalid
        self._manual_plan: manual.ImportPlan | None = None
        # TFDS 4.9 restores `alternative_file_formats` into the info proto but not into the list
        # that `available_file_formats()` reads (only its read-only builder does both), so
        # `tfds.data_source` would not see the ArrayRecord shards of a built dataset.
        restored = [tfds.core.FileFormat(f) for f in self.info.as_proto.alternative_file_formats]
        known = self.info.alternative_file_formats
        known.extend(f for f in restored if f not in known)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.source == "synthetic_trials":
            return self._trials_info()
        frames, (height, width) = config.num_frames, config.frame_size
        features = {
            "video": tfds.features.Tensor(
                shape=(frames, height, width, 3), dtype=np.uint8, encoding="zlib",
                doc="RGB frames, uint8."),
            "keypoints": tfds.features.Tensor(
                shape=(frames, 17, 2), dtype=np.float32,
                doc="COCO-17 (x, y) in pixels of the stored frame, as a pose estimator gives them."),
            "keypoint_scores": tfds.features.Tensor(
                shape=(frames, 17), dtype=np.float32, doc="Keypoint confidences in [0, 1]."),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "patient_id": tfds.features.Text(),
            "clip_id": tfds.features.Text(),
        }
        if config.source == "manual":
            features.update({
                "source_video": tfds.features.Text(doc="The clip's video, as written in labels.csv."),
                "start": tfds.features.Scalar(dtype=np.float32, doc="Window start in the video (s)."),
                "end": tfds.features.Scalar(dtype=np.float32, doc="Window end in the video (s)."),
                "source_frame_index": tfds.features.Tensor(
                    shape=(frames,), dtype=np.int32, doc="Decoded frame of the video behind each stored frame."),
                "blocks": tfds.features.Scalar(
                    dtype=np.int32, doc="The clinician's block count of the clip's recording (-1: not given)."),
                "hand": tfds.features.Text(doc="The recording's tested hand: more_affected, less_affected or ''."),
            })
        if config.source == "synthetic":
            features.update({
                "tested_hand": tfds.features.ClassLabel(names=("left", "right")),
                "camera_mirrored": tfds.features.Scalar(dtype=np.bool_),
                "severity": tfds.features.Scalar(dtype=np.float32, doc="Impairment in [0, 1]."),
                "phase": tfds.features.Tensor(
                    shape=(frames,), dtype=np.int32, doc="Per-frame action index (ground truth)."),
                "keypoints_true": tfds.features.Tensor(
                    shape=(frames, 17, 2), dtype=np.float32, doc="Noise-free COCO-17 keypoints."),
            })
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("video", "label"),
            homepage="https://arxiv.org/abs/2509.07994",
        )

    def _trials_info(self) -> tfds.core.DatasetInfo:
        height, width = self.builder_config.frame_size
        features = {
            "video": tfds.features.Tensor(shape=(None, height, width, 3), dtype=np.uint8, encoding="zlib",
                                          doc="RGB frames of the whole recording, uint8."),
            "keypoints": tfds.features.Tensor(shape=(None, 17, 2), dtype=np.float32,
                                              doc="COCO-17 (x, y) in pixels, as a pose estimator gives them."),
            "keypoint_scores": tfds.features.Tensor(shape=(None, 17), dtype=np.float32),
            "phase": tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                          doc="Per-frame action index (CLASS_NAMES order)."),
            "blocks": tfds.features.Scalar(dtype=np.int32,
                                           doc="Blocks moved within the 60 s after the start signal (the BBT score)."),
            "go_frame": tfds.features.Scalar(dtype=np.int32, doc="The start signal's frame."),
            "hand": tfds.features.ClassLabel(names=trials.HANDS),
            "tested_hand": tfds.features.ClassLabel(names=("left", "right")),
            "severity": tfds.features.Scalar(dtype=np.float32, doc="Impairment of the tested hand in [0, 1]."),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "patient_id": tfds.features.Text(),
            "trial_id": tfds.features.Text(),
        }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              homepage="https://arxiv.org/abs/2509.07994")

    def download_and_prepare(self, *, file_format=None, **kwargs):
        # ArrayRecord is written first; `_download_and_prepare` adds the TFRecord twins.
        if file_format not in (None, "array_record", tfds.core.FileFormat.ARRAY_RECORD):
            raise ValueError(
                f"strokevision writes ArrayRecord and TFRecord together; got file_format={file_format!r}. "
                "Leave file_format unset.")
        return super().download_and_prepare(file_format="array_record", **kwargs)

    def _download_and_prepare(self, dl_manager, download_config=None):
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        if self.builder_config.source == "manual":
            # Raises for clips that failed to decode: TFDS then deletes its temporary build dir.
            self._write_import_report(manual.finish(self._manual_plan))
        tfrecord_copy.copy_shards_to_tfrecord(pathlib.Path(self.data_path))
        # Also re-points the split infos of this builder object at the TFRecord shards.
        self.info.set_file_format("tfrecord", override=True, override_if_initialized=True)
        self.info.add_alternative_file_format("array_record")

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if config.source == "manual":
            return self._manual_split_generators(dl_manager)
        simulator = config.simulator
        patients_by_split = synthetic.split_patients(simulator)
        _assert_disjoint_by_patient(patients_by_split)
        if config.source == "synthetic_trials":
            return {split: self._generate_trials(specs) for split, specs in trial_specs_by_split(simulator).items()}

        report = synthetic.difficulty_report(simulator)
        text = f"strokevision/{config.name}: difficulty of the simulated data\n{report.format()}"
        print(text, flush=True)
        pathlib.Path(self.data_path).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(self.data_path) / "difficulty_report.txt").write_text(text + "\n")

        specs_by_split = collections.defaultdict(list)
        split_of_patient = {p: s for s, patients in patients_by_split.items() for p in patients}
        patient_names = synthetic.patient_ids(simulator)
        for spec in synthetic.clip_specs(simulator):
            specs_by_split[split_of_patient[patient_names[spec.patient_index]]].append(spec)
        return {split: self._generate_examples(specs_by_split[split]) for split in SPLITS}

    def _manual_split_generators(self, dl_manager):
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as error:  # TFDS: missing or empty manual dir
            raise recordings.RecordingsError(
                "strokevision/manual is built from your recordings: pass manual_dir (train: --manual_dir, "
                "tfds build: --manual_dir) pointing at a directory laid out as "
                f"tfds_builder/strokevision/README.md describes ({error}).", []) from None
        plan = manual.plan_import(manual_dir, self.builder_config.recordings, self.skip_invalid)
        _assert_disjoint_by_patient({split: sorted({row.patient_id for row in rows})
                                     for split, rows in plan.clips.items()})
        self._manual_plan = plan
        return {split: manual.import_split(plan, split) for split in SPLITS}

    def _write_import_report(self, text: str) -> None:
        print(text, flush=True)
        plan = self._manual_plan
        path = pathlib.Path(self.data_path)
        (path / "import_report.txt").write_text(text + "\n")
        record = {
            "manual_dir": str(plan.manual_dir.absolute()),
            "labels_sha256": plan.labels_sha256,
            "clips": {split: plan.imported[split] for split in SPLITS},
            "skipped_rows": plan.skipped_rows + len(plan.failed),
            "recordings": dataclasses.asdict(self.builder_config.recordings),
            "files": manual.recording_fingerprints(plan),
        }
        (path / manual.IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    def _generate_trials(self, specs):
        simulator = self.builder_config.simulator
        workers = max(1, min(multiprocessing.cpu_count(), 8))
        if workers == 1 or len(specs) < 4:
            for spec in specs:
                yield spec.trial_id, trial_feature_dict(trials.simulate_trial(simulator, spec))
            return
        with WorkerPool(workers) as pool:
            for trial in pool.imap(trials.simulate_trial, [(simulator, spec) for spec in specs], chunksize=1):
                yield trial["trial_id"], trial_feature_dict(trial)

    def _generate_examples(self, specs):
        simulator = self.builder_config.simulator
        workers = max(1, min(multiprocessing.cpu_count(), 8))
        if workers == 1 or len(specs) < 16:
            clips = (synthetic.simulate_clip(simulator, spec) for spec in specs)
            for clip in clips:
                yield clip["clip_id"], _to_feature_dict(clip)
            return
        # Render in worker subprocesses that never re-run the caller's script (see workers.py).
        with WorkerPool(workers) as pool:
            for clip in pool.imap(synthetic.simulate_clip, [(simulator, spec) for spec in specs]):
                yield clip["clip_id"], _to_feature_dict(clip)


def config_named(name: str) -> StrokeVisionConfig | None:
    """The builder config called `name`, or None."""
    return next((c for c in Builder.BUILDER_CONFIGS if c.name == name), None)


def trial_specs_by_split(simulator: synthetic.SimulatorConfig) -> dict[str, list]:
    """The trials of each split: every patient keeps its `synthetic` split, with a trial per hand."""
    index = {name: i for i, name in enumerate(synthetic.patient_ids(simulator))}
    return {split: trials.trial_specs(simulator, [index[p] for p in patients])
            for split, patients in synthetic.split_patients(simulator).items()}


def trial_feature_dict(trial: dict) -> dict:
    return {"video": trial["video"], "keypoints": trial["keypoints"], "keypoint_scores": trial["keypoint_scores"],
            "phase": np.asarray(trial["phase"], np.int32), "blocks": trial["blocks"], "go_frame": trial["go_frame"],
            "hand": trial["hand"], "tested_hand": trial["tested_hand"], "severity": np.float32(trial["severity"]),
            "fps": np.float32(trial["fps"]), "patient_id": trial["patient_id"], "trial_id": trial["trial_id"]}


def _to_feature_dict(clip: dict) -> dict:
    example = dict(clip)
    example["camera_mirrored"] = bool(example["camera_mirrored"])
    example["phase"] = np.asarray(example["phase"], np.int32)
    return example


def _assert_disjoint_by_patient(patients_by_split: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for split, patients in patients_by_split.items():
        for patient in patients:
            if patient in seen:
                raise AssertionError(
                    f"Patient {patient} is in both the {seen[patient]} and {split} splits; "
                    "splits must be disjoint by patient.")
            seen[patient] = split
