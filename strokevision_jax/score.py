"""Score a trained run on whole Box and Block Test trials: the block count and the timeline.

    python -m strokevision_jax.score --workdir=runs/r2plus1d_18_cpu            # the test patients' trials

Every trial of the split (the `synthetic` test patients, one 60 s trial per hand) goes through
what `predict` does with a recording, then is compared with the truth:
- the count: mean absolute error and bias, ICC(2,1) (two-way random, absolute agreement, single
  rater: ICC(A,1)) with its 95 % interval, Bland-Altman limits of agreement;
- the timeline: frame accuracy (pooled over frames), the segmental edit score (mean over trials)
  and F1 at IoU 0.10 / 0.25 / 0.50 (true / false positives pooled over trials, as MS-TCN);
for the HSMM decoder (the top-level keys of score.json) and for one argmax per frame
(`argmax`), over all trials and per hand (`per_hand`). Writes into --out (default
<workdir>/score): score.json, score.md, trials.csv, bland_altman.png and timelines/<trial>.png.
The model's window probabilities are kept in windows/<trial>.npz: a rerun with other decoding
settings does not run the model again. --fuse_with=RUN scores the late fusion of the run with a
run of the other modality (default --out: <workdir>/score_fusion_<its name>).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import pathlib
import sys
import time

import numpy as np

from strokevision_jax import agreement, segments, timeline, timeline_plots
from strokevision_jax.data.synthetic import trials

OVERLAPS = (0.10, 0.25, 0.50)
HANDS = trials.HANDS
TRIAL_DATASETS = {"synthetic": "synthetic_trials", "synthetic_small": "synthetic_trials_small"}


class ScoreError(ValueError):
    """Bad arguments: the message says what to give instead."""


def trial_chunks(example: dict, keys: tuple[str, ...], chunk: int = 64):
    """A stored trial as the stream of chunks `timeline.window_probabilities` reads."""
    for first in range(0, len(example["keypoints"]), chunk):
        yield {key: example[key][first:first + chunk] for key in keys}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measure(rows: list[dict], prefix: str) -> dict:
    """The scores of a set of trials for one decoding (`prefix`: 'decoded' or 'argmax')."""
    truth = np.array([r["true_count"] for r in rows], float)
    counts = np.array([r[f"{prefix}_count"] for r in rows], float)
    out = {"trials": len(rows), "count_mae": float(np.mean(np.abs(counts - truth))),
           "count_bias": float(np.mean(counts - truth))}
    if len(rows) >= 2:
        icc = agreement.icc_a1(np.stack([truth, counts], axis=1))
        limits = agreement.bland_altman(truth, counts)
        out.update(icc=icc.value, icc_ci=[icc.low, icc.high], loa_lower=limits.loa_lower, loa_upper=limits.loa_upper)
    else:
        out.update(icc=None, icc_ci=None, loa_lower=None, loa_upper=None)
    frames = sum(r["frames"] for r in rows)
    out["frame_accuracy"] = 100.0 * sum(r[f"{prefix}_correct"] for r in rows) / frames
    out["edit"] = float(np.mean([r[f"{prefix}_edit"] for r in rows]))
    for overlap in OVERLAPS:
        pooled = np.sum([r[f"{prefix}_matches"][f"{overlap:.2f}"] for r in rows], axis=0)
        out[f"f1_{round(overlap * 100):02d}"] = segments.f1_from_matches(*map(int, pooled))
    return out


def summarize(rows: list[dict]) -> dict:
    scores = measure(rows, "decoded")
    scores["argmax"] = measure(rows, "argmax")
    scores["per_hand"] = {}
    for hand in HANDS:
        chosen = [r for r in rows if r["hand"] == hand]
        if chosen:
            scores["per_hand"][hand] = dict(measure(chosen, "decoded"), argmax=measure(chosen, "argmax"))
    inside = [r["interval_low"] <= r["true_count"] <= r["interval_high"] for r in rows]
    scores["count_interval_coverage"] = float(np.mean(inside))
    return scores


def trial_row(example: dict, line: timeline.Timeline) -> dict:
    phase = np.asarray(example["phase"])
    row = {"trial_id": _text(example["trial_id"]), "patient_id": _text(example["patient_id"]),
           "hand": HANDS[int(example["hand"])], "true_count": int(example["blocks"]), "frames": int(phase.size)}
    low, high = line.count_interval
    row.update(interval_low=low, interval_high=high)
    for prefix, labels, count in (("decoded", line.decoded, line.count), ("argmax", line.argmax, line.count_argmax)):
        row[f"{prefix}_count"] = count
        row[f"{prefix}_correct"] = int((labels == phase).sum())
        row[f"{prefix}_edit"] = segments.edit_score(labels, phase)
        row[f"{prefix}_matches"] = {f"{o:.2f}": segments.segment_matches(labels, phase, o) for o in OVERLAPS}
    return row


def _windows(model, example: dict, path: pathlib.Path, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's window probabilities over the trial, from `path` when it holds them for this
    stride and checkpoint."""
    run_config = model.workdir / "run_config.json"
    settings = run_config.read_text() if run_config.is_file() else repr(model.recipe)
    key = f"{model.checkpoint_id}|stride={stride}|{hashlib.sha256(settings.encode()).hexdigest()[:16]}"
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["key"]) == key:
                return cached["starts"], cached["probabilities"]
    keys = ("video", "keypoints", "keypoint_scores") if model.recipe.video is not None else ("keypoints", "keypoint_scores")
    starts, probabilities, _ = timeline.window_probabilities(model, trial_chunks(example, keys), stride)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, key=np.array(key), starts=starts, probabilities=probabilities)
    partial.replace(path)
    return starts, probabilities


