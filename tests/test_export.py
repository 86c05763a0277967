"""export end to end: tiny trained runs of a video and a skeleton model exported to StableHLO and a
SavedModel, each reloaded in a fresh process (JAX alone; TensorFlow alone, with this project,
JAX and Flax unimportable) on clips the export never saw and compared with the JAX model; every
bad input ends in one clear error with nothing written."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import export, exported_runner, inference, presets, train
from strokevision_jax.data.classes import CLASS_NAMES

TOLERANCE = 1e-5
# Run in a fresh interpreter (-I: no PYTHONPATH, no user site, not the working directory): the
# imports of the named top-level packages fail, then run_exported.py runs with sys.argv.
BLOCKING_RUNNER = """
import runpy, sys
blocked, extra_path = sys.argv[1].split(","), sys.argv[2]
if extra_path:
    sys.path.append(extra_path)
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not set(blocked) & {m.partition(".")[0] for m in sys.modules}
"""
PROJECT = ["strokevision_jax", "tfds_builder", "checkpoints_convert", "flax"]
ONLY = {"stablehlo": PROJECT + ["tensorflow", "onnxruntime"],  # JAX alone
        "savedmodel": PROJECT + ["jax", "jaxlib", "onnxruntime"],  # TensorFlow alone
        "onnx": PROJECT + ["jax", "jaxlib", "tensorflow"]}  # onnxruntime alone


@pytest.fixture
def tiny_presets(monkeypatch):
    """The cpu presets with 4 x 32 x 32 clips or 8-frame skeletons, one epoch on synthetic_small."""
    real = presets.recipe

    def tiny(model, preset):
        recipe = real(model, preset)
        if recipe.video is not None:
            recipe = presets.with_clip(recipe, num_frames=4, resize=(36, 48), crop=(32, 32))
        else:
            recipe = recipe.replace(skeleton=dataclasses.replace(recipe.skeleton, num_frames=8))
        return recipe.replace(dataset="synthetic_small", epochs=1, batch_size=16)

    monkeypatch.setattr(presets, "recipe", tiny)


def _train(model, workdir, data_dir):
    assert train.main([f"--model={model}", "--preset=cpu", f"--workdir={workdir}", f"--data_dir={data_dir}"]) == 0
    return workdir


def _export(workdir, format_name, out, data_dir, *extra):
    return export.main([f"--workdir={workdir}", f"--format={format_name}", f"--out={out}",
                        f"--data_dir={data_dir}", "--clips=4", *extra])


def _export_again(trained, format_name, out, data_dir, **flags):
    """An export of the run already loaded (export_run, skipping the seconds of loading it)."""
    flags = {"clips": 2} | flags
    return export.export_run(trained.workdir, format_name, out, data_dir=data_dir, trained=trained,
                             log=lambda line: None, **flags)


def _unseen_clips(trained, data_dir, count=3):
    """Validation clips (the export checks on test clips) in a batch size the export never ran."""
    source = dataset_lib.load_source("validation", trained.recipe.dataset, data_dir)
    made = [trained.transform()(dict(source[i], label=0), None) for i in range(count)]
    return {name: np.stack([m[name] for m in made]) for name in export.input_names(trained)}


def _run_in_fresh_process(out, format_name, inputs, tmp_path):
    """The logits of run_exported.py on `inputs`, in a process where only the format's runtime imports."""
    np.savez(tmp_path / "inputs.npz", **inputs)
    saved = tmp_path / f"{format_name}_logits.npy"
    extra_path = ""
    if format_name == "onnx":  # onnxruntime may be installed outside the venv's site-packages (-I drops PYTHONPATH)
        extra_path = str(pathlib.Path(importlib.util.find_spec("onnxruntime").origin).parents[1])
    command = [sys.executable, "-I", "-c", BLOCKING_RUNNER, ",".join(ONLY[format_name]), extra_path,
               str(out / export.RUNNER_FILE), str(out), f"--inputs={tmp_path / 'inputs.npz'}", f"--save={saved}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "predicted:" in result.stdout
    return np.load(saved)


def _check_spec(out, format_name, trained):
    spec = json.loads((out / export.SPEC_FILE).read_text())
    assert spec["format"] == format_name and spec["class_names"] == list(CLASS_NAMES)
    assert spec["run"]["model"] == trained.name and spec["run"]["checkpoint"] == trained.checkpoint_id
    assert [entry["name"] for entry in spec["inputs"]] == list(export.input_names(trained))
    assert all(entry["shape"][0] is None and entry["dtype"] == "float32" for entry in spec["inputs"])
    assert spec["check"]["max_abs_logit_difference"] <= TOLERANCE and len(spec["check"]["clips"]) == 4
    return spec


def _assert_exports_reload(trained, workdir, data_dir, tmp_path, capsys, formats):
    inputs = _unseen_clips(trained, data_dir)
    expected = export.reference_logits(trained, inputs)
    for format_name in formats:
        out = tmp_path / format_name
        if format_name == "savedmodel":  # through the command
            assert _export(workdir, format_name, out, data_dir) == 0, capsys.readouterr().err
            assert "max |logit difference| from the JAX model on 4 test clips" in capsys.readouterr().out
        else:  # the run already loaded: seconds saved
            _export_again(trained, format_name, out, data_dir, clips=4)
        _check_spec(out, format_name, trained)
        got = _run_in_fresh_process(out, format_name, inputs, tmp_path)
        assert got.shape == (3, len(CLASS_NAMES))
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=format_name)
    assert not list(tmp_path.glob(".*export-*")), "a scratch directory was left"


