"""The dataset plan and the patients' traits.

Dataset plan: which hand each patient is tested with (exactly half each), how many clips each
patient has (spread unevenly, with a floor) and the labels of its clips (drawn from
`class_frequencies`), from `np.random.SeedSequence([seed, 2**31 - 1])`; `split_patients` divides
the patients into train, validation and test, stratified by tested hand.

Patient traits: each patient has persistent traits (body, colours, tested hand, impairment
severity, chair and camera placement, room, the cubes in the box) drawn from
`np.random.SeedSequence([seed, patient_index])` (the first of its three spawned streams).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools

import numpy as np

from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.data.synthetic.config import (
    BOX_FRONT_TOP,
    CUBE_CM,
    LEFT,
    RIGHT,
    SLOT_LAYERS,
    SimulatorConfig,
    _patient_id,
)

_SKIN_TONES = np.array([(255, 219, 180), (241, 194, 125), (224, 172, 105), (198, 134, 66),
                        (141, 85, 36), (92, 56, 30), (234, 192, 160)], float)
_HAIR_COLOURS = np.array([(30, 25, 20), (70, 45, 25), (150, 110, 60), (190, 190, 185),
                          (225, 220, 210), (110, 60, 30)], float)
_CUBE_COLOURS = np.array([(205, 30, 30), (30, 70, 210), (30, 160, 60), (235, 205, 20),
                          (140, 40, 170), (20, 170, 190)], float)
_TABLE_COLOURS = np.array([(235, 235, 228), (190, 190, 195), (180, 140, 95), (200, 215, 225),
                           (150, 110, 70)], float)
_WOOD_COLOURS = np.array([(205, 165, 110), (190, 145, 90), (220, 190, 140), (170, 120, 70)], float)


@dataclasses.dataclass(frozen=True)
class _Plan:
    tested_hands: np.ndarray  # (P,) LEFT / RIGHT, exactly half each (one more right if P is odd)
    labels: tuple[tuple[int, ...], ...]  # per patient, the labels of its clips in clip order


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights`."""
    quotas = total * np.asarray(weights, float) / np.sum(weights)
    counts = np.floor(quotas).astype(int)
    remainders = quotas - counts
    order = np.argsort(-remainders, kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


@functools.lru_cache(maxsize=16)
def _plan(config: SimulatorConfig) -> _Plan:
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2**31 - 1]))
    num_patients = config.num_patients
    tested_hands = rng.permutation(np.arange(num_patients) % 2 == 0).astype(int)  # RIGHT = 1

    floor = max(1, min(config.min_clips_per_patient, config.num_clips // num_patients))
    weights = rng.lognormal(0.0, config.clips_per_patient_spread, num_patients)
    per_patient = floor + _largest_remainder(config.num_clips - floor * num_patients, weights)

    class_counts = _largest_remainder(config.num_clips, np.asarray(config.class_frequencies))
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), class_counts))
    bounds = np.concatenate([[0], np.cumsum(per_patient)])
    return _Plan(tested_hands, tuple(tuple(int(v) for v in labels[a:b])
                                     for a, b in zip(bounds[:-1], bounds[1:])))


def patient_ids(config: SimulatorConfig) -> list[str]:
    """'P000', 'P001', ... in patient-index order."""
    return [_patient_id(i) for i in range(config.num_patients)]


def split_patients(config: SimulatorConfig, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
                   ) -> dict[str, list[str]]:
    """Patients of 'train', 'validation' and 'test': disjoint, deterministic, stratified by tested
    hand so that every split has left- and right-hand patients (at least one of each)."""
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ValueError(f"split_patients: fractions={fractions} must be three positive numbers.")
    fractions = np.asarray(fractions, float) / np.sum(fractions)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2**31 - 2]))
    names = patient_ids(config)
    hands = _plan(config).tested_hands
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for hand in (LEFT, RIGHT):
        group = rng.permutation(np.flatnonzero(hands == hand))
        num_val = max(1, round(len(group) * fractions[1]))
        num_test = max(1, round(len(group) * fractions[2]))
        if len(group) - num_val - num_test < 1:
            raise ValueError(
                f"split_patients: only {len(group)} patients are tested with the "
                f"{'left' if hand == LEFT else 'right'} hand; need at least 3 per hand.")
        splits["validation"] += [names[i] for i in group[:num_val]]
        splits["test"] += [names[i] for i in group[num_val:num_val + num_test]]
        splits["train"] += [names[i] for i in group[num_val + num_test:]]
    return {split: sorted(members) for split, members in splits.items()}


