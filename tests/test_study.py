"""The study command: settings and errors, summaries against hand-computed figures, and resume
after kill -9 on a small real study."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import folds, presets, report, study, study_report, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def settings(**changes):
    values = dict(models=("r3d_18", "motionbert"), folds=2, seeds=(0,), preset="cpu", dataset="synthetic_small")
    values.update(changes)
    return study.Settings(**values)


def test_shard_specs():
    assert study.parse_shard(None) == (0, 1)
    assert study.parse_shard("1/2") == (1, 2)
    for bad in ("3/2", "2/2", "-1/2", "0/0"):
        with pytest.raises(study.StudyError, match=rf"--shard={bad}: needs n >= 1 and 0 <= i < n"):
            study.parse_shard(bad)
    with pytest.raises(study.StudyError, match="write it as i/n"):
        study.parse_shard("half")


def test_shards_partition_the_runs():
    s = settings(models=("r3d_18", "motionbert", "msg3d"), folds=3, seeds=(0, 1))
    runs = study.all_runs(s)
    assert len(runs) == 18 and len(set(runs)) == 18
    shards = [[r for i, r in enumerate(runs) if i % 4 == k] for k in range(4)]
    assert sorted(sum(shards, []), key=runs.index) == runs


def test_model_names_resolve_and_unknown_ones_are_named():
    assert study.resolve_models("r3d, r2plus1d,motionbert") == ("r3d_18", "r2plus1d_18", "motionbert")
    with pytest.raises(study.StudyError, match="--models: Unknown model 'resnet50'; models: r2plus1d_18.*short names"):
        study.resolve_models("r3d,resnet50")
    with pytest.raises(study.StudyError, match="twice"):
        study.resolve_models("r3d,r3d_18")


def test_a_workdir_of_another_study_is_refused(tmp_path, monkeypatch):
    study.open_workdir(tmp_path / "s", settings())
    assert study.open_workdir(tmp_path / "s", settings()) == settings()  # the same study: fine
    with pytest.raises(study.StudyError, match=r"holds another study \(folds: 2 there, 3 now\).*new --workdir"):
        study.open_workdir(tmp_path / "s", settings(folds=3))
    # A study grows by models; the others keep their place and recipes.
    grown = study.open_workdir(tmp_path / "s", settings(models=("msg3d", "r3d_18")))
    assert grown.models == ("r3d_18", "motionbert", "msg3d")
    assert study.read_settings(tmp_path / "s").models == grown.models
    key = ("r3d_18", "cpu")
    monkeypatch.setitem(presets.RECIPES, key, presets.RECIPES[key].replace(learning_rate=0.5))
    with pytest.raises(study.StudyError, match=r"the r3d_18 recipe \(presets.py\) changed"):
        study.open_workdir(tmp_path / "s", settings(models=("r3d_18",)))

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(study.StudyError, match="not a study"):
        study.open_workdir(tmp_path / "other", settings())


# ----------------------------------------------------------------------------- summaries

def _fake_run(study_dir, s, model, fold, outcomes, clips):
    """A finished run whose test clips are `outcomes`: [(clip, prediction)]."""
    run_dir = study.RunSpec(model, fold, 0).workdir(study_dir)
    run_dir.mkdir(parents=True)
    labels = np.array([c.label for c, _ in outcomes])
    predictions = np.array([p for _, p in outcomes])
    logits = np.eye(4)[predictions] * 5.0
    report.write_predictions(run_dir / report.PREDICTIONS, [(c.split, c.index) for c, _ in outcomes], labels, logits)
    # Validation clips (for late fusion): the video model sure and right, the skeleton model unsure.
    sure = model == "r3d_18"
    report.write_predictions(run_dir / report.VALIDATION_PREDICTIONS, [(c.split, c.index) for c, _ in outcomes],
                             labels, np.eye(4)[labels] * (5.0 if sure else 0.0))
    (run_dir / "run_config.json").write_text(json.dumps(
        {"model": model, "preset": s.preset, "overrides": s.overrides(), "seed": 0, "split": {"fold": fold}}))
    test = report.classification_metrics(labels, predictions)
    history = [{"epoch": 1, "seconds": 60.0, "train_seconds": 50.0, "train_clips": 100}]
    (run_dir / "report.json").write_text(json.dumps({"run": {"best_epoch": 1}, "test": test, "history": history}))


def _hand_made_study(tmp_path):
    """Two patients of 4 clips (one per fold). Model a: 4/4 then 1/4 right; model b: 2/4 and 2/4."""
    s = settings(models=("r3d_18", "motionbert"), folds=2)
    study_dir = tmp_path / "study"
    study.open_workdir(study_dir, s)
    clips = [folds.Clip("train", i, f"c{i}", "p0" if i < 4 else "p1", i % 4) for i in range(8)]
    folds.save_clips(clips, study_dir / study.CLIPS_FILE)
    p0, p1 = clips[:4], clips[4:]
    wrong = lambda c: (c.label + 1) % 4  # noqa: E731
    _fake_run(study_dir, s, "r3d_18", 1, [(c, c.label) for c in p0], clips)
    _fake_run(study_dir, s, "r3d_18", 2, [(c, c.label if i == 0 else wrong(c)) for i, c in enumerate(p1)], clips)
    _fake_run(study_dir, s, "motionbert", 1, [(c, c.label if i < 2 else wrong(c)) for i, c in enumerate(p0)], clips)
    _fake_run(study_dir, s, "motionbert", 2, [(c, c.label if i < 2 else wrong(c)) for i, c in enumerate(p1)], clips)
    return s, study_dir


def test_summarize_against_hand_computed_figures(tmp_path):
    s, study_dir = _hand_made_study(tmp_path)
    result = study_report.summarize(study_dir, s, resamples=4000)
    summary = json.loads((study_dir / "summary.json").read_text())["models"]
    a, b = summary["r3d_18"], summary["motionbert"]
    # Pooled accuracy 5/8; resamples {p0, p0} = 1, {p0, p1} = 5/8, {p1, p1} = 1/4.
    assert (a["accuracy"]["value"], a["accuracy"]["low"], a["accuracy"]["high"]) == (0.625, 0.25, 1.0)
    assert a["run_mean"] == 0.625 and a["run_sd"] == pytest.approx(np.std([1.0, 0.25], ddof=1))
    assert a["best"] and not b["best"]
    # b: 2/4 for both patients, so every resample gives 0.5.
    assert (b["accuracy"]["value"], b["accuracy"]["low"], b["accuracy"]["high"]) == (0.5, 0.5, 0.5)
    diff = b["accuracy_minus_best"]
    assert (diff["value"], diff["low"], diff["high"]) == (-0.125, -0.5, 0.25)
    rows = list(csv.DictReader((study_dir / "results.csv").open()))
    assert [(r["model"], r["fold"], float(r["test_accuracy"])) for r in rows] == [
        ("r3d_18", "1", 1.0), ("motionbert", "1", 0.5), ("r3d_18", "2", 0.25), ("motionbert", "2", 0.5)]
    assert float(rows[0]["train_clips_per_s"]) == 2.0
    predictions = list(csv.DictReader((study_dir / "predictions.csv").open()))
    assert len(predictions) == 16 and {p["patient"] for p in predictions} == {"p0", "p1"}
    table = (study_dir / "table.md").read_text()
    assert "| r3d_18 (r3d) | RGB | 2 | 62.5 [25.0, 100.0] | 62.5 ± 53.0 |" in table
    assert "-12.5 [-50.0, 25.0]" in table
    assert "All 4 runs finished." in table and not result["missing"]
    assert (study_dir / "accuracy.png").stat().st_size > 0 and (study_dir / "confusions.png").stat().st_size > 0


def test_late_fusion_rows_with_paired_differences_to_each_run(tmp_path):
    """The video run is sure and right on every fold's validation clips, the skeleton run
    unsure: the weight goes to the video run (1.0), so the fusion's test predictions are the
    video run's: a difference of exactly 0 to it and +12.5 pp to the skeleton run."""
    s, study_dir = _hand_made_study(tmp_path)
    fusions = study.resolve_fusions("r3d+motionbert", s.models)
    assert fusions == (("r3d_18", "motionbert"),)
    study_report.summarize(study_dir, s, resamples=2000, fusions=fusions)
    summary = json.loads((study_dir / "summary.json").read_text())["models"]
    fused = summary["fusion:r3d_18+motionbert"]
    assert fused["accuracy"]["value"] == 0.625
    versus_video, versus_skeleton = fused["minus_parts"]["r3d_18"], fused["minus_parts"]["motionbert"]
    assert (versus_video["accuracy"]["value"], versus_video["accuracy"]["low"], versus_video["accuracy"]["high"]) == (0, 0, 0)
    assert versus_skeleton["accuracy"]["value"] == pytest.approx(0.125)
    rows = [r for r in csv.DictReader((study_dir / "results.csv").open()) if r["model"].startswith("fusion:")]
    assert [float(r["fusion_weight"]) for r in rows] == [1.0, 1.0]
    table = (study_dir / "table.md").read_text()
    assert "| late fusion r3d_18 + motionbert | RGB + keypoints | 2 | 62.5 [25.0, 100.0] |" in table
    assert "| late fusion r3d_18 + motionbert | motionbert | 1.00, 1.00 | 12.5 [" in table
    for bad, message in (("motionbert+r3d", "video model first"), ("r3d+msg3d", "msg3d is not a model of this study"),
                         ("r3d", r"is not <video model>\+<skeleton model>")):
        with pytest.raises(study.StudyError, match=message):
            study.resolve_fusions(bad, s.models)


