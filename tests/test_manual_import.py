"""The `manual` config: real encoded videos and pose-estimator files written here, built through TFDS,
checked record by record; every bad input named with its file and line, leaving nothing loadable."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax.data import recordings
from strokevision_jax.data import videos as video_io
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.data.keypoints import COCO17_NAMES
from tfds_builder.strokevision import manual

SOURCE_HW = (48, 64)  # written videos; the builder stores 128 x 171
STORED_HW = (128, 171)
GRAY_STEP = 8  # frame i of a written video is a flat gray of level GRAY_STEP * (i % 30)

# OpenPose joint names (its documentation's order), to build BODY_25 / COCO-18 files by name.
_BODY_25 = ("nose neck right_shoulder right_elbow right_wrist left_shoulder left_elbow left_wrist mid_hip "
            "right_hip right_knee right_ankle left_hip left_knee left_ankle right_eye left_eye right_ear "
            "left_ear left_big_toe left_small_toe left_heel right_big_toe right_small_toe right_heel").split()
_COCO_18 = ("nose neck right_shoulder right_elbow right_wrist left_shoulder left_elbow left_wrist right_hip "
            "right_knee right_ankle left_hip left_knee left_ankle right_eye left_eye right_ear left_ear").split()


# ----------------------------------------------------------------------------------------------
# Writing test recordings


def write_video(path: pathlib.Path, num_frames: int, fps: float, codec: str = "libx264") -> pathlib.Path:
    """A real encoded video: frame i is a flat gray of level GRAY_STEP * (i % 30)."""
    height, width = SOURCE_HW
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000  # mpeg4's default rate blurs flat grays by several levels
        for i in range(num_frames):
            image = np.full((height, width, 3), GRAY_STEP * (i % 30), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def patient_pose(frame: int) -> np.ndarray:
    """(17, 3) COCO-17 (x, y, score) of the patient in source pixels; distinct for every frame."""
    joint = np.arange(17)
    return np.stack([20 + 0.5 * joint + 0.25 * frame, 10 + joint + 0.1 * frame, np.full(17, 0.9)], 1)


def bystander_pose(frame: int, large: bool = False) -> np.ndarray:
    """Someone at the right edge of the frame; `large` makes their box larger than the patient's."""
    joint = np.arange(17)
    spread = 3.0 if large else 0.3
    return np.stack([58 + 0.02 * joint * spread + 0 * frame, 2 + joint * spread * 0.9, np.full(17, 0.8)], 1)


def _instance(pose: np.ndarray) -> dict:
    return {"keypoints": pose[:, :2].tolist(), "keypoint_scores": pose[:, 2].tolist(),
            "bbox": [[0, 0, 1, 1]], "bbox_score": 0.9}


def write_mmpose_json(path: pathlib.Path, num_frames: int, *, nobody=(), bystander=(), large_bystander=(),
                      wrapped: bool = False) -> pathlib.Path:
    """MMPose inferencer video output; wrapped: the demo scripts' {"meta_info", "instance_info"} form."""
    frames = []
    for i in range(num_frames):
        people = [] if i in nobody else [_instance(patient_pose(i))]
        if i in bystander or i in large_bystander:
            people.insert(0, _instance(bystander_pose(i, large=i in large_bystander)))
        frames.append({"frame_id": i, "instances": people})
    data = {"meta_info": {"dataset_name": "coco"}, "instance_info": frames} if wrapped else frames
    path.write_text(json.dumps(data))
    return path


def write_sapiens_folder(path: pathlib.Path, num_frames: int) -> pathlib.Path:
    """Sapiens per-image output: one {"instance_info": [...]} file per frame."""
    path.mkdir()
    for i in range(num_frames):
        (path / f"frame_{i + 1:06d}.json").write_text(json.dumps({"instance_info": [_instance(patient_pose(i))]}))
    return path


