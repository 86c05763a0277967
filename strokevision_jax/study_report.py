"""A study's tables: results.csv (one row per run), predictions.csv (out-of-fold, one row per clip
and run), table.md (Table 1 of the paper, with patient-bootstrap intervals and paired
comparisons), summary.json, accuracy.png and confusions.png."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import platform

import numpy as np

from strokevision_jax import folds as folds_lib
from strokevision_jax import report, stats, study
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.models import registry

SHORT = {"grasping": "grasp", "non_task_movement": "non-task", "transport_with_object": "with obj.",
         "transport_without_object": "without obj."}
COST_HEADING = "## Cost and machine"
RESULT_COLUMNS = (["model", "fold", "seed", "test_accuracy", "macro_f1"]
                  + [f"accuracy_{name}" for name in CLASS_NAMES]
                  + ["test_clips", "epochs", "best_epoch", "wall_seconds", "train_clips_per_s", "parameters",
                     "gflops_per_clip", "workdir", "fusion_weight"])
FUSION_STATISTICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("transport_confusion", "with ↔ without confusion"))


FUSION_PREFIX = "fusion:"


def fusion_name(video: str, skeleton: str) -> str:
    return f"{FUSION_PREFIX}{video}+{skeleton}"


def fusion_parts(name: str) -> tuple[str, str] | None:
    """(video model, skeleton model) of a late-fusion entry, None for a model."""
    if not name.startswith(FUSION_PREFIX):
        return None
    video, _, skeleton = name[len(FUSION_PREFIX):].partition("+")
    return video, skeleton


def _display_name(model: str) -> str:
    if fusion_parts(model):
        video, skeleton = fusion_parts(model)
        return f"late fusion {video} + {skeleton}"
    spec = registry.get(model)
    name = f"{model} ({spec.aliases[0]})" if spec.aliases else model
    if _modality(model) != "rgb+skeleton":
        return name
    # A two-pathway network: early fusion with laterals, else its heads' average only.
    return f"{'early' if getattr(spec.config, 'lateral', True) else 'joint late'} fusion {name}"


def _modality(model: str) -> str:
    """'rgb', 'skeleton', or 'rgb+skeleton' (a late fusion or the two-pathway network)."""
    return "rgb+skeleton" if fusion_parts(model) else registry.get(model).family.modality


def _input_name(model: str) -> str:
    return {"rgb": "RGB", "rgb+skeleton": "RGB + keypoints"}.get(_modality(model), "keypoints")


def _paper_accuracy(model: str) -> str:
    """The paper's Table 1 (accuracy %, real recordings of stroke patients; arXiv 2509.07994)."""
    if fusion_parts(model):
        return "—"
    return registry.get(model).paper_accuracy or "—"


def _prediction_rows(path: pathlib.Path, clips: dict, model: str, fold: int, seed: int) -> list[dict]:
    out = []
    for p in report.read_predictions(path):
        clip = clips[(p["split"], int(p["index"]))]
        if clip.label != int(p["label"]):
            raise study.StudyError(f"{path}: clip {clip.clip_id} has label {p['label']}, "
                                   f"the dataset says {clip.label}; the run was made on other data.")
        out.append({"model": model, "fold": fold, "seed": seed, "clip_id": clip.clip_id,
                    "patient": clip.patient, "split": clip.split, "index": clip.index,
                    "label": clip.label, "prediction": int(p["prediction"]),
                    **{k: p[k] for k in p if k.startswith("p_")}})
    return out


