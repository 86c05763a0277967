"""A simulated Box and Block Test (BBT): the embedded default data of strokevision.

What it models, in short:

* Each patient has persistent traits (body, colours, tested hand, impairment severity, chair and
  camera placement, room) drawn from `np.random.SeedSequence([seed, patient_index])`.
* Each patient has one continuous session: trials of about 60 s in which the tested hand grasps a
  cube in the source compartment (descent, closing, lift-off), carries it over the partition and
  lowers it (transport_with_object), lets go and returns empty (transport_without_object, from the
  moment the cube drops), with non-task episodes (resting, pausing, touching the face, moving the
  other arm, adjusting posture, looking around, aborted reaches) in between and while the cubes
  are put back between trials. Every track (tested hand, other hand, trunk, head) is a sequence of
  minimum-jerk moves; impaired patients are slower and move in several sub-movements, with
  tremor, less range and trunk compensation.
* A clip is a window of `num_frames` frames of that session, cut at a random phase: its label is
  drawn from `class_frequencies`, then a window is chosen in which that label is the strict
  plurality of the per-frame phases. `ClipSpec.start_frame` fixes the window, so `simulate_clip`
  is a pure function of (config, spec).
* Keypoints imitate a pose estimator (jitter, dropouts, occluded lower body, rare left/right swaps)
  and name the joints as they appear in the image: in a mirrored clip the patient's anatomical
  right arm is reported as `left_*` (that is what an estimator does with a mirrored frame).
* Frames are drawn with PIL: wall, chair, the patient behind the table, the box with its
  partition and cube piles (the source compartment stays full), the arms, hands and the cube in
  the hand (drawn 4.5 cm wide instead of 2.5 cm so that it stays visible at 64 x 64).

World coordinates are centimetres on the image plane of an unmirrored camera: x to the right of
the image (the patient's left), 0 on the partition; y up, 0 on the table under the box's front
wall. The camera maps them to pixels (scale, small rotation, offset, optional mirroring).

    config = SimulatorConfig()
    specs = clip_specs(config)
    example = simulate_clip(config, specs[0])      # a record of the TFDS features (builder's _info)
    print(difficulty_report(config).format())      # class counts and a keypoint baseline

The baseline of `difficulty_report` is deliberately blind to the tested side (its features do not
change under mirroring), so it measures the bullet "direction alone must not give the label away":
telling the transports apart needs which hand moves together with its direction, or the cube seen
in RGB.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.data.keypoints import COCO17, COCO17_FLIP_INDEX

GRASPING, NON_TASK, WITH_OBJECT, WITHOUT_OBJECT = range(4)
LEFT, RIGHT = 0, 1

# ---- scene layout (cm, world coordinates) ----
BOX_HALF_WIDTH = 27.0
BOX_FRONT_TOP = 6.0  # top of the box's front wall; the compartments' floor starts above it
PARTITION_HALF_WIDTH = 0.9
CUBE_CM = 3.2  # cubes lying in the compartments (real: 2.5 cm)
HELD_CUBE_CM = 4.5  # the cube in the hand, drawn larger so it stays >= 2 px after a 64 x 64 crop
HAND_RADII_CM = (3.6, 3.0)
Y_CENTER = 33.0  # world y on the frame's vertical centre
PIXELS_PER_CM_AT_128 = 1.45  # for 128-pixel-high frames and a camera at the nominal distance
TRIAL_SECONDS = 60.0
SLOT_LAYERS = 3  # the source compartment's heap; the target fills one layer at most
TARGET_FILL = 0.35  # at most this fraction of a layer shows in the target compartment

# Per-joint jitter of the simulated pose estimator (pixels at 128-px-high frames), COCO-17 order.
_JOINT_SIGMA = np.array([0.6, 0.6, 0.6, 0.8, 0.8, 0.9, 0.9, 1.3, 1.3, 1.5, 1.5,
                         2.5, 2.5, 4.0, 4.0, 6.0, 6.0])
# Relative dropout rate per joint: wrists are lost most often, the face least.
_JOINT_DROPOUT = np.array([0.4, 0.4, 0.4, 0.6, 0.6, 0.5, 0.5, 1.2, 1.2, 2.0, 2.0,
                           0, 0, 0, 0, 0, 0])
_ARM_JOINTS = np.array([COCO17[f"{side}_{part}"] for part in ("shoulder", "elbow", "wrist")
                        for side in ("left", "right")])
_LOWER_BODY = np.array([COCO17[f"{side}_{part}"] for part in ("hip", "knee", "ankle")
                        for side in ("left", "right")])

_SKIN_TONES = np.array([(255, 219, 180), (241, 194, 125), (224, 172, 105), (198, 134, 66),
                        (141, 85, 36), (92, 56, 30), (234, 192, 160)], float)
_HAIR_COLOURS = np.array([(30, 25, 20), (70, 45, 25), (150, 110, 60), (190, 190, 185),
                          (225, 220, 210), (110, 60, 30)], float)
_CUBE_COLOURS = np.array([(205, 30, 30), (30, 70, 210), (30, 160, 60), (235, 205, 20),
                          (140, 40, 170), (20, 170, 190)], float)
_TABLE_COLOURS = np.array([(235, 235, 228), (190, 190, 195), (180, 140, 95), (200, 215, 225),
                           (150, 110, 70)], float)
_WOOD_COLOURS = np.array([(205, 165, 110), (190, 145, 90), (220, 190, 140), (170, 120, 70)], float)

# ---- movement ----
_NON_TASK_KINDS = ("rest", "pause", "touch_face", "other_arm", "posture", "aborted_reach", "look_around")
_NON_TASK_WEIGHTS = np.array([0.24, 0.18, 0.12, 0.14, 0.10, 0.10, 0.12])
PARK_PROBABILITY = 0.6  # a pausing hand leaves the box first
# Durations (s) as (healthy, extra at severity 1), before the patient's speed factor and per-move
# variability: one transport across the partition, and lowering the cube before and after it drops.
TRANSPORT_SECONDS = (0.4, 1.1)
PLACING_SECONDS = (0.35, 0.8)


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Size of the simulated dataset and the knobs that set its difficulty.

    The difficulty defaults are tuned so that the keypoint baseline of `difficulty_report` scores
    about 0.55-0.6 on the default config (test split and 5-fold cross-validation), with
    transport_with_object vs transport_without_object its hardest confusion.
    """

    num_patients: int = 50
    num_clips: int = 1000  # in total, spread unevenly over the patients
    num_frames: int = 30
    fps: int = 30
    height: int = 128
    width: int = 171
    seed: int = 0
    class_frequencies: tuple[float, ...] = (0.30, 0.35, 0.20, 0.15)  # CLASS_NAMES order
    # Spread of clips over patients: log-normal sigma of the patients' weights, and a floor.
    clips_per_patient_spread: float = 0.6
    min_clips_per_patient: int = 4
    mirrored_fraction: float = 0.3  # patients filmed through a mirrored camera
    # Pose estimator: jitter multiplier, dropout starts per joint-frame, left/right swap starts per frame.
    keypoint_jitter: float = 1.0
    keypoint_dropout: float = 0.02
    keypoint_swap: float = 0.01
    # How often a non-task episode follows a cycle (scaled per patient).
    non_task_rate: float = 0.35
    # Carrying vs returning: duration ratio and extra arc height (cm).
    carry_slowdown: float = 1.12
    carry_extra_lift_cm: float = 2.0

    def __post_init__(self):
        if len(self.class_frequencies) != NUM_CLASSES or min(self.class_frequencies) < 0 or sum(
                self.class_frequencies) <= 0:
            raise ValueError(
                f"SimulatorConfig.class_frequencies={self.class_frequencies} must be {NUM_CLASSES} "
                f"non-negative numbers in the order {CLASS_NAMES}.")
        if self.num_patients < 6:
            raise ValueError(
                f"SimulatorConfig.num_patients={self.num_patients}: need at least 6 patients so that "
                "train, validation and test each get a left- and a right-hand patient.")
        if self.num_clips < self.num_patients:
            raise ValueError(
                f"SimulatorConfig.num_clips={self.num_clips} is smaller than num_patients="
                f"{self.num_patients}; every patient needs at least one clip.")
        if self.num_frames < 2 or self.fps <= 0 or self.height < 16 or self.width < self.height:
            raise ValueError(
                "SimulatorConfig needs num_frames >= 2, fps > 0, height >= 16 and width >= height; got "
                f"num_frames={self.num_frames}, fps={self.fps}, height={self.height}, width={self.width}.")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One clip: which patient, where in the patient's session, and its label."""

    patient_index: int
    clip_index: int  # within the patient
    label: int
    start_frame: int  # first frame of the window in the patient's session (frame f is at f / fps s)

    @property
    def patient_id(self) -> str:
        return _patient_id(self.patient_index)

    @property
    def clip_id(self) -> str:
        return f"{self.patient_id}_C{self.clip_index:04d}"


