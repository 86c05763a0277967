"""predict end to end: a tiny trained run on a short exported trial, and every bad input ending
in one clear error with nothing left in --out."""

import csv
import json
import pathlib

import numpy as np
import pytest

from strokevision_jax import export_trial, inference, predict, timeline, train
from strokevision_jax.data import videos
from strokevision_jax.data.synthetic import trials
from tfds_builder.strokevision import strokevision_dataset_builder as builder

SMALL = builder.SYNTHETIC_SMALL.simulator
SECONDS = 6


@pytest.fixture(scope="module")
def run(small_data_dir, tmp_path_factory):
    """A one-epoch MotionBERT (cpu preset) on synthetic_small, made by the train command."""
    workdir = tmp_path_factory.mktemp("run") / "motionbert"
    code = train.main(["--model=motionbert", "--preset=cpu", "--dataset=synthetic_small", "--epochs=1",
                       f"--workdir={workdir}", f"--data_dir={small_data_dir}"])
    assert code == 0
    return workdir


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """The first SECONDS of a test patient's trial, as export_trial writes it."""
    out = tmp_path_factory.mktemp("recording")
    spec = export_trial.find_trial(SMALL, None)
    return spec, export_trial.export_trial(SMALL, spec, out, max_seconds=SECONDS)


def _predict(run, video, keypoints, out, *extra):
    args = [f"--workdir={run}", f"--video={video}", f"--out={out}", "--quiet"]
    if keypoints is not None:
        args.append(f"--keypoints={keypoints}")
    return predict.main(args + list(extra))


def test_stream_frames_are_the_trial_at_the_stored_size(recording):
    spec, paths = recording
    frames = [(i, f) for i, f, _ in videos.stream_frames(paths["video"], (SMALL.height, SMALL.width), SMALL.fps)]
    rendered = np.concatenate([c["video"] for c in trials.render_trial(SMALL, spec)])[:len(frames)]
    assert len(frames) == SECONDS * SMALL.fps
    assert [i for i, _ in frames] == list(range(len(frames)))
    # H.264 at crf 18 with 4:2:0 chroma on 64 x 86 frames: close, not equal; and each decoded
    # frame is nearer its own rendered frame than the one half a second later.
    decoded = np.stack([f for _, f in frames]).astype(int)
    difference = np.abs(decoded - rendered.astype(int)).mean(axis=(1, 2, 3))
    assert difference.mean() < 6.0
    shifted = np.abs(decoded[:-15] - rendered[15:].astype(int)).mean(axis=(1, 2, 3))
    assert difference[:-15].mean() < 0.8 * shifted.mean()
    # At half the frame rate, every other source frame.
    halved = [i for i, _, _ in videos.stream_frames(paths["video"], (SMALL.height, SMALL.width), SMALL.fps / 2,
                                                 keep_pixels=False)]
    assert halved == list(range(1, len(frames), 2))


