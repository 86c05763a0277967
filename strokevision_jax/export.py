"""Export a trained run's inference function, checked against the JAX model on real clips.

    python -m strokevision_jax.export --workdir=runs/r2plus1d_18_cpu --format=stablehlo --out=exported/r2plus1d
    python -m strokevision_jax.export --workdir=runs/motionbert_cpu --format=savedmodel --out=exported/motionbert_tf

The exported function is the run's evaluation step: its best checkpoint (the weight average
where the recipe evaluates one), the mirrored second view where the recipe has one, and the
part of the input pipeline that runs on the device (PoseConv3D's heatmaps); it maps the model
input that the run's evaluation transform makes from a clip to (N, classes) float32 logits, for
any batch size N. Formats:
    stablehlo   jax.export's serialisation (StableHLO + calling convention), model.stablehlo.bin;
                load it with JAX alone (jax.export.deserialize)
    savedmodel  a TensorFlow SavedModel (jax2tf, the StableHLO inside an XlaCallModule op, the
                weights as variables), signature serving_default; load it with TensorFlow alone
    onnx        model.onnx, converted from the JAX program by jax2onnx (installed separately,
                see the README), checked with onnxruntime
--out gets spec.json (the inputs: names, shapes, dtype, layout, value ranges and normalisation,
joint order; the class names; what the function computes inside; the check), examples.npz (a
few test clips and the JAX model's logits) and run_exported.py (loads and runs the artefact
without this project). The artefact is written to a scratch directory beside --out, reloaded,
run on --clips clips of the dataset's test split (transformed as in evaluation; batches of all
of them and of one) and compared with the JAX model; only if the largest logit difference is
within --tolerance does it become --out. On any error nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from strokevision_jax import exported_runner
from strokevision_jax.data.classes import CLASS_NAMES
from strokevision_jax.errors import TrainingError, UsageError

FORMATS = ("stablehlo", "savedmodel", "onnx")
ARTEFACTS = {"stablehlo": "model.stablehlo.bin", "savedmodel": ".", "onnx": "model.onnx"}
SPEC_FILE = exported_runner.SPEC_FILE
EXAMPLES_FILE = exported_runner.EXAMPLES_FILE
RUNNER_FILE = "run_exported.py"
DEFAULT_TOLERANCE = 1e-5
EXAMPLE_BYTES = 16 << 20  # examples.npz keeps as many checked clips as fit in this
ONNX_INSTALL = "pip install onnx onnx-ir onnxruntime sympy && pip install --no-deps jax2onnx==0.17.1"


class ExportError(TrainingError):
    """The artefact cannot be made or disagrees with the JAX model; nothing was written."""


# ----------------------------------------------------------------------------- the function

@dataclasses.dataclass
class Forward:
    """A run's evaluation step as a function of the model inputs alone (`closed`, the weights
    as constants) or of (weight arrays, inputs) (`with_weights`, for formats that keep the
    weights as variables). Both return (N, classes) float32 logits."""

    names: tuple[str, ...]  # the inputs, in call order
    example_shapes: tuple[tuple[int, ...], ...]  # per example, without the batch dimension
    dtypes: tuple[np.dtype, ...]
    arrays: list[np.ndarray]  # the weights' numeric leaves (PRNG keys stay constants)
    with_weights: Callable
    closed: Callable


def input_names(trained) -> tuple[str, ...]:
    key = trained.input_key
    return (key,) if isinstance(key, str) else tuple(key)


def forward(trained, inputs: dict[str, np.ndarray]) -> Forward:
    """The evaluation step of `trained` (an inference.TrainedModel) as an exportable function;
    `inputs` (one batch) gives the per-example shapes and dtypes."""
    import jax
    import jax.numpy as jnp

    from strokevision_jax.steps import TrainState

    names = input_names(trained)
    leaves, treedef = jax.tree.flatten(trained.state.eval_weights())
    keys = [(np.asarray(jax.random.key_data(leaf)), jax.random.key_impl(leaf))
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else None for leaf in leaves]
    arrays = [np.asarray(leaf) for leaf, key in zip(leaves, keys) if key is None]
    eval_step = trained.eval_step

    def with_weights(weights, *clips):
        remaining = iter(weights)
        params, rest = jax.tree.unflatten(treedef, [
            next(remaining) if key is None else jax.random.wrap_key_data(key[0], impl=key[1]) for key in keys])
        count = clips[0].shape[0]
        batch = dict(zip(names, clips)) | {"label": jnp.zeros((count,), jnp.int32),
                                           "mask": jnp.ones((count,), jnp.bool_)}
        logits, _ = eval_step(TrainState(jnp.zeros((), jnp.int32), params, rest, None, None), batch)
        return logits.astype(jnp.float32)

    return Forward(names, tuple(inputs[n].shape[1:] for n in names), tuple(inputs[n].dtype for n in names),
                   arrays, with_weights, lambda *clips: with_weights(arrays, *clips))


def reference_logits(trained, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The JAX model's logits: the run's own jitted evaluation step on one batch."""
    count = len(next(iter(inputs.values())))
    batch = dict(inputs) | {"label": np.zeros(count, np.int32), "mask": np.ones(count, bool)}
    logits, _ = trained.eval_step(trained.state, batch)
    return np.asarray(logits, np.float32)