def _patient_id(patient_index: int) -> str:
    return f"P{patient_index:03d}"


# ----------------------------------------------------------------------------------------------
# Dataset plan: tested hands, clips per patient, labels per patient.


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


# ----------------------------------------------------------------------------------------------
# Movement tracks: sequences of minimum-jerk moves, evaluated vectorised at any times.

_MAX_SUBMOVEMENTS = 4
_SINGLE_MOVE = (np.array([1.0, 0, 0, 0]), np.zeros(4), np.ones(4))


def _minimum_jerk(u: np.ndarray) -> np.ndarray:
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


@dataclasses.dataclass(frozen=True)
class _Track:
    """Piecewise movement of a D-vector (position, plus an occlusion flag for hands)."""

    initial: np.ndarray  # (D,) value before the first move
    t0: np.ndarray  # (M,) move start times, non-decreasing
    t1: np.ndarray  # (M,)
    p0: np.ndarray  # (M, D)
    p1: np.ndarray  # (M, D)
    lift: np.ndarray  # (M,) arc height added to dimension 1 at mid-move
    deviation: np.ndarray  # (M,) sideways bump perpendicular to the move (dimensions 0, 1)
    amps: np.ndarray  # (M, K) sub-movement amplitudes (sum 1)
    starts: np.ndarray  # (M, K) sub-movement starts, in fractions of the move's duration
    widths: np.ndarray  # (M, K)

    def at(self, times: np.ndarray) -> np.ndarray:
        """(T,) seconds -> (T, D); between moves the value holds the last move's end."""
        if len(self.t0) == 0:
            return np.repeat(self.initial[None], len(times), 0)
        index = np.searchsorted(self.t0, times, side="right") - 1
        i = np.maximum(index, 0)
        tau = np.clip((times - self.t0[i]) / (self.t1[i] - self.t0[i]), 0.0, 1.0)
        u = np.clip((tau[:, None] - self.starts[i]) / self.widths[i], 0.0, 1.0)
        progress = np.sum(self.amps[i] * _minimum_jerk(u), axis=1)  # (T,)
        delta = self.p1[i] - self.p0[i]
        value = self.p0[i] + delta * progress[:, None]
        bump = np.sin(np.pi * np.clip(progress, 0.0, 1.0))
        value[:, 1] += self.lift[i] * bump
        chord = np.hypot(delta[:, 0], delta[:, 1]) + 1e-9
        value[:, 0] -= delta[:, 1] / chord * self.deviation[i] * bump
        value[:, 1] += delta[:, 0] / chord * self.deviation[i] * bump
        value[index < 0] = self.initial
        return value


class _TrackWriter:
    def __init__(self, start):
        self.initial = np.asarray(start, float)
        self.position = self.initial.copy()
        self.time = 0.0
        self.moves = []

    def move(self, t0: float, duration: float, target, lift=0.0, deviation=0.0,
             progress=_SINGLE_MOVE) -> float:
        """Appends a move starting at t0 (not before the previous move ended); returns its end."""
        t0 = max(t0, self.time)
        target = np.asarray(target, float)
        duration = max(duration, 0.05)
        self.moves.append((t0, t0 + duration, self.position, target, lift, deviation, *progress))
        self.position, self.time = target, t0 + duration
        return self.time

    def build(self) -> _Track:
        if not self.moves:
            empty = np.zeros((0,))
            return _Track(self.initial, empty, empty, np.zeros((0, len(self.initial))),
                          np.zeros((0, len(self.initial))), empty, empty,
                          *(np.zeros((0, _MAX_SUBMOVEMENTS)),) * 3)
        columns = list(zip(*self.moves))
        return _Track(self.initial, *(np.array(c, float) for c in columns))


@dataclasses.dataclass(frozen=True)
class _Session:
    hand: _Track  # tested hand centre (x, y, occluded)
    other: _Track  # other hand centre (x, y, occluded)
    trunk: _Track  # posture offset of the shoulders (x, y)
    head: _Track  # (yaw, pitch) in [-1, 1]
    phase_starts: np.ndarray  # (n,) seconds
    phase_labels: np.ndarray  # (n,)
    hold_start: np.ndarray  # (h,) the hand closes on a cube
    hold_end: np.ndarray  # (h,) the cube is released
    hold_colour: np.ndarray  # (h,) palette index
    drop_times: np.ndarray  # (d,) == hold_end
    drop_points: np.ndarray  # (d, 2) where the released cube lands
    trial_starts: np.ndarray  # (r,) the cubes are put back into the source compartment
    duration: float

    def phase_at(self, times: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.phase_starts, times, side="right") - 1
        return self.phase_labels[np.maximum(index, 0)].astype(np.int32)


