"""One clip: the example dict of a `ClipSpec`, a pure function of (config, spec).

Its keypoints imitate a pose estimator and name the joints as they appear in the image: in a
mirrored clip the patient's anatomical right arm is reported as `left_*`.
"""

from __future__ import annotations

import numpy as np

from strokevision_jax.data.classes import NUM_CLASSES
from strokevision_jax.data.keypoints import COCO17_FLIP_INDEX
from strokevision_jax.data.synthetic.config import ClipSpec, SimulatorConfig
from strokevision_jax.data.synthetic.patients import _patient
from strokevision_jax.data.synthetic.pose import _Camera, _estimate_keypoints, _pose
from strokevision_jax.data.synthetic.render import _render
from strokevision_jax.data.synthetic.sessions import _session


def simulate_clip(config: SimulatorConfig, spec: ClipSpec, render: bool = True) -> dict:
    """The example dict of one clip (see the package docstring); a pure function of (config, spec).

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
