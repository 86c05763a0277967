"""Real recordings, the video side: probing and decoding windows of a file into stored frames.

Video (PyAV, which bundles FFmpeg): a file is decoded once, front to back, in presentation order;
frame i is the i-th decoded frame and its time is (pts_i - pts_0) * time_base seconds. A clip is
a window [start, end) of a file (the whole file when no window is given: [0, t_last + one frame
interval)). The window becomes `num_frames` stored frames at the times
    tau_k = start + (k + 1/2) * (end - start) / num_frames,    k = 0 .. num_frames - 1,
each the source frame on screen at tau_k (the last frame with time <= tau_k). A window of exactly
num_frames / fps seconds (one second for the defaults) is thus a plain frame-rate conversion to
`fps`; other lengths are stretched to num_frames frames. Each kept frame is resized to
(height, width) by FFmpeg's swscale (bilinear, which widens its filter when shrinking) without
cropping or padding, as torchvision's video presets resize to 128 x 171. Rotation metadata (phone
recordings) is applied first, counter-clockwise as FFmpeg's autorotate does, so frames are upright
as players show them (and as OpenCV-based pose estimators read them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from strokevision_jax.data.recordings import (
    VIDEO_SUFFIXES,
    ImportConfig,
    InputError,
    check_file,
)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    declared_frames: int  # 0 when the container does not say (mkv, webm)
    duration: float | None  # seconds, of the container (all streams)


def _av():
    try:
        import av
    except ImportError:
        raise InputError("PyAV is not installed", "pip install av (it bundles FFmpeg)") from None
    return av


def _open(path: pathlib.Path):
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"cannot open video {path.name} ({error})",
                         "the file is truncated, damaged or not a video; re-export or re-copy it") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path.name} has no video stream", "point `video` at the recording itself")
    return container


def probe_video(path: pathlib.Path) -> VideoInfo:
    """Opens the container and reads its video stream's header; raises InputError."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        rate = _frame_rate(stream, 0.0)
        if stream.width <= 0 or stream.height <= 0:
            raise InputError(f"{path.name}: video stream of size {stream.width} x {stream.height}",
                             "re-export the video")
        duration = container.duration / 1e6 if container.duration else None
        return VideoInfo(stream.width, stream.height, rate, int(stream.frames or 0), duration)


@dataclasses.dataclass
class WindowFrames:
    """One clip cut from a decoded file."""

    frames: np.ndarray  # (T, H, W, 3) uint8, resized
    source_indices: np.ndarray  # (T,) int32: decoded frame index of each stored frame
    start: float
    end: float


@dataclasses.dataclass
class DecodedVideo:
    num_frames: int  # decoded frames of the whole file
    source_hw: tuple[int, int]
    duration: float  # t_last + one frame interval
    windows: list[WindowFrames | InputError]  # an error for a window that ends after the video


def sample_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """Centres of num_frames equal segments of [start, end)."""
    return start + (np.arange(num_frames) + 0.5) * (end - start) / num_frames


