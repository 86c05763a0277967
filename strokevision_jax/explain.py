"""Where a trained model looked: Grad-CAM maps for video models, per-joint and per-frame
integrated gradients for skeleton models, drawn on the clip.

    python -m strokevision_jax.explain --workdir=runs/r2plus1d_18_cpu                # first test clip
    python -m strokevision_jax.explain --workdir=runs/motionbert_cpu --clip=P004_C0003
    python -m strokevision_jax.explain --workdir=runs/r2plus1d_18_cpu --video=trial.mp4 \\
        --keypoints=trial.json --start=12.5

The clip is one of the run's dataset (--clip=ID; by default the first clip of the run's test
split) or the window of --video (and --keypoints) that starts at --start seconds, read at the
frame rate and size of the run's dataset as `predict` reads recordings. The model sees it
through the run's evaluation transform, with the weights the run evaluates (the moving average
where the recipe keeps one), one view (the mirrored view of the evaluation is not averaged in).

Writes into --out (default: explanations/<clip id or video stem>/), all or nothing:
    <stem>.json        the probabilities, the method and its settings, and per class the
                       importance of each frame (and, for skeletons, of each joint)
    <stem>.npz         the maps themselves: (classes, T, H, W) or (classes, T, joints)
    <stem>.png         the clip and the maps of the predicted class and of both transports
    <stem>_transport.png  transport with vs without the block, side by side (the hardest pair)
    <stem>.gif         the clip with the predicted class's map, animated
See `strokevision_jax.attribution` for the methods.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np

from strokevision_jax import attribution
from strokevision_jax.data import keypoints as kp
from strokevision_jax.data.classes import CLASS_NAMES, TRANSPORT_PAIR
from strokevision_jax.data.pipeline import sample_frame_indices
from strokevision_jax.data.resample import crop_and_resize


class ExplainError(ValueError):
    """Bad input: the message names the flag or file and what to do."""


# ----------------------------------------------------------------------------- the clip

def find_clip(model, clip_id: str | None, data_dir) -> tuple[str, dict]:
    """(clip id, record) of the run's dataset: `clip_id`, or the first clip of the run's test split."""
    from strokevision_jax import dataset as dataset_lib
    from strokevision_jax import folds as folds_lib
    from strokevision_jax.loop import RUN_CONFIG, split_from_config

    name = model.recipe.dataset
    sources = {split: dataset_lib.load_source(split, name, data_dir) for split in folds_lib.STORED_SPLITS}
    if clip_id is None:
        config_path = model.workdir / RUN_CONFIG
        split = split_from_config(json.loads(config_path.read_text())) if config_path.is_file() else None
        stored, index = split.refs["test"][0] if split is not None else ("test", 0)
        record = sources[stored][int(index)]
        return _text(record["clip_id"]), record
    for split in ("test", "validation", "train"):  # where a clip to explain most likely is
        source = sources[split]
        for index in range(len(source)):
            record = source[index]
            if _text(record["clip_id"]) == clip_id:
                return clip_id, record
    first = [_text(sources["test"][i]["clip_id"]) for i in range(min(3, len(sources["test"])))]
    raise ExplainError(f"--clip={clip_id}: no clip of that id in the dataset {name!r} of this run (its test "
                       f"split starts {', '.join(first)}); clip ids are <patient>_C<number>, as the dataset's clip_id field.")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def clip_from_video(model, video: pathlib.Path, keypoints: pathlib.Path | None, start: float) -> dict:
    """The record of the window of `video` that starts at `start` seconds (stored size and rate)."""
    from strokevision_jax import predict
    from strokevision_jax.inference import stored_format

    height, width, fps, clip_frames = stored_format(model.recipe.dataset)
    _, poses = predict.check_inputs(video, keypoints, model.needs_keypoints, model.name, clip_frames, fps)
    if start < 0:
        raise ExplainError(f"--start={start}: give a time in seconds from the beginning of the video.")
    first = int(round(start * fps))
    stream = predict._Stream(video, poses, keypoints, height, width, fps, keep_pixels=True)
    parts: dict[str, list] = {}
    have = 0
    for chunk in stream:
        for key, value in chunk.items():
            parts.setdefault(key, []).append(value)
        have += len(chunk["video"])
        if have >= first + clip_frames:
            break
    if have < first + clip_frames:
        raise ExplainError(f"--start={start}: the clip ({clip_frames} frames at {fps:g} fps) would end after the "
                           f"last frame of --video={video} ({have} frames); choose an earlier start.")
    record = {key: np.concatenate(value)[first:first + clip_frames] for key, value in parts.items()}
    return record


# ----------------------------------------------------------------------------- the maps

def default_stage(model, video_shape) -> str:
    """The deepest stage whose output still has two or more time steps (Grad-CAM's usual choice is
    the last stage; when that one has pooled time away, its map could not say when)."""
    from flax import nnx

    names = attribution.stage_names(model)
    graphdef, state = nnx.split(model)
    for stage in reversed(names):
        shape, tokens = attribution.stage_output_shape(graphdef, (state,), stage, video_shape)
        if (shape[1] if tokens is None else tokens[0]) >= 2:
            return stage
    return names[-1]


def explain_record(model, record: dict, *, stage: str | None = None, steps: int = 32) -> dict:
    """The model's view of the clip and its maps: a dict for the writers below."""
    from flax import nnx

    from strokevision_jax.steps import input_adapter

    if not isinstance(model.input_key, str):
        raise ExplainError(f"{model.name} reads video and keypoints together; explain covers the video models "
                           "(Grad-CAM) and the skeleton models (integrated gradients) one modality at a time.")
    transform = model.transform()
    item = transform(dict(record, label=0), None)
    weights = model.state.eval_weights()
    network = nnx.merge(model.graphdef, *weights)
    started = time.time()
    if model.input_key == "video":
        video = jnp.asarray(item["video"])[None]
        stage = stage or default_stage(network, video.shape)
        if stage not in attribution.stage_names(network):
            raise ExplainError(f"--layer={stage}: {model.name} has the stages "
                               f"{', '.join(attribution.stage_names(network))}.")
        out = attribution.grad_cam(model.graphdef, weights, video, stage)
        stored, indices, box, _ = transform.sample(record, None)
        frames = np.clip(crop_and_resize(stored[indices], box, transform.config.crop,
                                         transform.config.resize_method), 0, 255).astype(np.uint8)
        result = {"kind": "video", "method": "grad-cam", "layer": stage, "frames": frames,
                  "frame_indices": indices, "maps": np.asarray(out["maps"][:, 0]),
                  "coarse_shape": list(out["coarse"].shape[2:])}
    else:
        config = model.recipe.skeleton
        keypoints = jnp.asarray(item["keypoints"])[None]
        out = attribution.integrated_gradients(model.graphdef, weights, keypoints,
                                               input_adapter(model.recipe, train=False), steps=steps)
        count = np.shape(record["keypoints"])[0]
        indices = sample_frame_indices(count, config.num_frames, None, sampling=config.sampling,
                                       frame_stride=config.frame_stride)
        joints = np.concatenate([np.asarray(record["keypoints"], np.float32),
                                 np.asarray(record["keypoint_scores"], np.float32)[..., None]], axis=-1)[indices]
        layout = config.layout
        if layout == "h36m":
            joints = kp.coco_to_h36m(joints)
        result = {"kind": "skeleton", "method": "integrated-gradients", "steps": steps,
                  "baseline": "the clip's motionless skeleton (each joint at its mean over the clip)",
                  "layout": layout, "joint_names": kp.H36M17_NAMES if layout == "h36m" else kp.COCO17_NAMES,
                  "joints": joints, "frame_indices": indices, "maps": np.asarray(out["maps"][:, 0]),
                  "completeness_error": np.asarray(out["completeness_error"][:, 0]),
                  "logit_change": np.asarray(out["logits"] - out["baseline_logits"])[0]}
        if "video" in record:
            result["frames"] = np.asarray(record["video"])[indices]
    logits = np.asarray(out["logits"])[0]
    probabilities = np.exp(logits - logits.max())
    result["probabilities"] = probabilities / probabilities.sum()
    result["seconds"] = round(time.time() - started, 2)
    return result


