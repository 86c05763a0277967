"""How fast `predict` scores a whole recording, against the recording's own length.

    python -m strokevision_jax.benchmark.recording --workdir=runs/r2plus1d_18_cpu

Writes one simulated 60 s trial of a test patient as a user's files (export_trial: .mp4 + MMPose
JSON) into a temporary directory, then runs exactly what `python -m strokevision_jax.predict`
runs on them --repeats times in this process, and prints:
  load s          the run's weights restored and its model built (once per process)
  first s         the first prediction: includes compiling the evaluation step
  predict s       the median of the later ones: decoding the video, resizing, the windows
                  through the jitted model, the HSMM and its posterior samples, the outputs
  decode-only s   the same video decoded and resized without any model (the floor)
  x real time     the recording's seconds / predict s (above 1: faster than real time)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import types

import numpy as np


def measure(workdir: str, seconds: float | None, repeats: int, stride: int | None, trial: str | None) -> dict:
    from strokevision_jax import export_trial, inference, predict
    from strokevision_jax.data import videos
    from strokevision_jax.loop import RUN_CONFIG, recipe_from_config

    run = pathlib.Path(workdir)
    if not (run / RUN_CONFIG).is_file():
        raise predict.PredictError(f"--workdir={workdir} is not a training run (no {RUN_CONFIG}).")
    recipe = recipe_from_config(json.loads((run / RUN_CONFIG).read_text()))
    simulator = export_trial.SIMULATORS.get(recipe.dataset, export_trial.SIMULATORS["synthetic"])
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        spec = export_trial.find_trial(simulator, trial)
        paths = export_trial.export_trial(simulator, spec, scratch / "recording", max_seconds=seconds)
        height, width, fps, _ = inference.stored_format(recipe.dataset)
        began = time.perf_counter()
        frames = sum(1 for _ in videos.stream_frames(paths["video"], (height, width), fps,
                                                     keep_pixels=recipe.video is not None))
        decode_only = time.perf_counter() - began
        began = time.perf_counter()
        inference.load_run(run, batch_size=32)  # what predict's first call also pays
        load = time.perf_counter() - began
        timings = []
        for index in range(repeats):
            args = types.SimpleNamespace(
                workdir=str(run), video=str(paths["video"]), keypoints=str(paths["keypoints"]),
                out=str(scratch / f"out{index}"), stride=stride, batch_size=32,
                evidence_frames=predict.timeline.DEFAULT_EVIDENCE_FRAMES,
                adaptation=predict.timeline.DEFAULT_ADAPTATION, hand=None, truth=None, quiet=True)
            report = predict.predict(args)
            timings.append(report["timing"]["predict_seconds"])
    recording = frames / fps
    steady = float(np.median(timings[1:])) if len(timings) > 1 else timings[0]
    return {"workdir": str(run.absolute()), "model": recipe.model, "preset": recipe.preset, "trial": spec.trial_id,
            "recording_seconds": round(recording, 2), "frames": frames, "windows": report["settings"]["windows"],
            "stride": report["settings"]["stride"], "load_seconds": round(load, 2),
            "first_seconds": round(timings[0], 2), "predict_seconds": round(steady, 2),
            "predict_seconds_all": [round(t, 2) for t in timings], "decode_only_seconds": round(decode_only, 2),
            "real_time_factor": round(recording / steady, 2),
            "real_time_factor_first": round(recording / timings[0], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.benchmark.recording", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run")
    parser.add_argument("--seconds", type=float, default=None, help="only the first seconds of the trial")
    parser.add_argument("--trial", default=None, help="which trial (default: the first test patient's)")
    parser.add_argument("--repeats", type=int, default=3, help="predictions (the first one compiles)")
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    from strokevision_jax.predict import PredictError

    try:
        result = measure(args.workdir, args.seconds, max(1, args.repeats), args.stride, args.trial)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import jax

    result["device"] = f"{jax.devices()[0].platform} x {jax.device_count()}"
    print(f"{result['model']} ({result['preset']}) on {result['trial']}: {result['recording_seconds']} s, "
          f"{result['frames']} frames, {result['windows']} windows (stride {result['stride']}), {result['device']}")
    print(f"  load {result['load_seconds']} s | first {result['first_seconds']} s | predict {result['predict_seconds']} s "
          f"(median of {len(result['predict_seconds_all']) - 1 or 1}) | decode-only {result['decode_only_seconds']} s")
    print(f"  {result['real_time_factor']}x real time ({result['real_time_factor_first']}x for the first, compiling)")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
