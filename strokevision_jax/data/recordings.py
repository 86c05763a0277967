"""Real recordings -> stored clips: import settings, problems, labels.csv rows, pose-estimator keypoint readers.

What the `manual` TFDS config and `cut_clips` build on (the README of tfds_builder/strokevision
documents the rules for users):

Video decoding and resampling: `strokevision_jax.data.videos`.

Keypoints: one pose per video frame, the whole file, COCO-17 (x, y, score) in pixels of the source
frame. They follow the video: the stored frame k takes the keypoints of its source frame, and
x' = (x + 1/2) * width / source_width - 1/2 (y likewise): pixel centres sit at integers, the
convention of `keypoints.flip_x_pixels`.

Several people in a frame: the patient is the person whose box (the extent of their joints with a
positive score) is centred nearest the "anchor", the median centre of the largest person of every
frame of the file. The anchor is one point per file, so the choice is stable across frames and an
occasional larger passer-by does not take over. A frame with nobody keeps zeros with score 0.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES

VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm")
KEYPOINT_SUFFIXES = (".json", ".npy", ".npz")
NUM_JOINTS = 17

# COCO-17 joint k is OpenPose joint _FROM_<layout>[k] (OpenPose's lists start nose, neck, right arm).
_FROM_BODY_25 = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
_FROM_COCO_18 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
OPENPOSE_LAYOUTS = {25: ("BODY_25", _FROM_BODY_25), 18: ("COCO-18", _FROM_COCO_18)}


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """Stored clips: num_frames frames of height x width; a window of num_frames / fps seconds is
    converted to `fps` exactly (see the module docstring). The defaults are the `synthetic`
    config's (30 frames, 30 fps, 128 x 171), so that the training presets apply unchanged."""

    num_frames: int = 30
    fps: float = 30.0
    height: int = 128
    width: int = 171

    def __post_init__(self):
        if self.num_frames <= 0 or self.fps <= 0 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"ImportConfig fields must be positive, got {self}.")

    @property
    def clip_seconds(self) -> float:
        return self.num_frames / self.fps


# ----------------------------------------------------------------------------------------------
# Problems: every bad input becomes one of these; they are reported together.


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad input: where (file, CSV line), what is wrong and what to do."""

    file: str
    line: int | None
    problem: str
    fix: str

    def format(self) -> str:
        where = f"{self.file} line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.problem} -> {self.fix}"


class RecordingsError(ValueError):
    """Bad recordings; the message lists every problem found."""

    def __init__(self, heading: str, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = [heading] + [f"  {p.format()}" for p in self.problems]
        super().__init__("\n".join(lines))


class InputError(ValueError):
    """One unreadable file; `fix` says what to do. Callers turn it into a Problem with the CSV line."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def problem_from(error: InputError, file: str, line: int | None) -> Problem:
    return Problem(file, line, error.problem, error.fix)


# ----------------------------------------------------------------------------------------------
# CSV cells shared by labels.csv and cut_clips' segments file


def read_csv_rows(path: pathlib.Path, required: Sequence[str]) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """(line number, row with stripped cells) of a CSV with a header; problems for a bad file."""
    name = path.name
    if not path.is_file():
        return [], [Problem(str(path), None, "file not found", f"create {name} (see the builder README)")]
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as error:
        return [], [Problem(name, None, f"not UTF-8 text ({error})", "save it as CSV UTF-8")]
    if not text.strip():
        return [], [Problem(name, None, "the file is empty", f"add a header line and one row per clip to {name}")]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        return [], [Problem(name, 1, f"missing column(s) {', '.join(missing)} (header: {', '.join(header)})",
                            f"the header must name {', '.join(required)}")]
    rows = []
    for row in reader:
        cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if any(cells.values()):
            rows.append((reader.line_num, cells))
    if not rows:
        return [], [Problem(name, None, "the file has a header but no rows", f"add one row per clip to {name}")]
    return rows, []


