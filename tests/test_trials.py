"""Whole simulated trials: one per hand and patient, the true count, and the clips unchanged."""

import numpy as np

from strokevision_jax import segments
from strokevision_jax.data import synthetic
from strokevision_jax.data.synthetic import trials

SMALL = synthetic.SimulatorConfig(num_patients=6, num_clips=24)


def test_each_patient_has_a_trial_per_hand_the_less_affected_faster():
    specs = trials.trial_specs(SMALL)
    assert [s.trial_id for s in specs[:2]] == ["P000_more_affected", "P000_less_affected"]
    for patient in range(SMALL.num_patients):
        more = trials.trial_info(SMALL, trials.TrialSpec(patient, 0))
        less = trials.trial_info(SMALL, trials.TrialSpec(patient, 1))
        assert more["tested_hand"] != less["tested_hand"]
        assert less["severity"] < more["severity"]
        assert less["blocks"] > more["blocks"] > 0
        for info in (more, less):
            # about 60 s plus the approach and one second: 30 fps frames
            assert 60 * 30 < info["num_frames"] < 75 * 30
            phase = info["phase"]
            assert phase.shape == (info["num_frames"],) and set(np.unique(phase)) <= {0, 1, 2, 3}
            # the true count: transports whose release falls within the 60 s after the start signal
            go, end = info["go_frame"], info["go_frame"] + 60 * 30
            released = [e for _, e, c in segments.to_segments(phase) if c == segments.WITH_OBJECT]
            assert abs(sum(go <= e < end for e in released) - info["blocks"]) <= 1


def test_trials_are_deterministic_and_rendered_in_bounded_chunks():
    spec = trials.TrialSpec(1, 1)
    a = next(trials.render_trial(SMALL, spec, chunk=30))
    b = next(trials.render_trial(SMALL, spec, chunk=30))
    assert a["video"].shape == (30, SMALL.height, SMALL.width, 3) and a["video"].dtype == np.uint8
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    np.testing.assert_array_equal(a["phase"], trials.trial_info(SMALL, spec)["phase"][:30])


def test_the_clips_of_the_synthetic_dataset_are_unchanged_by_trials():
    """Trials draw from their own streams: the clips' sessions and phases are the same before and
    after simulating trials (the session cache is cleared in between)."""
    spec = synthetic.clip_specs(SMALL)[5]
    before = synthetic.simulate_clip(SMALL, spec, render=False)
    for trial in trials.trial_specs(SMALL, [spec.patient_index]):
        trials.trial_info(SMALL, trial)
    from strokevision_jax.data.synthetic import sessions

    sessions._session.cache_clear()
    after = synthetic.simulate_clip(SMALL, spec, render=False)
    for key in ("keypoints", "keypoint_scores", "phase"):
        np.testing.assert_array_equal(before[key], after[key])