def collect_fusions(study_dir: pathlib.Path, settings, fusions, clips: dict) -> tuple[list[dict], list[dict]]:
    """Rows and predictions of each late fusion (video, skeleton) on every fold and seed where both
    runs are finished; the weight is chosen on that run pair's validation clips."""
    from strokevision_jax import fuse, fusion

    rows, predictions = [], []
    for video, skeleton in fusions:
        name = fusion_name(video, skeleton)
        for run in study.all_runs(dataclasses.replace(settings, models=(video,))):
            video_dir = run.workdir(study_dir)
            skeleton_dir = study.RunSpec(skeleton, run.fold, run.seed).workdir(study_dir)
            if not (study.is_finished(video_dir) and study.is_finished(skeleton_dir)):
                continue
            out = study.RunSpec(f"fusion_{video}+{skeleton}", run.fold, run.seed).workdir(study_dir)
            try:
                result = fuse.fuse_runs(video_dir, skeleton_dir, out)
            except fusion.FusionError as error:
                raise study.StudyError(f"late fusion {video} + {skeleton}: {error}") from None
            test = result["test"]["fusion"]
            rows.append({"model": name, "fold": run.fold, "seed": run.seed, "test_accuracy": test["accuracy"],
                         "macro_f1": test["macro_f1"],
                         **{f"accuracy_{n}": test["per_class_accuracy"][n] for n in CLASS_NAMES},
                         "test_clips": test["num_examples"], "epochs": "", "best_epoch": "",
                         "wall_seconds": 0.0, "train_clips_per_s": "", "parameters": "", "gflops_per_clip": "",
                         "workdir": os.path.relpath(out, study_dir), "fusion_weight": result["weight"]})
            predictions += _prediction_rows(out / report.PREDICTIONS, clips, name, run.fold, run.seed)
    return rows, predictions


def collect(study_dir: pathlib.Path, settings, fusions=()) -> tuple[list[dict], list[dict], list]:
    """(result rows, prediction rows, missing runs) from the runs on disk, and the late fusions'."""
    clips = {(c.split, c.index): c for c in folds_lib.load_clips(study_dir / study.CLIPS_FILE)}
    rows, predictions, missing = [], [], []
    for run in study.all_runs(settings):
        run_dir = run.workdir(study_dir)
        if not study.is_finished(run_dir):
            missing.append(run)
            continue
        run_report = json.loads((run_dir / "report.json").read_text())
        history = run_report["history"]
        info_path = run_dir.parent / study.MODEL_INFO
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        train_seconds = sum(h.get("train_seconds", h["seconds"]) for h in history)
        train_clips = sum(h.get("train_clips", 0) for h in history)
        test = run_report["test"]
        row = {
            "model": run.model, "fold": run.fold, "seed": run.seed,
            "test_accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            **{f"accuracy_{name}": test["per_class_accuracy"][name] for name in CLASS_NAMES},
            "test_clips": test["num_examples"], "epochs": len(history),
            "best_epoch": run_report["run"]["best_epoch"],
            "wall_seconds": round(sum(h["seconds"] for h in history), 1),
            "train_clips_per_s": round(train_clips / train_seconds, 2) if train_clips and train_seconds else "",
            "parameters": info.get("parameters", ""),
            "gflops_per_clip": (round(info["flops_per_clip"] / 1e9, 4) if info.get("flops_per_clip") else ""),
            "workdir": os.path.relpath(run_dir, study_dir),
        }
        rows.append(row)
        predictions += _prediction_rows(run_dir / report.PREDICTIONS, clips, run.model, run.fold, run.seed)
    fusion_rows, fusion_predictions = collect_fusions(study_dir, settings, fusions, clips)
    return rows + fusion_rows, predictions + fusion_predictions, missing