def parse_label(value: str) -> int:
    if value not in CLASS_NAMES:
        raise InputError(f"unknown label {value!r}", f"use one of {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(value)


def parse_window(start: str, end: str) -> tuple[float, float] | None:
    """(start, end) seconds from two cells; None when both are empty."""
    if not start and not end:
        return None
    if not start or not end:
        raise InputError(f"start={start!r} and end={end!r}: only one is given", "give both or neither")
    try:
        window = float(start), float(end)
    except ValueError:
        raise InputError(f"start={start!r}, end={end!r} are not numbers", "give seconds, e.g. 12.5") from None
    if not all(math.isfinite(v) for v in window) or window[0] < 0 or window[1] <= window[0]:
        raise InputError(f"start={start}, end={end} is not a window", "need 0 <= start < end (seconds)")
    return window


def check_file(path: pathlib.Path, suffixes: Sequence[str], what: str, allow_dir: bool = False) -> None:
    if allow_dir and path.is_dir():
        return
    if not path.exists():
        raise InputError(f"{what} {path} not found", "fix the path (relative to the CSV's directory)")
    if path.suffix.lower() not in suffixes:
        kinds = ", ".join(suffixes) + (", or a folder of per-frame .json files" if allow_dir else "")
        raise InputError(f"{what} {path.name} has an unsupported type", f"use {kinds}")


# ----------------------------------------------------------------------------------------------
# Keypoints


@dataclasses.dataclass
class Keypoints:
    """A keypoint file read and reduced to the patient: joints (N, 17, 3) = (x, y, score) in pixels."""

    joints: np.ndarray
    layout: str  # what the file held, e.g. "MMPose JSON (COCO-17)"
    frames_with_several: int
    frames_without_person: int
    fps: float | None = None  # the frame rate the file declares ("fps" in a JSON object or .npz), if any

    @property
    def num_frames(self) -> int:
        return int(self.joints.shape[0])


def read_keypoints(path: pathlib.Path) -> Keypoints:
    """Any supported keypoint file or folder -> the patient's COCO-17 keypoints; raises InputError."""
    path = pathlib.Path(path)
    try:
        fps = None
        if path.is_dir():
            frames, layout = _read_frame_folder(path)
        elif path.suffix.lower() == ".json":
            frames, layout, fps = _read_video_json(path)
        elif path.suffix.lower() in (".npy", ".npz"):
            return _read_array(path)
        else:
            raise InputError(f"{path.name}: unsupported keypoint file type",
                             f"use {', '.join(KEYPOINT_SUFFIXES)} or a folder of per-frame .json files")
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # JSON of another shape
        raise InputError(f"{path.name}: unexpected content ({type(error).__name__}: {error})",
                         "give one of the keypoint formats of the builder README") from None
    if not frames:
        raise InputError(f"{path.name} holds no frames", "point `keypoints` at the pose estimator's output for this video")
    return dataclasses.replace(select_patient(frames, layout), fps=fps)


def _load_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path.name} as JSON ({error})", "re-export the pose estimator's output") from None