def summary(result: dict, clip: str, model, label: int | None) -> dict:
    """What <stem>.json says: prediction, method, per-class frame (and joint) importances."""
    maps = result["maps"]
    predicted = int(np.argmax(result["probabilities"]))
    report = {
        "clip": clip, "model": model.name, "workdir": str(model.workdir), "weights": model.checkpoint_id,
        "method": result["method"], "label": None if label is None else CLASS_NAMES[label],
        "predicted": CLASS_NAMES[predicted],
        "probabilities": {name: round(float(p), 6) for name, p in zip(CLASS_NAMES, result["probabilities"])},
        "frame_indices": [int(i) for i in result["frame_indices"]], "classes": {},
    }
    if result["kind"] == "video":
        report |= {"layer": result["layer"], "layer_grid": result["coarse_shape"],
                   "map": "Grad-CAM, upsampled to the model's input and divided by its maximum"}
    else:
        report |= {"steps": result["steps"], "baseline": result["baseline"], "layout": result["layout"],
                   "map": "integrated gradients summed over (x, y, score) and persons; units of the logit"}
    for c, name in enumerate(CLASS_NAMES):
        entry = {}
        if result["kind"] == "video":
            entry["per_frame"] = [round(float(v), 5) for v in maps[c].mean(axis=(1, 2))]
        else:
            entry["per_frame"] = [round(float(v), 6) for v in maps[c].sum(axis=1)]
            entry["per_joint"] = {j: round(float(v), 6) for j, v in zip(result["joint_names"], maps[c].sum(axis=0))}
            entry["logit_change"] = round(float(result["logit_change"][c]), 6)
            entry["completeness_error"] = float(result["completeness_error"][c])
        report["classes"][name] = entry
    return report