def test_summarize_lists_missing_runs(tmp_path):
    s, study_dir = _hand_made_study(tmp_path)
    (study.RunSpec("motionbert", 2, 0).workdir(study_dir) / "report.json").unlink()
    result = study_report.summarize(study_dir, s, resamples=1000)
    assert [r.name for r in result["missing"]] == ["motionbert/fold2_seed0"]
    assert "**Missing runs (1), not in the table:** motionbert/fold2_seed0" in result["text"]
    # Model b now covers p0 only: compared with the best on the patients both cover, or not at all.
    assert "| motionbert | keypoints | 1 |" in result["text"]


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    dataset_lib.ensure_built("synthetic_small", path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["--models=r3d,nope"], "--models: Unknown model 'nope'"),
    (["--folds=13"], "occurs in only"),
    (["--shard=3/2"], "--shard=3/2"),
    (["--resamples=10"], "at least 1000"),
])
def test_bad_input_is_one_clear_error(argv, message, tmp_path, data_dir, capsys):
    code = study.main(["--models=r3d", "--dataset=synthetic_small", f"--data_dir={data_dir}",
                       f"--workdir={tmp_path / 's'}", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_dataset_too_small_to_split(tmp_path, data_dir):
    sources = {s: dataset_lib.load_source(s, "synthetic_small", data_dir) for s in folds.STORED_SPLITS}
    clips = folds.read_clips(sources)
    few = [c for c in clips if c.patient in sorted({c.patient for c in clips})[:4]]
    with pytest.raises(folds.FoldError, match="too few|occurs in only"):
        folds.assign_folds(few, 3)


STUDY_ARGS = ["--models=motionbert", "--folds=2", "--epochs=1", "--dataset=synthetic_small", "--resamples=1000"]


def _study_process(workdir, data_dir, cache):
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true", STROKEVISION_XLA_CACHE=str(cache),
               PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "strokevision_jax.study", *STUDY_ARGS, f"--data_dir={data_dir}",
                             f"--workdir={workdir}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _table_without_cost(workdir):
    return (workdir / "table.md").read_text().split(study_report.COST_HEADING)[0]


def _results_without_timing(workdir):
    rows = list(csv.DictReader((workdir / "results.csv").open()))
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "train_clips_per_s")} for r in rows]