# ----------------------------------------------------------------------------------------------
# Patient traits.


@dataclasses.dataclass(frozen=True)
class _Patient:
    tested_hand: int
    side: float  # world x sign of the tested hand and its (source) compartment: -1 right hand, +1 left
    mirrored: bool
    severity: float
    # body (cm)
    shoulder_width: float
    upper_arm: float
    forearm: float
    torso: float
    neck: float
    head_radius: float
    shoulder_y: float
    chair_x: float
    # movement
    speed: float  # multiplier on durations
    submovement_rate: float
    tremor_amp: float
    tremor_freq: float
    tremor_phase: np.ndarray  # (2,)
    compensation: float
    sway_amp: float
    sway_freq: np.ndarray  # (3,)
    sway_phase: np.ndarray  # (3,)
    breath_freq: float
    breath_amp: float
    reach: float  # farthest grasp point from the partition (cm)
    clearance_without: float  # apex of the empty return above the partition top (cm)
    clearance_with: float
    non_task_rate: float
    other_hand_in_lap: bool
    long_sleeves: bool
    # scene
    box_depth: float  # image height of the compartments' floor (cm); grows with camera height
    camera_scale: float
    camera_rotation: float  # radians
    camera_offset: np.ndarray  # (2,) pixels at 128-px height
    light: np.ndarray  # (3,) colour gain
    colours: dict
    cube_palette: np.ndarray  # (k, 3)
    slots: np.ndarray  # (S, 2) source cubes (layers, then the heap); x measured from the partition
    slot_colours: np.ndarray  # (S,) palette index
    target_order: np.ndarray  # order in which the first layer's slots fill in the target compartment
    decor: tuple  # wall decorations: (x0, y0, x1, y1, rgb) in fractions of the frame

    @property
    def partition_top(self) -> float:
        return BOX_FRONT_TOP + self.box_depth + 6.5

    @property
    def table_far_y(self) -> float:
        return BOX_FRONT_TOP + self.box_depth + 4.0

    @property
    def hover_y(self) -> float:
        return BOX_FRONT_TOP + 0.55 * self.box_depth + 6.5


def _random_colour(rng, saturation, value) -> np.ndarray:
    hue = rng.random()
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))) * 255