class _SessionWriter:
    """Writes one patient's session: trials of grasp/transport cycles with non-task episodes."""

    def __init__(self, patient: _Patient, rng: np.random.Generator):
        self.p, self.rng = patient, rng
        self.rest = np.array([patient.side * rng.uniform(25.0, 28.0),
                              patient.table_far_y - rng.uniform(0.5, 2.5), 0.0])
        if patient.other_hand_in_lap:
            self.other_rest = np.array([-patient.side * rng.uniform(9.0, 14.0), 4.0, 1.0])
        else:
            self.other_rest = np.array([-patient.side * rng.uniform(24.0, 28.0),
                                        patient.table_far_y - rng.uniform(0.5, 2.5), 0.0])
        self.hand = _TrackWriter(self.rest)
        self.other = _TrackWriter(self.other_rest)
        self.trunk = _TrackWriter([0.0, 0.0])
        self.head = _TrackWriter([0.0, 0.0])
        self.phases: list[tuple[float, int]] = []
        self.holds: list[tuple[float, float, int]] = []
        self.drop_points: list[np.ndarray] = []
        self.trials: list[float] = []

    # -- helpers
    def mark(self, t: float, phase: int) -> None:
        if self.phases and abs(self.phases[-1][0] - t) < 1e-9:
            self.phases[-1] = (t, phase)
        elif not self.phases or self.phases[-1][1] != phase:
            self.phases.append((t, phase))

    def duration(self, healthy: float, impaired: float) -> float:
        """Seconds: healthy + impaired * severity, times the patient's speed and per-move variability."""
        s = self.p.severity
        spread = 0.12 + 0.12 * s
        return (healthy + impaired * s) * self.p.speed * float(np.exp(self.rng.normal(0, spread)))

    def progress(self, overshoot: bool = True):
        """Sub-movement profile of one move: one smooth stroke when healthy, several when impaired.

        overshoot=False for moves that end on a surface (a descent onto the cubes)."""
        rng, s = self.rng, self.p.severity
        count = 1 + min(_MAX_SUBMOVEMENTS - 1, rng.poisson(2.2 * s * self.p.submovement_rate))
        if count == 1:
            return _SINGLE_MOVE
        cuts = np.concatenate([[0.0], np.sort(rng.uniform(0.3, 0.85, count - 1)), [1.0]])
        overlap = rng.uniform(-0.06, 0.12, count)
        starts = np.clip(cuts[:-1] - np.where(np.arange(count) > 0, overlap, 0.0), 0.0, 0.95)
        widths = np.maximum(cuts[1:] - starts, 0.05)
        amps = np.zeros(count)
        if rng.random() < 0.25 and overshoot:  # overshoot, then correct back
            amps[0] = rng.uniform(1.05, 1.2)
            amps[1:] = (1.0 - amps[0]) * rng.dirichlet(np.ones(count - 1))
        else:  # undershoot, then corrective strokes
            amps[0] = rng.uniform(0.55, 0.9)
            amps[1:] = (1.0 - amps[0]) * rng.dirichlet(np.ones(count - 1))
        pad = _MAX_SUBMOVEMENTS - count
        return (np.pad(amps, (0, pad)), np.pad(starts, (0, pad)), np.pad(widths, (0, pad), constant_values=1.0))

    def reach_move(self, t, duration, target, lift=0.0, overshoot=True):
        dev = self.rng.normal(0.0, 0.8 + 2.5 * self.p.severity)
        return self.hand.move(t, duration, target, lift=lift, deviation=dev, progress=self.progress(overshoot))

    def source_point(self) -> np.ndarray:
        x = self.p.side * self.rng.uniform(4.0, self.p.reach)
        return np.array([x, self.p.hover_y + self.rng.normal(0, 1.0), 0.0])

    def target_point(self) -> np.ndarray:
        x = -self.p.side * self.rng.uniform(4.0, self.p.reach)
        return np.array([x, self.p.hover_y + self.rng.normal(0, 1.0), 0.0])

    # -- task phases
    def grasp(self, t: float, colour: int) -> float:
        p, rng = self.p, self.rng
        self.mark(t, GRASPING)
        hover = self.hand.position
        cube = np.array([hover[0] + rng.normal(0, 1.0),
                         BOX_FRONT_TOP + rng.uniform(2.0, p.box_depth - 1.5), 0.0])
        t = self.reach_move(t, self.duration(0.18, 0.45), cube, overshoot=False)
        for _ in range(rng.poisson(1.5 * p.severity * p.submovement_rate)):  # fumbling for the cube
            t = self.hand.move(t, self.duration(0.12, 0.25), cube + [*rng.normal(0, 0.6 + p.severity, 2), 0])
        closed = t + self.duration(0.08, 0.25)
        lift_to = np.array([self.hand.position[0] + rng.normal(0, 1.0), p.hover_y + rng.normal(0, 1.2), 0.0])
        t = self.reach_move(closed, self.duration(0.12, 0.3), lift_to)
        self._hold_start = (closed, colour)
        return t

    def transport(self, t: float, target: np.ndarray, clearance: float, slowdown: float) -> float:
        start = self.hand.position
        apex = self.p.partition_top + clearance + self.rng.normal(0, 0.8)
        lift = max(0.0, apex - 0.5 * (start[1] + target[1]))
        return self.reach_move(t, self.duration(*TRANSPORT_SECONDS) * slowdown, target, lift=lift)

    def carry(self, t: float) -> float:
        """Transport to the target, lower the cube and let go. The phase turns to
        transport_without_object when the cube drops (the hand is empty from then on), which
        happens while the hand hovers: invisible in keypoints, visible in RGB."""
        rng = self.rng
        self.mark(t, WITH_OBJECT)
        target = self.target_point()
        t = self.transport(t, target, self.p.clearance_with, rng.uniform(0.95, 1.05) * self._slowdown)
        placing = self.duration(*PLACING_SECONDS)
        self.hand.move(t, 0.6 * placing, target - [rng.normal(0, 0.5), rng.uniform(0.0, 2.0), 0.0])
        drop = t + placing * rng.uniform(0.3, 0.8)
        start, colour = self._hold_start
        self.holds.append((start, drop, colour))
        self.drop_points.append(np.array([target[0] + rng.normal(0, 0.8),
                                          BOX_FRONT_TOP + rng.uniform(1.5, self.p.box_depth - 1.5)]))
        self.mark(drop, WITHOUT_OBJECT)
        return t + placing

    def go_back(self, t: float) -> float:
        self.mark(t, WITHOUT_OBJECT)
        return self.transport(t, self.source_point(), self.p.clearance_without, 1.0)

    # -- non-task episodes: start and end with the tested hand where it is
    def non_task(self, t: float, kind: str | None = None) -> float:
        p, rng = self.p, self.rng
        self.mark(t, NON_TASK)
        kind = kind or _NON_TASK_KINDS[rng.choice(len(_NON_TASK_KINDS), p=_NON_TASK_WEIGHTS)]
        here = self.hand.position.copy()
        parked = kind in ("pause", "other_arm", "posture", "look_around") and rng.random() < PARK_PROBABILITY
        if parked:  # people who stop usually take their hand out of the box first
            t = self.reach_move(t, self.duration(0.5, 0.6), self.parking_spot())
            home, here = here, self.hand.position.copy()
        if kind == "rest":
            t = self.reach_move(t, self.duration(0.5, 0.8), self.rest)
            t = self.hand.move(t + rng.uniform(0.8, 4.0), self.duration(0.5, 0.8), here,
                               progress=self.progress())
        elif kind == "pause":
            t = self.hand.move(t, rng.uniform(0.6, 2.5), here + [*rng.normal(0, 1.0, 2), 0])
            t = self.hand.move(t, 0.2, here)
        elif kind == "touch_face":
            face = np.array([p.chair_x + p.side * rng.uniform(1.0, 5.0),
                             p.shoulder_y + p.neck + rng.uniform(1.0, 6.0), 0.0])
            t = self.reach_move(t, self.duration(0.5, 0.6), face)
            t = self.hand.move(t + rng.uniform(0.3, 1.5), self.duration(0.5, 0.6), here,
                               progress=self.progress())
        elif kind == "other_arm":
            targets = [
                [p.chair_x - p.side * rng.uniform(0, 5), p.shoulder_y + p.neck + rng.uniform(0, 6), 0],  # face
                [p.chair_x + p.side * rng.uniform(5, 15), p.shoulder_y - rng.uniform(0, 8), 0],  # shoulder
                [-p.side * rng.uniform(14, 30), p.table_far_y + rng.uniform(-3, 2), 0],  # on the table
            ]
            goal = np.array(targets[rng.integers(len(targets))], float)
            t_other = self.other.move(t, rng.uniform(0.4, 0.9), goal)
            t_other = self.other.move(t_other + rng.uniform(0.2, 1.2), rng.uniform(0.4, 0.9), self.other_rest)
            t = self.hand.move(t, t_other - t, here + [*rng.normal(0, 1.0, 2), 0])
            t = self.hand.move(t, 0.15, here)
        elif kind == "posture":
            shift = np.array([rng.normal(0, 2.5), rng.uniform(-3.0, 1.5)])
            move_time, hold = rng.uniform(0.5, 1.2), rng.uniform(0.3, 1.5)
            self.trunk.move(t, move_time, shift)
            self.trunk.move(t + move_time + hold, move_time, [0.0, 0.0])
            self.hand.move(t, move_time, here + [*shift, 0])
            t = self.hand.move(t + move_time + hold, move_time, here)
        elif kind == "aborted_reach":
            towards = self.target_point()
            fraction = rng.uniform(0.25, 0.75)
            midway = here + fraction * (towards - here)
            lift = max(0.0, fraction * (p.partition_top + p.clearance_without - here[1]))
            t = self.reach_move(t, self.duration(0.3, 0.8) * fraction + 0.15, midway, lift=lift)
            t = self.hand.move(t + rng.uniform(0.1, 0.6), self.duration(0.3, 0.8) * fraction + 0.15, here,
                               progress=self.progress())
        elif kind == "look_around":
            look = np.array([rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), rng.uniform(-0.3, 0.2)])
            turn, hold = rng.uniform(0.3, 0.7), rng.uniform(0.4, 2.0)
            self.head.move(t, turn, look)
            t_head = self.head.move(t + turn + hold, turn, [0.0, 0.0])
            t = self.hand.move(t, t_head - t, here + [*rng.normal(0, 0.8, 2), 0])
        else:
            raise ValueError(f"Unknown non-task episode {kind!r}.")
        if parked:
            t = self.reach_move(t, self.duration(0.5, 0.6), home)
        return t

    def parking_spot(self) -> np.ndarray:
        """Where a pausing hand waits: on the table beside the box, on the box's rim, near the body."""
        p, rng = self.p, self.rng
        spots = [
            self.rest + [rng.normal(0, 1.5), rng.normal(0, 1.0), 0],
            [p.side * rng.uniform(10.0, 24.0), p.table_far_y - rng.uniform(0.0, 2.5), 0.0],
            [p.chair_x + p.side * rng.uniform(6.0, 14.0), p.table_far_y + rng.uniform(0.0, 3.0), 0.0],
        ]
        return np.asarray(spots[rng.integers(len(spots))], float)

    # -- the whole session
    def write(self, duration: float, carry_slowdown: float) -> _Session:
        p, rng = self.p, self.rng
        self._slowdown = carry_slowdown
        t = 0.0
        while t < duration:
            self.trials.append(t)
            self.mark(t, NON_TASK)  # seated, hand at rest, waiting for the start signal
            t = self.hand.move(t + rng.uniform(0.5, 2.0), self.duration(0.5, 0.8), self.source_point(),
                               progress=self.progress())
            trial_end = t + TRIAL_SECONDS
            colour = int(rng.integers(len(p.cube_palette)))
            while t < trial_end:
                t = self.grasp(t, colour)
                t = self.carry(t)
                if rng.random() < 0.25 * p.non_task_rate:
                    t = self.non_task(t, rng.choice(["pause", "look_around", "other_arm", "posture"]))
                t = self.go_back(t)
                if rng.random() < p.non_task_rate:
                    t = self.non_task(t)
                colour = int(rng.integers(len(p.cube_palette)))
            self.mark(t, NON_TASK)  # the trial is over: the hand rests while the cubes are put back,
            t = self.reach_move(t, self.duration(0.5, 0.8), self.rest) + rng.uniform(0.5, 2.0)
            for _ in range(rng.integers(1, 3)):  # and the patient fidgets meanwhile
                t = self.non_task(t, rng.choice(["look_around", "posture", "other_arm", "touch_face"]))
        holds = np.array(self.holds, float).reshape(-1, 3)
        phases = np.array(self.phases, float)
        return _Session(
            hand=self.hand.build(), other=self.other.build(), trunk=self.trunk.build(), head=self.head.build(),
            phase_starts=phases[:, 0], phase_labels=phases[:, 1].astype(int),
            hold_start=holds[:, 0], hold_end=holds[:, 1], hold_colour=holds[:, 2].astype(int),
            drop_times=holds[:, 1], drop_points=np.array(self.drop_points, float).reshape(-1, 2),
            trial_starts=np.array(self.trials), duration=t)


