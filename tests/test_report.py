"""Metrics and report files."""

import json

import numpy as np
import pytest

from strokevision_jax import report


def test_metrics_on_a_hand_computed_example():
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    predictions = np.array([0, 1, 1, 1, 3, 3, 2, 3])
    metrics = report.classification_metrics(labels, predictions)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2]]
    assert metrics["per_class_accuracy"]["grasping"] == pytest.approx(0.5)
    assert metrics["per_class_accuracy"]["transport_with_object"] == 0.0
    # F1 per class: 2/3, 0.8, 0, 2/3 -> macro 0.5333
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0 + 2 / 3) / 4)


def test_macro_f1_ignores_classes_absent_from_the_labels():
    metrics = report.classification_metrics(np.array([0, 1]), np.array([0, 1]))
    assert metrics["macro_f1"] == pytest.approx(1.0)
    assert metrics["per_class_accuracy"]["transport_without_object"] == 0.0


def test_write_report_files(tmp_path):
    metrics = report.classification_metrics(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2]))
    report.write_report(tmp_path, {"model": "m", "preset": "cpu", "best_epoch": 1}, metrics,
                        [{"epoch": 1, "val_accuracy": 0.5}])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(0.75)
    assert saved["test"]["confusion_matrix"][3] == [0, 0, 1, 0]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "transport_without_object" in (tmp_path / "report.txt").read_text()