# ----------------------------------------------------------------------------- the command

def explain(args) -> dict:
    from strokevision_jax import inference
    from strokevision_jax.predict import staged

    workdir = pathlib.Path(args.workdir)
    if args.video is None and args.keypoints is not None:
        raise ExplainError("--keypoints goes with --video (the pose estimator's output for that video).")
    if args.video is not None and args.clip is not None:
        raise ExplainError("give --clip=ID (a clip of the dataset) or --video=FILE, not both.")
    if args.steps < 2:
        raise ExplainError(f"--steps={args.steps}: integrated gradients need at least 2 steps (32 is the default).")
    model = inference.load_run(workdir, batch_size=1)
    if args.video is not None:
        video = pathlib.Path(args.video)
        record = clip_from_video(model, video, None if args.keypoints is None else pathlib.Path(args.keypoints),
                                 args.start)
        clip, label = f"{video.stem}@{args.start:g}s", None
    else:
        clip, record = find_clip(model, args.clip, args.data_dir)
        label = int(record["label"])
    result = explain_record(model, record, stage=args.layer, steps=args.steps)
    report = summary(result, clip, model, label)
    out = pathlib.Path(args.out) if args.out else pathlib.Path("explanations") / clip.replace("/", "_")
    from strokevision_jax import explain_plots

    stem = clip.replace("/", "_")
    with staged(out) as scratch:
        (scratch / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        np.savez_compressed(scratch / f"{stem}.npz", maps=result["maps"], classes=np.array(CLASS_NAMES),
                            frame_indices=result["frame_indices"])
        explain_plots.draw(result, report, scratch, stem)
    report["out"] = str(out)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run (python -m strokevision_jax.train)")
    parser.add_argument("--clip", default=None, help="a clip id of the run's dataset (default: its first test clip)")
    parser.add_argument("--video", default=None, help="a video file; the clip starts at --start seconds")
    parser.add_argument("--keypoints", default=None, help="the pose estimator's output for --video")
    parser.add_argument("--start", type=float, default=0.0, help="seconds into --video where the clip starts")
    parser.add_argument("--data_dir", default=None, help="where the run's dataset is (default: $TFDS_DATA_DIR)")
    parser.add_argument("--layer", default=None, help="video models: the stage Grad-CAM reads (default: the "
                                                      "deepest with two or more time steps)")
    parser.add_argument("--steps", type=int, default=32, help="skeleton models: integrated-gradient steps")
    parser.add_argument("--out", default=None, help="output directory (default: explanations/<clip>)")
    args = parser.parse_args(argv)
    from strokevision_jax.errors import TrainingError
    from strokevision_jax.predict import PredictError

    try:
        report = explain(args)
    except (ExplainError, PredictError, TrainingError, attribution.AttributionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pair = ", ".join(f"{name} {report['probabilities'][name]:.2f}" for name in TRANSPORT_PAIR)
    truth = f" (label {report['label']})" if report["label"] else ""
    print(f"{report['clip']}: {report['model']} predicts {report['predicted']} "
          f"p={report['probabilities'][report['predicted']]:.2f}{truth}; {pair}; {report['method']}"
          f"{' on ' + report['layer'] if 'layer' in report else ''} -> {report['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