def test_video_run_exports_and_reloads(tiny_presets, small_data_dir, tmp_path, capsys, monkeypatch):
    workdir = _train("r2plus1d", tmp_path / "run", small_data_dir)
    trained = inference.load_run(workdir)
    assert trained.recipe.eval_flip and trained.recipe.ema_decay  # the export must carry both
    _assert_exports_reload(trained, workdir, small_data_dir, tmp_path, capsys, ["stablehlo", "savedmodel"])
    spec = json.loads((tmp_path / "stablehlo" / export.SPEC_FILE).read_text())
    assert spec["inputs"][0]["shape"] == [None, 4, 32, 32, 3] and "mirrored view" in " ".join(spec["inside"])

    # An artefact that disagrees is refused, and the earlier export in --out stays as it was.
    before = {p.name: p.read_bytes() for p in (tmp_path / "stablehlo").iterdir()}
    real_load = exported_runner.load_artefact
    monkeypatch.setattr(exported_runner, "load_artefact",
                        lambda *args: (lambda inputs: real_load(*args)(inputs) + 1e-3))
    with pytest.raises(export.ExportError, match=r"disagrees with the JAX model.*0\.001 > --tolerance=1e-05"):
        _export_again(trained, "stablehlo", tmp_path / "stablehlo", small_data_dir, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "stablehlo").iterdir()} == before

    # A failure halfway through writing leaves nothing, not even the parent directory it made.
    def half_written(fwd, directory):
        (directory / "model.stablehlo.bin").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setitem(export.WRITERS, "stablehlo", half_written)
    with pytest.raises(export.ExportError, match="writing the artefact failed.*No space left"):
        _export_again(trained, "stablehlo", tmp_path / "new" / "out", small_data_dir)
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob(".*export-*")) and not list(tmp_path.glob(".*old-*"))


def test_skeleton_run_exports_and_reloads(tiny_presets, small_data_dir, tmp_path, capsys):
    workdir = _train("motionbert", tmp_path / "run", small_data_dir)
    trained = inference.load_run(workdir)
    formats = ["stablehlo", "savedmodel"]
    if importlib.util.find_spec("jax2onnx") and importlib.util.find_spec("onnxruntime"):
        formats.append("onnx")  # jax2onnx is installed beside the project, not by it (README)
    _assert_exports_reload(trained, workdir, small_data_dir, tmp_path, capsys, formats)
    keypoints = json.loads((tmp_path / "savedmodel" / export.SPEC_FILE).read_text())["inputs"][0]
    assert keypoints["shape"] == [None, 1, 8, 17, 3] and keypoints["joints"][0] == "root"
    assert keypoints["layout"].startswith("N,M,T,V,C")

    # --overwrite replaces an earlier export with a new one.
    _export_again(trained, "stablehlo", tmp_path / "savedmodel", small_data_dir, overwrite=True)
    assert (tmp_path / "savedmodel" / "model.stablehlo.bin").is_file()
    assert not (tmp_path / "savedmodel" / "saved_model.pb").exists()
    assert not list(tmp_path.glob(".*old-*"))


def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    out = tmp_path / "new" / "out"

    def refused(code, *needles, **flags):
        argv = [f"--{k}={v}" for k, v in ({"workdir": not_a_run, "format": "stablehlo", "out": out} | flags).items()]
        assert export.main(argv) == code
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        for needle in needles:
            assert needle in err, err

    refused(2, "--format='tflite' is not a format", "stablehlo, savedmodel, onnx", format="tflite")
    refused(1, "is not a training run", "--workdir")
    refused(1, "no such directory", workdir=tmp_path / "missing")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused(2, "exists and is not empty", "--overwrite", out=busy)
    assert export.main([f"--workdir={not_a_run}", "--format=stablehlo", f"--out={busy}", "--overwrite"]) == 2
    assert "is not an earlier export" in capsys.readouterr().err
    refused(2, "would hold or replace the run", out=tmp_path)
    refused(2, "--tolerance=-1.0", tolerance=-1)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    refused(2, "--format=savedmodel needs TensorFlow", "tf extra", format="savedmodel")
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    refused(2, "--format=onnx needs jax2onnx", export.ONNX_INSTALL, "--format=stablehlo", format="onnx")
    assert (busy / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "not_a_run"]
