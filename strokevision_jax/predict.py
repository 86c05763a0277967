"""Predict the action timeline and the block count of a whole Box and Block Test recording.

    python -m strokevision_jax.predict --workdir=runs/r2plus1d_18_cpu \\
        --video=recordings/P009_more_affected.mp4 --keypoints=recordings/P009_more_affected.json

The run's clip window slides over the recording (every --stride frames, default a quarter clip)
at the frame rate and frame size of the run's dataset; the windows go through the run's jitted
evaluation step in batches while the video is decoded (memory stays bounded however long the
recording). Per-frame probabilities are decoded two ways: one argmax per frame, and the HSMM
of `segments.SegmentDecoder` fitted on the training patients' trials (the task's order and
durations). Writes into --out (default: predictions/<video stem>/), all or nothing:
    <stem>.json           the count (decoded, its interval from posterior samples, argmax), the
                          tested side, the segments of both decodings, the settings
    <stem>.segments.csv   the decoded segments: start, end (s), frames, label, confidence
    <stem>.frames.csv     per frame: time, the class probabilities, argmax and decoded labels
    <stem>.png            the probabilities over time with the segments (and the truth, if given)
Keypoints: the formats of the `manual` import (MMPose / Sapiens JSON, OpenPose folders, .npy /
.npz), one pose per video frame. Video models with a person-centred crop read them too.
--fuse_with=RUN adds a run of the other modality (same dataset and split): each window's
probabilities are the late fusion of both runs', with the weight `fuse` chooses on their
validation clips.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from strokevision_jax import segments, timeline, timeline_plots
from strokevision_jax.data import recordings, videos
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.data.synthetic import trials

FPS_TOLERANCE = 0.01  # relative


class PredictError(ValueError):
    """Bad input: the message names the file or argument and what to do."""


# ----------------------------------------------------------------------------- checks before the run

def _recipe_of(workdir: pathlib.Path):
    from strokevision_jax.loop import RUN_CONFIG, recipe_from_config

    config_path = workdir / RUN_CONFIG
    if not workdir.is_dir():
        raise PredictError(f"--workdir={workdir}: no such directory; give the --workdir of a training run.")
    if not config_path.is_file() or not (workdir / "checkpoints").is_dir():
        raise PredictError(f"--workdir={workdir} is not a training run (no {RUN_CONFIG} or checkpoints/); give "
                           "the --workdir of a finished run of python -m strokevision_jax.train.")
    try:
        return recipe_from_config(json.loads(config_path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise PredictError(f"{config_path} cannot be read ({type(error).__name__}: {error}); it is not a "
                           "run_config.json of this version: train the run again.") from None


def _input_error(error: recordings.InputError, flag: str) -> PredictError:
    return PredictError(f"{flag}: {error}")


def check_inputs(video: pathlib.Path, keypoints_path: pathlib.Path | None, needs_keypoints: bool,
                 model_name: str, clip_frames: int, fps: float):
    """(VideoInfo, Keypoints or None) after every check that needs no decoding."""
    if needs_keypoints and keypoints_path is None:
        raise PredictError(f"{model_name} reads keypoints (a skeleton or RGB + pose model, or a video model that "
                           "crops around the person): give --keypoints=FILE, the pose estimator's output for "
                           "this video.")
    info = videos.probe_video_or_error(video)
    if isinstance(info, recordings.InputError):
        raise _input_error(info, f"--video={video}")
    keypoints = None
    if keypoints_path is not None:
        keypoints = recordings.read_keypoints_or_error(keypoints_path)
        if isinstance(keypoints, recordings.InputError):
            raise _input_error(keypoints, f"--keypoints={keypoints_path}")
        # The container's frame count may miss a frame or two (edit lists): only a clear mismatch is
        # refused here; the decoded count is checked exactly once the video has streamed.
        if info.declared_frames and abs(keypoints.num_frames - info.declared_frames) > 2:
            raise PredictError(f"--keypoints={keypoints_path} has {keypoints.num_frames} frames of poses but "
                               f"--video={video} has {info.declared_frames} frames: the keypoints need one pose per "
                               "frame of this exact video; run the pose estimator on it.")
        if keypoints.fps is not None and info.fps and abs(keypoints.fps - info.fps) > FPS_TOLERANCE * info.fps:
            raise PredictError(f"--keypoints={keypoints_path} declares {keypoints.fps:g} fps but --video={video} "
                               f"plays at {info.fps:g} fps: the keypoints were made from another version of the "
                               "video; run the pose estimator on this exact file.")
    seconds = info.declared_frames / info.fps if info.declared_frames and info.fps else info.duration
    if seconds is not None and seconds * fps < clip_frames:
        raise PredictError(f"--video={video} lasts {seconds:.2f} s, shorter than one clip of the model "
                           f"({clip_frames} frames at {fps:g} fps = {clip_frames / fps:g} s); record longer.")
    return info, keypoints


# ----------------------------------------------------------------------------- the stream

class _Stream:
    """The recording as chunks of stored frames; counts what it decoded for the final checks."""

    def __init__(self, video, keypoints, keypoints_path, height: int, width: int, fps: float, keep_pixels: bool,
                 chunk: int = 64):
        self.video, self.keypoints, self.keypoints_path = video, keypoints, keypoints_path
        self.hw, self.fps, self.keep_pixels, self.chunk = (height, width), fps, keep_pixels, chunk
        self.source_frames = 0
        self.stored_keypoints: list[np.ndarray] = []  # (n, 17, 3) at the stored size, for the tested side

    def __iter__(self):
        indices, frames = [], []
        for index, frame, source_hw in videos.stream_frames(self.video, self.hw, self.fps, keep_pixels=self.keep_pixels):
            self.source_frames = max(self.source_frames, index + 1)
            indices.append(index)
            frames.append(frame)
            if len(indices) == self.chunk:
                yield self._chunk(indices, frames, source_hw)
                indices, frames = [], []
        if indices:
            yield self._chunk(indices, frames, source_hw)

    def _chunk(self, indices, frames, source_hw) -> dict:
        out = {}
        if self.keep_pixels:
            out["video"] = np.stack(frames)
        if self.keypoints is None:
            n = len(indices)
            out["keypoints"], out["keypoint_scores"] = np.zeros((n, 17, 2), np.float32), np.zeros((n, 17), np.float32)
            return out
        if indices[-1] >= self.keypoints.num_frames:
            raise PredictError(f"--keypoints={self.keypoints_path} has {self.keypoints.num_frames} frames of poses but "
                               f"--video={self.video} decodes to more: the keypoints need one pose per frame of this "
                               "exact video; run the pose estimator on it.")
        joints = recordings.scale_keypoints(self.keypoints.joints[indices], source_hw, self.hw)
        self.stored_keypoints.append(joints)
        out["keypoints"] = np.ascontiguousarray(joints[..., :2])
        out["keypoint_scores"] = np.clip(joints[..., 2], 0.0, 1.0)
        return out


# ----------------------------------------------------------------------------- outputs

def _truth(path: pathlib.Path | None, num_frames: int) -> dict | None:
    """export_trial's <trial>_truth.json: blocks, hand, per-frame phases (when they fit)."""
    if path is None:
        return None
    try:
        truth = json.loads(path.read_text())
        phase = np.asarray(truth["phase"], np.int64)
        blocks = int(truth["blocks"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PredictError(f"--truth={path} cannot be read ({type(error).__name__}: {error}); give a "
                           "<trial>_truth.json written by python -m strokevision_jax.export_trial.") from None
    if phase.size != num_frames:
        raise PredictError(f"--truth={path} has phases for {phase.size} frames, the recording {num_frames}: it "
                           "belongs to another recording (or to a --max_seconds export).")
    return {"blocks": blocks, "phase": phase, "hand": truth.get("hand")}


def write_outputs(directory: pathlib.Path, stem: str, line: timeline.Timeline, report: dict,
                  truth: dict | None) -> list[pathlib.Path]:
    paths = [directory / f"{stem}{suffix}" for suffix in (".json", ".segments.csv", ".frames.csv", ".png")]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    fields = ["start", "end", "start_frame", "end_frame", "label", "confidence"]
    with open(paths[1], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(line.segments())
    with open(paths[2], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "time"] + [f"p_{name}" for name in CLASS_NAMES] + ["argmax", "decoded"])
        for frame, (p, a, d) in enumerate(zip(line.probabilities, line.argmax, line.decoded)):
            writer.writerow([frame, f"{frame / line.fps:.3f}"] + [f"{v:.4f}" for v in p]
                            + [CLASS_NAMES[a], CLASS_NAMES[d]])
    timeline_plots.plot_timeline(paths[3], line, stem, truth=None if truth is None else truth["phase"],
                                 true_count=None if truth is None else truth["blocks"])
    return paths


@contextlib.contextmanager
def staged(out: pathlib.Path):
    """A scratch directory inside `out`; its files move into `out` only if the block succeeds."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=".predict-", dir=out))
    try:
        yield scratch
        for path in scratch.iterdir():
            path.replace(out / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_model(workdir: pathlib.Path, fuse_with: pathlib.Path | None, batch_size: int):
    """The model to slide over the recording: the run's, or its late fusion with `fuse_with`."""
    from strokevision_jax import inference

    if fuse_with is None:
        return inference.load_run(workdir, batch_size=batch_size)
    from strokevision_jax import fuse, fusion

    try:
        video_run, skeleton_run, choice = fuse.pair_weight(workdir, fuse_with)
    except fusion.FusionError as error:
        raise PredictError(f"--fuse_with={fuse_with}: {error}") from None
    return fuse.FusedModel(inference.load_run(video_run, batch_size=batch_size),
                           inference.load_run(skeleton_run, batch_size=batch_size), choice.weight)


def predict(args) -> dict:
    workdir, video = pathlib.Path(args.workdir), pathlib.Path(args.video)
    keypoints_path = pathlib.Path(args.keypoints) if args.keypoints else None
    fuse_with = pathlib.Path(args.fuse_with) if getattr(args, "fuse_with", None) else None
    recipes = [_recipe_of(workdir)] + ([_recipe_of(fuse_with)] if fuse_with is not None else [])
    recipe = recipes[0]
    from strokevision_jax import inference

    height, width, fps, clip_frames = inference.stored_format(recipe.dataset)
    needs = [r for r in recipes if inference.needs_keypoints(r)]
    _, keypoints = check_inputs(video, keypoints_path, bool(needs), (needs or recipes)[0].model, clip_frames, fps)
    if args.stride is not None and args.stride < 1:
        raise PredictError(f"--stride={args.stride}: give a number of frames >= 1.")
    stride = args.stride or max(1, clip_frames // 4)

    began = time.perf_counter()
    model = load_model(workdir, fuse_with, args.batch_size)
    loaded = time.perf_counter() - began
    stream = _Stream(video, keypoints, keypoints_path, height, width, fps,
                     keep_pixels=any(r.video is not None for r in recipes))
    info = videos.probe_video(video)
    expected = int(round(info.declared_frames / info.fps * fps)) if info.declared_frames and info.fps else None
    from tqdm import tqdm

    with tqdm(total=expected, unit="frame", desc=video.name, disable=args.quiet) as bar:
        began = time.perf_counter()
        try:
            starts, probabilities, num_frames = timeline.window_probabilities(model, stream, stride, bar.update)
        except recordings.InputError as error:
            raise _input_error(error, f"--video={video}") from None
        seconds = time.perf_counter() - began
    if keypoints is not None and stream.source_frames != keypoints.num_frames:
        raise PredictError(f"--keypoints={keypoints_path} has {keypoints.num_frames} frames of poses but "
                           f"--video={video} decodes to {stream.source_frames} frames: the keypoints need one pose "
                           "per frame of this exact video; run the pose estimator on it.")
    if num_frames < clip_frames:
        raise PredictError(f"--video={video} decodes to {num_frames} frames at {fps:g} fps, shorter than one clip "
                           f"({clip_frames} frames); record longer.")
    truth = _truth(pathlib.Path(args.truth) if args.truth else None, num_frames)
    task = timeline.trial_model(recipe.dataset)
    per_frame = timeline.frame_probabilities(starts, probabilities, num_frames, clip_frames)
    line = timeline.decode(per_frame, task.decoder, fps, evidence_frames=args.evidence_frames,
                           class_shares=task.class_shares, adaptation=args.adaptation)
    side = None
    if stream.stored_keypoints:
        joints = np.concatenate(stream.stored_keypoints)
        side = timeline.tested_side(joints[..., :2], joints[..., 2])
    report = {
        "recording": str(video), "keypoints": None if keypoints_path is None else str(keypoints_path),
        "run": str(workdir.absolute()), "model": model.name, "preset": recipe.preset,
        "weights": model.checkpoint_id, "fused_with": None if fuse_with is None else str(fuse_with.absolute()),
        **line.summary(),
        "hand": {"side": side, "affected": args.hand or (truth or {}).get("hand")},
        "segments": line.segments(), "argmax_segments": line.segments(line.argmax),
        "settings": {"stride": stride, "clip_frames": clip_frames, "windows": int(len(starts)),
                     "evidence_frames": args.evidence_frames, "trial_seconds": trials.TRIAL_SECONDS,
                     "adaptation": args.adaptation, "decoder": task.note,
                     "decoder_parameters": task.decoder.to_json(),
                     "class_shares": [round(float(v), 4) for v in task.class_shares]},
        "timing": {"load_seconds": round(loaded, 2), "predict_seconds": round(seconds, 2),
                   "recording_seconds": round(num_frames / fps, 2),
                   "real_time_factor": round(num_frames / fps / seconds, 2)},
    }
    if truth is not None:
        report["truth"] = {"count": truth["blocks"],
                           "frame_accuracy": round(100 * float((line.decoded == truth["phase"]).mean()), 2),
                           "frame_accuracy_argmax": round(100 * float((line.argmax == truth["phase"]).mean()), 2),
                           "edit": round(segments.edit_score(line.decoded, truth["phase"]), 2),
                           "edit_argmax": round(segments.edit_score(line.argmax, truth["phase"]), 2)}
    out = pathlib.Path(args.out) if args.out else pathlib.Path("predictions") / video.stem
    with staged(out) as scratch:
        write_outputs(scratch, video.stem, line, report, truth)
    report["out"] = str(out)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run (python -m strokevision_jax.train)")
    parser.add_argument("--video", required=True, help="the recording (.mp4, .avi, .mov, .mkv, .webm, .m4v)")
    parser.add_argument("--keypoints", default=None, help="the pose estimator's output for the video")
    parser.add_argument("--fuse_with", default=None,
                        help="a second run of the other modality (same dataset and split): late fusion, the "
                             "weight chosen on the two runs' validation clips")
    parser.add_argument("--out", default=None, help="output directory (default: predictions/<video stem>)")
    parser.add_argument("--stride", type=int, default=None, help="frames between windows (default: a quarter clip)")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per call of the model")
    parser.add_argument("--evidence_frames", type=float, default=timeline.DEFAULT_EVIDENCE_FRAMES,
                        help="frames per independent observation in the decoder's scores")
    parser.add_argument("--adaptation", type=float, default=timeline.DEFAULT_ADAPTATION,
                        help="strength (0-1) of the adaptation of the recording's class balance to a trial's")
    parser.add_argument("--hand", default=None, choices=trials.HANDS, help="which hand was tested (for the report)")
    parser.add_argument("--truth", default=None, help="export_trial's <trial>_truth.json: adds the true segments")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from strokevision_jax.errors import TrainingError

    try:
        report = predict(args)
    except (PredictError, TrainingError) as error:  # TrainingError: a run without a usable checkpoint
        print(f"error: {error}", file=sys.stderr)
        return 2
    low, high = report["count_interval"]
    print(f"{report['recording']}: {report['count']} blocks [{low}, {high}] ({report['count_interval_level']:.0%} "
          f"interval; argmax per frame: {report['count_argmax']}), tested side {report['hand']['side']}; "
          f"{len(report['segments'])} segments; {report['timing']['recording_seconds']:.1f} s of video in "
          f"{report['timing']['predict_seconds']:.1f} s ({report['timing']['real_time_factor']:.1f}x real time) "
          f"-> {report['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