def _session_seconds(patient: _Patient, num_clips: int) -> float:
    # Long enough for non-overlapping windows of every label (slow patients need more time).
    return 40.0 + num_clips * (4.0 + 6.0 * patient.severity)


@functools.lru_cache(maxsize=256)
def _session(config: SimulatorConfig, patient_index: int) -> _Session:
    _, session_seed, _ = np.random.SeedSequence([config.seed, patient_index]).spawn(3)
    patient = _patient(config, patient_index)
    writer = _SessionWriter(patient, np.random.default_rng(session_seed))
    num_clips = len(_plan(config).labels[patient_index])
    return writer.write(_session_seconds(patient, num_clips), config.carry_slowdown)


# ----------------------------------------------------------------------------------------------
# Clip plan: one window per clip, where the clip's label is the strict plurality of the phases.


def _window_counts(phases: np.ndarray, num_frames: int) -> np.ndarray:
    """(N,) per-frame phases -> (N - num_frames + 1, C) phase counts of every window."""
    cumulative = np.concatenate([np.zeros((1, NUM_CLASSES), int),
                                 np.cumsum(np.eye(NUM_CLASSES, dtype=int)[phases], 0)])
    return cumulative[num_frames:] - cumulative[:-num_frames]


@functools.lru_cache(maxsize=16)
def _clip_specs(config: SimulatorConfig) -> tuple[ClipSpec, ...]:
    specs = []
    for patient_index, labels in enumerate(_plan(config).labels):
        _, _, window_seed = np.random.SeedSequence([config.seed, patient_index]).spawn(3)
        rng = np.random.default_rng(window_seed)
        session = _session(config, patient_index)
        num_session_frames = int(session.duration * config.fps)
        phases = session.phase_at(np.arange(num_session_frames) / config.fps)
        counts = _window_counts(phases, config.num_frames)
        top = np.sort(counts, axis=1)
        strict = top[:, -1] > top[:, -2]
        winner = np.argmax(counts, axis=1)
        free = np.ones(len(counts), bool)
        for clip_index, label in enumerate(labels):
            candidates = strict & (winner == label)
            if not candidates.any():  # this patient never has that phase long enough
                candidates = strict
            choices = np.flatnonzero(candidates & free)
            if len(choices) == 0:
                choices = np.flatnonzero(candidates)  # windows may overlap once the session is used up
            start = int(rng.choice(choices))
            free[max(0, start - config.num_frames + 1): start + config.num_frames] = False
            specs.append(ClipSpec(patient_index, clip_index, int(winner[start]), start))
    return tuple(specs)


def clip_specs(config: SimulatorConfig) -> list[ClipSpec]:
    """Every clip of the dataset, in (patient, clip) order; deterministic for a config."""
    return list(_clip_specs(config))


# ----------------------------------------------------------------------------------------------
# Kinematics of a clip: the seated upper body in world coordinates.


def _arm(shoulder, hand, upper, forearm, lateral):
    """Two-segment arm by inverse kinematics: (T, 2) shoulder and hand -> elbow, wrist, hand.

    The image-plane segment lengths shrink when the hand is near the shoulder (the arm then points
    towards the camera), so the elbow keeps a natural bend instead of flaring out.
    lateral: -1 for the arm on the image's left (world x < 0), +1 for the other.
    """
    to_hand = hand - shoulder
    direction = to_hand / (np.linalg.norm(to_hand, axis=1, keepdims=True) + 1e-9)
    wrist_target = hand - 3.2 * direction
    distance = np.linalg.norm(wrist_target - shoulder, axis=1)
    shrink = np.clip(distance / (0.88 * (upper + forearm)), 0.45, 1.0)
    a, b = upper * shrink, forearm * shrink
    reach = np.clip(distance, np.abs(a - b) + 1e-3, 0.995 * (a + b))
    cos_angle = np.clip((a * a + reach * reach - b * b) / (2 * a * reach), -1.0, 1.0)
    sin_angle = np.sqrt(1.0 - cos_angle * cos_angle)
    normal = np.stack([-direction[:, 1], direction[:, 0]], 1)
    sign = np.where(normal[:, 0] * lateral - 0.6 * normal[:, 1] >= 0, 1.0, -1.0)
    bend = direction * cos_angle[:, None] + sign[:, None] * normal * sin_angle[:, None]
    elbow = shoulder + a[:, None] * bend
    wrist = shoulder + direction * reach[:, None]
    return elbow, wrist, wrist + 3.2 * direction


