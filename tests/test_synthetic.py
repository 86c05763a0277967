"""The simulated Box and Block Test: determinism, shapes, plan, splits, keypoints, rendering, report."""

import dataclasses
import pickle

import numpy as np
import pytest

from strokevision_jax.data import synthetic
from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.data.keypoints import COCO17, COCO17_FLIP_INDEX, flip_keypoints
from strokevision_jax.data.synthetic import patients as patients_lib
from strokevision_jax.data.synthetic import sessions as sessions_lib

SMALL = synthetic.SimulatorConfig(num_patients=8, num_clips=40, height=64, width=86)
ARRAY_KEYS = ("keypoints", "keypoint_scores", "phase", "keypoints_true", "severity")


@pytest.fixture(scope="module")
def specs():
    return synthetic.clip_specs(SMALL)


@pytest.fixture(scope="module")
def clips(specs):
    return [synthetic.simulate_clip(SMALL, spec, render=False) for spec in specs]


def _clear_caches():
    for cached in (patients_lib._plan, patients_lib._patient, sessions_lib._session, sessions_lib._clip_specs):
        cached.cache_clear()


def test_same_inputs_give_byte_identical_clips(specs):
    spec = specs[3]
    first = synthetic.simulate_clip(SMALL, spec)
    _clear_caches()  # regenerated from the seeds, not read back from a cache
    assert synthetic.clip_specs(SMALL) == specs
    second = synthetic.simulate_clip(SMALL, pickle.loads(pickle.dumps(spec)))
    assert first.keys() == second.keys()
    for key in ("video", *ARRAY_KEYS):
        assert np.asarray(first[key]).tobytes() == np.asarray(second[key]).tobytes(), key
    for key in ("label", "patient_id", "clip_id", "tested_hand", "camera_mirrored"):
        assert first[key] == second[key], key


def test_another_seed_gives_other_clips(specs):
    other = synthetic.SimulatorConfig(num_patients=8, num_clips=40, height=64, width=86, seed=1)
    other_specs = synthetic.clip_specs(other)
    assert [s.start_frame for s in other_specs] != [s.start_frame for s in specs]
    a = synthetic.simulate_clip(SMALL, specs[0])
    b = synthetic.simulate_clip(other, other_specs[0])
    assert not np.array_equal(a["video"], b["video"])
    assert not np.array_equal(a["keypoints_true"], b["keypoints_true"])


def test_shapes_and_dtypes(specs):
    clip = synthetic.simulate_clip(SMALL, specs[0])
    frames = SMALL.num_frames
    assert clip["video"].shape == (frames, SMALL.height, SMALL.width, 3) and clip["video"].dtype == np.uint8
    for key in ("keypoints", "keypoints_true"):
        assert clip[key].shape == (frames, 17, 2) and clip[key].dtype == np.float32, key
    assert clip["keypoint_scores"].shape == (frames, 17) and clip["keypoint_scores"].dtype == np.float32
    assert clip["phase"].shape == (frames,) and clip["phase"].dtype == np.int32
    assert isinstance(clip["label"], int) and 0 <= clip["label"] < NUM_CLASSES
    assert clip["patient_id"] == "P000" and clip["clip_id"] == "P000_C0000"
    assert clip["tested_hand"] in (0, 1) and isinstance(clip["camera_mirrored"], bool)
    assert clip["severity"].dtype == np.float32 and 0.0 <= clip["severity"] <= 1.0
    assert "video" not in synthetic.simulate_clip(SMALL, specs[0], render=False)


def test_class_counts_follow_the_frequencies(specs):
    counts = np.bincount([s.label for s in specs], minlength=NUM_CLASSES)
    expected = len(specs) * np.asarray(SMALL.class_frequencies) / sum(SMALL.class_frequencies)
    assert counts.sum() == SMALL.num_clips
    np.testing.assert_allclose(counts, expected, atol=1.0)  # largest-remainder rounding


def test_clip_plan_covers_every_patient_with_unique_ids(specs):
    per_patient = np.bincount([s.patient_index for s in specs], minlength=SMALL.num_patients)
    assert per_patient.min() >= 1
    assert len({s.clip_id for s in specs}) == len(specs)
    for patient in range(SMALL.num_patients):
        indices = [s.clip_index for s in specs if s.patient_index == patient]
        assert indices == list(range(len(indices)))
    default = synthetic.clip_specs(synthetic.SimulatorConfig(num_clips=200, num_patients=20))
    counts = np.bincount([s.patient_index for s in default])
    assert counts.max() > 2 * counts.min()  # spread unevenly, as in a real recording campaign


def test_labels_are_the_strict_majority_of_the_phases(specs, clips):
    # Each label is the one the dataset plan drew (from class_frequencies) for that clip, and it is
    # the strict plurality of the phases of the session's frames in the clip's window, counted here
    # from the session itself rather than from what simulate_clip (which checks the same) returns.
    planned = patients_lib._plan(SMALL).labels
    for spec, clip in zip(specs, clips):
        assert clip["label"] == planned[spec.patient_index][spec.clip_index], spec
        times = (spec.start_frame + np.arange(SMALL.num_frames)) / SMALL.fps
        phase = sessions_lib._session(SMALL, spec.patient_index).phase_at(times)
        np.testing.assert_array_equal(clip["phase"], phase)
        counts = np.bincount(phase, minlength=NUM_CLASSES)
        assert int(np.argmax(counts)) == clip["label"] and np.sort(counts)[-2] < counts.max(), spec