def check_clips(trained, data_dir, count: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """`count` clips spread over the test split of the run's dataset, as the run's evaluation
    transform makes them: ({input name: (count, ...)}, clip ids)."""
    from strokevision_jax import dataset as dataset_lib

    source = dataset_lib.load_source("test", trained.recipe.dataset, data_dir)
    if len(source) == 0:
        raise ExportError(f"The test split of strokevision/{trained.recipe.dataset} is empty: the export "
                          "is checked on its clips.")
    indices = sorted({int(i) for i in np.linspace(0, len(source) - 1, min(count, len(source))).round()})
    transform = trained.transform()
    records = [source[i] for i in indices]
    made = [transform(dict(record, label=0), None) for record in records]
    ids = [record.get("clip_id", i) for record, i in zip(records, indices)]
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in ids]
    return {name: np.stack([m[name] for m in made]) for name in input_names(trained)}, ids


# ----------------------------------------------------------------------------- the formats

def _symbolic_specs(fwd: Forward):
    import jax

    (batch,) = jax.export.symbolic_shape("b")
    return [jax.ShapeDtypeStruct((batch, *shape), dtype) for shape, dtype in zip(fwd.example_shapes, fwd.dtypes)]


def _batch_error(format_name: str, error: Exception) -> ExportError:
    return ExportError(f"{format_name}: the model cannot be exported with a polymorphic batch dimension "
                       f"({type(error).__name__}: {str(error)[:600]}). Every model of the zoo exports with one; "
                       "report this with the run's run_config.json.")


def write_stablehlo(fwd: Forward, directory: pathlib.Path) -> dict:
    import jax

    try:
        exported = jax.export.export(jax.jit(fwd.closed))(*_symbolic_specs(fwd))
    except Exception as error:  # shape polymorphism errors have several types
        raise _batch_error("stablehlo", error) from error
    (directory / ARTEFACTS["stablehlo"]).write_bytes(exported.serialize())
    return {"load": "exported = jax.export.deserialize(bytearray(open('model.stablehlo.bin', 'rb').read())); "
                    f"logits = exported.call({', '.join(fwd.names)})",
            "platforms": list(exported.platforms),
            "calling_convention_version": exported.calling_convention_version,
            "weights": "constants inside the module"}


