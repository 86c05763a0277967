"""Whole Box and Block Test trials: one 60 s trial per hand and patient, as a clinician scores it.

Hand 0 is the patient's more-affected hand, the tested hand of the patient's `synthetic` clips
(same traits, same severity). Hand 1 is the less-affected one: the same body and scene, the
source compartment on that hand's side, severity x `LESS_AFFECTED_SEVERITY` and faster, as in
the clinic, where the less-affected hand moves more blocks. Each trial has a session of its own
(one trial, from the start signal to the blocks being put back), drawn from its own random stream
(`SeedSequence([seed, patient, TRIAL_STREAM + hand])`), so the `synthetic` clips are unchanged.

The recording runs from a short wait before the start signal to one second after the trial's
60 s; the true count is the number of blocks released in the target compartment within the 60 s
after the hand has reached the source compartment (the examiner's "go" is given with the hand on
the box), as the BBT counts them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import numpy as np

from strokevision_jax.data.synthetic.config import (
    LEFT,
    RIGHT,
    TRIAL_SECONDS,
    SimulatorConfig,
    _patient_id,
)
from strokevision_jax.data.synthetic.patients import _Patient, _patient
from strokevision_jax.data.synthetic.sessions import _Session, _SessionWriter

LESS_AFFECTED_SEVERITY = 0.3
TRIAL_STREAM = 1000
HANDS = ("more_affected", "less_affected")
_TAIL_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    patient_index: int
    hand: int  # 0: more affected (the clips' tested hand), 1: less affected

    @property
    def patient_id(self) -> str:
        return _patient_id(self.patient_index)

    @property
    def trial_id(self) -> str:
        return f"{self.patient_id}_{HANDS[self.hand]}"


def trial_specs(config: SimulatorConfig, patients: list[int] | None = None) -> list[TrialSpec]:
    indices = range(config.num_patients) if patients is None else patients
    return [TrialSpec(p, hand) for p in indices for hand in (0, 1)]


def _trial_patient(patient: _Patient, hand: int) -> _Patient:
    if hand == 0:
        return patient
    tested = LEFT if patient.tested_hand == RIGHT else RIGHT
    return dataclasses.replace(
        patient, tested_hand=tested, side=-patient.side, severity=patient.severity * LESS_AFFECTED_SEVERITY,
        speed=patient.speed * (1.0 - 0.25 * patient.severity), tremor_amp=patient.tremor_amp * LESS_AFFECTED_SEVERITY,
        compensation=patient.compensation * LESS_AFFECTED_SEVERITY, other_hand_in_lap=False)


@dataclasses.dataclass(frozen=True)
class _Trial:
    patient: _Patient
    session: _Session
    go: float  # seconds: the hand is at the source compartment, the 60 s start
    end: float  # seconds: the recording's end

    @property
    def blocks(self) -> int:
        released = self.session.hold_end
        return int(np.sum((released >= self.go) & (released < self.go + TRIAL_SECONDS)))


@functools.lru_cache(maxsize=64)
def _trial(config: SimulatorConfig, spec: TrialSpec) -> _Trial:
    patient = _trial_patient(_patient(config, spec.patient_index), spec.hand)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, spec.patient_index, TRIAL_STREAM + spec.hand]))
    writer = _SessionWriter(patient, rng)
    session = writer.write(1e-9, config.carry_slowdown)  # exactly one trial
    go = float(writer.trial_windows[0][0])
    return _Trial(patient, session, go, min(session.duration, go + TRIAL_SECONDS + _TAIL_SECONDS))


def trial_info(config: SimulatorConfig, spec: TrialSpec) -> dict:
    """What the trial is, without rendering: frames, per-frame phases, the true count."""
    trial = _trial(config, spec)
    num_frames = int(np.floor(trial.end * config.fps))
    times = np.arange(num_frames) / config.fps
    return {
        "trial_id": spec.trial_id, "patient_id": spec.patient_id, "hand": HANDS[spec.hand],
        "tested_hand": "right" if trial.patient.tested_hand == RIGHT else "left",
        "severity": float(trial.patient.severity), "blocks": trial.blocks,
        "go_frame": int(np.ceil(trial.go * config.fps)), "num_frames": num_frames, "fps": config.fps,
        "phase": trial.session.phase_at(times),
    }


def render_trial(config: SimulatorConfig, spec: TrialSpec, chunk: int = 60) -> Iterator[dict]:
    """The trial's frames and keypoints, `chunk` frames at a time (bounded memory):
    {'video': (n, H, W, 3) uint8, 'keypoints': (n, 17, 2), 'keypoint_scores': (n, 17), 'phase'}."""
    from strokevision_jax.data.keypoints import COCO17_FLIP_INDEX
    from strokevision_jax.data.synthetic.pose import _Camera, _estimate_keypoints, _pose
    from strokevision_jax.data.synthetic.render import _render

    trial = _trial(config, spec)
    info = trial_info(config, spec)
    camera = _Camera.of(config, trial.patient)
    light = trial.patient.light
    for index, first in enumerate(range(0, info["num_frames"], chunk)):
        times = np.arange(first, min(first + chunk, info["num_frames"])) / config.fps
        rng = np.random.default_rng(np.random.SeedSequence(
            [config.seed, spec.patient_index, TRIAL_STREAM + spec.hand, index]))
        pose = _pose(trial.patient, trial.session, times)
        true_px, occluded = camera(pose["joints"]), pose["occluded"]
        if trial.patient.mirrored:
            true_px, occluded = true_px[:, list(COCO17_FLIP_INDEX)], occluded[:, list(COCO17_FLIP_INDEX)]
        keypoints, scores = _estimate_keypoints(rng, config, true_px, occluded)
        yield {"video": _render(config, trial.patient, trial.session, pose, times, light),
               "keypoints": keypoints, "keypoint_scores": scores, "phase": trial.session.phase_at(times)}


def simulate_trial(config: SimulatorConfig, spec: TrialSpec) -> dict:
    """The whole trial as one example dict: `trial_info` plus 'video' (T, H, W, 3) uint8,
    'keypoints' (T, 17, 2) and 'keypoint_scores' (T, 17) (about 125 MB of frames at 128 x 171)."""
    info = trial_info(config, spec)
    chunks = list(render_trial(config, spec))
    example = dict(info)
    for key in ("video", "keypoints", "keypoint_scores"):
        example[key] = np.concatenate([chunk[key] for chunk in chunks])
    return example
