"""Run a model exported by `python -m strokevision_jax.export`, without this project.

`export` copies this file beside the artefact as run_exported.py. It needs only NumPy and the
format's own runtime: JAX for `stablehlo`, TensorFlow for `savedmodel`, onnxruntime for `onnx`.

    python run_exported.py                      # the directory this file is in, on its examples.npz
    python run_exported.py DIR --inputs=clips.npz --save=logits.npy

--inputs: an .npz with one array per model input, named as in spec.json's "inputs" (shape
(N, ...) with any N >= 1, the dtype and values spec.json describes). Without it, the clips of
examples.npz, whose "logits" (the JAX model's own) the output is compared with. Prints the
logits, the predicted classes and, on the examples, the largest difference from the JAX logits.

From Python (this file imports nothing of the project):

    spec, predict = load("exported/r2plus1d")
    logits = predict({"video": clips})   # (N, classes) float32
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

SPEC_FILE = "spec.json"
EXAMPLES_FILE = "examples.npz"


def load(directory):
    """(spec, predict): spec.json as a dict, and predict(inputs) -> (N, classes) float32 logits,
    `inputs` a dict of arrays named as spec["inputs"]."""
    directory = pathlib.Path(directory)
    spec = json.loads((directory / SPEC_FILE).read_text())
    names = [entry["name"] for entry in spec["inputs"]]
    return spec, load_artefact(directory, spec["format"], names, spec["artefact"])


def load_artefact(directory, format_name: str, names, artefact: str):
    """predict(inputs) -> logits for the `format_name` artefact at directory / artefact."""
    path = pathlib.Path(directory) / artefact
    if format_name == "stablehlo":
        from jax import export

        exported = export.deserialize(bytearray(path.read_bytes()))

        def predict(inputs):
            return np.asarray(exported.call(*[np.asarray(inputs[name]) for name in names]), np.float32)

    elif format_name == "savedmodel":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]

        def predict(inputs):
            return serve(**{name: tf.constant(inputs[name]) for name in names})["logits"].numpy()

    elif format_name == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def predict(inputs):
            return session.run(["logits"], {name: np.asarray(inputs[name]) for name in names})[0]

    else:
        raise ValueError(f"{directory}: unknown format {format_name!r}.")
    return predict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default=str(pathlib.Path(__file__).resolve().parent))
    parser.add_argument("--inputs", default=None, help="an .npz of model inputs (default: examples.npz)")
    parser.add_argument("--save", default=None, help="write the logits to this .npy file")
    args = parser.parse_args(argv)
    directory = pathlib.Path(args.directory)
    spec, predict = load(directory)
    with np.load(args.inputs or directory / EXAMPLES_FILE) as data:
        inputs = {entry["name"]: data[entry["name"]] for entry in spec["inputs"]}
        expected = None if args.inputs else data["logits"]
    logits = predict(inputs)
    if args.save:
        np.save(args.save, logits)
    np.set_printoptions(precision=4, suppress=True)
    print(f"{spec['format']} {directory}: logits of {len(logits)} clips\n{logits}")
    print("predicted:", ", ".join(spec["class_names"][k] for k in logits.argmax(-1)))
    if expected is not None:
        difference = float(np.abs(logits - expected).max())
        tolerance = spec["check"]["tolerance"]
        print(f"max |logit difference| from the JAX model on {len(logits)} example clips: {difference:.3g} "
              f"(tolerance {tolerance:g})")
        if not difference <= tolerance:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
