"""Patient-grouped folds: grouping, stratification, determinism, leak checks, errors."""

import numpy as np
import pytest

from strokevision_jax import folds
from strokevision_jax.data.classes import CLASS_NAMES


def make_clips(num_patients=40, seed=0):
    """A hand-made clip table: each patient has 5-30 clips with a patient-specific class mix."""
    rng = np.random.default_rng(seed)
    clips = []
    for p in range(num_patients):
        split = ("train", "validation", "test")[p % 3]
        mix = rng.dirichlet(np.ones(len(CLASS_NAMES)) * 2.0)
        for _ in range(int(rng.integers(5, 31))):
            index = sum(c.split == split for c in clips)
            clips.append(folds.Clip(split, index, f"c{len(clips)}", f"patient{p:02d}", int(rng.choice(4, p=mix))))
    return clips


def test_folds_are_grouped_by_patient_and_cover_every_clip_once_as_test():
    clips = make_clips()
    splits = folds.assign_folds(clips, 5, seed=0)
    tested = [ref for s in splits for ref in s.refs["test"]]
    assert sorted(tested) == sorted((c.split, c.index) for c in clips)
    test_patients = [p for s in splits for p in s.patients["test"]]
    assert len(test_patients) == len(set(test_patients)) == 40
    patient_of = {(c.split, c.index): c.patient for c in clips}
    for s in splits:
        folds.check_no_leak(s, clips)
        parts = {part: {patient_of[r] for r in s.refs[part]} for part in folds.PARTS}
        assert parts["train"].isdisjoint(parts["validation"]) and parts["train"].isdisjoint(parts["test"])
        assert parts["validation"].isdisjoint(parts["test"])
        assert parts["validation"], "every fold keeps validation patients"
        # All clips of a fold's non-test patients are used for training or validation.
        assert len(s.refs["train"]) + len(s.refs["validation"]) + len(s.refs["test"]) == len(clips)


def test_folds_are_stratified_within_tolerance():
    """Each test fold's class mix is within 0.08 (absolute share) of the whole dataset's."""
    clips = make_clips()
    overall = np.bincount([c.label for c in clips], minlength=4) / len(clips)
    label_of = {(c.split, c.index): c.label for c in clips}
    for s in folds.assign_folds(clips, 5, seed=0):
        share = np.bincount([label_of[r] for r in s.refs["test"]], minlength=4) / len(s.refs["test"])
        assert np.abs(share - overall).max() < 0.08, (s.name, share, overall)


def test_folds_are_deterministic_for_a_seed():
    clips = make_clips()
    a = [s.to_json() for s in folds.assign_folds(clips, 4, seed=3)]
    b = [s.to_json() for s in folds.assign_folds(clips, 4, seed=3)]
    c = [s.to_json() for s in folds.assign_folds(clips, 4, seed=4)]
    assert a == b
    assert a != c


def test_split_round_trips_through_json():
    clips = make_clips(12)
    split = folds.assign_folds(clips, 3, seed=0)[1]
    assert folds.Split.from_json(split.to_json()) == split
    with pytest.raises(folds.FoldError, match="lacks"):
        folds.Split.from_json({"name": "x"})


def test_dataset_split_keeps_the_stored_splits():
    clips = make_clips(12)
    split = folds.dataset_split(clips)
    for part in folds.PARTS:
        assert {s for s, _ in split.refs[part]} == {part}


def test_leak_check_catches_a_patient_in_two_parts():
    clips = make_clips(12)
    split = folds.assign_folds(clips, 3, seed=0)[0]
    leaked = split.patients["test"][0]
    # A deliberate leak: one of the test patient's clips also put into training.
    patient_of = {(c.split, c.index): c.patient for c in clips}
    ref = next(r for r in split.refs["test"] if patient_of[r] == leaked)
    bad_refs = dict(split.refs, test=tuple(r for r in split.refs["test"] if r != ref),
                    train=split.refs["train"] + (ref,))
    with pytest.raises(folds.FoldError, match=f"patient {leaked}, who is in test"):
        folds.check_no_leak(folds.Split(split.name, bad_refs, split.patients), clips)
    # The same patient listed in two parts.
    bad_patients = dict(split.patients, train=split.patients["train"] + (leaked,))
    with pytest.raises(folds.FoldError, match=f"patient {leaked} is in both"):
        folds.check_no_leak(folds.Split(split.name, split.refs, bad_patients), clips)


def test_too_many_folds_names_the_smallest_class():
    clips = make_clips(12)
    per_class = folds.patients_per_class(clips)
    smallest = min(per_class.values())
    with pytest.raises(folds.FoldError, match=rf"occurs in only {smallest} patients.*--folds={smallest} or fewer"):
        folds.assign_folds(clips, smallest + 1)


def test_too_small_dataset_is_refused():
    clips = [c for c in make_clips(40) if c.patient in ("patient00", "patient01", "patient02", "patient03")]
    with pytest.raises(folds.FoldError):
        folds.assign_folds(clips, 3)


def test_subset_source_reads_the_referenced_records():
    sources = {"train": ["t0", "t1"], "validation": ["v0"], "test": ["x0", "x1"]}
    subset = folds.SubsetSource(sources, [("test", 1), ("train", 0)])
    assert len(subset) == 2 and subset[0] == "x1" and subset[1] == "t0"