def write_savedmodel(fwd: Forward, directory: pathlib.Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(fwd.with_weights, polymorphic_shapes=[None] + ["(b, ...)"] * len(fwd.names),
                               with_gradient=False)
    module = tf.Module()
    module.weights = [tf.Variable(array, trainable=False, name=f"weight_{i}") for i, array in enumerate(fwd.arrays)]
    signature = [tf.TensorSpec((None, *shape), tf.as_dtype(dtype), name=name)
                 for name, shape, dtype in zip(fwd.names, fwd.example_shapes, fwd.dtypes)]

    @tf.function(input_signature=signature, autograph=False)
    def serve(*clips):
        return {"logits": converted(module.weights, *clips)}

    try:
        concrete = serve.get_concrete_function()
    except Exception as error:
        raise _batch_error("savedmodel", error) from error
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": concrete})
    call = ", ".join(f"{name}=..." for name in fwd.names)
    return {"load": f"serve = tf.saved_model.load(DIR).signatures['serving_default']; "
                    f"logits = serve({call})['logits']",
            "signature": "serving_default", "tensorflow": tf.__version__,
            "weights": f"{len(fwd.arrays)} tf.Variables"}


def onnx_converter():
    """jax2onnx, or an ExportError saying how to install it."""
    try:
        import jax2onnx
        import onnxruntime  # noqa: F401  (the check runs the artefact)
    except ImportError as error:
        raise UsageError(
            f"--format=onnx needs jax2onnx (the maintained JAX -> ONNX converter, on PyPI) and onnxruntime, "
            f"and {error.name} is not installed. jax2onnx pins orbax-checkpoint < 0.11.37, older than this "
            f"project's, so it is no extra of the project: install it beside it with `{ONNX_INSTALL}`, or export "
            "--format=stablehlo (JAX) or --format=savedmodel (TensorFlow) instead.") from None
    return jax2onnx


def write_onnx(fwd: Forward, directory: pathlib.Path) -> dict:
    jax2onnx = onnx_converter()
    shapes = [("N", *shape) for shape in fwd.example_shapes]
    if any(np.dtype(d) != np.float32 for d in fwd.dtypes):
        raise ExportError(f"--format=onnx: inputs of dtype {[str(d) for d in fwd.dtypes]}; jax2onnx is used "
                          "with float32 inputs only. Export --format=stablehlo or savedmodel.")
    quiet = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # it reports every optional plugin it cannot import
        logger.setLevel(logging.ERROR)
    try:
        jax2onnx.to_onnx(fwd.closed, shapes, input_names=list(fwd.names), output_names=["logits"],
                         model_name="strokevision", return_mode="file",
                         output_path=str(directory / ARTEFACTS["onnx"]))
    except Exception as error:
        raise ExportError(f"--format=onnx: jax2onnx cannot convert this model ({type(error).__name__}: "
                          f"{str(error)[:600]}). Export --format=stablehlo or savedmodel instead.") from error
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    from importlib import metadata

    return {"load": "session = onnxruntime.InferenceSession('model.onnx'); "
                    f"logits = session.run(['logits'], {{{', '.join(repr(n) + ': ...' for n in fwd.names)}}})[0]",
            "converter": f"jax2onnx {metadata.version('jax2onnx')}", "batch_dimension": "N",
            "weights": "initializers inside the graph"}


WRITERS = {"stablehlo": write_stablehlo, "savedmodel": write_savedmodel, "onnx": write_onnx}


# ----------------------------------------------------------------------------- the spec

def _plain(value):
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _evaluation_config(config, training_only: tuple[str, ...]) -> dict:
    """The transform's settings (the project's VideoConfig / SkeletonConfig) that evaluation uses."""
    return {k: v for k, v in _plain(config).items() if k not in training_only}


def _frames(config, clip_frames: int, fps: float) -> str:
    if config.sampling == "uniform":
        return (f"{config.num_frames} frames spread evenly over the {clip_frames}-frame clip ({clip_frames / fps:g} s "
                f"at {fps:g} fps): frame k = floor(L / 2T + k L / T), L = {clip_frames}, T = {config.num_frames}")
    return (f"{config.num_frames} frames {config.frame_stride} apart, centred in the {clip_frames}-frame clip "
            f"({fps:g} fps); edge frames repeat when the window is longer")


def describe_inputs(trained, fwd: Forward) -> list[dict]:
    """One entry per input of the exported function: what the run's evaluation transform makes."""
    from strokevision_jax.data import keypoints as kp
    from strokevision_jax.inference import stored_format

    recipe = trained.recipe
    height, width, fps, clip_frames = stored_format(recipe.dataset)
    entries = []
    for name, shape, dtype in zip(fwd.names, fwd.example_shapes, fwd.dtypes):
        entry = {"name": name, "shape": [None, *shape], "dtype": str(np.dtype(dtype))}
        if name == "video":
            v = recipe.video
            region = ("a box around the person (head, shoulder, elbow and wrist keypoints of the whole clip, "
                      f"grown by {v.region_margin:.0%} on each side and to the aspect ratio of {v.resize[0]} x "
                      f"{v.resize[1]})" if v.region == "person" else "the whole frame")
            entry |= {
                "layout": "N,T,H,W,C: clips, frames, rows, columns, RGB channels (channels-last)",
                "values": "normalised by the caller, outside the exported function: (pixel / 255 - mean) / std "
                          "per RGB channel",
                "mean": list(v.mean), "std": list(v.std),
                "frames": _frames(v, clip_frames, fps),
                "pixels": f"{region} of the {height} x {width} stored frame, resized ({v.resize_method}) to "
                          f"{v.resize[0]} x {v.resize[1]}, centre crop {v.crop[0]} x {v.crop[1]}",
                "config": _evaluation_config(v, ("flip", "scale_jitter"))}
        else:
            s = recipe.skeleton
            joints = kp.H36M17_NAMES if s.layout == "h36m" else kp.COCO17_NAMES
            persons = "" if s.num_persons is None else "persons (person 0 the subject, the others zeros), "
            out_h, out_w = s.compact_eval_size
            if recipe.video is not None:
                coordinates = (f"pixels of a {out_h} x {out_w} frame showing exactly the video input's crop (so the "
                               "heatmaps and the frames align); a missing joint is (0, 0)")
            else:
                coordinates = {
                    "screen": f"MotionBERT screen coordinates of the {height} x {width} stored frame: x' = 2x / W - 1, "
                              "y' = 2y / W - H / W (x, y in pixels)",
                    "centre": f"pyskl PreNormalize2D of the {height} x {width} stored frame: x' = (x - W/2) / (W/2), "
                              "y' = (y - H/2) / (H/2)",
                    "compact": f"pixels of a {out_h} x {out_w} frame around the person (pyskl PoseCompact: the square "
                               f"box around every non-zero keypoint of the clip, grown by {s.compact_padding:.0%}); a "
                               "missing joint is (0, 0)",
                    "none": f"pixels of the {height} x {width} stored frame",
                }[s.normalization]
            entry |= {
                "layout": f"N,{'M,' if persons else ''}T,V,C: clips, {persons}frames, joints, (x, y, score)",
                "joints": list(joints), "coordinates": coordinates,
                **({"joints_from": "COCO-17 detections as MotionBERT converts them (coordinates and scores alike): "
                                   "root = mean of the hips, thorax = mean of the shoulders, spine = mean of both "
                                   "hips and shoulders, head = mean of the eyes; nose and limbs copied"}
                   if s.layout == "h36m" else {}),
                "score": "the pose estimator's confidence, in [0, 1]",
                "frames": _frames(s, clip_frames, fps),
                "config": _evaluation_config(s, ("flip", "compact_size", "compact_area"))}
        entries.append(entry)
    return entries


def describe_inside(trained) -> list[str]:
    recipe = trained.recipe
    inside = [f"weights: the moving average of the weights (decay {recipe.ema_decay:g}) of the best checkpoint "
              f"({trained.checkpoint_id})" if recipe.ema_decay else
              f"weights: the best checkpoint ({trained.checkpoint_id})"]
    if recipe.heatmaps is not None:
        h, w = recipe.skeleton.compact_eval_size
        inside.append(f"heatmaps: keypoints -> (N, T, {h}, {w}, 17) pose heatmaps on the device (pyskl's "
                      f"GeneratePoseTarget, sigma {recipe.heatmaps.sigma:g}, scores {recipe.heatmaps.use_score}, "
                      f"mode {recipe.heatmaps.mode})")
    if recipe.eval_flip:
        inside.append("mirrored view: the clip and its mirror image (width axis reversed) both go through the "
                      "network; logits = log of the mean of their two softmax probabilities")
    return inside


def make_spec(trained, fwd: Forward, format_name: str, details: dict, check: dict) -> dict:
    import jax

    from strokevision_jax import inference

    recipe = trained.recipe
    height, width, fps, clip_frames = inference.stored_format(recipe.dataset)
    return {
        "format": format_name, "artefact": ARTEFACTS[format_name], **details,
        "run": {"workdir": str(trained.workdir), "model": recipe.model, "preset": recipe.preset,
                "dataset": recipe.dataset, "checkpoint": trained.checkpoint_id},
        "stored_clip": {"frames": clip_frames, "fps": fps, "height": height, "width": width,
                        "made_by": "strokevision_jax.presets.Recipe.transform(train=False) on a stored clip"},
        "inputs": describe_inputs(trained, fwd),
        "batch": "polymorphic: any N >= 1 (the first dimension of every input, the same for all)",
        "outputs": [{"name": "logits", "shape": [None, len(CLASS_NAMES)], "dtype": "float32",
                     "meaning": "class scores in class_names order; softmax(logits) = the class probabilities"}],
        "class_names": list(CLASS_NAMES),
        "inside": describe_inside(trained),
        "check": check,
        "versions": {"jax": jax.__version__},
    }


# ----------------------------------------------------------------------------- writing, all or nothing

def check_out(out: pathlib.Path, overwrite: bool, workdir: pathlib.Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out={out} is a file; give a directory (it is created).")
    if out == workdir or out in workdir.parents:
        raise UsageError(f"--out={out} would hold or replace the run --workdir={workdir}; choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out={out} exists and is not empty; choose another --out, or pass --overwrite to "
                             "replace an earlier export there.")
        if not (out / SPEC_FILE).is_file():
            raise UsageError(f"--out={out} is not an earlier export (no {SPEC_FILE}); --overwrite replaces only "
                             "those. Choose another --out.")


@contextlib.contextmanager
def staged(out: pathlib.Path):
    """A scratch directory beside `out` that becomes `out` only if the block succeeds; on any error it
    is removed, and so are the parents of `out` this created."""
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = out.parent / f".{out.name}.export-{os.getpid()}-{time.time_ns()}"
        scratch.mkdir()  # the umask's permissions, as --out would get
    except OSError as error:
        raise UsageError(f"--out={out}: cannot write beside it ({error}); choose a writable --out.") from None
    try:
        yield scratch
        if out.exists():  # empty, or an earlier export with --overwrite
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / "export")
            try:
                scratch.replace(out)
            except OSError:
                (old / "export").replace(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            scratch.replace(out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        for path in created:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _stage(what: str, function, *args):
    """function(*args), any failure but an ExportError reported as `what` (nothing is written)."""
    try:
        return function(*args)
    except (ExportError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise ExportError(f"{what} ({type(error).__name__}: {str(error)[:600]}); nothing was written. Try "
                          "another --format, or report this with the run's run_config.json.") from error


def _run_back(format_name: str, names, directory: pathlib.Path, inputs: dict):
    """The artefact reloaded from `directory`, on all the clips at once and on the first alone."""
    predict = exported_runner.load_artefact(directory, format_name, names, ARTEFACTS[format_name])
    return predict(inputs), predict({name: array[:1] for name, array in inputs.items()})


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: blocked
        return False


def _size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_run(workdir, format_name: str, out, *, data_dir=None, clips: int = 8,
               tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False, log=print, trained=None) -> dict:
    """Exports the run in `workdir` to `out` (see the module doc); returns spec.json's content.
    `trained`: the run as `inference.load_run(workdir)` returned it, to export it several times
    without loading it again."""
    from strokevision_jax import dataset as dataset_lib
    from strokevision_jax import inference

    if format_name not in FORMATS:
        raise UsageError(f"--format={format_name!r} is not a format; choose one of {', '.join(FORMATS)}.")
    if clips < 1:
        raise UsageError(f"--clips={clips}: check on at least one clip.")
    if not tolerance >= 0:
        raise UsageError(f"--tolerance={tolerance}: give a non-negative bound on the logit difference.")
    shown = pathlib.Path(out)  # as given, for the messages
    workdir, out = pathlib.Path(workdir).absolute(), pathlib.Path(out).absolute()
    if not workdir.is_dir():
        raise TrainingError(f"--workdir={workdir}: no such directory; give the --workdir of a training run.")
    check_out(out, overwrite, workdir)
    if format_name == "onnx":  # the runtimes, before the run is loaded
        onnx_converter()
    elif format_name == "savedmodel" and not _installed("tensorflow"):
        raise UsageError("--format=savedmodel needs TensorFlow, which is not installed: install the project's tf "
                         "extra (pip install -e \".[tf]\"), or export --format=stablehlo (JAX alone).")
    started = time.perf_counter()
    if trained is None:
        trained = inference.load_run(workdir, fast_init=True)
    elif trained.workdir != workdir:
        raise ValueError(f"export_run: trained is the run in {trained.workdir}, not {workdir}.")
    try:
        inputs, ids = check_clips(trained, data_dir, clips)
    except dataset_lib.DatasetError as error:
        raise ExportError(f"The export is checked on clips of the run's dataset, which cannot be read: {error}") from None
    expected = reference_logits(trained, inputs)
    fwd = forward(trained, inputs)
    with staged(out) as scratch:
        details = _stage(f"--format={format_name}: writing the artefact failed", WRITERS[format_name], fwd, scratch)
        artefact_bytes = _size(scratch)
        got, single = _stage(f"The exported {format_name} model cannot be loaded or run by its runtime", _run_back,
                             format_name, fwd.names, scratch, inputs)
        difference = float(max(np.abs(got - expected).max(), np.abs(single - expected[:1]).max()))
        log(f"max |logit difference| from the JAX model on {len(ids)} test clips (batches of {len(ids)} and 1): "
            f"{difference:.3g} (tolerance {tolerance:g})")
        if not difference <= tolerance:  # NaN disagrees too
            hint = ("Try another --format, or report this with the run's run_config.json."
                    if trained.recipe.compute_dtype == "float32" else
                    f"This run computes in {trained.recipe.compute_dtype}, where compiling the same program again "
                    "rounds differently: pass a --tolerance that fits that precision (its logits' scale times 1e-2).")
            raise ExportError(
                f"The exported {format_name} model disagrees with the JAX model: max |logit difference| "
                f"{difference:.3g} > --tolerance={tolerance:g} on {len(ids)} test clips; nothing was written to "
                f"--out={out}. {hint}")
        check = {"split": "test", "clips": ids, "batch_sizes": [len(ids), 1],
                 "max_abs_logit_difference": difference, "tolerance": tolerance}
        spec = make_spec(trained, fwd, format_name, details, check)
        (scratch / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        per_clip = max(1, sum(a[0].nbytes for a in inputs.values()))
        keep = max(1, min(len(ids), EXAMPLE_BYTES // per_clip))
        np.savez(scratch / EXAMPLES_FILE, logits=expected[:keep], clip_id=np.array(ids[:keep]),
                 **{name: array[:keep] for name, array in inputs.items()})
        shutil.copyfile(pathlib.Path(exported_runner.__file__), scratch / RUNNER_FILE)
    spec["bytes"] = {"artefact": artefact_bytes, "directory": _size(out)}
    log(f"wrote {shown} ({format_name}: {artefact_bytes / 1e6:.2f} MB artefact, {spec['bytes']['directory'] / 1e6:.2f} "
        f"MB in all) in {time.perf_counter() - started:.0f} s; try it: python {shown / RUNNER_FILE}")
    return spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run (python -m strokevision_jax.train)")
    parser.add_argument("--format", required=True, help="one of " + ", ".join(FORMATS))
    parser.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data dir with the run's dataset (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--clips", type=int, default=8, help="test clips the artefact is checked on")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |logit difference| from the JAX model accepted")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    args = parser.parse_args(argv)
    try:
        export_run(args.workdir, args.format, args.out, data_dir=args.data_dir, clips=args.clips,
                   tolerance=args.tolerance, overwrite=args.overwrite)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