def _write_csv(path: pathlib.Path, rows: list[dict], columns) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def model_summaries(rows: list[dict], predictions: list[dict], models, resamples: int, seed: int = 0) -> dict:
    """Per model: pooled statistics with patient-bootstrap intervals, per-run mean and sd, and the
    paired accuracy difference to the best model (on the patients both cover)."""
    patients = sorted({p["patient"] for p in predictions})
    confusions, summaries = {}, {}
    for model in models:
        mine = [p for p in predictions if p["model"] == model]
        if not mine:
            continue
        _, confusions[model] = stats.patient_confusions([p["patient"] for p in mine], [p["label"] for p in mine],
                                                        [p["prediction"] for p in mine], order=patients)
        accuracies = [r["test_accuracy"] for r in rows if r["model"] == model]
        summaries[model] = {
            "runs": len(accuracies),
            "bootstrap": stats.bootstrap(confusions[model], resamples, seed),
            "run_mean": float(np.mean(accuracies)),
            "run_sd": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else float("nan"),
        }
    if not summaries:
        return {}
    best = max(summaries, key=lambda m: summaries[m]["bootstrap"]["accuracy"].value)
    for model, summary in summaries.items():
        summary["best"] = model == best
        if model == best:
            continue
        a, b = confusions[model], confusions[best]
        shared = _shared_patients(a, b)
        if shared.sum() >= 2:
            summary["versus_best"] = stats.paired_difference(a[shared], b[shared], "accuracy", resamples, seed)
            summary["versus_best_patients"] = int(shared.sum())
    # A fusion (late, or the two-pathway network) against each of its runs and the study's best
    # RGB and best skeleton model, paired on the patients both cover.
    best_single = {}
    for modality in ("rgb", "skeleton"):
        of_modality = [m for m in summaries if _modality(m) == modality]
        if of_modality:
            best_single[modality] = max(of_modality, key=lambda m: summaries[m]["bootstrap"]["accuracy"].value)
    for model, summary in summaries.items():
        if _modality(model) != "rgb+skeleton":
            continue
        summary["versus_parts"] = {}
        for other in dict.fromkeys([*(fusion_parts(model) or ()), *best_single.values()]):
            if other not in confusions:
                continue
            a, b = confusions[model], confusions[other]
            shared = _shared_patients(a, b)
            if shared.sum() >= 2:
                summary["versus_parts"][other] = {
                    statistic: stats.paired_difference(a[shared], b[shared], statistic, resamples, seed)
                    for statistic, _ in FUSION_STATISTICS}
    return summaries