@functools.lru_cache(maxsize=256)
def _patient(config: SimulatorConfig, patient_index: int) -> _Patient:
    traits_seed, _, _ = np.random.SeedSequence([config.seed, patient_index]).spawn(3)
    rng = np.random.default_rng(traits_seed)
    tested_hand = int(_plan(config).tested_hands[patient_index])
    severity = float(rng.beta(2.0, 2.0))
    body = rng.uniform(0.9, 1.1)
    box_depth = rng.uniform(11.5, 14.5)

    columns, rows = 7, max(3, int((box_depth - 1.0) // 2.9))
    grid_x = 1.9 + (np.arange(columns) + 0.5) * (23.5 / columns)
    grid_y = BOX_FRONT_TOP + 0.8 + (np.arange(rows) + 0.5) * ((box_depth - 1.6) / rows)
    slots = []
    for layer in range(SLOT_LAYERS):
        gx, gy = np.meshgrid(grid_x + 0.5 * (layer % 2) * 23.5 / columns, grid_y + 0.3 * layer)
        slots.append(np.stack([gx.ravel(), gy.ravel()], -1) + rng.uniform(-0.5, 0.5, (gx.size, 2)))
    # The heap of the full compartment bulges above the rim (source only: it comes last).
    heap_x = rng.uniform(3.0, 23.5, 16)
    bulge = 3.0 * np.sin(np.pi * (heap_x - 1.0) / 24.0)
    heap_y = BOX_FRONT_TOP + box_depth + rng.uniform(-1.5, 0.5, 16) + bulge
    slots.append(np.stack([heap_x, heap_y], -1))
    slots = np.concatenate(slots)
    slots[:, 0] = np.minimum(slots[:, 0], 25.5 - CUBE_CM / 2)
    palette_size = rng.integers(2, 5)
    cube_palette = _CUBE_COLOURS[rng.choice(len(_CUBE_COLOURS), palette_size, replace=False)]

    decor = []
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.uniform(-0.1, 0.9), rng.uniform(-0.1, 0.5)
        decor.append((x0, y0, x0 + rng.uniform(0.1, 0.35), y0 + rng.uniform(0.1, 0.4),
                      tuple(_random_colour(rng, (0.0, 0.5), (0.3, 0.95)))))
    colours = dict(
        skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.93, 1.05),
        hair=_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))],
        shirt=_random_colour(rng, (0.1, 0.8), (0.25, 0.9)),
        wall=_random_colour(rng, (0.0, 0.25), (0.6, 0.95)),
        chair=_random_colour(rng, (0.0, 0.6), (0.15, 0.5)),
        table=_TABLE_COLOURS[rng.integers(len(_TABLE_COLOURS))] * rng.uniform(0.92, 1.05),
        wood=_WOOD_COLOURS[rng.integers(len(_WOOD_COLOURS))] * rng.uniform(0.92, 1.05),
    )
    clearance_without = rng.uniform(2.0, 5.0)
    return _Patient(
        tested_hand=tested_hand,
        side=-1.0 if tested_hand == RIGHT else 1.0,
        mirrored=bool(rng.random() < config.mirrored_fraction),
        severity=severity,
        shoulder_width=38.0 * body * rng.uniform(0.93, 1.07),
        upper_arm=23.0 * body * rng.uniform(0.95, 1.05),
        forearm=21.0 * body * rng.uniform(0.95, 1.05),
        torso=38.0 * body,
        neck=6.0 * body,
        head_radius=8.3 * body * rng.uniform(0.95, 1.05),
        shoulder_y=rng.uniform(43.0, 47.5),
        chair_x=rng.uniform(-4.0, 4.0),
        speed=float(np.exp(rng.normal(0.0, 0.15))),
        submovement_rate=rng.uniform(0.5, 1.5),
        tremor_amp=severity * rng.uniform(0.0, 0.9),
        tremor_freq=rng.uniform(4.0, 7.0),
        tremor_phase=rng.uniform(0, 2 * np.pi, 2),
        compensation=0.1 + 0.6 * severity * rng.uniform(0.5, 1.5),
        sway_amp=rng.uniform(0.3, 1.0) * (1.0 + severity),
        sway_freq=rng.uniform(0.08, 0.5, 3),
        sway_phase=rng.uniform(0, 2 * np.pi, 3),
        breath_freq=rng.uniform(0.2, 0.35),
        breath_amp=rng.uniform(0.2, 0.5),
        reach=24.0 - 10.0 * severity * rng.uniform(0.5, 1.0),
        clearance_without=clearance_without,
        clearance_with=clearance_without + config.carry_extra_lift_cm * rng.uniform(0.5, 1.5),
        non_task_rate=config.non_task_rate * rng.uniform(0.6, 1.4),
        other_hand_in_lap=bool(rng.random() < 0.35),
        long_sleeves=bool(rng.random() < 0.5),
        box_depth=box_depth,
        camera_scale=rng.uniform(0.9, 1.07),
        camera_rotation=np.deg2rad(rng.uniform(-3.0, 3.0)),
        camera_offset=np.array([rng.uniform(-4.0, 4.0), rng.uniform(-3.0, 3.0)]),
        light=rng.uniform(0.85, 1.1) * rng.uniform(0.94, 1.06, 3),
        colours=colours,
        cube_palette=cube_palette,
        slots=slots,
        slot_colours=rng.integers(0, palette_size, len(slots)),
        target_order=rng.permutation(columns * rows),
        decor=tuple(decor),
    )