def _pose(patient: _Patient, session: _Session, times: np.ndarray) -> dict:
    """World-coordinate body at `times`: COCO-17 joints (anatomical sides), hands, head, occlusion."""
    p = patient
    num = len(times)
    hand_track = session.hand.at(times)
    tremor = p.tremor_amp * np.stack([np.sin(2 * np.pi * p.tremor_freq * times + p.tremor_phase[0]),
                                      np.sin(2 * np.pi * p.tremor_freq * times + p.tremor_phase[1])], 1)
    hand = hand_track[:, :2] + tremor
    other_track = session.other.at(times)
    other = other_track[:, :2] + 0.4 * np.stack([np.sin(0.7 * times + p.sway_phase[1]),
                                                np.sin(0.5 * times + p.sway_phase[2])], 1)
    other_hidden = other_track[:, 2] > 0.5

    # Trunk: posture offset, sway, breathing and compensation (leaning towards a far hand).
    half_width = p.shoulder_width / 2
    home = np.array([p.chair_x, p.shoulder_y])
    tested_home = home + [p.side * half_width, 0.0]
    sway = p.sway_amp * np.sum(np.sin(2 * np.pi * p.sway_freq * times[:, None] + p.sway_phase), 1) / 3
    reach_vector = hand - tested_home
    reach = np.linalg.norm(reach_vector, axis=1, keepdims=True) + 1e-9
    excess = np.maximum(0.0, reach - 0.55 * (p.upper_arm + p.forearm))
    lean = p.compensation * reach_vector * (0.15 + excess / reach)
    trunk = session.trunk.at(times)
    mid = home + trunk + lean * [1.0, 0.7]
    mid[:, 0] += sway
    mid[:, 1] += p.breath_amp * np.sin(2 * np.pi * p.breath_freq * times)
    roll = 0.25 * (mid[:, 0] - p.chair_x) / p.torso
    across = half_width * np.stack([np.cos(roll), np.sin(roll)], 1)
    left_shoulder, right_shoulder = mid + across, mid - across  # anatomical left is at world +x

    tested_shoulder, other_shoulder = (right_shoulder, left_shoulder) if p.tested_hand == RIGHT else (
        left_shoulder, right_shoulder)
    tested_elbow, tested_wrist, hand = _arm(tested_shoulder, hand, p.upper_arm, p.forearm, p.side)
    other_elbow, other_wrist, other = _arm(other_shoulder, other, p.upper_arm, p.forearm, -p.side)

    head_track = session.head.at(times)
    yaw = np.clip(head_track[:, 0] + 0.35 * np.clip((hand[:, 0] - mid[:, 0]) / 30.0, -1, 1), -1, 1)
    pitch = head_track[:, 1]
    r = p.head_radius
    head = mid + np.stack([0.3 * (mid[:, 0] - p.chair_x) + 0.5 * yaw, np.full(num, p.neck + r)], 1)
    hips_mid = np.stack([p.chair_x + 0.3 * (mid[:, 0] - p.chair_x), np.full(num, p.shoulder_y - p.torso)], 1)
    hip_across = np.array([0.8 * half_width, 0.0])

    joints = np.zeros((num, 17, 2))
    joints[:, COCO17["nose"]] = head + np.stack([0.45 * r * yaw, -0.15 * r - 0.2 * r * pitch], 1)
    for name, sign in (("left", 1.0), ("right", -1.0)):
        eye = np.stack([sign * 0.35 * r + 0.4 * r * yaw, 0.15 * r - 0.2 * r * pitch], 1)
        ear = np.stack([sign * 0.9 * r + 0.15 * r * yaw, np.full(num, 0.05 * r)], 1)
        joints[:, COCO17[f"{name}_eye"]], joints[:, COCO17[f"{name}_ear"]] = head + eye, head + ear
        joints[:, COCO17[f"{name}_hip"]] = hips_mid + sign * hip_across
        joints[:, COCO17[f"{name}_knee"]] = hips_mid + sign * hip_across * 1.1 + [0.0, -6.0]
        joints[:, COCO17[f"{name}_ankle"]] = hips_mid + sign * hip_across * 1.3 + [0.0, -42.0]
    joints[:, COCO17["left_shoulder"]], joints[:, COCO17["right_shoulder"]] = left_shoulder, right_shoulder
    tested, other_name = ("right", "left") if p.tested_hand == RIGHT else ("left", "right")
    for name, elbow, wrist in ((tested, tested_elbow, tested_wrist), (other_name, other_elbow, other_wrist)):
        joints[:, COCO17[f"{name}_elbow"]], joints[:, COCO17[f"{name}_wrist"]] = elbow, wrist

    occluded = np.zeros((num, 17), bool)
    occluded[:, _LOWER_BODY] = True
    occluded[:, COCO17[f"{other_name}_wrist"]] = other_hidden
    occluded[:, COCO17["left_ear"]] = yaw > 0.5  # turned away from the camera on that side
    occluded[:, COCO17["right_ear"]] = yaw < -0.5

    hold = (session.hold_start[None] <= times[:, None]) & (times[:, None] < session.hold_end[None])
    holding = hold.any(1)
    held_colour = np.where(holding, session.hold_colour[np.argmax(hold, 1)] if hold.shape[1] else 0, -1)
    return dict(joints=joints, occluded=occluded, hand=hand, other_hand=other, other_hidden=other_hidden,
                head=head, held_colour=held_colour, mid=mid, hips_mid=hips_mid,
                tested_joints=(tested_shoulder, tested_elbow, tested_wrist),
                other_joints=(other_shoulder, other_elbow, other_wrist))


# ----------------------------------------------------------------------------------------------
# Camera and the simulated pose estimator.


