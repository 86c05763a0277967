"""Late fusion of two finished runs: one video run and one skeleton run of the same clips.

    python -m strokevision_jax.fuse --video=runs/r2plus1d_18_cpu --skeleton=runs/motionbert_cpu

Reads each run's validation_predictions.csv and test_predictions.csv (written by train and by
evaluate), chooses the video run's weight on the validation clips (`fusion.choose_weight`),
applies it to the test clips and writes into --out (default runs/fusion_<video>+<skeleton>):
fusion.json (the weight and its validation table; test accuracy, macro-F1, per-class accuracy,
the transport with / without confusion, for each run and for the fusion) and the fused
test_predictions.csv in the runs' format.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from strokevision_jax import fusion
from strokevision_jax import report as report_lib
from strokevision_jax.data.classes import CLASS_NAMES

WITH, WITHOUT = CLASS_NAMES.index("transport_with_object"), CLASS_NAMES.index("transport_without_object")


def run_info(workdir: pathlib.Path) -> fusion.RunInfo:
    from strokevision_jax.loop import RUN_CONFIG, recipe_from_config
    from strokevision_jax.models import registry

    path = workdir / RUN_CONFIG
    if not path.is_file():
        raise fusion.FusionError(f"{workdir} is not a training run (no {RUN_CONFIG}); give the --workdir of a run "
                                 "of python -m strokevision_jax.train.")
    config = json.loads(path.read_text())
    recipe = recipe_from_config(config)
    return fusion.RunInfo(str(workdir), registry.get(recipe.model).family.input_kind, recipe.dataset, config.get("split"))


def read_probabilities(workdir: pathlib.Path, filename: str) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """(clip refs, labels, (clips, classes) probabilities) of a run's predictions file."""
    path = workdir / filename
    if not path.is_file():
        raise fusion.FusionError(f"{path} is missing: runs trained before late fusion existed lack "
                                 f"{report_lib.VALIDATION_PREDICTIONS}; write both files with python -m "
                                 f"strokevision_jax.evaluate --workdir={workdir}.")
    rows = report_lib.read_predictions(path)
    refs = [(row["split"], int(row["index"])) for row in rows]
    labels = np.array([int(row["label"]) for row in rows])
    probabilities = np.array([[float(row[f"p_{name}"]) for name in CLASS_NAMES] for row in rows])
    return refs, labels, probabilities


def _aligned(video: pathlib.Path, skeleton: pathlib.Path, filename: str):
    refs, labels, p_video = read_probabilities(video, filename)
    other_refs, other_labels, p_skeleton = read_probabilities(skeleton, filename)
    if refs != other_refs or not np.array_equal(labels, other_labels):
        raise fusion.FusionError(f"{video / filename} and {skeleton / filename} list different clips: the runs "
                                 "were not evaluated on the same split; fuse runs of the same split or fold.")
    return refs, labels, p_video, p_skeleton


def summary(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    metrics = report_lib.classification_metrics(labels, probabilities.argmax(axis=1))
    matrix = np.asarray(metrics["confusion_matrix"])
    transports = matrix[WITH].sum() + matrix[WITHOUT].sum()
    metrics["with_without_confusion"] = float((matrix[WITH, WITHOUT] + matrix[WITHOUT, WITH]) / max(transports, 1))
    return metrics


def fuse_runs(video: pathlib.Path, skeleton: pathlib.Path, out: pathlib.Path) -> dict:
    fusion.check_pair(run_info(video), run_info(skeleton))
    _, val_labels, val_video, val_skeleton = _aligned(video, skeleton, report_lib.VALIDATION_PREDICTIONS)
    choice = fusion.choose_weight(val_video, val_skeleton, val_labels)
    refs, labels, p_video, p_skeleton = _aligned(video, skeleton, report_lib.PREDICTIONS)
    fused = fusion.fuse(p_video, p_skeleton, choice.weight)
    result = {
        "video": str(video), "skeleton": str(skeleton), "weight": choice.weight,
        "validation": {"clips": int(val_labels.size), "log_loss": choice.log_loss, "accuracy": choice.accuracy,
                       "table": [dict(zip(("weight", "log_loss", "accuracy"), row)) for row in choice.table]},
        "test": {"video": summary(labels, p_video), "skeleton": summary(labels, p_skeleton),
                 "fusion": summary(labels, fused)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(result, indent=1) + "\n")
    report_lib.write_predictions(out / report_lib.PREDICTIONS, refs, labels, np.log(np.maximum(fused, 1e-12)))
    return result


class FusedModel:
    """Two loaded runs (`inference.TrainedModel`) as one: the interface `timeline` slides over a
    recording, with the fused probabilities of each window."""

    def __init__(self, video_model, skeleton_model, weight: float):
        self.video_model, self.skeleton_model, self.weight = video_model, skeleton_model, weight
        self.clip_frames = video_model.clip_frames
        self.batch_size = video_model.batch_size
        # what the windows need: the video run's frames and both runs' keypoints
        self.recipe, self.workdir = video_model.recipe, video_model.workdir
        self.name = f"{video_model.name} + {skeleton_model.name}"
        self.checkpoint_id = (f"{video_model.checkpoint_id} + {skeleton_model.checkpoint_id} of "
                              f"{getattr(skeleton_model, 'workdir', '?')}, weight {weight:.2f}")

    def probabilities(self, records) -> np.ndarray:
        return fusion.fuse(self.video_model.probabilities(records), self.skeleton_model.probabilities(records),
                           self.weight)


def pair_weight(first: pathlib.Path, second: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, fusion.WeightChoice]:
    """(video run, skeleton run, the weight chosen on their validation clips) of two runs given in
    any order; FusionError when they cannot be fused."""
    a, b = run_info(first), run_info(second)
    video, skeleton = (first, second) if a.kind == "video" else (second, first)
    fusion.check_pair(*((a, b) if a.kind == "video" else (b, a)))
    _, labels, p_video, p_skeleton = _aligned(video, skeleton, report_lib.VALIDATION_PREDICTIONS)
    return video, skeleton, fusion.choose_weight(p_video, p_skeleton, labels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.fuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="a video run's workdir")
    parser.add_argument("--skeleton", required=True, help="a skeleton run's workdir")
    parser.add_argument("--out", default=None, help="output directory")
    args = parser.parse_args(argv)
    video, skeleton = pathlib.Path(args.video), pathlib.Path(args.skeleton)
    out = pathlib.Path(args.out) if args.out else video.parent / f"fusion_{video.name}+{skeleton.name}"
    try:
        result = fuse_runs(video, skeleton, out)
    except fusion.FusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    test = result["test"]
    print(f"weight of the video run {result['weight']:.2f} (validation log-loss {result['validation']['log_loss']:.4f}, "
          f"accuracy {result['validation']['accuracy']:.4f} on {result['validation']['clips']} clips)")
    for name in ("video", "skeleton", "fusion"):
        print(f"  test {name:8s}: accuracy {test[name]['accuracy']:.4f}, macro-F1 {test[name]['macro_f1']:.4f}, "
              f"with/without confusion {100 * test[name]['with_without_confusion']:.1f} %")
    print(f"-> {out / 'fusion.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
