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
change under mirroring), so it measures whether direction alone gives the label away: telling the
transports apart needs which hand moves together with its direction, or the cube seen in RGB.

Modules, in the order a clip is made:
  config      SimulatorConfig, ClipSpec, phase labels, tested hands, scene layout
  patients    the dataset plan (tested hands, clips and labels per patient), the patient splits,
              each patient's traits
  sessions    movement tracks, each patient's session, the clip plan (`clip_specs`)
  pose        the body's kinematics, the camera, the simulated pose estimator
  render      the frames, drawn with PIL
  clip        `simulate_clip`: one clip's example dict
  difficulty  `difficulty_report`: class counts and the keypoint baseline
"""

from strokevision_jax.data.synthetic.clip import simulate_clip
from strokevision_jax.data.synthetic.config import (
    RIGHT,
    WITH_OBJECT,
    ClipSpec,
    SimulatorConfig,
)
from strokevision_jax.data.synthetic.difficulty import (
    difficulty_report,
    wrist_trajectory_features,
)
from strokevision_jax.data.synthetic.patients import patient_ids, split_patients
from strokevision_jax.data.synthetic.sessions import clip_specs

__all__ = [
    "RIGHT",
    "WITH_OBJECT",
    "ClipSpec",
    "SimulatorConfig",
    "clip_specs",
    "difficulty_report",
    "patient_ids",
    "simulate_clip",
    "split_patients",
    "wrist_trajectory_features",
]
