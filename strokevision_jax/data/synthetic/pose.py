"""Kinematics of a clip, the camera and the simulated pose estimator.

Kinematics: the seated upper body in world coordinates at the clip's times (COCO-17 joints with
anatomical sides, hands, head, occlusion). The camera maps world centimetres to the stored frame's
pixels. The simulated pose estimator adds what a real one does: jitter, dropouts, an occluded
lower body and rare left/right swaps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from strokevision_jax.data.keypoints import COCO17, COCO17_FLIP_INDEX
from strokevision_jax.data.synthetic.config import (
    PIXELS_PER_CM_AT_128,
    RIGHT,
    Y_CENTER,
    SimulatorConfig,
)
from strokevision_jax.data.synthetic.patients import _Patient
from strokevision_jax.data.synthetic.sessions import _Session

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
