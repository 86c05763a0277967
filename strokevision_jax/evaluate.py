"""Re-run the final evaluation of a training run: the best checkpoint on the test split.

    python -m strokevision_jax.evaluate --workdir=runs/r2plus1d_18_cpu

reads the run's settings from <workdir>/run_config.json, restores checkpoints/best and rewrites
report.json, report.txt, confusion_matrix.png, test_predictions.csv and validation_predictions.csv
(the last one is what late fusion, python -m strokevision_jax.fuse, tunes its weight on).
A run of several machines is evaluated the same way, or on one machine: the flags
--coordinator_address, --num_processes and --process_id join a multi-process job as in train.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import distributed, train


def evaluate_workdir(workdir: pathlib.Path, data_dir=None, num_workers: int = 0, log=print, *,
                     fast_init: bool | None = None) -> dict:
    """Rewrites the run's report from its best checkpoint (fast_init: see `train.train_and_evaluate`)."""
    workdir = pathlib.Path(workdir).absolute()  # orbax needs absolute paths
    if not distributed.is_primary():  # a multi-process job: process 0 logs and writes
        log = lambda *a, **k: None  # noqa: E731
    config_path = workdir / train.RUN_CONFIG
    if not config_path.exists():
        raise train.TrainingError(f"{config_path} not found: --workdir must be a directory written by "
                                  "`python -m strokevision_jax.train`.")
    config = json.loads(config_path.read_text())
    recipe = train.recipe_from_config(config)
    # A run started from a checkpoint has that checkpoint's architecture (not the preset's), so
    # the network is built from it again before the run's own weights are restored over it.
    init = config.get("init")
    if init is not None and not pathlib.Path(init).exists():
        raise train.TrainingError(f"{workdir} was started from {init} (run_config.json 'init'), which is gone; "
                                  "it fixes the network's architecture. Put it back at that path to evaluate.")
    run = train.Run(recipe, workdir, dataset_lib.resolve_data_dir(data_dir), config["seed"], num_workers,
                    train.make_mesh(), init=init, log=log, split=train.split_from_config(config),
                    fast_init=fast_init)
    checkpoints = train.Checkpoints(workdir, log)
    history = []
    metrics_path = workdir / "metrics.jsonl"
    if metrics_path.exists():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    try:
        return train.evaluate_best(run, checkpoints, history, log)
    finally:
        checkpoints.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--manual_dir", default=None,
                        help="runs on --dataset=manual: the recordings, to build strokevision/manual in --data_dir "
                             "if it is not there (e.g. another machine)")
    parser.add_argument("--skip_invalid", action="store_true", help="with --manual_dir: see train --help")
    distributed.add_flags(parser)
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k in ("coordinator_address", "num_processes", "skip_invalid")}
    return distributed.run_command(args, settings, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    train.enable_compilation_cache()
    try:
        if args.manual_dir is not None:
            dataset_lib.ensure_built(dataset_lib.MANUAL_CONFIG, args.data_dir, manual_dir=args.manual_dir,
                                     skip_invalid=args.skip_invalid)
        evaluate_workdir(pathlib.Path(args.workdir), args.data_dir, args.num_workers, fast_init=True)
    except (train.TrainingError, dataset_lib.DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