@dataclasses.dataclass(frozen=True)
class _Camera:
    height: int
    width: int
    scale: float  # pixels per cm
    cos: float
    sin: float
    offset: np.ndarray  # (2,) pixels
    mirrored: bool

    @classmethod
    def of(cls, config: SimulatorConfig, patient: _Patient) -> "_Camera":
        size = config.height / 128.0
        return cls(config.height, config.width, PIXELS_PER_CM_AT_128 * size * patient.camera_scale,
                   math.cos(patient.camera_rotation), math.sin(patient.camera_rotation),
                   patient.camera_offset * size, patient.mirrored)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world cm -> (..., 2) pixels (x right, y down) of the stored frame."""
        x, y = xy[..., 0], xy[..., 1] - Y_CENTER
        u = self.width / 2 + self.offset[0] + self.scale * (self.cos * x - self.sin * y)
        v = self.height / 2 + self.offset[1] - self.scale * (self.sin * x + self.cos * y)
        if self.mirrored:
            u = (self.width - 1) - u
        return np.stack([u, v], -1)


def _estimate_keypoints(rng, config: SimulatorConfig, true_px: np.ndarray, occluded: np.ndarray):
    """A pose estimator's output for noise-free (T, 17, 2) pixels -> keypoints, scores."""
    num, joints = true_px.shape[:2]
    size = config.height / 128.0
    speed = np.zeros((num, joints))
    speed[1:] = np.linalg.norm(np.diff(true_px, axis=0), axis=-1) / size  # px per frame at 128 px
    speed[0] = speed[1] if num > 1 else 0.0

    # Temporally correlated jitter, larger for fast (blurred) joints and hidden ones.
    sigma = _JOINT_SIGMA * config.keypoint_jitter * size * rng.uniform(0.8, 1.25)
    white = rng.normal(size=(num, joints, 2))
    noise = np.empty_like(white)
    noise[0] = white[0]
    for t in range(1, num):
        noise[t] = 0.5 * noise[t - 1] + 0.866 * white[t]
    gain = (1.0 + 0.15 * speed) * np.where(occluded, 2.5, 1.0)
    keypoints = true_px + noise * (sigma[None, :, None] * gain[..., None])

    scores = np.clip(0.9 - 0.06 * np.abs(rng.normal(size=(num, joints))) - 0.012 * speed, 0.35, 0.99)
    scores = np.where(occluded, rng.uniform(0.03, 0.28, (num, joints)), scores)

    # Dropouts: runs of 1-4 frames with a score near 0 and a zero or wrong position.
    rate = config.keypoint_dropout * _JOINT_DROPOUT[None] * (1.0 + speed / 6.0)
    dropped = _runs(rng.random((num, joints)) < rate, rng.integers(1, 5, (num, joints)))
    if dropped.any():
        kind = rng.random((num, joints))
        wrong_side = keypoints[:, list(COCO17_FLIP_INDEX)]
        offset = true_px + rng.normal(0, 15.0 * size, (num, joints, 2))
        replacement = np.where((kind < 0.7)[..., None], wrong_side, offset)
        replacement = np.where((kind < 0.4)[..., None], 0.0, replacement)
        keypoints = np.where(dropped[..., None], replacement, keypoints)
        scores = np.where(dropped, rng.uniform(0.0, 0.1, (num, joints)), scores)

    # Rare left/right swaps of the arms for a few frames.
    swapped = _runs(rng.random(num) < config.keypoint_swap, rng.integers(1, 6, num))
    if swapped.any():
        flip = np.asarray(COCO17_FLIP_INDEX)
        arms = _ARM_JOINTS
        swapped_keypoints = keypoints.copy()
        swapped_keypoints[:, arms] = keypoints[:, flip[arms]]
        swapped_scores = scores.copy()
        swapped_scores[:, arms] = scores[:, flip[arms]] * 0.9
        keypoints = np.where(swapped[:, None, None], swapped_keypoints, keypoints)
        scores = np.where(swapped[:, None], swapped_scores, scores)

    # Estimators answer inside the image; a joint outside it gets a low score.
    outside = ((true_px[..., 0] < 0) | (true_px[..., 0] > config.width - 1) |
               (true_px[..., 1] < 0) | (true_px[..., 1] > config.height - 1))
    scores = np.where(outside, np.minimum(scores, rng.uniform(0.02, 0.25, (num, joints))), scores)
    keypoints[..., 0] = np.clip(keypoints[..., 0], 0, config.width - 1)
    keypoints[..., 1] = np.clip(keypoints[..., 1], 0, config.height - 1)
    return keypoints.astype(np.float32), scores.astype(np.float32)


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Boolean (T, ...) mask: each True in `starts` opens a run of `lengths` frames."""
    mask = np.zeros(starts.shape, bool)
    for t in np.unique(np.nonzero(starts)[0]):
        for index in zip(*np.nonzero(starts[t])) if starts.ndim > 1 else [()]:
            mask[(slice(t, t + int(lengths[(t, *index)])), *index)] = True
    return mask


# ----------------------------------------------------------------------------------------------
# Rendering.


def _rectangles(x0, y0, x1, y1) -> np.ndarray:
    """Corners (..., 4, 2) of axis-aligned world rectangles; arguments broadcast."""
    x0, y0, x1, y1 = np.broadcast_arrays(*(np.asarray(v, float) for v in (x0, y0, x1, y1)))
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1),
                     np.stack([x1, y1], -1), np.stack([x0, y1], -1)], -2)


class _Painter:
    """Draws into PIL frames: world shapes go through the clip's camera, colours through its light."""

    def __init__(self, config: SimulatorConfig, patient: _Patient, camera: _Camera, light: np.ndarray):
        self.config, self.p, self.camera, self.light = config, patient, camera, light
        colours = patient.colours
        self.skin = self.colour(colours["skin"])
        self.hand = self.colour(np.asarray(colours["skin"]) * 0.95)
        self.hand_edge = self.colour(np.asarray(colours["skin"]) * 0.5)
        self.eye = self.colour(np.asarray(colours["skin"]) * 0.3)
        self.hair = self.colour(colours["hair"])
        self.shirt = self.colour(colours["shirt"])
        self.sleeve = self.colour(np.asarray(colours["shirt"]) * 0.8)  # a shade apart from the torso
        self.forearm = self.sleeve if patient.long_sleeves else self.skin
        self.cubes = [self.colour(c) for c in patient.cube_palette]

    def colour(self, rgb) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(np.asarray(rgb, float) * self.light, 0, 255))

    def polygons(self, draw, corners: np.ndarray, fills) -> None:
        """corners: (N, k, 2) world cm; fills: one colour or N colours."""
        flat = self.camera(corners).reshape(len(corners), -1).tolist()
        fills = [fills] * len(flat) if isinstance(fills, (tuple, int)) else fills
        for points, fill in zip(flat, fills):
            draw.polygon(points, fill=fill)

    def background(self) -> Image.Image:
        """Wall (vertical light gradient), decorations and the chair back; static for a clip."""
        p, (height, width) = self.p, (self.config.height, self.config.width)
        shade = np.linspace(1.08, 0.85, height)[:, None, None]
        wall = np.clip(np.asarray(p.colours["wall"]) * self.light * shade, 0, 255)
        image = Image.fromarray(np.broadcast_to(wall, (height, width, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for x0, y0, x1, y1, rgb in p.decor:
            draw.rectangle((x0 * width, y0 * height, x1 * width, y1 * height), fill=self.colour(rgb))
        chair = _rectangles(p.chair_x - 21, p.table_far_y - 2, p.chair_x + 21, p.shoulder_y + 4)
        self.polygons(draw, chair[None], self.colour(p.colours["chair"]))
        return image

    def foreground(self, target_count: int) -> tuple[Image.Image, Image.Image]:
        """Table, box, partition and the cube piles (colour image, mask); static for a clip."""
        p, (height, width) = self.p, (self.config.height, self.config.width)
        image = Image.new("RGB", (width, height))
        mask = Image.new("L", (width, height))
        draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        wood, table = np.asarray(p.colours["wood"]), np.asarray(p.colours["table"])
        floor_top = BOX_FRONT_TOP + p.box_depth
        half_box, top = BOX_HALF_WIDTH, p.partition_top
        shapes = [
            ((-200, -80, 200, p.table_far_y), table),
            ((-200, p.table_far_y - 0.8, 200, p.table_far_y), table * 0.8),  # far edge
            ((-half_box, 0, half_box, BOX_FRONT_TOP), wood * 0.8),  # front wall
            ((-half_box, floor_top, half_box, floor_top + 2.0), wood * 1.05),  # back rim
            ((-half_box + 1, BOX_FRONT_TOP, half_box - 1, floor_top), wood * 0.62),  # floor
            ((-half_box, BOX_FRONT_TOP, -half_box + 1, floor_top + 2), wood * 0.9),  # side walls
            ((half_box - 1, BOX_FRONT_TOP, half_box, floor_top + 2), wood * 0.9),
        ]
        boxes = _rectangles(*np.array([box for box, _ in shapes]).T)
        self.polygons(draw, boxes, [self.colour(rgb) for _, rgb in shapes])
        # Source compartment: a full heap. Target: the cubes moved so far in this trial, one layer.
        shown = np.zeros(len(p.slots), bool)
        shown[p.target_order[:min(target_count, int(TARGET_FILL * len(p.target_order)))]] = True
        x = np.concatenate([p.side * p.slots[:, 0], -p.side * p.slots[shown, 0]])
        y = np.concatenate([p.slots[:, 1], p.slots[shown, 1]])
        colours = np.concatenate([p.slot_colours, p.slot_colours[shown]])
        half, inner = CUBE_CM / 2, CUBE_CM / 2 - 0.4
        edges = _rectangles(x - half, y - half, x + half, y + half)
        faces = _rectangles(x - inner, y - inner, x + inner, y + inner)
        edge = self.colour(wood * 0.35)
        corners = np.stack([edges, faces], 1).reshape(-1, 4, 2)  # edge, face, edge, face, ...
        fills = [c for colour in colours for c in (edge, self.cubes[colour])]
        self.polygons(draw, corners, fills)
        partition = _rectangles([-PARTITION_HALF_WIDTH] * 2, [BOX_FRONT_TOP, top - 0.7],
                                [PARTITION_HALF_WIDTH] * 2, [top, top])
        self.polygons(draw, partition, [self.colour(wood * 1.1), self.colour(wood * 1.25)])
        self.polygons(mask_draw, _rectangles([-200, -PARTITION_HALF_WIDTH], [-80, BOX_FRONT_TOP],
                                             [200, PARTITION_HALF_WIDTH], [p.table_far_y, top]), 255)
        return image, mask


@dataclasses.dataclass(frozen=True)
class _Figure:
    """Pixel positions of everything drawn on the person, for all frames at once."""

    torso: list  # per frame, flat polygon coordinates
    neck: list
    hair: np.ndarray  # (T, 4) ellipse boxes
    face: np.ndarray
    eyes: np.ndarray  # (T, 2, 4)
    tested_arm: np.ndarray  # (T, 4, 2) shoulder, elbow, wrist, hand
    other_arm: np.ndarray
    held_cube: list  # per frame, flat polygon coordinates
    limb_widths: tuple  # (upper arm, forearm) pixels
    hand_radii: tuple  # pixels


def _ellipse_boxes(centres_px: np.ndarray, rx: float, ry: float) -> np.ndarray:
    return np.concatenate([centres_px - [rx, ry], centres_px + [rx, ry]], -1)


def _figure(patient: _Patient, pose: dict, camera: _Camera) -> _Figure:
    p, scale = patient, camera.scale
    joints = pose["joints"]
    left, right = joints[:, COCO17["left_shoulder"]], joints[:, COCO17["right_shoulder"]]
    hips, mid, head = pose["hips_mid"], pose["mid"], pose["head"]
    hip_half = np.array([0.42 * p.shoulder_width, 0.0])
    torso = np.stack([right + [-2.5, -2.0], right + [-0.5, 2.0], left + [0.5, 2.0], left + [2.5, -2.0],
                      hips + hip_half - [0, 12.0], hips - hip_half - [0, 12.0]], 1)
    neck = np.stack([mid - [3.0, 0.0], mid + [3.0, 0.0], head + [3.0, 0.0], head - [3.0, 0.0]], 1)
    r = p.head_radius
    eyes = camera(joints[:, [COCO17["left_eye"], COCO17["right_eye"]]])
    tested_arm, other_arm = (camera(np.stack([*pose[arm], pose[hand]], 1))
                             for arm, hand in (("tested_joints", "hand"), ("other_joints", "other_hand")))
    # The cube sits below the hand centre; the hand drawn over it hides its top.
    centre = pose["hand"] - [0.0, 0.75 * HELD_CUBE_CM]
    half = HELD_CUBE_CM / 2
    cube = _rectangles(centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half)
    return _Figure(
        torso=camera(torso).reshape(len(torso), -1).tolist(),
        neck=camera(neck).reshape(len(neck), -1).tolist(),
        hair=_ellipse_boxes(camera(head + [0.0, 0.25 * r]), 1.05 * r * scale, 0.95 * r * scale),
        face=_ellipse_boxes(camera(head), 0.9 * r * scale, r * scale),
        eyes=_ellipse_boxes(eyes, 0.12 * r * scale, 0.08 * r * scale),
        tested_arm=tested_arm, other_arm=other_arm,
        held_cube=camera(cube).reshape(len(cube), -1).tolist(),
        limb_widths=(max(1, round(7.0 * scale)), max(1, round(5.5 * scale))),
        hand_radii=(HAND_RADII_CM[0] * scale, HAND_RADII_CM[1] * scale),
    )


def _draw_arm(draw, painter: _Painter, figure: _Figure, arm: np.ndarray, cube=None) -> None:
    """arm: (4, 2) pixels of shoulder, elbow, wrist, hand centre; cube: (polygon, colour) held."""
    (s, e, w, h), (upper, lower) = arm.tolist(), figure.limb_widths
    draw.line(s + e, fill=painter.sleeve, width=upper)
    draw.ellipse((e[0] - upper / 2, e[1] - upper / 2, e[0] + upper / 2, e[1] + upper / 2), fill=painter.sleeve)
    draw.line(e + w, fill=painter.forearm, width=lower)
    if cube is not None:
        draw.polygon(cube[0], fill=cube[1])
    rx, ry = figure.hand_radii
    draw.ellipse((h[0] - rx, h[1] - ry, h[0] + rx, h[1] + ry), fill=painter.hand, outline=painter.hand_edge)


def _render(config: SimulatorConfig, patient: _Patient, session: _Session, pose: dict,
            times: np.ndarray, light: np.ndarray) -> np.ndarray:
    camera = _Camera.of(config, patient)
    painter = _Painter(config, patient, camera, light)
    start = times[0]
    trial_start = session.trial_starts[np.searchsorted(session.trial_starts, start, side="right") - 1]
    dropped_before = int(np.sum((session.drop_times >= trial_start) & (session.drop_times < start)))
    background = painter.background()
    foreground, mask = painter.foreground(dropped_before)
    figure = _figure(patient, pose, camera)
    # Cubes released during the clip appear where they land.
    in_clip = np.flatnonzero((session.drop_times >= start) & (session.drop_times <= times[-1]))
    half = CUBE_CM / 2
    points = session.drop_points[in_clip]
    landed = camera(_rectangles(*(points - half).T, *(points + half).T))
    landed = landed.reshape(len(in_clip), 8).tolist()
    frames = np.empty((len(times), config.height, config.width, 3), np.uint8)
    for frame, t in enumerate(times):
        image = background.copy()
        draw = ImageDraw.Draw(image)
        draw.polygon(figure.torso[frame], fill=painter.shirt)
        draw.polygon(figure.neck[frame], fill=painter.skin)
        draw.ellipse(figure.hair[frame].tolist(), fill=painter.hair)
        draw.ellipse(figure.face[frame].tolist(), fill=painter.skin)
        for eye in figure.eyes[frame].tolist():
            draw.ellipse(eye, fill=painter.eye)
        hidden = bool(pose["other_hidden"][frame])
        if hidden:  # the other hand in the lap, under the table
            _draw_arm(draw, painter, figure, figure.other_arm[frame])
        image.paste(foreground, (0, 0), mask)
        for drop, corners in zip(in_clip, landed):
            if session.drop_times[drop] <= t:
                draw.polygon(corners, fill=painter.cubes[session.hold_colour[drop]])
        if not hidden:
            _draw_arm(draw, painter, figure, figure.other_arm[frame])
        held = int(pose["held_colour"][frame])
        cube = (figure.held_cube[frame], painter.cubes[held]) if held >= 0 else None
        _draw_arm(draw, painter, figure, figure.tested_arm[frame], cube)
        frames[frame] = np.asarray(image)
    return frames


# ----------------------------------------------------------------------------------------------
# One clip.


def simulate_clip(config: SimulatorConfig, spec: ClipSpec, render: bool = True) -> dict:
    """The example dict of one clip (see the module docstring); a pure function of (config, spec).

    render=False leaves out 'video' (keypoints only, fast).
    """
    patient = _patient(config, spec.patient_index)
    session = _session(config, spec.patient_index)
    times = (spec.start_frame + np.arange(config.num_frames)) / config.fps
    phase = session.phase_at(times)
    counts = np.bincount(phase, minlength=NUM_CLASSES)
    if np.argmax(counts) != spec.label or np.sort(counts)[-2] == counts.max():
        raise ValueError(
            f"Clip {spec.clip_id}: its frames' phases {counts.tolist()} do not have label {spec.label} as "
            "their strict majority; the ClipSpec was not made by clip_specs() for this SimulatorConfig.")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, spec.patient_index, spec.clip_index]))
    pose = _pose(patient, session, times)
    camera = _Camera.of(config, patient)
    true_px = camera(pose["joints"])
    occluded = pose["occluded"]
    if patient.mirrored:  # the estimator names the joints by where they appear in the image
        true_px, occluded = true_px[:, list(COCO17_FLIP_INDEX)], occluded[:, list(COCO17_FLIP_INDEX)]
    keypoints, scores = _estimate_keypoints(rng, config, true_px, occluded)
    light = patient.light * rng.uniform(0.93, 1.07) * rng.uniform(0.97, 1.03, 3)
    example = {
        "keypoints": keypoints,
        "keypoint_scores": scores,
        "label": int(spec.label),
        "patient_id": spec.patient_id,
        "clip_id": spec.clip_id,
        "tested_hand": patient.tested_hand,
        "camera_mirrored": patient.mirrored,
        "severity": np.float32(patient.severity),
        "phase": phase,
        "keypoints_true": true_px.astype(np.float32),
    }
    if render:
        example["video"] = _render(config, patient, session, pose, times, light)
    return example


