"""Cut long recordings into one-second clips and write the `manual` dataset layout.

    python -m strokevision_jax.data.cut_clips --segments=sessions/segments.csv --out=my_recordings
    python -m strokevision_jax.train --model=r2plus1d --dataset=manual --manual_dir=my_recordings

segments.csv (paths relative to its own folder) has one row per labelled segment of a session:
    video, start, end (seconds), label, patient_id (or patient), keypoints[, split]
where `keypoints` is the pose estimator's output for the whole session video (any format the
builder reads). A segment of length d becomes n = max(1, round(d / L)) windows of L =
--clip_seconds (default: the stored clip, 30 frames / 30 fps = 1 s), spread evenly from its start
to its end (one window: centred on the segment); segments shorter than --min_seconds are left
out and listed. Each window's frames (those starting in [s, s + L)) are re-encoded to
<out>/videos/<clip_id>.mp4 (H.264, the source frame rate, the source size unless --height, odd
sizes cropped by one pixel) and their keypoints, already reduced to the patient, are saved as
<out>/keypoints/<clip_id>.npy (frames, 17, 3); <out>/labels.csv lists the clips (clip_id =
<patient>_<video stem>_<nnnn>) with the source video and window for reference.

Everything is written to <out>/.cutting first and moved into place when every video succeeded.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import re
import shutil
import sys
from fractions import Fraction

import numpy as np

from strokevision_jax.data import recordings as rec
from strokevision_jax.data import videos as video_io

SEGMENT_COLUMNS = ("video", "start", "end", "label", "keypoints")
OUTPUT_COLUMNS = ("clip_id", "patient_id", "label", "video", "keypoints", "split",
                  "source_video", "source_start", "source_end")


@dataclasses.dataclass(frozen=True)
class Clip:
    clip_id: str
    patient_id: str
    label: str
    split: str
    video: pathlib.Path
    keypoints: str  # the segments file's cell (cache key)
    start: float
    end: float
    line: int


def clip_windows(start: float, end: float, clip_seconds: float, min_seconds: float,
                 video_seconds: float | None = None) -> list[tuple[float, float]]:
    """Windows of clip_seconds covering [start, end) (see the module docstring); [] if too short.

    A single window centred on a short segment is kept inside [0, video_seconds].
    """
    length = end - start
    if length < min_seconds:
        return []
    count = max(1, round(length / clip_seconds))
    if count == 1:
        first = start + (length - clip_seconds) / 2
        if video_seconds is not None:
            first = min(first, video_seconds - clip_seconds)
        first = max(0.0, first)
        return [(first, first + clip_seconds)]
    step = (length - clip_seconds) / (count - 1)
    return [(start + i * step, start + i * step + clip_seconds) for i in range(count)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _check_segment(cells: dict, base: pathlib.Path, videos: dict, keypoints: dict) -> tuple[tuple | None, list]:
    """((patient, window), []) for a good row, else (None, errors)."""
    errors = []
    patient = cells.get("patient_id") or cells.get("patient", "")
    if not patient:
        errors.append(rec.InputError("empty patient_id", "give the patient's id (column patient_id or patient)"))
    window = None
    try:
        rec.parse_label(cells["label"])
        window = rec.parse_window(cells["start"], cells["end"])
        if window is None:
            raise rec.InputError("empty start and end", "give the segment's start and end in seconds")
    except rec.InputError as error:
        errors.append(error)
    if cells.get("split", "") not in ("", "train", "validation", "test"):
        errors.append(rec.InputError(f"unknown split {cells['split']!r}", "use train, validation, test or leave it empty"))
    readers = (("video", videos, video_io.probe_video_or_error), ("keypoints", keypoints, rec.read_keypoints_or_error))
    for column, cache, read in readers:
        cell = cells[column]
        if cell not in cache:
            cache[cell] = read(base / cell)
        if isinstance(cache[cell], rec.InputError):
            errors.append(cache[cell])
    info = videos[cells["video"]]
    if window and isinstance(info, video_io.VideoInfo) and info.duration and window[1] > info.duration + 0.05:
        errors.append(rec.InputError(f"the segment ends at {window[1]:g} s, after the video ({info.duration:.2f} s)",
                                     "fix the end time"))
    return (None if errors else (patient, window)), errors


def plan_clips(segments: pathlib.Path, clip_seconds: float, min_seconds: float):
    """(clips, keypoints by cell, short segments, problems) from the segments file."""
    rows, problems = rec.read_csv_rows(segments, SEGMENT_COLUMNS)
    base, name = segments.parent, segments.name
    keypoints: dict[str, rec.Keypoints | rec.InputError] = {}
    videos: dict[str, video_io.VideoInfo | rec.InputError] = {}
    windows_of_video: dict[pathlib.Path, list] = {}
    short = []
    for line, cells in rows:
        good, errors = _check_segment(cells, base, videos, keypoints)
        problems += [rec.problem_from(error, name, line) for error in errors]
        if good is None:
            continue
        (patient, (start, end)), info = good, videos[cells["video"]]
        spans = clip_windows(start, end, clip_seconds, min_seconds, info.duration)
        if not spans:
            short.append(f"{name} line {line}: {end - start:.2f} s < --min_seconds={min_seconds:g}")
        windows_of_video.setdefault(base / cells["video"], []).extend(
            (s, e, patient, cells["label"], cells.get("split", ""), cells["keypoints"], line) for s, e in spans)
    clips, seen = [], {}
    for video, spans in windows_of_video.items():
        for index, (s, e, patient, label, split, cell, line) in enumerate(sorted(spans)):
            clip_id = f"{_safe(patient)}_{_safe(video.stem)}_{index:04d}"
            if clip_id in seen and seen[clip_id] != video:
                problems.append(rec.Problem(name, line, f"clip id {clip_id} twice: two videos named {video.stem} "
                                            f"for patient {patient}", "rename one of the videos"))
            seen[clip_id] = video
            clips.append(Clip(clip_id, patient, label, split, video, cell, s, e, line))
    return clips, keypoints, short, problems




class _ClipWriter:
    """One output mp4 (H.264); `frame_indices`: the source frame of each frame written."""

    def __init__(self, path: pathlib.Path, rate: Fraction, out_hw: tuple[int, int]):
        import av

        self.closed = False
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.height, self.stream.width = out_hw
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "18", "preset": "veryfast"}
        self.frame_indices: list[int] = []
        self._av = av

    def write(self, rgb: np.ndarray, source_index: int) -> None:
        height, width = self.stream.height, self.stream.width
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
        frame.pts = len(self.frame_indices)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frame_indices.append(source_index)

    def close(self) -> None:
        if self.closed:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.closed = True


def _even(value: int) -> int:
    return max(2, value - value % 2)


def cut_video(video: pathlib.Path, clips: list[Clip], keypoints: dict[str, rec.Keypoints], out: pathlib.Path,
              height: int | None, segments_name: str) -> list[rec.Problem]:
    """Writes every clip of one session video into out/videos and out/keypoints; problems if any."""
    waiting = sorted(clips, key=lambda c: c.start)
    active: list[Clip] = []
    writers: dict[str, _ClipWriter] = {}
    display_hw = resized_hw = None
    count = 0
    try:
        with video_io.open_video(video) as container:
            rate = container.streams.video[0].average_rate or Fraction(30)
            for index, (t, frame) in enumerate(video_io.timed_frames(container, video)):
                count += 1
                while waiting and waiting[0].start <= t:
                    active.append(waiting.pop(0))
                for clip in [c for c in active if t >= c.end]:
                    active.remove(clip)
                    if clip.clip_id in writers:
                        writers[clip.clip_id].close()
                if not active:
                    continue
                if display_hw is None:
                    display_hw = video_io.display_hw(frame)
                    resized_hw = display_hw if height is None else (
                        height, max(2, round(display_hw[1] * height / display_hw[0])))
                rgb = video_io.display_rgb(frame, None if height is None else resized_hw)
                for clip in active:
                    if clip.clip_id not in writers:
                        writers[clip.clip_id] = _ClipWriter(out / "videos" / f"{clip.clip_id}.mp4", rate,
                                                            (_even(resized_hw[0]), _even(resized_hw[1])))
                    writers[clip.clip_id].write(rgb, index)
    except rec.InputError as error:
        return [rec.problem_from(error, segments_name, clip.line) for clip in clips]
    finally:
        for writer in writers.values():
            writer.close()
    problems = []
    for clip in clips:
        poses = keypoints[clip.keypoints]
        if poses.num_frames != count:
            problems.append(rec.Problem(segments_name, clip.line, f"{clip.keypoints} has {poses.num_frames} "
                                        f"frames of keypoints but {video.name} decodes to {count} frames",
                                        "keypoints need one pose per frame of the session video"))
            continue
        if clip.clip_id not in writers:
            problems.append(rec.Problem(segments_name, clip.line, f"{video.name}: no frame in {clip.start:g}-"
                                        f"{clip.end:g} s", "the segment lies past the end of the video"))
            continue
        joints = poses.joints[writers[clip.clip_id].frame_indices]
        if height is not None:  # cropping to even sizes moves no pixel, resizing does
            joints = rec.scale_keypoints(joints, display_hw, resized_hw)
        np.save(out / "keypoints" / f"{clip.clip_id}.npy", joints.astype(np.float32))
    return problems


def write_labels(path: pathlib.Path, clips: list[Clip], segments_dir: pathlib.Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        for clip in clips:
            writer.writerow({
                "clip_id": clip.clip_id, "patient_id": clip.patient_id, "label": clip.label,
                "video": f"videos/{clip.clip_id}.mp4", "keypoints": f"keypoints/{clip.clip_id}.npy",
                "split": clip.split, "source_video": os.path.relpath(clip.video, segments_dir),
                "source_start": f"{clip.start:.3f}", "source_end": f"{clip.end:.3f}",
            })


def cut_clips(segments: pathlib.Path, out: pathlib.Path, *, clip_seconds: float = 1.0,
              min_seconds: float = 0.5, height: int | None = None, overwrite: bool = False, log=print) -> list[Clip]:
    """The command's work; raises RecordingsError listing every problem (nothing is then written)."""
    segments, out = pathlib.Path(segments), pathlib.Path(out)
    if (out / "labels.csv").exists() and not overwrite:
        raise rec.RecordingsError(f"cut_clips: {out} already holds a dataset:", [rec.Problem(
            str(out / "labels.csv"), None, "exists", "choose another --out, or pass --overwrite to replace it")])
    clips, keypoints, short, problems = plan_clips(segments, clip_seconds, min_seconds)
    if problems:
        raise rec.RecordingsError(f"cut_clips: {len(problems)} problem(s) in {segments}; nothing was written:",
                                  problems)
    staging = out / ".cutting"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "videos").mkdir(parents=True)
    (staging / "keypoints").mkdir()
    try:
        by_video: dict[pathlib.Path, list[Clip]] = {}
        for clip in clips:
            by_video.setdefault(clip.video, []).append(clip)
        for video, video_clips in by_video.items():
            problems += cut_video(video, video_clips, keypoints, staging, height, segments.name)
            log(f"{video.name}: {len(video_clips)} clips")
        if problems:
            raise rec.RecordingsError(f"cut_clips: {len(problems)} problem(s); nothing was written:", problems)
        write_labels(staging / "labels.csv", clips, segments.parent)
        for name in ("videos", "keypoints", "labels.csv"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {len(clips)} clips of {clip_seconds:g} s from {len(by_video)} videos to {out} (labels.csv)")
    if short:
        log(f"left out {len(short)} segment(s) shorter than --min_seconds:\n  " + "\n  ".join(short))
    return clips


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.data.cut_clips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", required=True, help="CSV of labelled segments (see above)")
    parser.add_argument("--out", required=True, help="the manual_dir to write")
    parser.add_argument("--clip_seconds", type=float, default=rec.ImportConfig().clip_seconds)
    parser.add_argument("--min_seconds", type=float, default=None, help="default: half of --clip_seconds")
    parser.add_argument("--height", type=int, default=None, help="resize clips to this height (default: keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace the clips of an existing --out")
    args = parser.parse_args(argv)
    if args.clip_seconds <= 0 or (args.height is not None and args.height < 2):
        parser.error("--clip_seconds must be positive and --height at least 2")
    min_seconds = args.clip_seconds / 2 if args.min_seconds is None else args.min_seconds
    try:
        cut_clips(pathlib.Path(args.segments), pathlib.Path(args.out), clip_seconds=args.clip_seconds,
                  min_seconds=min_seconds, height=args.height, overwrite=args.overwrite)
    except rec.RecordingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