def test_kill_9_then_rerun_skips_finished_runs_and_gives_the_same_table(tmp_path, data_dir):
    cache = tmp_path / "xla"
    whole = tmp_path / "whole"
    done = _study_process(whole, data_dir, cache)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out

    killed = tmp_path / "killed"
    process = _study_process(killed, data_dir, cache)
    first = study.RunSpec("motionbert", 1, 0).workdir(killed) / "report.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert first.exists(), process.communicate()[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    stamp = first.stat().st_mtime_ns

    again = _study_process(killed, data_dir, cache)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "1 already finished, 1 to run" in out
    assert "step/s" not in out  # the runs' progress bars are off; the study prints one line per run
    assert first.stat().st_mtime_ns == stamp  # the finished run was not redone
    assert _table_without_cost(killed) == _table_without_cost(whole)
    assert _results_without_timing(killed) == _results_without_timing(whole)
    # evaluate works on a study run and reproduces its test accuracy.
    from strokevision_jax import evaluate

    run_dir = study.RunSpec("motionbert", 2, 0).workdir(killed)
    before = json.loads((run_dir / "report.json").read_text())["test"]["accuracy"]
    assert evaluate.evaluate_workdir(run_dir, data_dir, log=lambda *a: None)["test"]["accuracy"] == before


