"""Train an action classifier on StrokeVision-Bench clips.

    python -m strokevision_jax.train --model=r2plus1d

builds the default dataset on first use, trains with the preset for this machine (`paper` on a GPU
or TPU, `cpu` otherwise), keeps the latest and the best checkpoints in --workdir, resumes from the
latest when rerun, and ends by evaluating the best checkpoint on the test split (report.json).

The steps are pure functions of (state, batch), jitted once, with the state donated; the batch is
placed with a NamedSharding over a 1-D 'data' Mesh of all devices, the state is replicated.

Several machines: start one process per machine (or per GPU) with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, the same command line otherwise (strokevision_jax.distributed;
README, "Training on several machines"); --batch_size stays the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import jax

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import distributed, presets
from strokevision_jax import folds as folds_lib

# The training API, importable from the command's module too.
from strokevision_jax.checkpoints import Checkpoints  # noqa: F401
from strokevision_jax.data import pipeline
from strokevision_jax.errors import TrainingError, UsageError, WorkdirInUse  # noqa: F401
from strokevision_jax.loop import (  # noqa: F401
    RUN_CONFIG,
    Run,
    _model_inputs,
    _recipe_dict,
    check_workdir,
    class_weights,
    default_preset,
    evaluate_best,
    recipe_from_config,
    run_config,
    split_from_config,
    train_and_evaluate,
    train_one_epoch,
)
from strokevision_jax.models import registry
from strokevision_jax.steps import (  # noqa: F401
    TrainState,
    batch_inputs,
    input_adapter,
    learning_rate_schedule,
    make_eval_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
    update_ema,
    weighted_cross_entropy,
)
from strokevision_jax.weights import create_model  # noqa: F401

# ----------------------------------------------------------------------------- command line


def resolve_model(name: str | None) -> str:
    try:
        return registry.resolve(name)
    except registry.UnknownModelError as error:
        raise UsageError(f"--model: {error}") from None


def load_fold(folds_file: str, fold: int | None) -> folds_lib.Split:
    """Fold `fold` (1-based) of a folds.json written by `python -m strokevision_jax.study`."""
    path = pathlib.Path(folds_file)
    try:
        data = json.loads(path.read_text())
        splits = data["splits"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UsageError(f"--folds_file={path}: cannot read it ({type(error).__name__}: {error}); pass the "
                         "folds.json of a study workdir.") from None
    if fold is None or not 1 <= fold <= len(splits):
        raise UsageError(f"--fold={fold}: {path} has folds 1 to {len(splits)}; pass one of them with --fold.")
    try:
        return folds_lib.Split.from_json(splits[fold - 1])
    except folds_lib.FoldError as error:
        raise UsageError(f"--folds_file={path}: {error}") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model or its short name: " + ", ".join(registry.names()) + "; short names: " + ", ".join(registry.ALIASES))
    parser.add_argument("--preset", choices=presets.PRESETS, default=None,
                        help="default: paper with a GPU/TPU, cpu otherwise")
    parser.add_argument("--workdir", default=None, help="default: runs/<model>_<preset>")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--dataset", default=None, help="strokevision config, e.g. synthetic_small")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    init = parser.add_mutually_exclusive_group()
    init.add_argument("--init_from", default=None,
                      help="start from a directory written by python -m checkpoints_convert")
    init.add_argument("--pretrained", default=None,
                      help="start from a torchvision .pth / .safetensors file (converted on the fly)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="grain worker processes (default: 0 with the cpu preset, else min(8, cores))")
    parser.add_argument("--folds_file", default=None,
                        help="train on a patient-grouped fold: the folds.json of a study workdir (with --fold)")
    parser.add_argument("--fold", type=int, default=None, help="with --folds_file: the fold, from 1")
    parser.add_argument("--manual_dir", default=None,
                        help="with --dataset=manual: your recordings (labels.csv, videos, keypoints), imported "
                             "on first use; see tfds_builder/strokevision/README.md")
    parser.add_argument("--skip_invalid", action="store_true",
                        help="with --manual_dir: skip bad rows of labels.csv (listed after the build) instead of stopping")
    distributed.add_flags(parser)
    return parser.parse_args(argv)


def job_settings(args: argparse.Namespace) -> dict:
    """What every process of a multi-process job must be given alike: the command line but for
    --process_id and what may differ between machines (paths, worker counts, the timeout)."""
    local = ("process_id", "initialization_timeout", "workdir", "data_dir", "manual_dir", "num_workers")
    return {k: v for k, v in vars(args).items() if k not in local}


def enable_compilation_cache() -> None:
    """XLA's persistent cache: a rerun (resume, evaluate) skips recompiling the steps."""
    cache = os.environ.get("STROKEVISION_XLA_CACHE", os.path.expanduser("~/.cache/strokevision_jax/xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    return distributed.run_command(args, job_settings(args), lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    enable_compilation_cache()
    pipeline.retain_freed_memory()  # large clip buffers stay in the heap (see its docstring)
    try:
        model = resolve_model(args.model)
        preset = args.preset or default_preset()
        overrides = {k: getattr(args, k) for k in ("dataset", "epochs", "batch_size", "learning_rate")
                     if getattr(args, k) is not None}
        try:
            recipe = presets.recipe(model, preset).replace(**overrides)
        except ValueError as error:
            raise UsageError(str(error)) from None
        workdir = pathlib.Path(args.workdir or f"runs/{model}_{preset}")
        data_dir = dataset_lib.resolve_data_dir(args.data_dir)
        why = ("--preset given" if args.preset else
               f"default for backend '{jax.default_backend()}'; --preset=paper or cpu overrides")
        if distributed.is_primary():
            print(f"strokevision_jax.train: model {model}, preset {preset} ({why})")
            print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; "
                  f"data dir: {data_dir}; workdir: {workdir}", flush=True)
        num_workers = args.num_workers
        if num_workers is None:
            num_workers = 0 if preset == "cpu" else min(8, os.cpu_count() or 1)
        init = args.init_from or args.pretrained
        if init is not None:
            init = str(pathlib.Path(init).absolute())
        if args.manual_dir is not None or recipe.dataset == dataset_lib.MANUAL_CONFIG:
            if recipe.dataset != dataset_lib.MANUAL_CONFIG:
                raise UsageError(f"--manual_dir is read by --dataset=manual only, not --dataset={recipe.dataset}.")
            # Built (or checked against labels.csv) before the workdir is touched.
            dataset_lib.ensure_built(recipe.dataset, data_dir, manual_dir=args.manual_dir,
                                     skip_invalid=args.skip_invalid)
        split = None
        if args.folds_file is not None:
            split = load_fold(args.folds_file, args.fold)
        elif args.fold is not None:
            raise UsageError("--fold needs --folds_file (the folds.json of a study workdir).")
        check_workdir(workdir, run_config(recipe, overrides, args.seed, init, split))
        train_and_evaluate(recipe, workdir, data_dir, seed=args.seed, num_workers=num_workers,
                           init=init, split=split, fast_init=True)
    except (TrainingError, dataset_lib.DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