# ----------------------------------------------------------------------------------------------
# Difficulty: class counts, clips per patient and a fixed keypoint baseline.

BASELINE_DESCRIPTION = (
    "nearest class centroid (standardised features) on mirror-invariant wrist trajectories: both "
    "wrists, ordered by how much they move (not by the estimator's left/right names), each as "
    "distance from the shoulder midline |x| and height y relative to the clip's median shoulder "
    "midpoint, in shoulder widths, at 8 time points, plus its mean speed in 8 segments; "
    "positions with score < 0.3 interpolated, a wrist never seen held at its median guess")
_BASELINE_POINTS = 8


def wrist_trajectory_features(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(T, 17, 2) keypoints and (T, 17) scores -> (48,) features of the difficulty baseline.

    The features do not change when the clip is mirrored or the joints' left/right names are
    swapped, so the baseline cannot tell the tested side: it measures how far kinematics go
    without knowing which compartment is the source (see SYNTHETIC_BBT.md, "direction alone
    must not give the label away").
    """
    keypoints = np.asarray(keypoints, float)
    scores = np.asarray(scores, float)
    shoulders = [COCO17["left_shoulder"], COCO17["right_shoulder"]]
    both = np.all(scores[:, shoulders] > 0.3, axis=1)
    if not both.any():
        both[:] = True
    midpoint = np.median(keypoints[both][:, shoulders].mean(1), axis=0)
    width = max(1.0, np.median(np.linalg.norm(np.diff(keypoints[both][:, shoulders], axis=1)[:, 0], axis=-1)))
    frames = np.arange(len(keypoints))
    samples = np.linspace(0, len(keypoints) - 1, _BASELINE_POINTS)
    wrists = []
    for joint in (COCO17["left_wrist"], COCO17["right_wrist"]):
        valid = scores[:, joint] > 0.3
        xy = (keypoints[:, joint] - midpoint) / width
        if valid.sum() >= 2:
            filled = np.stack([np.interp(frames, frames[valid], xy[valid, a]) for a in range(2)], 1)
        else:  # never seen well (e.g. hidden in the lap): held still at the median of the guesses
            filled = np.repeat(np.median(xy, axis=0, keepdims=True), len(frames), axis=0)
        positions = np.stack([np.interp(samples, frames, filled[:, a]) for a in range(2)], 1)  # (8, 2)
        speed = np.linalg.norm(np.diff(filled, axis=0), axis=1)  # (T - 1,)
        speed = np.array([chunk.mean() for chunk in np.array_split(speed, _BASELINE_POINTS)])
        motion = speed.sum() + positions.std(0).sum()
        wrists.append((motion, np.concatenate([np.abs(positions[:, 0]), positions[:, 1], speed])))
    wrists.sort(key=lambda item: -item[0])
    return np.concatenate([features for _, features in wrists])


def _fit_nearest_centroid(features: np.ndarray, labels: np.ndarray):
    """Nearest class centroid on standardised features (train statistics); returns predict(X)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    centroids = np.stack([((features[labels == c] - mean) / std).mean(0) if np.any(labels == c)
                          else np.full(features.shape[1], np.inf) for c in range(NUM_CLASSES)])

    def predict(x):
        distances = ((((x - mean) / std)[:, None, :] - centroids[None]) ** 2).sum(-1)
        return np.argmin(distances, 1)

    return predict


def _confusion(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(C, C) counts: rows true class, columns predicted."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(confusion, (true, predicted), 1)
    return confusion


def _hardest_pair(confusion) -> tuple[str, str, float]:
    """The two classes most often taken for each other: (a, b, rate a->b + rate b->a)."""
    confusion = np.asarray(confusion, float)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    pairs = [(rates[i, j] + rates[j, i], i, j) for i in range(NUM_CLASSES) for j in range(i + 1, NUM_CLASSES)]
    rate, i, j = max(pairs)
    return CLASS_NAMES[i], CLASS_NAMES[j], float(rate)


@dataclasses.dataclass(frozen=True)
class DifficultyReport:
    """How hard the simulated data is: class counts and a fixed keypoint baseline.

    The baseline is trained on the train split and scored on the test split; as the test split
    holds few patients, it is also scored by 5-fold cross-validation over all patients (folds by
    patient), which varies less from seed to seed.
    """

    num_patients: int
    num_clips: int
    patients_per_split: dict  # split -> number of patients
    class_counts: dict  # split -> tuple of counts in CLASS_NAMES order
    clips_per_patient: tuple  # (min, median, max)
    baseline: str
    baseline_accuracy: float  # on the test split
    baseline_train_accuracy: float
    baseline_per_class_accuracy: tuple  # recall per class on the test split
    baseline_confusion: tuple  # (C, C) rows: true class, columns: predicted, test split
    majority_class_accuracy: float  # predicting train's most frequent class on test
    cross_validated_accuracy: float  # 5 folds by patient, all clips
    cross_validated_confusion: tuple  # (C, C), all clips

    def hardest_confusion(self, cross_validated: bool = False) -> tuple[str, str, float]:
        """The pair of classes the baseline confuses most: (a, b, rate a->b + rate b->a)."""
        return _hardest_pair(self.cross_validated_confusion if cross_validated else self.baseline_confusion)

    def format(self) -> str:
        width = max(len(n) for n in CLASS_NAMES)
        splits = list(self.class_counts)
        lines = [
            f"patients: {self.num_patients} ("
            + ", ".join(f"{s} {self.patients_per_split[s]}" for s in splits) + f"); clips: {self.num_clips}",
            "clips per patient: min {} / median {:g} / max {}".format(*self.clips_per_patient),
            f"{'class counts':<{width}}  " + "  ".join(f"{s:>10}" for s in splits),
        ]
        for c, name in enumerate(CLASS_NAMES):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{self.class_counts[s][c]:>10}" for s in splits))
        lines += textwrap.wrap(f"baseline: {self.baseline}", 100, subsequent_indent="  ")
        lines += [
            f"  test accuracy {self.baseline_accuracy:.3f} (train {self.baseline_train_accuracy:.3f}; "
            f"majority class {self.majority_class_accuracy:.3f})",
            "  per-class test accuracy:",
        ]
        lines += [f"    {name:<{width}}  {accuracy:.3f}"
                  for name, accuracy in zip(CLASS_NAMES, self.baseline_per_class_accuracy)]
        lines.append("  test confusion (rows true, columns predicted, in class order):")
        lines += [f"    {name:<{width}}  " + " ".join(f"{v:>4d}" for v in row)
                  for name, row in zip(CLASS_NAMES, self.baseline_confusion)]
        a, b, rate = self.hardest_confusion()
        lines.append(f"  hardest confusion (test): {a} <-> {b} (sum of both error rates {rate:.3f})")
        a, b, rate = self.hardest_confusion(cross_validated=True)
        lines.append(f"  5-fold cross-validation by patient, all clips: accuracy "
                     f"{self.cross_validated_accuracy:.3f}; hardest confusion {a} <-> {b} ({rate:.3f})")
        return "\n".join(lines)


def _cross_validated_predictions(features: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                                 seed: int, folds: int = 5) -> np.ndarray:
    """Each clip predicted by the baseline trained on the other folds' patients."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 3]))
    fold_of = {p: i % folds for i, p in enumerate(rng.permutation(np.unique(patients)))}
    fold = np.array([fold_of[p] for p in patients])
    predicted = np.empty(len(labels), int)
    for k in range(folds):
        held_out = fold == k
        predicted[held_out] = _fit_nearest_centroid(features[~held_out], labels[~held_out])(features[held_out])
    return predicted


def difficulty_report(config: SimulatorConfig) -> DifficultyReport:
    """Class counts per split, clips per patient, and the baseline (train -> test, and cross-validated)."""
    names = patient_ids(config)
    splits = split_patients(config)
    split_of = {p: s for s, members in splits.items() for p in members}
    specs = clip_specs(config)
    features = np.stack([wrist_trajectory_features(clip["keypoints"], clip["keypoint_scores"])
                         for clip in (simulate_clip(config, spec, render=False) for spec in specs)])
    labels = np.array([spec.label for spec in specs])
    patients = np.array([spec.patient_index for spec in specs])
    split = np.array([split_of[names[p]] for p in patients])
    train, test = split == "train", split == "test"

    predict = _fit_nearest_centroid(features[train], labels[train])
    predicted = predict(features[test])
    confusion = _confusion(labels[test], predicted)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    cross_validated = _cross_validated_predictions(features, labels, patients, config.seed)
    per_patient = np.bincount(patients, minlength=config.num_patients)
    majority = np.argmax(np.bincount(labels[train], minlength=NUM_CLASSES))
    return DifficultyReport(
        num_patients=config.num_patients,
        num_clips=len(specs),
        patients_per_split={s: len(m) for s, m in splits.items()},
        class_counts={s: tuple(int(v) for v in np.bincount(labels[split == s], minlength=NUM_CLASSES))
                      for s in splits},
        clips_per_patient=(int(per_patient.min()), float(np.median(per_patient)), int(per_patient.max())),
        baseline=BASELINE_DESCRIPTION,
        baseline_accuracy=float(np.mean(predicted == labels[test])),
        baseline_train_accuracy=float(np.mean(predict(features[train]) == labels[train])),
        baseline_per_class_accuracy=tuple(float(v) for v in per_class),
        baseline_confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        majority_class_accuracy=float(np.mean(labels[test] == majority)),
        cross_validated_accuracy=float(np.mean(cross_validated == labels)),
        cross_validated_confusion=tuple(
            tuple(int(v) for v in row) for row in _confusion(labels, cross_validated)),
    )