def test_folds_zero_keeps_the_dataset_split(tmp_path, data_dir):
    s = settings(folds=0)
    s = study.open_workdir(tmp_path / "s", s)
    clips, splits = study.prepare_splits(tmp_path / "s", s, data_dir, log=lambda *a: None)
    assert len(splits) == 1 and splits[0].name == "dataset split"
    for part in folds.PARTS:
        assert {split for split, _ in splits[0].refs[part]} == {part}
    assert [r.name for r in study.all_runs(s)] == ["r3d_18/split_seed0", "motionbert/split_seed0"]
    saved = json.loads((tmp_path / "s" / study.FOLDS_FILE).read_text())
    assert train.load_fold(str(tmp_path / "s" / study.FOLDS_FILE), 1) == splits[0]
    assert saved["dataset"] == "synthetic_small"
    with pytest.raises(train.UsageError, match="has folds 1 to 1"):
        train.load_fold(str(tmp_path / "s" / study.FOLDS_FILE), 2)


def test_early_fusion_is_compared_with_the_best_rgb_and_skeleton_models(tmp_path):
    """The two-pathway network, right on every clip: +37.5 pp against the best RGB model (5/8)
    and +50 pp against the best skeleton model (4/8), paired on the same clips."""
    s, study_dir = _hand_made_study(tmp_path)
    grown = study.open_workdir(study_dir, settings(models=("rgbposeconv3d",), folds=2))
    assert grown.models == ("r3d_18", "motionbert", "rgbposeconv3d")
    clips = folds.load_clips(study_dir / study.CLIPS_FILE)
    for fold, patient in ((1, clips[:4]), (2, clips[4:])):
        _fake_run(study_dir, s, "rgbposeconv3d", fold, [(c, c.label) for c in patient], clips)
    study_report.summarize(study_dir, grown, resamples=2000)
    fused = json.loads((study_dir / "summary.json").read_text())["models"]["rgbposeconv3d"]
    assert set(fused["minus_parts"]) == {"r3d_18", "motionbert"}
    assert fused["minus_parts"]["r3d_18"]["accuracy"]["value"] == pytest.approx(0.375)
    assert fused["minus_parts"]["motionbert"]["accuracy"]["value"] == pytest.approx(0.5)
    table = (study_dir / "table.md").read_text()
    assert "| early fusion rgbposeconv3d (rgbpose) | RGB + keypoints | 2 | 100.0 [100.0, 100.0] |" in table
    assert "| early fusion rgbposeconv3d (rgbpose) | motionbert | — | 50.0 [" in table