def test_predict_end_to_end(run, recording, tmp_path, capsys):
    spec, paths = recording
    out = tmp_path / "out"
    assert _predict(run, paths["video"], paths["keypoints"], out, f"--truth={paths['truth']}", "--stride=5") == 0
    stem = spec.trial_id
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{s}" for s in (".json", ".segments.csv", ".frames.csv", ".png"))
    report = json.loads((out / f"{stem}.json").read_text())
    frames = SECONDS * SMALL.fps
    assert report["frames"] == frames and report["settings"]["stride"] == 5
    assert report["settings"]["windows"] == len(inference.window_starts(frames, 30, 5))
    assert report["hand"]["affected"] == "more_affected" and report["hand"]["side"] in ("left", "right")
    low, high = report["count_interval"]
    assert low <= high and report["count"] >= 0 and report["truth"]["count"] == trials.trial_info(SMALL, spec)["blocks"]
    # the segments tile the recording, in order, and the count is the decoded transports
    segments = report["segments"]
    assert segments[0]["start_frame"] == 0 and segments[-1]["end_frame"] == frames
    assert all(a["end_frame"] == b["start_frame"] for a, b in zip(segments, segments[1:]))
    with open(out / f"{stem}.frames.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == frames
    decoded = np.array([timeline.CLASS_NAMES.index(r["decoded"]) for r in rows])
    assert timeline.trial_count(decoded, SMALL.fps)[0] == report["count"]
    with open(out / f"{stem}.segments.csv") as handle:
        assert [r["label"] for r in csv.DictReader(handle)] == [s["label"] for s in segments]

    # The streamed windows give the probabilities of the same windows cut from the rendered
    # trial (the keypoints went through a JSON file with 2 decimals).
    model = inference.load_run(run)
    chunk = next(trials.render_trial(SMALL, spec, chunk=frames))
    starts = inference.window_starts(frames, 30, 5)
    direct = model.probabilities([{k: chunk[k][s:s + 30] for k in ("keypoints", "keypoint_scores")} for s in starts])
    per_frame = timeline.frame_probabilities(starts, direct, frames, 30)
    streamed = np.array([[float(r[f"p_{c}"]) for c in timeline.CLASS_NAMES] for r in rows])
    np.testing.assert_allclose(streamed, per_frame, atol=2e-3)
    assert "blocks" in capsys.readouterr().out


def _assert_refused(code, capsys, out: pathlib.Path, *needles):
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    for needle in needles:
        assert needle in error, error
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_missing_keypoints_are_named(run, recording, tmp_path, capsys):
    _, paths = recording
    out = tmp_path / "out"
    _assert_refused(_predict(run, paths["video"], None, out), capsys, out, "motionbert reads keypoints", "--keypoints=FILE")


def test_keypoints_of_another_length_or_rate_are_refused(run, recording, tmp_path, capsys):
    _, paths = recording
    data = json.loads(paths["keypoints"].read_text())
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"fps": data["fps"], "instance_info": data["instance_info"][:-10]}))
    out = tmp_path / "out"
    _assert_refused(_predict(run, paths["video"], short, out), capsys, out, "short.json has 170 frames",
                    "has 180 frames", "run the pose estimator")
    other_rate = tmp_path / "rate.json"
    other_rate.write_text(json.dumps({"fps": 25, "instance_info": data["instance_info"]}))
    _assert_refused(_predict(run, paths["video"], other_rate, out), capsys, out, "rate.json declares 25 fps",
                    "plays at 30 fps")


def test_a_recording_shorter_than_a_clip_is_refused(run, tmp_path, capsys):
    spec = export_trial.find_trial(SMALL, None)
    paths = export_trial.export_trial(SMALL, spec, tmp_path / "short", max_seconds=0.5)
    out = tmp_path / "out"
    _assert_refused(_predict(run, paths["video"], paths["keypoints"], out), capsys, out,
                    "lasts 0.50 s, shorter than one clip", "30 frames")


def test_damaged_files_and_wrong_workdir_are_refused(run, recording, tmp_path, capsys):
    _, paths = recording
    out = tmp_path / "out"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_refused(_predict(run, empty, paths["keypoints"], out), capsys, out, "--video=", "empty.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    _assert_refused(_predict(run, corrupt, paths["keypoints"], out), capsys, out, "corrupt.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(paths["video"].read_bytes()[: paths["video"].stat().st_size // 2])
    _assert_refused(_predict(run, truncated, paths["keypoints"], out), capsys, out, "truncated.mp4")
    unreadable = tmp_path / "broken.json"
    unreadable.write_text('{"instance_info": [')
    _assert_refused(_predict(run, paths["video"], unreadable, out), capsys, out, "--keypoints=", "broken.json",
                    "cannot read")
    untrained = tmp_path / "untrained"
    (untrained / "checkpoints").mkdir(parents=True)
    (untrained / "run_config.json").write_text((run / "run_config.json").read_text())
    _assert_refused(_predict(untrained, paths["video"], paths["keypoints"], out), capsys, out,
                    "holds no checkpoint", "train it first")
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    _assert_refused(_predict(not_a_run, paths["video"], paths["keypoints"], out), capsys, out,
                    "is not a training run", "run_config.json")


def test_fusing_two_skeleton_runs_is_refused(run, recording, tmp_path, capsys):
    _, paths = recording
    out = tmp_path / "out"
    _assert_refused(_predict(run, paths["video"], paths["keypoints"], out, f"--fuse_with={run}"), capsys, out,
                    "--fuse_with=", "both skeleton runs")