def _shared_patients(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Patients whose clips both per-patient confusion stacks hold (same clips per class)."""
    return (a.sum((1, 2)) == b.sum((1, 2))) & np.all(a.sum(-1) == b.sum(-1), axis=-1) & (a.sum((1, 2)) > 0)


def _pct(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def table_markdown(settings, summaries: dict, rows: list[dict], missing: list, resamples: int,
                   seed: int = 0, majority: float | None = None) -> str:
    folds = (f"{settings.folds} patient-grouped folds" if settings.folds
             else "the dataset's own train / validation / test split")
    epochs = f", epochs {settings.epochs} for every model" if settings.epochs else ""
    lines = [
        f"# Study: strokevision/{settings.dataset}, preset {settings.preset}{epochs}",
        "",
        f"{folds}, seeds {', '.join(map(str, settings.seeds))} (fold seed {settings.fold_seed}). Figures are "
        "pooled over the out-of-fold test predictions of every run (each clip predicted once per seed). "
        f"Intervals: {stats.METHOD.format(resamples=resamples, seed=seed)}. \"Δ vs best\": the accuracy "
        "difference to the best model on the same clips, with a paired patient-bootstrap interval and "
        "two-sided p-value. The paper's column holds its real-data figures (Table 1 of arXiv 2509.07994), "
        "for reference only: this study's data are those named in the heading.",
        "",
        "| model | input | runs | accuracy % [95 % CI] | per-run mean ± sd | macro-F1 % [95 % CI] | "
        + " | ".join(SHORT[n] for n in CLASS_NAMES)
        + " | with ↔ without confusion % [95 % CI] | Δ accuracy vs best (pp) [95 % CI], p | paper (real data) |",
        "|---|---|---|---|---|---|" + "---|" * len(CLASS_NAMES) + "---|---|---|",
    ]
    order = sorted(summaries, key=lambda m: -summaries[m]["bootstrap"]["accuracy"].value)
    for model in order:
        s = summaries[model]
        boot = s["bootstrap"]
        if s["best"]:
            versus = "best"
        elif "versus_best" in s:
            d = s["versus_best"]
            versus = f"{d.interval.format()}, p = {d.p_value:.3f}"
        else:
            versus = "— (not on the same clips)"
        per_class = " | ".join(_pct(i.value) for i in boot["per_class_accuracy"])
        sd = "" if not np.isfinite(s["run_sd"]) else f" ± {100 * s['run_sd']:.1f}"
        lines.append(
            f"| {_display_name(model)} | {_input_name(model)} | {s['runs']} | "
            f"{boot['accuracy'].format()} | {100 * s['run_mean']:.1f}{sd} | {boot['macro_f1'].format()} | "
            f"{per_class} | {boot['transport_confusion'].format()} | {versus} | {_paper_accuracy(model)} |")
    lines.append("")
    lines += _fusion_lines(summaries, rows)
    if majority is not None:
        lines += [f"Always predicting the most frequent class would score {100 * majority:.1f} %.", ""]
    if missing:
        lines.append(f"**Missing runs ({len(missing)}), not in the table:** " + ", ".join(r.name for r in missing))
    else:
        lines.append(f"All {len(rows)} runs finished.")
    lines += ["", "![accuracy with intervals](accuracy.png)", "", "![pooled confusion matrices](confusions.png)",
              "", COST_HEADING, ""]
    lines.append("| model | wall time per run (mean) | train clips/s | parameters | GFLOPs per clip (one view) |")
    lines.append("|---|---|---|---|---|")
    for model in [m for m in order if fusion_parts(m) is None]:
        mine = [r for r in rows if r["model"] == model]
        rates = [r["train_clips_per_s"] for r in mine if r["train_clips_per_s"] != ""]
        lines.append(f"| {model} | {np.mean([r['wall_seconds'] for r in mine]) / 60:.1f} min | "
                     f"{np.mean(rates):.1f} | {mine[0]['parameters']:,} | {mine[0]['gflops_per_clip']} |"
                     if rates and mine[0]["parameters"] != "" else
                     f"| {model} | {np.mean([r['wall_seconds'] for r in mine]) / 60:.1f} min | — | — | — |")
    total = sum(r["wall_seconds"] for r in rows)
    lines += ["", f"Total wall time of the finished runs (training and validation, summed): {total / 3600:.2f} h. "
              f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()} "
              f"({_jax_devices()})."]
    return "\n".join(lines) + "\n"


def _fusion_lines(summaries: dict, rows: list[dict]) -> list[str]:
    fusions = [m for m in summaries if _modality(m) == "rgb+skeleton" and summaries[m].get("versus_parts")]
    if not fusions:
        return []
    lines = ["RGB + keypoints against each of its runs and the best RGB and best keypoint model (paired "
             "patient bootstrap on the same clips). Late fusion: the video run's weight chosen on each fold's "
             "validation patients by log-loss; early fusion: the two-pathway network, trained end to end:", "",
             "| fusion | against | video weight (per run) | " + " | ".join(
                 f"Δ {label} (pp) [95 % CI], p" for _, label in FUSION_STATISTICS) + " |",
             "|---|---|---|" + "---|" * len(FUSION_STATISTICS)]
    for model in fusions:
        weights = ", ".join(f"{r['fusion_weight']:.2f}" for r in rows
                            if r["model"] == model and r.get("fusion_weight") not in ("", None)) or "—"
        for part, differences in summaries[model]["versus_parts"].items():
            cells = " | ".join(f"{differences[s].interval.format()}, p = {differences[s].p_value:.3f}"
                               for s, _ in FUSION_STATISTICS)
            lines.append(f"| {_display_name(model)} | {part} | {weights} | {cells} |")
    return lines + [""]


def _jax_devices() -> str:
    import jax

    return f"JAX {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}"


def plot_accuracy(summaries: dict, rows: list[dict], path: pathlib.Path, majority: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(summaries, key=lambda m: summaries[m]["bootstrap"]["accuracy"].value)
    figure, axes = plt.subplots(figsize=(7.0, 0.5 * len(order) + 1.4))
    for y, model in enumerate(order):
        interval = summaries[model]["bootstrap"]["accuracy"]
        axes.errorbar(100 * interval.value, y, xerr=[[100 * (interval.value - interval.low)],
                                                     [100 * (interval.high - interval.value)]],
                      fmt="o", color="tab:blue", capsize=4)
        runs = [100 * r["test_accuracy"] for r in rows if r["model"] == model]
        axes.scatter(runs, [y + 0.18] * len(runs), s=10, color="tab:gray", label="one run" if y == 0 else None)
    if majority is not None:
        axes.axvline(100 * majority, color="tab:red", linestyle="--", linewidth=1,
                     label="always the most frequent class")
    axes.set_yticks(range(len(order)), order)
    axes.set_xlabel("test accuracy % (pooled out-of-fold, 95 % patient-bootstrap interval)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusions(predictions: list[dict], models, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in models if any(p["model"] == m for p in predictions)]
    columns = min(4, max(1, len(models)))
    rows = -(-len(models) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.3 * rows), squeeze=False)
    short = [SHORT[n] for n in CLASS_NAMES]
    for axes in grid.flat:
        axes.axis("off")
    for axes, model in zip(grid.flat, models):
        mine = [p for p in predictions if p["model"] == model]
        matrix = report.confusion_matrix([p["label"] for p in mine], [p["prediction"] for p in mine],
                                         len(CLASS_NAMES)).astype(np.float64)
        normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        axes.axis("on")
        axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(CLASS_NAMES)):
            for j in range(len(CLASS_NAMES)):
                axes.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if normalised[i, j] > 0.5 else "black")
        axes.set_title(model, fontsize=10)
        axes.set_xticks(range(len(short)), short, rotation=35, ha="right", fontsize=7)
        axes.set_yticks(range(len(short)), short, fontsize=7)
    figure.supxlabel("predicted")
    figure.supylabel("true")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _summary_json(summaries: dict) -> dict:
    out = {}
    for model, s in summaries.items():
        boot = s["bootstrap"]
        entry = {name: {"value": i.value, "low": i.low, "high": i.high}
                 for name, i in boot.items() if isinstance(i, stats.Interval)}
        entry["per_class_accuracy"] = {n: {"value": i.value, "low": i.low, "high": i.high}
                                       for n, i in zip(CLASS_NAMES, boot["per_class_accuracy"])}
        entry.update(runs=s["runs"], run_mean=s["run_mean"], run_sd=s["run_sd"], best=s["best"])
        if "versus_best" in s:
            d = s["versus_best"]
            entry["accuracy_minus_best"] = {"value": d.interval.value, "low": d.interval.low,
                                            "high": d.interval.high, "p_value": d.p_value,
                                            "patients": s["versus_best_patients"]}
        for part, differences in s.get("versus_parts", {}).items():
            entry.setdefault("minus_parts", {})[part] = {
                statistic: {"value": d.interval.value, "low": d.interval.low, "high": d.interval.high,
                            "p_value": d.p_value} for statistic, d in differences.items()}
        out[model] = entry
    return out


def summarize(study_dir: pathlib.Path, settings, resamples: int = 2000, seed: int = 0, fusions=()) -> dict:
    """Writes every output of the study from the finished runs; returns {"text", "missing"}."""
    study_dir = pathlib.Path(study_dir)
    if not (study_dir / study.CLIPS_FILE).exists():
        raise study.StudyError(f"{study_dir} has no {study.CLIPS_FILE}: no run of this study has started yet.")
    rows, predictions, missing = collect(study_dir, settings, fusions)
    _write_csv(study_dir / "results.csv", rows, RESULT_COLUMNS)
    prediction_columns = (["model", "fold", "seed", "clip_id", "patient", "split", "index", "label", "prediction"]
                          + [f"p_{n}" for n in CLASS_NAMES])
    _write_csv(study_dir / "predictions.csv", predictions, prediction_columns)
    models = tuple(settings.models) + tuple(fusion_name(v, s) for v, s in fusions)
    summaries = model_summaries(rows, predictions, models, resamples, seed)
    labels = np.array([p["label"] for p in predictions], np.int64)
    majority = float(np.bincount(labels, minlength=len(CLASS_NAMES)).max() / len(labels)) if len(labels) else None
    text = table_markdown(settings, summaries, rows, missing, resamples, seed, majority)
    (study_dir / "table.md").write_text(text)
    (study_dir / "summary.json").write_text(json.dumps(
        {"models": _summary_json(summaries), "missing": [r.name for r in missing], "resamples": resamples},
        indent=1, default=float) + "\n")
    if summaries:
        plot_accuracy(summaries, rows, study_dir / "accuracy.png", majority)
        plot_confusions(predictions, models, study_dir / "confusions.png")
    return {"text": text, "missing": missing}