def test_a_spec_from_another_config_is_rejected(specs):
    spec = specs[0]
    wrong_label = (spec.label + 1) % NUM_CLASSES
    wrong = synthetic.ClipSpec(spec.patient_index, spec.clip_index, wrong_label, spec.start_frame)
    with pytest.raises(ValueError, match="strict majority"):
        synthetic.simulate_clip(SMALL, wrong, render=False)


def test_splits_are_disjoint_complete_deterministic_and_have_both_hands(clips):
    splits = synthetic.split_patients(SMALL)
    _clear_caches()  # regenerated from the seed, not read back from a cached plan
    assert synthetic.split_patients(dataclasses.replace(SMALL)) == splits
    assert synthetic.split_patients(dataclasses.replace(SMALL, seed=1)) != splits  # the seed decides them
    assert set(splits) == {"train", "validation", "test"}
    members = [p for patients in splits.values() for p in patients]
    assert sorted(members) == synthetic.patient_ids(SMALL)  # each patient in exactly one split
    hand_of = {clip["patient_id"]: clip["tested_hand"] for clip in clips}
    for split, patients in splits.items():
        assert {hand_of[p] for p in patients} == {0, 1}, split


def test_half_the_patients_use_each_hand(clips):
    hand_of = {clip["patient_id"]: clip["tested_hand"] for clip in clips}
    assert len(hand_of) == SMALL.num_patients
    assert sum(hand_of.values()) == SMALL.num_patients // 2


def test_confident_keypoints_lie_inside_the_frame(clips):
    for clip in clips:
        x, y = clip["keypoints"][..., 0], clip["keypoints"][..., 1]
        scores = clip["keypoint_scores"]
        assert np.all((scores >= 0) & (scores <= 1))
        visible = scores > 0.3
        assert np.all((x[visible] >= 0) & (x[visible] <= SMALL.width - 1))
        assert np.all((y[visible] >= 0) & (y[visible] <= SMALL.height - 1))
        # The lower body is behind the table: never confidently detected.
        lower = [COCO17[f"{s}_{j}"] for s in ("left", "right") for j in ("hip", "knee", "ankle")]
        assert np.all(scores[:, lower] < 0.3)


def test_keypoints_look_estimated_not_exact(clips):
    errors = [np.linalg.norm(c["keypoints"] - c["keypoints_true"], axis=-1)[c["keypoint_scores"] > 0.3] for c in clips]
    error = np.concatenate(errors)
    assert 0.2 < np.median(error) < 2.0  # pixels at 64-px height: jitter, not noise-free, not wild


def test_hands_stay_inside_the_centre_crop(clips):
    # What decides the label must survive the centred square crop (112/128 of the height, with margin).
    half_crop = 0.45 * SMALL.height
    for clip in clips:
        wrists = clip["keypoints_true"][:, [COCO17["left_wrist"], COCO17["right_wrist"]]]
        assert np.all(np.abs(wrists[..., 0] - SMALL.width / 2) < half_crop)


def test_carrying_moves_away_from_the_tested_side(clips):
    # Joint names follow the image: in a mirrored clip the anatomical right arm is named left.
    agree = total = 0
    for clip in clips:
        carrying = clip["phase"] == synthetic.WITH_OBJECT
        if carrying.sum() < 10:
            continue
        image_right = (clip["tested_hand"] == synthetic.RIGHT) != clip["camera_mirrored"]
        wrist = COCO17["right_wrist" if image_right else "left_wrist"]
        x = clip["keypoints_true"][carrying, wrist, 0]
        agree += np.sign(x[-1] - x[0]) == (1 if image_right else -1)
        total += 1
    assert total >= 3 and agree / total >= 0.75


def test_frames_are_flat_and_the_person_moves(specs):
    clip = synthetic.simulate_clip(SMALL, specs[1])
    video = clip["video"].astype(int)
    unchanged = np.mean(np.all(video[1:] == video[:-1], axis=-1))
    assert unchanged > 0.8  # no per-frame noise: the static scene stays byte-identical
    assert np.any(video[0] != video[-1])


def test_difficulty_report_formats():
    report = synthetic.difficulty_report(SMALL)
    assert isinstance(report.baseline_accuracy, float) and 0.0 <= report.baseline_accuracy <= 1.0
    assert len(report.baseline_per_class_accuracy) == NUM_CLASSES
    assert sum(sum(counts) for counts in report.class_counts.values()) == SMALL.num_clips
    assert np.asarray(report.baseline_confusion).sum() == sum(report.class_counts["test"])
    assert report.clips_per_patient[0] <= report.clips_per_patient[1] <= report.clips_per_patient[2]
    text = report.format()
    for name in CLASS_NAMES:
        assert name in text
    assert "test accuracy" in text and "hardest confusion" in text


def test_baseline_features_ignore_mirroring(clips):
    # The baseline must not know the tested side: a mirrored clip gives the same features.
    clip = clips[0]
    mirrored = flip_keypoints(clip["keypoints"], SMALL.width, COCO17_FLIP_INDEX)
    scores = clip["keypoint_scores"][:, list(COCO17_FLIP_INDEX)]
    np.testing.assert_allclose(synthetic.wrist_trajectory_features(mirrored, scores),
                               synthetic.wrist_trajectory_features(clip["keypoints"], clip["keypoint_scores"]),
                               atol=1e-4)


def test_invalid_configs_are_explained():
    with pytest.raises(ValueError, match="at least 6 patients"):
        synthetic.SimulatorConfig(num_patients=4)
    with pytest.raises(ValueError, match="class_frequencies"):
        synthetic.SimulatorConfig(class_frequencies=(0.5, 0.5))
    with pytest.raises(ValueError, match="smaller than num_patients"):
        synthetic.SimulatorConfig(num_patients=10, num_clips=5)