def frame_on_screen(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame displayed at each time: the last frame starting at or before it (0 before the first)."""
    return np.maximum(np.searchsorted(frame_times, times, side="right") - 1, 0)


def decode_windows(path: pathlib.Path, windows: Sequence[tuple[float, float] | None],
                   config: ImportConfig) -> DecodedVideo:
    """Decodes `path` once and cuts every window (None = the whole file); raises InputError.

    Frames are converted (resized, to RGB) only where a window keeps them; a None window keeps
    all, so give long recordings windows.
    """
    out_hw = (config.height, config.width)
    explicit = [w for w in windows if w is not None]
    wanted = np.sort(np.concatenate([sample_times(s, e, config.num_frames) for s, e in explicit])) \
        if explicit else np.zeros(0)
    keep_all = any(w is None for w in windows)
    kept: dict[int, np.ndarray] = {}
    times: list[float] = []
    previous, cursor = None, 0

    def convert(frame) -> np.ndarray:
        return display_rgb(frame, out_hw)

    with open_video(path) as container:
        stream = container.streams.video[0]
        declared, rate = int(stream.frames or 0), _frame_rate(stream, config.fps)
        # Containers that do not count frames (mkv, webm) still give a duration; only trusted
        # when the video is the only stream (an audio track may be longer).
        declared_seconds = container.duration / 1e6 if container.duration and len(container.streams) == 1 else None
        source_hw = (stream.height, stream.width)
        for index, (t, frame) in enumerate(timed_frames(container, path)):
            times.append(t)
            # Wanted times before this frame's start are shown by the previous frame.
            while cursor < len(wanted) and wanted[cursor] < t:
                holder = index - 1 if previous is not None else index
                if holder not in kept:
                    kept[holder] = convert(previous if previous is not None else frame)
                cursor += 1
            if keep_all:
                kept[index] = convert(frame)
            previous = frame
            source_hw = display_hw(frame)
    if not times:
        raise InputError(f"{path.name}: no frame could be decoded", "the file is truncated or damaged; re-export it")
    if declared and len(times) < declared - 2:  # slack: edit lists may hide a frame or two
        raise InputError(f"{path.name}: the container declares {declared} frames but only {len(times)} decode",
                         "the file is truncated or damaged; re-export or re-copy it")
    if cursor < len(wanted):  # times at or after the last frame's start
        kept.setdefault(len(times) - 1, convert(previous))
    frame_times = np.asarray(times)
    interval = float(np.median(np.diff(frame_times))) if len(times) > 1 else 1.0 / rate
    duration = float(frame_times[-1]) + interval
    if declared_seconds is not None and duration < declared_seconds - 2 * interval - 0.05:
        raise InputError(f"{path.name}: the container declares {declared_seconds:.3f} s but only "
                         f"{duration:.3f} s ({len(times)} frames) decode",
                         "the file is truncated or damaged; re-export or re-copy it")
    cut = []
    for window in windows:
        start, end = (0.0, duration) if window is None else window
        if end > duration + 0.5 * interval + 1e-3:  # this window only; the file's others are fine
            cut.append(InputError(
                f"{path.name}: the window {start:g}-{end:g} s ends after the video ({duration:.3f} s, "
                f"{len(times)} frames)", "fix start/end, or re-copy the video if it is truncated"))
            continue
        indices = frame_on_screen(frame_times, sample_times(start, end, config.num_frames))
        frames = np.stack([kept[i] for i in indices])
        cut.append(WindowFrames(frames, indices.astype(np.int32), start, end))
    return DecodedVideo(len(times), source_hw, duration, cut)


def stream_frames(path: pathlib.Path, out_hw: tuple[int, int], fps: float, *,
                  keep_pixels: bool = True) -> Iterator[tuple[int, np.ndarray | None, tuple[int, int]]]:
    """The whole file resampled to `fps`, one stored frame at a time (bounded memory): stored
    frame k shows the source frame on screen at (k + 1/2) / fps seconds, as `decode_windows` cuts
    a window starting at 0. Yields (source frame index, (H, W, 3) uint8 RGB at out_hw or None
    without keep_pixels, the source frame's (height, width) as players show it); raises
    InputError for a damaged file (at the end for a truncated one)."""
    k, previous, converted, times = 0, None, None, []

    def pixels(index, frame):
        nonlocal converted
        if not keep_pixels:
            return None
        if converted is None or converted[0] != index:
            converted = (index, display_rgb(frame, out_hw))
        return converted[1]

    with open_video(path) as container:
        declared = int(container.streams.video[0].frames or 0)
        for index, (t, frame) in enumerate(timed_frames(container, path)):
            while previous is not None and (k + 0.5) / fps < t:
                yield previous[0], pixels(*previous), display_hw(previous[1])
                k += 1
            previous = (index, frame)
            times.append(t)
        if previous is None:
            raise InputError(f"{path.name}: no frame could be decoded", "the file is truncated or damaged; re-export it")
        interval = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
        while (k + 0.5) / fps < times[-1] + interval:
            yield previous[0], pixels(*previous), display_hw(previous[1])
            k += 1
    if declared and len(times) < declared - 2:  # slack as in decode_windows
        raise InputError(f"{path.name}: the container declares {declared} frames but only {len(times)} decode",
                         "the file is truncated or damaged; re-export or re-copy it")


def _quarter_turns(frame) -> int:
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    if rotation % 90:
        raise InputError(f"the video's rotation metadata says {rotation} degrees",
                         "only multiples of 90 are applied; re-encode the video upright")
    return (rotation // 90) % 4


def display_hw(frame) -> tuple[int, int]:
    """(height, width) of the frame as players show it (after its rotation metadata)."""
    return (frame.width, frame.height) if _quarter_turns(frame) % 2 else (frame.height, frame.width)


def display_rgb(frame, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB as players show it: the rotation metadata (phones) applied, counter-
    clockwise as FFmpeg's autorotate does; resized to out_hw (display orientation) if given."""
    turns = _quarter_turns(frame)
    size = {}
    if out_hw is not None:
        height, width = out_hw[::-1] if turns % 2 else out_hw
        size = dict(width=width, height=height, interpolation="BILINEAR")
    rgb = frame.to_ndarray(format="rgb24", **size)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


@contextlib.contextmanager
def open_video(path: pathlib.Path):
    """An open PyAV container with at least one video stream; raises InputError."""
    container = _open(path)
    try:
        yield container
    finally:
        container.close()


def _frame_rate(stream, default: float) -> float:
    return float(stream.average_rate or stream.base_rate or default)


def timed_frames(container, path: pathlib.Path) -> Iterator[tuple[float, "object"]]:
    """(seconds since the first frame, av.VideoFrame) of every frame of the first video stream, in
    presentation order; raises InputError for a decoding error or timestamps that go back."""
    av = _av()
    stream = container.streams.video[0]
    rate = _frame_rate(stream, 30.0)
    first_pts, last_time, count = None, -math.inf, 0
    try:
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                t = count / rate
            else:
                first_pts = frame.pts if first_pts is None else first_pts
                t = float((frame.pts - first_pts) * frame.time_base)
            if t < last_time:
                raise InputError(f"{path.name}: frame {count} has an earlier timestamp than frame {count - 1}",
                                 "re-encode the video, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
            last_time = t
            count += 1
            yield t, frame
    except av.error.FFmpegError as error:
        raise InputError(f"decoding {path.name} failed after {count} frames ({error})",
                         "the file is truncated or damaged; re-export or re-copy it") from None


def probe_video_or_error(path: pathlib.Path) -> "VideoInfo | InputError":
    """`probe_video` after the file checks, with a bad file's error returned, not raised (so
    that a validation pass can collect every problem)."""
    try:
        check_file(path, VIDEO_SUFFIXES, "video")
        return probe_video(path)
    except InputError as error:
        return error


