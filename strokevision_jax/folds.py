"""Patient-grouped splits: the dataset's clips pooled, then cut into folds by patient.

The unit of independence is the patient. `assign_folds` gives every patient to exactly one of k
test folds (scikit-learn's StratifiedGroupKFold: grouped by patient, test folds balanced in
class mix), and picks the validation patients of each fold from its training patients, never
from its test fold. `dataset_split` keeps the dataset's own train / validation / test split (the
paper's protocol). A `Split` is what one training run reads: for each of its three parts, the
clips as (stored split, index) references, and the patients behind them; `check_no_leak` proves
that no patient is in two parts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES

PARTS = ("train", "validation", "test")
STORED_SPLITS = ("train", "validation", "test")


class FoldError(ValueError):
    """Folds that cannot be made, or a split that leaks patients; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One stored clip: where it is (split and index) and whose it is."""

    split: str
    index: int
    clip_id: str
    patient: str
    label: int


@dataclasses.dataclass(frozen=True)
class Split:
    """The clips of one run's train / validation / test parts, as (stored split, index) pairs."""

    name: str
    refs: dict[str, tuple[tuple[str, int], ...]]
    patients: dict[str, tuple[str, ...]]

    def to_json(self) -> dict:
        refs = {part: {split: [i for s, i in self.refs[part] if s == split] for split in STORED_SPLITS}
                for part in PARTS}
        return {"name": self.name, "patients": {p: list(self.patients[p]) for p in PARTS}, "refs": refs}

    @classmethod
    def from_json(cls, data: dict) -> "Split":
        try:
            refs = {part: tuple((split, int(i)) for split in STORED_SPLITS
                                for i in data["refs"][part].get(split, ())) for part in PARTS}
            patients = {part: tuple(data["patients"][part]) for part in PARTS}
            return cls(str(data["name"]), refs, patients)
        except (KeyError, TypeError, AttributeError) as error:
            raise FoldError(f"A split description lacks {error} (expected keys name, patients and refs "
                            f"for {', '.join(PARTS)}); it was not written by this version.") from None


# ----------------------------------------------------------------------------- the clip table

def read_clips(sources: dict) -> list[Clip]:
    """Every clip of the stored splits (random-access sources), in (split, index) order.

    Each record is decoded once (about 2 ms a clip for the synthetic set)."""
    clips = []
    for split in STORED_SPLITS:
        source = sources[split]
        for index in range(len(source)):
            record = source[index]
            clips.append(Clip(split, index, _text(record["clip_id"]), _text(record["patient_id"]),
                              int(record["label"])))
    return clips


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def save_clips(clips: Sequence[Clip], path: os.PathLike) -> None:
    path = pathlib.Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(c) for c in clips]) + "\n")
    os.replace(tmp, path)


def load_clips(path: os.PathLike) -> list[Clip]:
    return [Clip(**row) for row in json.loads(pathlib.Path(path).read_text())]


# ----------------------------------------------------------------------------- folds

def patients_per_class(clips: Sequence[Clip]) -> dict[str, int]:
    """How many patients have at least one clip of each class."""
    return {name: len({c.patient for c in clips if c.label == label})
            for label, name in enumerate(CLASS_NAMES)}


def dataset_split(clips: Sequence[Clip]) -> Split:
    """The dataset's own train / validation / test split, as a Split."""
    refs = {part: tuple((c.split, c.index) for c in clips if c.split == part) for part in PARTS}
    patients = {part: tuple(sorted({c.patient for c in clips if c.split == part})) for part in PARTS}
    split = Split("dataset split", refs, patients)
    check_no_leak(split, clips)
    return split