def _declared_fps(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: fps {value!r} is not a positive number", "write the video's frame rate, or leave fps out")
    return float(value)


def _read_video_json(path: pathlib.Path) -> tuple[list[list[np.ndarray]], str, float | None]:
    """MMPose's video output: [{"frame_id", "instances": [...]}, ...], bare or under "instance_info"
    (then an "fps" beside it is the frame rate)."""
    data = _load_json(path)
    fps = None
    if isinstance(data, dict) and "instance_info" in data:
        fps = _declared_fps(data.get("fps"), path.name)
        data = data["instance_info"]
    if isinstance(data, dict) and "people" in data:
        raise InputError(f"{path.name} is one frame of OpenPose output",
                         "point `keypoints` at the folder of OpenPose's per-frame files")
    if not isinstance(data, list) or not all(isinstance(f, dict) and "instances" in f for f in data):
        if isinstance(data, list) and data and isinstance(data[0], dict) and "keypoints" in data[0]:
            raise InputError(f"{path.name} holds one frame's people (image output)",
                             "put the per-frame files in one folder and point `keypoints` at the folder")
        raise InputError(f"{path.name} is not per-frame pose output",
                         'expected a list of {"frame_id": i, "instances": [...]} (MMPose / Sapiens video output)')
    if all("frame_id" in f for f in data):
        data = sorted(data, key=lambda f: int(f["frame_id"]))
        _check_consecutive([int(f["frame_id"]) for f in data], path.name, "frame_id")
    frames = []
    for index, frame in enumerate(data):
        frames.append([_coco_instance(person, path.name, index, p) for p, person in enumerate(frame["instances"] or [])])
    return frames, "COCO-17 JSON (MMPose / Sapiens)", fps


def _read_frame_folder(path: pathlib.Path) -> tuple[list[list[np.ndarray]], str]:
    """One JSON per frame, ordered by the last number in the file name: OpenPose, Sapiens or MMPose images."""
    files = [f for f in path.iterdir() if f.suffix.lower() == ".json"]
    if not files:
        raise InputError(f"keypoint folder {path.name} has no .json files",
                         "point `keypoints` at the folder of the pose estimator's per-frame .json files")
    numbered = []
    for f in files:
        numbers = re.findall(r"\d+", f.stem)
        if not numbers:
            raise InputError(f"{path.name}/{f.name} has no frame number in its name",
                             "name per-frame files with their frame number, e.g. frame_000012.json")
        numbered.append((int(numbers[-1]), f))
    numbered.sort()
    _check_consecutive([n for n, _ in numbered], path.name, "frame number")
    frames, layouts = [], set()
    for index, (_, f) in enumerate(numbered):
        data = _load_json(f)
        where = f"{path.name}/{f.name}"
        if isinstance(data, dict) and "people" in data:
            people = [_openpose_person(person, where, p) for p, person in enumerate(data["people"] or [])]
            layouts.update(layout for layout, _ in people)
            frames.append([joints for _, joints in people])
            continue
        if isinstance(data, dict) and "instance_info" in data:
            data = data["instance_info"]
        if not isinstance(data, list):
            raise InputError(f"{where} is not a frame's pose output",
                             'expected OpenPose {"people": [...]} or {"instance_info": [...]} (Sapiens / MMPose)')
        frames.append([_coco_instance(person, where, index, p) for p, person in enumerate(data)])
        layouts.add("COCO-17 JSON folder (Sapiens / MMPose)")
    if len(layouts) > 1:
        raise InputError(f"{path.name} mixes layouts ({', '.join(sorted(layouts))})",
                         "use one pose estimator and one layout per folder")
    return frames, layouts.pop() if layouts else "JSON folder"


def _check_consecutive(ids: list[int], where: str, what: str) -> None:
    for previous, current in zip(ids, ids[1:]):
        if current != previous + 1:
            problem = f"duplicate {what} {current}" if current == previous else (
                f"{what} jumps from {previous} to {current} (frames missing)")
            raise InputError(f"{where}: {problem}", "keypoints need one entry per video frame; re-run the pose estimator")


def _finite_array(values, where: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: keypoints are not numbers", "re-export the pose estimator's output") from None
    finite = np.isfinite(array)
    if not finite.all():
        first = np.argwhere(~finite)[0]
        at = f" (first at frame {first[0]}, joint {first[1]})" if array.ndim == 3 else ""
        raise InputError(f"{where}: NaN or infinite values{at}",
                         "re-export; write joints that were not found with score 0, not NaN")
    return array


def _coco_instance(person: dict, where: str, frame: int, index: int) -> np.ndarray:
    """{"keypoints": [[x, y], ...] or flat [x, y, v, ...], "keypoint_scores": [...]} -> (17, 3)."""
    at = f"{where} frame {frame} person {index}"
    if not isinstance(person, dict) or "keypoints" not in person:
        raise InputError(f"{at}: no 'keypoints'", "each instance needs 'keypoints' (and 'keypoint_scores')")
    coords = _finite_array(person["keypoints"], at)
    if coords.ndim == 1 and coords.size % 3 == 0:  # COCO results: flat x, y, visibility
        coords = coords.reshape(-1, 3)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise InputError(f"{at}: keypoints of shape {coords.shape}", "need (17, 2) or (17, 3) per person")
    if coords.shape[0] != NUM_JOINTS:
        raise InputError(f"{at}: {coords.shape[0]} joints", _JOINT_FIX)
    if "keypoint_scores" in person:
        scores = _finite_array(person["keypoint_scores"], at).reshape(-1)
        if scores.shape != (NUM_JOINTS,):
            raise InputError(f"{at}: {scores.size} keypoint_scores for 17 joints", "give one score per joint")
    elif coords.shape[1] == 3:
        scores = coords[:, 2]
    else:
        scores = np.ones(NUM_JOINTS)
    return np.concatenate([coords[:, :2], scores[:, None]], axis=1).astype(np.float32)


_JOINT_FIX = ("need COCO-17 (17 joints: a COCO body model of MMPose / Sapiens), or OpenPose BODY_25 / "
              "COCO-18 per-frame JSON, which are mapped")


def _openpose_person(person: dict, where: str, index: int) -> tuple[str, np.ndarray]:
    at = f"{where} person {index}"
    values = _finite_array(person.get("pose_keypoints_2d", []), at).reshape(-1)
    if values.size % 3 or values.size // 3 not in OPENPOSE_LAYOUTS:
        raise InputError(f"{at}: pose_keypoints_2d has {values.size} values ({values.size / 3:g} joints)",
                         "need BODY_25 (75 values) or COCO-18 (54 values); other OpenPose models are not mapped")
    name, order = OPENPOSE_LAYOUTS[values.size // 3]
    return f"OpenPose {name}", values.reshape(-1, 3)[list(order)].astype(np.float32)


def _read_array(path: pathlib.Path) -> Keypoints:
    """.npy (N, 17, 2|3) or .npz with 'keypoints' (N, 17, 2|3) and optional 'keypoint_scores' (N, 17)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path.name} ({error})", "save with numpy.save / numpy.savez") from None
    scores = fps = None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.keys())
            if "fps" in keys:
                value = data["fps"]
                fps = _declared_fps(value.item() if value.size == 1 else value.tolist(), path.name)
                keys.remove("fps")
            if "keypoints" in keys:
                array = data["keypoints"]
                scores = data["keypoint_scores"] if "keypoint_scores" in keys else None
            elif len(keys) == 1:
                array = data[keys[0]]
            else:
                raise InputError(f"{path.name} holds {', '.join(keys)} but no 'keypoints'",
                                 "save the (N, 17, 2|3) array as 'keypoints'")
    else:
        array = data
    if array.ndim != 3 or array.shape[2] not in (2, 3):
        raise InputError(f"{path.name}: array of shape {array.shape}", "need (frames, 17, 2) or (frames, 17, 3)")
    if array.shape[1] != NUM_JOINTS:
        raise InputError(f"{path.name}: {array.shape[1]} joints", _JOINT_FIX)
    array = _finite_array(array, path.name)
    if scores is not None:
        scores = _finite_array(scores, f"{path.name} keypoint_scores")
        if scores.shape != array.shape[:2]:
            raise InputError(f"{path.name}: keypoint_scores {scores.shape} for keypoints {array.shape}",
                             "need keypoint_scores of shape (frames, 17)")
    elif array.shape[2] == 3:
        scores = array[:, :, 2]
    else:
        scores = np.ones(array.shape[:2])
    joints = np.concatenate([array[:, :, :2], scores[:, :, None]], axis=2).astype(np.float32)
    empty = int((joints[:, :, 2] <= 0).all(axis=1).sum())
    return Keypoints(joints, f"NumPy {path.suffix} ({array.shape[2]} channels)", 0, empty, fps)


def _person_box(joints: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(centre (2,), area) of the joints with a positive score; None for an empty detection."""
    seen = joints[joints[:, 2] > 0, :2]
    if not len(seen):
        return None
    low, high = seen.min(axis=0), seen.max(axis=0)
    return (low + high) / 2, float(np.prod(high - low))


def select_patient(frames: list[list[np.ndarray]], layout: str) -> Keypoints:
    """Per-frame people (each (17, 3)) -> (N, 17, 3), one person per frame (see the module docstring)."""
    boxes = [[(person, _person_box(person)) for person in people] for people in frames]
    boxes = [[(person, box) for person, box in people if box is not None] for people in boxes]
    largest = [max(people, key=lambda pb: pb[1][1])[1][0] for people in boxes if people]
    anchor = np.median(np.stack(largest), axis=0) if largest else np.zeros(2)
    joints = np.zeros((len(frames), NUM_JOINTS, 3), np.float32)
    for index, people in enumerate(boxes):
        if people:
            distances = [float(np.linalg.norm(box[0] - anchor)) for _, box in people]
            joints[index] = people[int(np.argmin(distances))][0]
    several = sum(len(people) > 1 for people in boxes)
    empty = sum(not people for people in boxes)
    return Keypoints(joints, layout, several, empty)


def scale_keypoints(joints: np.ndarray, source_hw: tuple[int, int], stored_hw: tuple[int, int]) -> np.ndarray:
    """(..., 17, 3) pixels of the source frame -> of the stored frame (pixel centres at integers).

    Joints written as (0, 0, 0), a pose estimator's "not found", stay zero.
    """
    scale = np.array([stored_hw[1] / source_hw[1], stored_hw[0] / source_hw[0]], np.float32)
    scaled = joints.astype(np.float32, copy=True)
    missing = (joints == 0).all(axis=-1)
    scaled[..., :2] = (joints[..., :2] + 0.5) * scale - 0.5
    scaled[missing] = 0.0
    return scaled


def read_keypoints_or_error(path: pathlib.Path) -> "Keypoints | InputError":
    """`read_keypoints` after the file checks, with a bad file's error returned, not raised."""
    try:
        check_file(path, KEYPOINT_SUFFIXES, "keypoint file", allow_dir=True)
        return read_keypoints(path)
    except InputError as error:
        return error