def write_openpose_folder(path: pathlib.Path, num_frames: int, layout: str = "BODY_25",
                          extra_person: bool = True) -> pathlib.Path:
    """OpenPose --write_json output; the patient's COCO-17 joints placed by name, the rest arbitrary."""
    names = _BODY_25 if layout == "BODY_25" else _COCO_18
    path.mkdir()
    for i in range(num_frames):
        pose = np.full((len(names), 3), 7.0)
        for coco_index, name in enumerate(COCO17_NAMES):
            pose[names.index(name)] = patient_pose(i)[coco_index]
        people = [{"person_id": [-1], "pose_keypoints_2d": pose.ravel().tolist()}]
        if extra_person:  # a failed detection: OpenPose writes zeros
            people.append({"person_id": [-1], "pose_keypoints_2d": [0.0] * (3 * len(names))})
        (path / f"session_{i:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))
    return path


def write_npy(path: pathlib.Path, num_frames: int) -> pathlib.Path:
    np.save(path, np.stack([patient_pose(i) for i in range(num_frames)]).astype(np.float32))
    return path


def write_npz(path: pathlib.Path, num_frames: int) -> pathlib.Path:
    poses = np.stack([patient_pose(i) for i in range(num_frames)]).astype(np.float32)
    np.savez(path, keypoints=poses[..., :2], keypoint_scores=poses[..., 2])
    return path


COLUMNS = ("clip_id", "patient_id", "label", "video", "keypoints", "start", "end", "split")


def write_labels(manual_dir: pathlib.Path, rows: list[dict], columns=COLUMNS) -> pathlib.Path:
    with open(manual_dir / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return manual_dir / "labels.csv"


def read_labels(manual_dir: pathlib.Path) -> list[dict]:
    with open(manual_dir / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def row(clip_id, patient, label, video, keypoints, split, start="", end="") -> dict:
    return dict(clip_id=clip_id, patient_id=patient, label=label, video=video, keypoints=keypoints,
                start=start, end=end, split=split)


def make_full_dir(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """12 clips in every container and keypoint format; returns (manual_dir, expected source frames)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir()
    (root / "keypoints").mkdir()
    v, k = root / "videos", root / "keypoints"
    write_video(v / "a.mp4", 30, 30)
    write_mmpose_json(k / "a.json", 30, nobody=(5,), bystander=(2, 3), large_bystander=(7,))
    write_video(v / "b.avi", 25, 25, codec="mpeg4")
    write_sapiens_folder(k / "b_sapiens", 25)
    write_video(v / "c.mov", 60, 60)
    write_openpose_folder(k / "c_openpose", 60, "BODY_25")
    write_video(v / "session.mkv", 90, 30)
    write_npy(k / "session.npy", 90)
    write_video(v / "d.mp4", 30, 30)
    write_openpose_folder(k / "d_openpose", 30, "COCO-18")
    write_video(v / "e.mp4", 30, 30)
    write_npz(k / "e.npz", 30)
    write_mmpose_json(k / "e.json", 30, wrapped=True)
    for name in ("f", "g", "h", "i"):
        write_video(v / f"{name}.mp4", 30, 30)
        write_npy(k / f"{name}.npy", 30)
    g, n, tw, to = CLASS_NAMES
    rows = [
        row("c01", "P01", g, "videos/a.mp4", "keypoints/a.json", "train"),
        row("c02", "P01", n, "videos/b.avi", "keypoints/b_sapiens", "train"),
        row("c03", "P02", tw, "videos/c.mov", "keypoints/c_openpose", "train"),
        row("c04", "P02", to, "videos/session.mkv", "keypoints/session.npy", "train", "1.0", "2.0"),
        row("c05", "P03", g, "videos/session.mkv", "keypoints/session.npy", "train", "0", "1"),
        row("c06", "P03", n, "videos/d.mp4", "keypoints/d_openpose", "train"),
        row("c07", "P04", tw, "videos/e.mp4", "keypoints/e.npz", "train"),
        row("c08", "P04", to, "videos/e.mp4", "keypoints/e.json", ""),  # split from P04's other row
        row("c09", "P05", g, "videos/f.mp4", "keypoints/f.npy", "validation"),
        row("c10", "P05", n, "videos/g.mp4", "keypoints/g.npy", "validation"),
        row("c11", "P06", tw, "videos/h.mp4", "keypoints/h.npy", "test"),
        row("c12", "P06", to, "videos/i.mp4", "keypoints/i.npy", "test"),
    ]
    write_labels(root, rows)
    same = np.arange(30)
    expected = {  # decoded source frame of every stored frame
        "c01": same, "c06": same, "c07": same, "c08": same, "c09": same, "c10": same, "c11": same, "c12": same,
        "c02": np.floor((same + 0.5) * 25 / 30).astype(int),  # 25 -> 30 fps
        "c03": 2 * same + 1,  # 60 -> 30 fps: the frame on screen at each 1/30 s segment's centre
        "c04": 30 + same, "c05": same,  # windows of the 3-second session
    }
    return root, expected


def make_small_dir(root: pathlib.Path) -> pathlib.Path:
    """Three clips, one per split: the base that each bad-input test breaks in one way."""
    root.mkdir(parents=True)
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.mp4", 30, 30)
        write_npy(root / f"{name}.npy", 30)
    write_labels(root, [row("s1", "P1", CLASS_NAMES[0], "a.mp4", "a.npy", "train"),
                        row("s2", "P2", CLASS_NAMES[1], "b.mp4", "b.npy", "validation"),
                        row("s3", "P3", CLASS_NAMES[2], "c.mp4", "c.npy", "test")])
    return root


def clip_id(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def records_by_clip(data_dir: pathlib.Path) -> dict[str, tuple[str, dict]]:
    out = {}
    for split in manual.SPLITS:
        source = dataset_lib.load_source(split, "manual", data_dir, build=False)
        for i in range(len(source)):
            record = source[i]
            out[clip_id(record["clip_id"])] = (split, record)
    return out


def expected_keypoints(source_frames: np.ndarray) -> np.ndarray:
    poses = np.stack([patient_pose(int(i)) for i in source_frames])
    scale = np.array([STORED_HW[1] / SOURCE_HW[1], STORED_HW[0] / SOURCE_HW[0]])
    return ((poses[..., :2] + 0.5) * scale - 0.5).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# A good build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("manual")
    manual_dir, expected = make_full_dir(root / "recordings")
    data_dir = root / "tfds"
    dataset_lib.ensure_built("manual", data_dir, manual_dir=manual_dir)
    return data_dir, manual_dir, expected


def test_every_format_builds_with_frames_keypoints_and_labels(built):
    data_dir, manual_dir, expected = built
    records = records_by_clip(data_dir)
    assert sorted(records) == sorted(expected)
    labels = {r["clip_id"]: r for r in read_labels(manual_dir)}
    for name, (split, record) in records.items():
        assert record["video"].shape == (30, *STORED_HW, 3) and record["video"].dtype == np.uint8
        assert record["keypoints"].shape == (30, 17, 2) and record["keypoints"].dtype == np.float32
        assert record["keypoint_scores"].shape == (30, 17)
        assert CLASS_NAMES[int(record["label"])] == labels[name]["label"]
        assert clip_id(record["patient_id"]) == labels[name]["patient_id"]
        # Which source frame each stored frame shows: the time rule, read back from the pixels
        # (flat grays survive the codecs within +-2 levels, a quarter of GRAY_STEP).
        np.testing.assert_array_equal(record["source_frame_index"], expected[name], err_msg=name)
        gray = record["video"].reshape(30, -1).mean(axis=1)
        np.testing.assert_allclose(gray, GRAY_STEP * (expected[name] % 30), atol=2.0, err_msg=name)
        # Keypoints of the same source frames, scaled to the stored frame (all formats, OpenPose mapped).
        found = record["keypoint_scores"][:, 0] > 0
        np.testing.assert_allclose(record["keypoints"][found], expected_keypoints(expected[name])[found],
                                   atol=1e-4, err_msg=name)
    assert {s for s, _ in records.values()} == {"train", "validation", "test"}
    _, c04 = records["c04"]
    assert clip_id(c04["source_video"]) == "videos/session.mkv"
    assert (float(c04["start"]), float(c04["end"])) == (1.0, 2.0)
    assert records["c08"][0] == "train"  # empty split cell: the patient's split from its other row


def test_patient_kept_among_several_people_and_empty_frames_counted(built):
    data_dir, _, _ = built
    _, record = records_by_clip(data_dir)["c01"]
    # Frame 5 had nobody: zeros with score 0. Frames 2, 3 (small passer-by listed first) and 7
    # (a passer-by larger than the patient) keep the patient.
    assert (record["keypoint_scores"][5] == 0).all() and (record["keypoints"][5] == 0).all()
    for frame in (2, 3, 7):
        np.testing.assert_allclose(record["keypoints"][frame], expected_keypoints(np.array([frame]))[0], atol=1e-4)
    report = (pathlib.Path(dataset_lib.builder("manual", data_dir).data_path) / "import_report.txt").read_text()
    assert "stored frames with no person (keypoints 0, score 0): 1 of 360" in report
    assert "keypoints/a.json (COCO-17 JSON (MMPose / Sapiens)): 3 frames with several people" in report


def test_splits_are_disjoint_by_patient_and_both_formats_are_written(built):
    data_dir, _, _ = built
    patients = {split: set() for split in manual.SPLITS}
    for split, record in records_by_clip(data_dir).values():
        patients[split].add(clip_id(record["patient_id"]))
    assert patients == {"train": {"P01", "P02", "P03", "P04"}, "validation": {"P05"}, "test": {"P06"}}
    names = [p.name for p in pathlib.Path(dataset_lib.builder("manual", data_dir).data_path).iterdir()]
    for split in manual.SPLITS:
        assert any(n.startswith(f"strokevision-{split}.array_record-") for n in names)
        assert any(n.startswith(f"strokevision-{split}.tfrecord-") for n in names)


def test_a_changed_labels_file_is_not_mistaken_for_the_build(built, tmp_path):
    data_dir, manual_dir, _ = built
    other = shutil.copytree(manual_dir, tmp_path / "other")
    rows = read_labels(other)[:-1]
    write_labels(other, rows)
    with pytest.raises(dataset_lib.DatasetError, match="was built from another labels.csv"):
        dataset_lib.ensure_built("manual", data_dir, manual_dir=other)
    dataset_lib.ensure_built("manual", data_dir, manual_dir=manual_dir)  # the same one is fine


def test_a_replaced_recording_is_noticed(built, tmp_path):
    """Same labels.csv, but a video replaced by another file of the same name (a re-export, a
    fixed recording): the build holds the old clips and says which file changed."""
    data_dir, manual_dir, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(manual_dir, copy)
    dataset_lib.ensure_built("manual", data_dir, manual_dir=copy)  # a copy (new mtimes) is the same
    write_video(copy / "videos" / "d.mp4", 60, 30)  # another recording: twice as long
    (copy / "videos" / "e.mp4").write_bytes(bytes(reversed((copy / "videos" / "e.mp4").read_bytes())))
    with pytest.raises(dataset_lib.DatasetError) as error:
        dataset_lib.ensure_built("manual", data_dir, manual_dir=copy)
    message = str(error.value)
    assert "2 recording file(s)" in message and "changed since" in message
    assert "videos/d.mp4 (size" in message and "videos/e.mp4 (same size, other content)" in message
    assert "delete" in message and "to rebuild" in message


def test_derived_splits_are_deterministic_and_near_70_15_15():
    splits = [manual.derived_split(f"patient{i:04d}") for i in range(2000)]
    fractions = [splits.count(s) / len(splits) for s in manual.SPLITS]
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.03)
    assert splits == [manual.derived_split(f"patient{i:04d}") for i in range(2000)]


def test_splits_derived_by_patient_when_the_column_is_absent(tmp_path):
    manual_dir = tmp_path / "rec"
    manual_dir.mkdir()
    write_video(manual_dir / "a.mp4", 30, 30)
    write_npy(manual_dir / "a.npy", 30)
    patients = [f"P{i:03d}" for i in range(40)]
    rows = [row(f"c{i}", p, CLASS_NAMES[i % 4], "a.mp4", "a.npy", "") for i, p in enumerate(patients)]
    write_labels(manual_dir, rows, columns=COLUMNS[:5])
    plan = manual.plan_import(manual_dir, recordings.ImportConfig())
    for split, clips in plan.clips.items():
        assert {c.patient_id for c in clips} == {p for p in patients if manual.derived_split(p) == split}
        assert clips


# ----------------------------------------------------------------------------------------------
# Bad input: one test each; the message names the file and line, and nothing loadable is left.


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return make_small_dir(tmp_path_factory.mktemp("small") / "recordings")


def broken_copy(small_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return shutil.copytree(small_dir, tmp_path / "recordings")


def assert_build_fails(manual_dir: pathlib.Path, tmp_path: pathlib.Path, *patterns: str) -> str:
    data_dir = tmp_path / "tfds"
    with pytest.raises(dataset_lib.DatasetError) as caught:
        dataset_lib.ensure_built("manual", data_dir, manual_dir=manual_dir)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in:\n{message}"
    assert_nothing_loadable(data_dir)
    return message


def assert_nothing_loadable(data_dir: pathlib.Path) -> None:
    config_dir = data_dir / "strokevision" / "manual"
    leftovers = sorted(p.name for p in config_dir.iterdir()) if config_dir.exists() else []
    assert leftovers == [], leftovers  # neither 1.0.0 nor TFDS's incomplete.* build dir
    for split in manual.SPLITS:
        with pytest.raises(dataset_lib.DatasetError):
            dataset_lib.load_source(split, "manual", data_dir, build=False)


def edit_row(manual_dir: pathlib.Path, index: int, **changes) -> None:
    rows = read_labels(manual_dir)
    rows[index].update(changes)
    write_labels(manual_dir, rows)


def test_unreadable_video(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    (d / "b.mp4").write_bytes(b"not a video at all" * 20)
    assert_build_fails(d, tmp_path, "labels.csv line 3: cannot open video b.mp4", "damaged or not a video")


def test_truncated_video_fails_after_decoding_and_leaves_no_half_build(small_dir, tmp_path):
    # An mkv cut short still opens; its declared duration gives it away once decoded, after all
    # three splits were written to TFDS's temporary directory.
    d = broken_copy(small_dir, tmp_path)
    write_video(d / "long.mkv", 90, 30)
    write_npy(d / "long.npy", 90)
    data = (d / "long.mkv").read_bytes()
    (d / "long.mkv").write_bytes(data[: len(data) * 2 // 3])
    write_labels(d, read_labels(d) + [row("s4", "P3", CLASS_NAMES[3], "long.mkv", "long.npy", "test", "0", "1")])
    assert_build_fails(d, tmp_path, "1 clip(s)", "labels.csv line 5: long.mkv: the container declares 3.000 s",
                       "truncated")


def test_missing_keypoint_file(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    (d / "a.npy").unlink()
    assert_build_fails(d, tmp_path, "labels.csv line 2: keypoint file", "a.npy not found")


@pytest.mark.parametrize("frames", [29, 31])
def test_keypoint_frames_differ_from_video_frames(small_dir, tmp_path, frames):
    d = broken_copy(small_dir, tmp_path)
    write_npy(d / "b.npy", frames)
    assert_build_fails(d, tmp_path, f"labels.csv line 3: b.npy has {frames} frames of keypoints but b.mp4 "
                       "decodes to 30 frames", "one pose per frame of the whole video")


def test_joint_count_other_than_17(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    np.save(d / "a.npy", np.ones((30, 133, 3), np.float32))  # COCO-WholeBody
    write_openpose_folder(d / "mpi", 30, "BODY_25")
    for f in (d / "mpi").iterdir():  # OpenPose MPI (15 joints) is not mapped
        data = json.loads(f.read_text())
        data["people"][0]["pose_keypoints_2d"] = data["people"][0]["pose_keypoints_2d"][:45]
        f.write_text(json.dumps(data))
    edit_row(d, 1, keypoints="mpi")
    assert_build_fails(d, tmp_path, "labels.csv line 2: a.npy: 133 joints", "need COCO-17",
                       "labels.csv line 3: mpi/session_000000000000_keypoints.json person 0: pose_keypoints_2d "
                       "has 45 values (15 joints)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_coordinates(small_dir, tmp_path, value):
    d = broken_copy(small_dir, tmp_path)
    write_mmpose_json(d / "c.json", 30)
    text = (d / "c.json").read_text().replace("20.0,", json.dumps(value) + ",", 1)  # NaN / Infinity
    (d / "c.json").write_text(text)
    edit_row(d, 2, keypoints="c.json")
    assert_build_fails(d, tmp_path, "labels.csv line 4: c.json frame 0 person 0: NaN or infinite values")


def test_unknown_label(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    edit_row(d, 0, label="reaching")
    assert_build_fails(d, tmp_path, "labels.csv line 2: unknown label 'reaching'", ", ".join(CLASS_NAMES))


def test_duplicate_clip_id(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    edit_row(d, 2, clip_id="s1")
    assert_build_fails(d, tmp_path, "labels.csv line 4: duplicate clip_id 's1' (first on line 2)")


def test_one_patient_in_two_splits(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    rows = read_labels(d) + [row("s4", "P1", CLASS_NAMES[3], "c.mp4", "c.npy", "test")]
    write_labels(d, rows)
    assert_build_fails(d, tmp_path, "labels.csv line 2: patient 'P1' is in two splits (train on line(s) 2; "
                       "test on line(s) 5)")


@pytest.mark.parametrize("content", ["", "clip_id,patient_id,label,video,keypoints\n"])
def test_empty_labels_file(small_dir, tmp_path, content):
    d = broken_copy(small_dir, tmp_path)
    (d / "labels.csv").write_text(content)
    expected = "the file is empty" if not content else "the file has a header but no rows"
    assert_build_fails(d, tmp_path, f"labels.csv: {expected}")


def test_all_problems_reported_at_once(small_dir, tmp_path):
    d = broken_copy(small_dir, tmp_path)
    rows = read_labels(d)
    rows[0]["label"] = "reaching"
    rows[1]["keypoints"] = "gone.npy"
    rows[2]["start"], rows[2]["end"] = "2", "1"
    write_labels(d, rows)
    message = assert_build_fails(d, tmp_path, "3 problem(s)", "line 2: unknown label", "line 3: keypoint file",
                                 "line 4: start=2, end=1 is not a window")
    assert "skip_invalid" in message


def test_missing_manual_dir_says_what_to_pass(tmp_path):
    with pytest.raises(dataset_lib.DatasetError, match="--manual_dir"):
        dataset_lib.ensure_built("manual", tmp_path / "tfds")


def test_skip_invalid_builds_the_rest_and_lists_what_it_skipped(small_dir, tmp_path, capsys):
    d = broken_copy(small_dir, tmp_path)
    write_video(d / "d.mp4", 30, 30)
    write_npy(d / "d.npy", 31)  # fails when decoded (pass 2)
    rows = read_labels(d) + [row("s4", "P1", "reaching", "a.mp4", "a.npy", "train"),  # pass 1
                             row("s5", "P1", CLASS_NAMES[3], "d.mp4", "d.npy", "train"),  # pass 2
                             row("s6", "P1", CLASS_NAMES[3], "a.mp4", "a.npy", "train", "0.5", "1.5")]
    write_labels(d, rows)
    data_dir = tmp_path / "tfds"
    dataset_lib.ensure_built("manual", data_dir, manual_dir=d, skip_invalid=True)
    printed = capsys.readouterr().out
    assert "skipped 3 invalid row(s) (skip_invalid):" in printed
    assert "labels.csv line 5: unknown label 'reaching'" in printed
    assert "labels.csv line 6: d.npy has 31 frames of keypoints" in printed
    # A window past the end of a.mp4 costs that row only, not s1 (the same file).
    assert "labels.csv line 7: a.mp4: the window 0.5-1.5 s ends after the video (1.000 s, 30 frames)" in printed
    assert sorted(records_by_clip(data_dir)) == ["s1", "s2", "s3"]
    record = json.loads((pathlib.Path(dataset_lib.builder("manual", data_dir).data_path)
                         / manual.IMPORT_RECORD).read_text())
    assert record["skipped_rows"] == 3 and record["clips"] == {"train": 1, "validation": 1, "test": 1}


def test_rotation_metadata_is_applied_as_players_show_it(tmp_path):
    # A phone-style file: stored landscape 64 x 48 with a 90-degree display matrix, shown portrait.
    # FFmpeg's autorotate turns it counter-clockwise: the stored top-left corner ends bottom-left.
    path = tmp_path / "phone.mp4"
    height, width = SOURCE_HW
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(90)
        image = np.zeros((height, width, 3), np.uint8)
        image[: height // 2, : width // 2] = 255
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoded = video_io.decode_windows(path, [None], recordings.ImportConfig(num_frames=2, height=64, width=48))
    assert decoded.source_hw == (width, height)  # portrait, as displayed
    frame = decoded.windows[0].frames[0].mean(axis=-1)
    quadrants = [frame[:32, :24].mean(), frame[:32, 24:].mean(), frame[32:, :24].mean(), frame[32:, 24:].mean()]
    np.testing.assert_allclose(quadrants, [0, 0, 255, 0], atol=12)  # bright: bottom-left only


def test_keypoint_readers_name_the_bad_frame(tmp_path):
    poses = np.stack([patient_pose(i) for i in range(5)]).astype(np.float32)
    poses[3, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", poses)
    with pytest.raises(recordings.InputError, match=r"nan.npy: NaN or infinite values \(first at frame 3, joint 4\)"):
        recordings.read_keypoints(tmp_path / "nan.npy")
    folder = write_openpose_folder(tmp_path / "gap", 4)
    (folder / "session_000000000002_keypoints.json").unlink()
    with pytest.raises(recordings.InputError, match="frame number jumps from 1 to 3"):
        recordings.read_keypoints(folder)
    (tmp_path / "odd.json").write_text(json.dumps([{"frame_id": 0, "instances": [{"keypoints": "x"}]}]))
    with pytest.raises(recordings.InputError, match="odd.json frame 0 person 0: keypoints"):
        recordings.read_keypoints(tmp_path / "odd.json")


def test_tfds_route_with_manual_dir_and_the_skip_environment_variable(small_dir, tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    import tfds_builder.strokevision  # noqa: F401  (registers the builder)

    d = broken_copy(small_dir, tmp_path)
    write_labels(d, read_labels(d) + [row("s4", "P1", "reaching", "a.mp4", "a.npy", "train")])
    monkeypatch.setenv("STROKEVISION_SKIP_INVALID", "1")
    builder = tfds.builder("strokevision/manual", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(d)))
    assert "skipped 1 invalid row(s)" in capsys.readouterr().out
    assert len(tfds.data_source("strokevision/manual", split="train", data_dir=str(tmp_path / "tfds"))) == 1


def test_optional_count_and_hand_columns_are_stored_per_recording(small_dir, tmp_path):
    """`blocks` and `hand` describe the recording: given on one row, every clip of the video
    carries them; absent, -1 and ''."""
    manual_dir = broken_copy(small_dir, tmp_path)
    rows = read_labels(manual_dir)
    rows[0].update(blocks="23", hand="less_affected")
    write_labels(manual_dir, rows, columns=list(COLUMNS) + ["blocks", "hand"])
    data_dir = tmp_path / "tfds"
    dataset_lib.ensure_built("manual", data_dir, manual_dir=manual_dir)
    records = records_by_clip(data_dir)
    assert int(records["s1"][1]["blocks"]) == 23 and clip_id(records["s1"][1]["hand"]) == "less_affected"
    assert int(records["s2"][1]["blocks"]) == -1 and clip_id(records["s2"][1]["hand"]) == ""


@pytest.mark.parametrize("cells,patterns", [
    ({"blocks": "twelve"}, ("line 2", "blocks 'twelve' is not a count", "whole number")),
    ({"blocks": "-3"}, ("line 2", "blocks '-3' is not a count")),
    ({"hand": "left"}, ("line 2", "unknown hand 'left'", "more_affected or less_affected")),
])
def test_bad_count_or_hand_cells_are_named(small_dir, tmp_path, cells, patterns):
    manual_dir = broken_copy(small_dir, tmp_path)
    rows = read_labels(manual_dir)
    rows[0].update(cells)
    write_labels(manual_dir, rows, columns=list(COLUMNS) + ["blocks", "hand"])
    assert_build_fails(manual_dir, tmp_path, *patterns)


def test_rows_of_one_recording_that_disagree_on_the_count_are_named(small_dir, tmp_path):
    manual_dir = broken_copy(small_dir, tmp_path)
    rows = read_labels(manual_dir)
    rows[1].update(video=rows[0]["video"], keypoints=rows[0]["keypoints"])
    rows[0]["blocks"], rows[1]["blocks"] = "20", "21"
    write_labels(manual_dir, rows, columns=list(COLUMNS) + ["blocks", "hand"])
    assert_build_fails(manual_dir, tmp_path, "the rows of a.mp4 disagree on blocks", "20 on line(s) 2",
                       "21 on line(s) 3", "one value per recording")
