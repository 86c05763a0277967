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


def test_synthetic_trials_keep_the_clips_patient_splits_and_encode_whole(tmp_path):
    """The builder's split plan and one example through TFDS's own encode / decode (the whole
    build of synthetic_trials_small takes minutes: `dataset.ensure_built` does it)."""
    from tfds_builder.strokevision import strokevision_dataset_builder as sb

    simulator = sb.SYNTHETIC_TRIALS_SMALL.simulator
    assert simulator == sb.SYNTHETIC_SMALL.simulator
    names = synthetic.patient_ids(simulator)
    by_split = sb.trial_specs_by_split(simulator)
    for split, patients in synthetic.split_patients(simulator).items():
        assert sorted(names[s.patient_index] for s in by_split[split]) == sorted(patients * 2)
        assert {s.hand for s in by_split[split]} == {0, 1}
    spec = by_split["test"][0]
    builder = sb.Builder(config="synthetic_trials_small", data_dir=str(tmp_path))
    features = builder.info.features
    trial = trials.simulate_trial(simulator, spec)
    decoded = features.deserialize_example_np(features.serialize_example(sb.trial_feature_dict(trial)))
    assert decoded["trial_id"].decode() == spec.trial_id and int(decoded["blocks"]) == trial["blocks"]
    assert features["hand"].int2str(int(decoded["hand"])) == trials.HANDS[spec.hand]
    np.testing.assert_array_equal(decoded["video"], trial["video"])
    np.testing.assert_array_equal(decoded["phase"], trial["phase"])


def test_export_writes_a_recording_the_import_reads(tmp_path, capsys):
    from strokevision_jax import export_trial
    from strokevision_jax.data import recordings
    from strokevision_jax.data import videos as video_io

    assert export_trial.main(["--dataset=synthetic_small", "--trial=P001_less_affected", f"--out={tmp_path}",
                              "--max_seconds=3"]) == 0
    assert "P001_less_affected" in capsys.readouterr().out
    simulator = export_trial.SIMULATORS["synthetic_small"]
    info = trials.trial_info(simulator, trials.TrialSpec(1, 1))
    video = video_io.probe_video(tmp_path / "P001_less_affected.mp4")
    keypoints = recordings.read_keypoints(tmp_path / "P001_less_affected.json")
    assert (video.height, video.width, video.fps) == (simulator.height, simulator.width, 30.0)
    assert keypoints.num_frames == 90  # --max_seconds=3 at 30 fps
    truth = __import__("json").loads((tmp_path / "P001_less_affected_truth.json").read_text())
    assert truth["blocks"] == info["blocks"] and truth["phase"] == info["phase"][:90].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "P001_less_affected.json", "P001_less_affected.mp4", "P001_less_affected_truth.json"]
    assert export_trial.main(["--dataset=synthetic_small", "--trial=P99_left", f"--out={tmp_path / 'x'}"]) == 2
    assert "is not a trial of the simulator" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_odd_frame_sizes_are_padded_for_h264():
    from strokevision_jax import export_trial

    frames = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
    even = export_trial._even(frames)
    assert even.shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(even[:, :3, :5], frames)
    np.testing.assert_array_equal(even[:, 3, :5], frames[:, 2])  # the last row repeated
    assert export_trial._even(even) is even
