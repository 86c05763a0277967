"""Classification metrics and the evaluation report (JSON, text, confusion-matrix PNG)."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def classification_metrics(labels, predictions, class_names=CLASS_NAMES) -> dict:
    """Accuracy, per-class accuracy (recall), per-class F1, macro-F1 and the confusion matrix."""
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_counts = matrix.sum(axis=1)
    predicted_counts = matrix.sum(axis=0)
    hits = np.diag(matrix)
    recall = np.divide(hits, true_counts, out=np.zeros(num_classes), where=true_counts > 0)
    precision = np.divide(hits, predicted_counts, out=np.zeros(num_classes), where=predicted_counts > 0)
    f1_denominator = precision + recall
    f1 = np.divide(2 * precision * recall, f1_denominator, out=np.zeros(num_classes),
                   where=f1_denominator > 0)
    present = true_counts > 0  # macro-F1 over the classes that occur, as scikit-learn warns otherwise
    total = int(matrix.sum())
    return {
        "num_examples": total,
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "per_class_accuracy": {name: float(r) for name, r in zip(class_names, recall)},
        "per_class_f1": {name: float(v) for name, v in zip(class_names, f1)},
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion_matrix": matrix.tolist(),
    }


def format_confusion(matrix, class_names=CLASS_NAMES) -> str:
    """Plain-text confusion matrix with row (true) and column (predicted) names."""
    matrix = np.asarray(matrix)
    width = max(len(name) for name in class_names)
    header = " " * (width + 2) + " ".join(f"{i:>6d}" for i in range(len(class_names)))
    rows = ["true \\ predicted (columns numbered as rows)", header]
    for i, name in enumerate(class_names):
        rows.append(f"{i} {name:<{width}} " + " ".join(f"{v:>6d}" for v in matrix[i]))
    return "\n".join(rows)


def plot_confusion(matrix, path: pathlib.Path, title: str, class_names=CLASS_NAMES) -> None:
    """Saves a row-normalised confusion matrix with counts as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    figure, axes = plt.subplots(figsize=(6.4, 5.6))
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            axes.text(j, i, f"{int(matrix[i, j])}\n{normalised[i, j]:.2f}", ha="center", va="center",
                      color="white" if normalised[i, j] > 0.5 else "black", fontsize=9)
    short = [name.replace("transport_", "transp. ").replace("_", " ") for name in class_names]
    axes.set_xticks(range(len(class_names)), short, rotation=30, ha="right")
    axes.set_yticks(range(len(class_names)), short)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(workdir: pathlib.Path, run: dict, test_metrics: dict, history: list[dict]) -> dict:
    """Writes report.json, report.txt and confusion_matrix.png into `workdir`; returns the report."""
    workdir = pathlib.Path(workdir)
    report = {"run": run, "test": test_metrics, "history": history}
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"model {run.get('model')}  preset {run.get('preset')}  best epoch {run.get('best_epoch')}",
        f"test accuracy {test_metrics['accuracy']:.4f}  macro-F1 {test_metrics['macro_f1']:.4f}"
        f"  ({test_metrics['num_examples']} clips)",
        "per-class accuracy: " + ", ".join(
            f"{name} {value:.3f}" for name, value in test_metrics["per_class_accuracy"].items()),
        *(f"{name} head: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"
          for name, m in test_metrics.get("heads", {}).items()),
        format_confusion(test_metrics["confusion_matrix"]),
    ]
    (workdir / "report.txt").write_text("\n".join(lines) + "\n")
    plot_confusion(test_metrics["confusion_matrix"], workdir / "confusion_matrix.png",
                   title=f"{run.get('model')} test (acc {test_metrics['accuracy']:.3f})")
    return report


PREDICTIONS = "test_predictions.csv"
VALIDATION_PREDICTIONS = "validation_predictions.csv"


def write_predictions(path: pathlib.Path, refs, labels: np.ndarray, logits: np.ndarray) -> None:
    """One row per clip (of the test or validation split): its stored split and index, the label,
    the prediction and the class probabilities (softmax of the logits)."""
    shifted = np.asarray(logits, np.float64)
    shifted = np.exp(shifted - shifted.max(-1, keepdims=True))
    probabilities = shifted / shifted.sum(-1, keepdims=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "index", "label", "prediction"] + [f"p_{name}" for name in CLASS_NAMES])
        for (split, index), label, probs in zip(refs, labels, probabilities):
            writer.writerow([split, index, int(label), int(np.argmax(probs))] + [f"{p:.6g}" for p in probs])
    os.replace(tmp, path)


def read_predictions(path: pathlib.Path) -> list[dict]:
    with pathlib.Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