def assign_folds(clips: Sequence[Clip], num_folds: int, seed: int = 0,
                 validation_fraction: float = 0.15) -> list[Split]:
    """k patient-grouped, class-stratified folds; fold i tests on the i-th group of patients.

    Validation patients (about `validation_fraction` of each fold's training patients, also
    grouped and stratified) are drawn from the training folds. Deterministic for a seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    patients = sorted({c.patient for c in clips})
    if num_folds < 2:
        raise FoldError(f"--folds={num_folds}: use at least 2 folds (or 0 for the dataset's own split).")
    per_class = patients_per_class(clips)
    smallest = min(per_class, key=per_class.get)
    if per_class[smallest] < num_folds:
        raise FoldError(
            f"--folds={num_folds}: the class {smallest} occurs in only {per_class[smallest]} patients, "
            f"so some test folds would have none of it. Use --folds={max(per_class[smallest], 2)} or fewer "
            "(or --folds=0 for the dataset's own split).")
    if len(patients) < num_folds + 2 or per_class[smallest] < 2:
        raise FoldError(
            f"The dataset has {len(patients)} patients ({per_class[smallest]} with {smallest}): too few to "
            f"split into {num_folds} test folds and still keep training and validation patients. Use a "
            "larger dataset or fewer --folds.")
    if not 0.0 < validation_fraction < 0.5:
        raise FoldError(f"validation_fraction={validation_fraction} must be in (0, 0.5).")
    labels = np.array([c.label for c in clips])
    groups = np.array([c.patient for c in clips])
    outer = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(outer.split(np.zeros(len(clips)), labels, groups)):
        rest_patients = sorted(set(groups[rest]))
        inner_splits = min(len(rest_patients), max(2, round(1.0 / validation_fraction)))
        inner = StratifiedGroupKFold(n_splits=inner_splits, shuffle=True, random_state=seed + 1 + fold)
        train_pos, val_pos = next(inner.split(np.zeros(len(rest)), labels[rest], groups[rest]))
        parts = {"train": rest[train_pos], "validation": rest[val_pos], "test": test}
        refs = {part: _in_stored_order((clips[i].split, clips[i].index) for i in idx) for part, idx in parts.items()}
        members = {part: tuple(sorted(set(groups[idx]))) for part, idx in parts.items()}
        split = Split(f"fold {fold + 1} of {num_folds} (fold seed {seed})", refs, members)
        check_no_leak(split, clips)
        missing = [CLASS_NAMES[k] for k in range(len(CLASS_NAMES)) if not (labels[parts["train"]] == k).any()]
        if missing:
            raise FoldError(f"Fold {fold + 1} of {num_folds} has no training clips of {', '.join(missing)}; "
                            "the dataset is too small for this many folds: use fewer --folds.")
        splits.append(split)
    return splits


def _in_stored_order(refs) -> tuple[tuple[str, int], ...]:
    """(split, index) pairs sorted as stored: train, validation, test, then by index."""
    return tuple(sorted(refs, key=lambda ref: (STORED_SPLITS.index(ref[0]), ref[1])))


def check_no_leak(split: Split, clips: Sequence[Clip]) -> None:
    """Raises FoldError if a patient is in two parts of `split`, or the refs disagree with the
    patients they are said to come from, or a clip is used twice."""
    patient_of = {(c.split, c.index): c.patient for c in clips}
    part_of: dict[str, str] = {}
    for part in PARTS:
        for patient in split.patients[part]:
            if patient in part_of:
                raise FoldError(f"{split.name}: patient {patient} is in both {part_of[patient]} and {part}; "
                                "folds must be disjoint by patient.")
            part_of[patient] = part
    seen: set[tuple[str, int]] = set()
    for part in PARTS:
        for ref in split.refs[part]:
            if ref in seen:
                raise FoldError(f"{split.name}: clip {ref} is used twice.")
            seen.add(ref)
            patient = patient_of.get(ref)
            if patient is None:
                raise FoldError(f"{split.name}: clip {ref} is not in the dataset.")
            if part_of.get(patient) != part:
                raise FoldError(f"{split.name}: a {part} clip {ref} belongs to patient {patient}, who is in "
                                f"{part_of.get(patient, 'no part')}; folds must be disjoint by patient.")


def describe(split: Split, clips: Sequence[Clip]) -> str:
    """One line: patients and clips per part, and each part's class mix."""
    label_of = {(c.split, c.index): c.label for c in clips}
    pieces = []
    for part in PARTS:
        counts = np.bincount([label_of[r] for r in split.refs[part]], minlength=len(CLASS_NAMES))
        pieces.append(f"{part} {len(split.patients[part])} patients / {len(split.refs[part])} clips "
                      f"({'/'.join(str(int(n)) for n in counts)})")
    return f"{split.name}: " + "; ".join(pieces)


class SubsetSource:
    """Random access to the clips `refs` of the stored splits' sources (len() and [i])."""

    def __init__(self, sources: dict, refs: Sequence[tuple[str, int]]):
        self.sources = sources
        self.refs = tuple(refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int):
        split, stored_index = self.refs[index]
        return self.sources[split][stored_index]
