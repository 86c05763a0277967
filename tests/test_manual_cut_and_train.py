"""From raw sessions to a trained model: cut_clips writes the manual layout, the builder imports
it, and the train CLI runs an epoch on `--dataset=manual --manual_dir=...`."""

from __future__ import annotations

import csv
import json
import pathlib

import av
import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import evaluate, presets, train
from strokevision_jax.data import cut_clips
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.data.pipeline import VideoConfig
from tests.test_manual_import import (
    expected_keypoints,
    make_full_dir,
    patient_pose,
    records_by_clip,
    write_mmpose_json,
    write_npy,
    write_openpose_folder,
    write_video,
)

SEGMENT_COLUMNS = ("video", "start", "end", "label", "patient_id", "keypoints", "split")


def write_segments(path: pathlib.Path, rows: list[tuple]) -> pathlib.Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SEGMENT_COLUMNS)
        writer.writerows(rows)
    return path


def decoded_frame_count(path: pathlib.Path) -> tuple[int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    write_video(root / "s1.mp4", 120, 30)  # 4 s
    write_mmpose_json(root / "s1.json", 120, bystander=range(0, 120, 7))
    write_video(root / "s2.avi", 75, 25, codec="mpeg4")  # 3 s at 25 fps
    write_openpose_folder(root / "s2_openpose", 75, "BODY_25")
    write_video(root / "s3.mkv", 30, 30)
    write_npy(root / "s3.npy", 30)
    g, n, tw, to = CLASS_NAMES
    write_segments(root / "segments.csv", [
        ("s1.mp4", 0.0, 2.0, g, "P1", "s1.json", "train"),  # two 1-s clips
        ("s1.mp4", 2.0, 3.4, tw, "P1", "s1.json", "train"),  # one clip centred on the segment
        ("s1.mp4", 3.5, 3.8, n, "P1", "s1.json", "train"),  # shorter than 0.5 s: left out, listed
        ("s2.avi", 0.5, 3.0, to, "P2", "s2_openpose", "validation"),  # round(2.5) = 2 clips
        ("s3.mkv", 0, 1, n, "P3", "s3.npy", "test"),
    ])
    return root


def test_clip_windows_spread_over_the_segment():
    assert cut_clips.clip_windows(0.0, 2.0, 1.0, 0.5) == [(0.0, 1.0), (1.0, 2.0)]
    np.testing.assert_allclose(cut_clips.clip_windows(2.0, 3.4, 1.0, 0.5), [(2.2, 3.2)])
    np.testing.assert_allclose(cut_clips.clip_windows(0.0, 3.4, 1.0, 0.5),
                               [(0.0, 1.0), (1.2, 2.2), (2.4, 3.4)])  # round(3.4) windows, gaps of 0.2 s
    assert len(cut_clips.clip_windows(0.0, 3.6, 1.0, 0.5)) == 4  # overlapping by 0.13 s
    assert cut_clips.clip_windows(3.5, 3.8, 1.0, 0.5) == []
    assert cut_clips.clip_windows(9.5, 10.0, 1.0, 0.5, video_seconds=10.0) == [(9.0, 10.0)]


def test_cut_clips_writes_the_layout_and_the_builder_imports_it(sessions, tmp_path, capsys):
    out = tmp_path / "recordings"
    assert cut_clips.main([f"--segments={sessions / 'segments.csv'}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 clips of 1 s from 3 videos" in printed
    assert "left out 1 segment(s) shorter than --min_seconds" in printed and "segments.csv line 4" in printed
    with open(out / "labels.csv", newline="") as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    # Source frames of each clip: those starting in [s, s + 1); s2 is 25 fps.
    expected = {
        "P1_s1_0000": range(0, 30), "P1_s1_0001": range(30, 60), "P1_s1_0002": range(66, 96),
        "P2_s2_0000": range(13, 38), "P2_s2_0001": range(50, 75), "P3_s3_0000": range(0, 30),
    }
    assert sorted(rows) == sorted(expected)
    assert rows["P1_s1_0002"]["label"] == CLASS_NAMES[2] and rows["P2_s2_0000"]["split"] == "validation"
    assert (rows["P1_s1_0002"]["source_start"], rows["P1_s1_0002"]["source_end"]) == ("2.200", "3.200")
    for clip_id, frames in expected.items():
        count, rate = decoded_frame_count(out / rows[clip_id]["video"])
        assert count == len(frames) and rate == (25.0 if "s2" in clip_id else 30.0), clip_id
        joints = np.load(out / rows[clip_id]["keypoints"])
        # Reduced to the patient (s1 has a passer-by every 7th frame; OpenPose BODY_25 mapped).
        np.testing.assert_allclose(joints, np.stack([patient_pose(i) for i in frames]), atol=1e-5, err_msg=clip_id)
    assert not (out / ".cutting").exists()

    data_dir = tmp_path / "tfds"
    dataset_lib.ensure_built("manual", data_dir, manual_dir=out)
    records = records_by_clip(data_dir)
    assert sorted(records) == sorted(expected)
    split, record = records["P1_s1_0001"]
    assert split == "train"
    np.testing.assert_array_equal(record["source_frame_index"], np.arange(30))
    np.testing.assert_allclose(record["keypoints"], expected_keypoints(np.arange(30, 60)), atol=1e-4)


def test_cut_clips_reports_bad_segments_and_writes_nothing(sessions, tmp_path, capsys):
    bad = write_segments(sessions / "bad_segments.csv", [
        ("s1.mp4", 0.0, 2.0, "reaching", "P1", "s1.json", ""),
        ("s1.mp4", 0.0, 9.0, CLASS_NAMES[0], "P1", "s1.json", ""),
        ("missing.mp4", 0.0, 1.0, CLASS_NAMES[0], "P1", "s1.json", ""),
    ])
    out = tmp_path / "recordings"
    assert cut_clips.main([f"--segments={bad}", f"--out={out}"]) == 1
    message = capsys.readouterr().err
    assert "3 problem(s)" in message
    assert "bad_segments.csv line 2: unknown label 'reaching'" in message
    assert "bad_segments.csv line 3: the segment ends at 9 s, after the video (4.00 s)" in message
    assert "bad_segments.csv line 4: video" in message and "missing.mp4 not found" in message
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def tiny_training(monkeypatch):
    """The cpu preset of r2plus1d_18, shrunk as tests/test_train.py does, compiled quickly."""
    import jax

    tiny = presets.recipe("r2plus1d_18", "cpu").replace(
        video=VideoConfig(num_frames=4, resize=(36, 48), crop=(32, 32)),
        model_overrides=(("base_width", 8), ("stage_blocks", (1, 1, 1, 1))),
        ema_decay=None, eval_flip=False)
    monkeypatch.setitem(presets.RECIPES, ("r2plus1d_18", "cpu"), tiny)
    monkeypatch.setenv("STROKEVISION_XLA_CACHE", "")
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def test_train_cli_runs_an_epoch_on_manual_data(tiny_training, tmp_path, capsys):
    manual_dir, _ = make_full_dir(tmp_path / "recordings")
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    argv = ["--model=r2plus1d", "--dataset=manual", f"--manual_dir={manual_dir}", "--epochs=1", "--preset=cpu",
            f"--workdir={workdir}", f"--data_dir={data_dir}", "--batch_size=4"]
    assert train.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "imported 12 clips of 6 patients" in printed
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["dataset"] == "manual"
    assert sum(map(sum, report["test"]["confusion_matrix"])) == 2  # P06's two clips
    assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [1]
    # evaluate accepts the same recordings (checked against the build's labels.csv) and agrees.
    assert evaluate.main([f"--workdir={workdir}", f"--data_dir={data_dir}", f"--manual_dir={manual_dir}"]) == 0
    again = json.loads((workdir / "report.json").read_text())
    assert again["test"]["confusion_matrix"] == report["test"]["confusion_matrix"]


def test_train_cli_without_manual_dir_says_what_to_pass(tmp_path, capsys):
    argv = ["--model=r2plus1d", "--dataset=manual", "--epochs=1", "--preset=cpu",
            f"--workdir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'tfds'}"]
    assert train.main(argv) == 1
    assert "--manual_dir" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started
    other = ["--model=r2plus1d", "--dataset=synthetic_small", f"--manual_dir={tmp_path}", "--preset=cpu",
             f"--workdir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'tfds'}"]
    assert train.main(other) == 2
    assert "--manual_dir is read by --dataset=manual only" in capsys.readouterr().err
