"""Each patient's session and the clip plan.

Movement tracks: sequences of minimum-jerk moves, evaluated vectorised at any times. Each patient
has one continuous session: trials of about 60 s in which the tested hand grasps a cube in the
source compartment (descent, closing, lift-off), carries it over the partition and lowers it
(transport_with_object), lets go and returns empty (transport_without_object, from the moment the
cube drops), with non-task episodes (resting, pausing, touching the face, moving the other arm,
adjusting posture, looking around, aborted reaches) in between and while the cubes are put back
between trials. Every track (tested hand, other hand, trunk, head) is a sequence of minimum-jerk
moves; impaired patients are slower and move in several sub-movements, with tremor, less range
and trunk compensation.

Clip plan: one window per clip, where the clip's label is the strict plurality of the phases. The
label comes from the dataset plan (drawn from `class_frequencies`); the window of `num_frames`
frames is drawn among those where that label is the strict plurality of the per-frame phases, so
`ClipSpec.start_frame` fixes the clip.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.data.synthetic.config import (
    BOX_FRONT_TOP,
    GRASPING,
    NON_TASK,
    TRIAL_SECONDS,
    WITH_OBJECT,
    WITHOUT_OBJECT,
    ClipSpec,
    SimulatorConfig,
)
from strokevision_jax.data.synthetic.patients import _Patient, _patient, _plan

# ---- movement ----
_NON_TASK_KINDS = ("rest", "pause", "touch_face", "other_arm", "posture", "aborted_reach", "look_around")
_NON_TASK_WEIGHTS = np.array([0.24, 0.18, 0.12, 0.14, 0.10, 0.10, 0.12])
PARK_PROBABILITY = 0.6  # a pausing hand leaves the box first
# Durations (s) as (healthy, extra at severity 1), before the patient's speed factor and per-move
# variability: one transport across the partition, and lowering the cube before and after it drops.
TRANSPORT_SECONDS = (0.4, 1.1)
PLACING_SECONDS = (0.35, 0.8)

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
        self.trial_windows: list[tuple[float, float]] = []  # (start signal, start + TRIAL_SECONDS)

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
            self.trial_windows.append((t, trial_end))
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
