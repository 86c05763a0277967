"""What the simulated dataset is: its size and difficulty knobs (`SimulatorConfig`), one clip's
address (`ClipSpec`), the phase labels, the tested hands and the scene layout.

World coordinates are centimetres on the image plane of an unmirrored camera: x to the right of
the image (the patient's left), 0 on the partition; y up, 0 on the table under the box's front
wall. The camera (`pose._Camera`) maps them to pixels (scale, small rotation, offset, optional
mirroring).
"""

from __future__ import annotations

import dataclasses

from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES

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