def markdown(scores: dict, rows: list[dict], heading: str, notes: list[str]) -> str:
    def cells(s: dict) -> str:
        icc = "n/a" if s["icc"] is None else f"{s['icc']:.3f} [{s['icc_ci'][0]:.3f}, {s['icc_ci'][1]:.3f}]"
        loa = "n/a" if s["loa_lower"] is None else f"[{s['loa_lower']:+.2f}, {s['loa_upper']:+.2f}]"
        return (f"{s['trials']} | {s['count_mae']:.2f} | {s['count_bias']:+.2f} | {icc} | {loa} | "
                f"{s['frame_accuracy']:.1f} | {s['edit']:.1f} | {s['f1_10']:.1f} | {s['f1_25']:.1f} | {s['f1_50']:.1f}")

    lines = [f"# {heading}", "", *notes, "",
             "| trials | decoding | n | count MAE | bias | ICC(2,1) [95 % CI] | limits of agreement | "
             "frame acc. % | edit | F1@10 | F1@25 | F1@50 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = [("all", scores)] + [(hand.replace("_", " "), s) for hand, s in scores["per_hand"].items()]
    for name, s in groups:
        lines.append(f"| {name} | HSMM decoder | {cells(s)} |")
        lines.append(f"| {name} | argmax per frame | {cells(s['argmax'])} |")
    lines += ["", f"The decoder's {timeline.COUNT_INTERVAL:.0%} count interval (posterior samples) holds the true "
              f"count in {scores['count_interval_coverage']:.0%} of the trials.", "",
              "| trial | hand | true | decoded [interval] | argmax |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trial_id']} | {r['hand']} | {r['true_count']} | {r['decoded_count']} "
                     f"[{r['interval_low']}, {r['interval_high']}] | {r['argmax_count']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run (python -m strokevision_jax.train)")
    parser.add_argument("--dataset", default=None,
                        help="trials to score (default: those of the run's dataset, e.g. synthetic_trials)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--stride", type=int, default=None, help="frames between windows (default: a quarter clip)")
    parser.add_argument("--evidence_frames", type=float, default=timeline.DEFAULT_EVIDENCE_FRAMES,
                        help="frames per independent observation in the decoder's scores")
    parser.add_argument("--adaptation", type=float, default=timeline.DEFAULT_ADAPTATION,
                        help="strength (0-1) of the adaptation of the recording's class balance to a trial's")
    parser.add_argument("--out", default=None, help="output directory (default: <workdir>/score)")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR)")
    parser.add_argument("--fuse_with", default=None, help="a run of the other modality: score their late fusion")
    parser.add_argument("--no_plots", action="store_true", help="skip the per-trial timeline PNGs")
    args = parser.parse_args(argv)

    from strokevision_jax import dataset
    from strokevision_jax.errors import TrainingError
    from strokevision_jax.predict import PredictError, load_model

    try:
        model = load_model(pathlib.Path(args.workdir), pathlib.Path(args.fuse_with) if args.fuse_with else None, 32)
    except (TrainingError, PredictError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trials_dataset = args.dataset or TRIAL_DATASETS.get(model.recipe.dataset)
    if trials_dataset not in TRIAL_DATASETS.values():
        print(f"error: --dataset={trials_dataset}: whole trials with a true count exist for "
              f"{', '.join(TRIAL_DATASETS.values())}; give one of them.", file=sys.stderr)
        return 2
    stride = args.stride or max(1, model.clip_frames // 4)
    default_out = "score" if not args.fuse_with else f"score_fusion_{pathlib.Path(args.fuse_with).name}"
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / default_out)
    (out / "windows").mkdir(parents=True, exist_ok=True)
    task = timeline.trial_model(trials_dataset)
    source = dataset.load_source(args.split, trials_dataset, args.data_dir)
    rows, model_seconds, frames = [], 0.0, 0
    for index in range(len(source)):
        example = source[index]
        trial_id = _text(example["trial_id"])
        began = time.perf_counter()
        starts, probabilities = _windows(model, example, out / "windows" / f"{trial_id}.npz", stride)
        model_seconds += time.perf_counter() - began
        num_frames = len(example["phase"])
        frames += num_frames
        per_frame = timeline.frame_probabilities(starts, probabilities, num_frames, model.clip_frames)
        line = timeline.decode(per_frame, task.decoder, float(example["fps"]), evidence_frames=args.evidence_frames,
                               class_shares=task.class_shares, adaptation=args.adaptation)
        rows.append(trial_row(example, line))
        r = rows[-1]
        print(f"{trial_id}: true {r['true_count']}, decoded {r['decoded_count']} [{r['interval_low']}, "
              f"{r['interval_high']}], argmax {r['argmax_count']}; frame accuracy "
              f"{100 * r['decoded_correct'] / num_frames:.1f} %", flush=True)
        if not args.no_plots:
            (out / "timelines").mkdir(exist_ok=True)
            timeline_plots.plot_timeline(out / "timelines" / f"{trial_id}.png", line, trial_id,
                                         truth=np.asarray(example["phase"]), true_count=r["true_count"])
    if not rows:
        print(f"error: split {args.split!r} of {trials_dataset} holds no trial.", file=sys.stderr)
        return 2
    scores = summarize(rows)
    scores["settings"] = {"workdir": str(pathlib.Path(args.workdir).absolute()), "model": model.name,
                          "preset": model.recipe.preset, "dataset": trials_dataset, "split": args.split,
                          "stride": stride, "evidence_frames": args.evidence_frames, "adaptation": args.adaptation,
                          "decoder": task.note, "decoder_parameters": task.decoder.to_json(),
                          "class_shares": [round(float(v), 4) for v in task.class_shares]}
    scores["per_trial"] = [{k: v for k, v in r.items() if not k.endswith("_matches")} for r in rows]
    (out / "score.json").write_text(json.dumps(scores, indent=1) + "\n")
    with open(out / "trials.csv", "w", newline="") as handle:
        fields = [k for k in rows[0] if not k.endswith("_matches")]
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    notes = [f"Run `{args.workdir}` ({model.name}, preset {model.recipe.preset}) on the {len(rows)} "
             f"{args.split}-split trials of `{trials_dataset}`; windows every {stride} frames; decoder: "
             f"{task.note}; evidence_frames {args.evidence_frames:g}, adaptation {args.adaptation:g}."]
    (out / "score.md").write_text(markdown(scores, rows, "Whole-trial scores", notes))
    limits = agreement.bland_altman([r["true_count"] for r in rows], [r["decoded_count"] for r in rows]) \
        if len(rows) >= 2 else None
    if limits is not None:
        timeline_plots.plot_bland_altman(out / "bland_altman.png", [r["true_count"] for r in rows],
                                         [r["decoded_count"] for r in rows], limits, [r["hand"] for r in rows],
                                         f"{model.name} ({model.recipe.preset}), {args.split} trials")
    print(f"count MAE {scores['count_mae']:.2f} blocks (argmax {scores['argmax']['count_mae']:.2f}), "
          f"ICC {scores['icc'] if scores['icc'] is None else round(scores['icc'], 3)}, frame accuracy "
          f"{scores['frame_accuracy']:.1f} %, edit {scores['edit']:.1f}; model time {model_seconds:.1f} s for "
          f"{frames / 30:.0f} s of trials -> {out}/score.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
