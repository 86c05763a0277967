"""Write one simulated Box and Block Test trial as a user's recording would be: a video and a pose file.

    python -m strokevision_jax.export_trial --trial=P004_more_affected --out=recordings/

writes `<out>/<trial>.mp4` (H.264, 30 fps, the trial's frames, padded by one column where the
width is odd), `<out>/<trial>.json` (the
simulated pose estimator's COCO-17 keypoints in MMPose's video format, one entry per frame under
"instance_info", with the frame rate as "fps", as the `manual` import and `predict` read) and `<out>/<trial>_truth.json` (blocks moved, hand, the
start signal's frame, per-frame phases). Without --trial: the first test-split trial of the
`synthetic` patients. Files are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from fractions import Fraction

import numpy as np

from strokevision_jax.data import synthetic
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.data.synthetic import trials
from tfds_builder.strokevision import strokevision_dataset_builder as builder

SIMULATORS = {config.name: config.simulator for config in (builder.SYNTHETIC, builder.SYNTHETIC_SMALL)}


class ExportError(ValueError):
    """A bad --trial or --out."""


def find_trial(config: synthetic.SimulatorConfig, trial_id: str | None) -> trials.TrialSpec:
    names = synthetic.patient_ids(config)
    if trial_id is None:
        first = synthetic.split_patients(config)["test"][0]
        return trials.TrialSpec(names.index(first), 0)
    for spec in trials.trial_specs(config):
        if spec.trial_id == trial_id:
            return spec
    raise ExportError(f"--trial={trial_id!r} is not a trial of the simulator; trials are named "
                      f"<patient>_<hand>, e.g. {names[0]}_{trials.HANDS[0]} ({len(names)} patients, "
                      f"hands {', '.join(trials.HANDS)}).")


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs an even height and width: the last row / column is repeated (the
    keypoints' pixel coordinates stay valid; the 128 x 171 frames become 128 x 172)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _write_video(path: pathlib.Path, chunks, fps: int):
    """Encodes the chunks' frames into `path` as they pass through (yields each chunk)."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = None
        for chunk in chunks:
            frames = _even(chunk["video"])
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps))
                stream.height, stream.width = frames.shape[1:3]
                stream.pix_fmt, stream.options = "yuv420p", {"crf": "18"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            yield chunk
        for packet in stream.encode():
            container.mux(packet)


def _first_frames(chunks, count: int):
    for chunk in chunks:
        if count <= 0:
            return
        yield {key: value[:count] for key, value in chunk.items()}
        count -= len(chunk["video"])


def export_trial(config: synthetic.SimulatorConfig, spec: trials.TrialSpec, out: pathlib.Path,
                 max_seconds: float | None = None) -> dict:
    """Writes the trial's video, keypoints and truth into `out` (the first `max_seconds` only, if
    given: a quick look; the truth's count stays the whole trial's); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = spec.trial_id
    paths = {"video": out / f"{stem}.mp4", "keypoints": out / f"{stem}.json", "truth": out / f"{stem}_truth.json"}
    partial = {key: path.with_name(path.name + ".partial") for key, path in paths.items()}
    try:
        frames = []
        chunks = trials.render_trial(config, spec)
        if max_seconds is not None:
            chunks = _first_frames(chunks, int(round(max_seconds * config.fps)))
        for chunk in _write_video(partial["video"], chunks, config.fps):
            for keypoints, scores in zip(chunk["keypoints"], chunk["keypoint_scores"]):
                frames.append({"frame_id": len(frames), "instances": [{
                    "keypoints": np.round(keypoints, 2).tolist(), "keypoint_scores": np.round(scores, 3).tolist()}]})
        partial["keypoints"].write_text(json.dumps({"fps": config.fps, "instance_info": frames}))
        info = trials.trial_info(config, spec)
        truth = {key: info[key] for key in ("trial_id", "patient_id", "hand", "tested_hand", "blocks", "go_frame", "fps")}
        truth["severity"] = round(info["severity"], 3)
        truth["classes"] = list(CLASS_NAMES)
        truth["phase"] = info["phase"][:len(frames)].tolist()
        partial["truth"].write_text(json.dumps(truth) + "\n")
        for key, path in paths.items():
            partial[key].replace(path)
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.export_trial", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", default=None, help="<patient>_<more_affected|less_affected>")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--max_seconds", type=float, default=None,
                        help="only the first seconds (a quick look); the truth's count is the whole trial's")
    parser.add_argument("--dataset", default="synthetic", choices=sorted(SIMULATORS),
                        help="whose patients (synthetic_small: 64 x 86 frames)")
    args = parser.parse_args(argv)
    config = SIMULATORS[args.dataset]
    try:
        spec = find_trial(config, args.trial)
        if args.max_seconds is not None and args.max_seconds <= 0:
            raise ExportError(f"--max_seconds={args.max_seconds}: give a positive number of seconds.")
        paths = export_trial(config, spec, pathlib.Path(args.out), args.max_seconds)
    except (ExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    info = trials.trial_info(config, spec)
    frames = info["num_frames"] if args.max_seconds is None else min(info["num_frames"], round(args.max_seconds * config.fps))
    print(f"{spec.trial_id}: {frames} frames at {config.fps} fps, {info['blocks']} blocks "
          f"({info['hand']} hand, {info['tested_hand']}) -> {paths['video']}, {paths['keypoints']}, {paths['truth']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
