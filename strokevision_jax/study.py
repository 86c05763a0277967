"""A benchmark study: every (model, fold, seed) trained and tested on patient-grouped folds.

    python -m strokevision_jax.study --models=r3d,r2plus1d,mvit,swin,motionbert,poseconv3d,msg3d \\
        --folds=5 --seeds=1 --workdir=studies/table1

pools the dataset's patients into k folds (grouped by patient, stratified by class mix; the
validation patients of each fold come from its training folds), then runs each (model, fold,
seed) as an ordinary training run in <workdir>/runs/<model>/fold<i>_seed<s> (resumable;
`python -m strokevision_jax.evaluate --workdir=...` works on it), and summarises them in
results.csv, predictions.csv (out-of-fold), table.md (means with patient-bootstrap intervals,
paired comparisons with the best model), accuracy.png and confusions.png.

Rerunning the same command skips finished runs and resumes an interrupted one. `--folds=0` keeps
the dataset's own train / validation / test split (the paper's protocol). `--shard=i/n` runs
every n-th run starting at run i (0 <= i < n), so that n processes or machines share a study;
`--summarize` merges what is there, listing missing runs.

Each run can also span several machines: --coordinator_address, --num_processes and --process_id
(as in train) make every process of the job take part in every run; process 0 writes the
study's files and tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import distributed, presets, report, train
from strokevision_jax import folds as folds_lib
from strokevision_jax.models import registry
from strokevision_jax.workdir_lock import live_holder

STUDY_FILE = "study.json"
CLIPS_FILE = "clips.json"
FOLDS_FILE = "folds.json"
MODEL_INFO = "model_info.json"
STUDY_VERSION = 1


class StudyError(RuntimeError):
    """A study that cannot start or go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides a study's results (its identity: a workdir holds one study)."""

    models: tuple[str, ...]
    folds: int
    seeds: tuple[int, ...]
    preset: str
    dataset: str
    epochs: int | None = None
    fold_seed: int = 0
    validation_fraction: float = 0.15

    def overrides(self) -> dict:
        """The train-CLI overrides every run of the study gets."""
        overrides = {"dataset": self.dataset}
        if self.epochs is not None:
            overrides["epochs"] = self.epochs
        return overrides

    def recipe(self, model: str) -> presets.Recipe:
        return presets.recipe(model, self.preset).replace(**self.overrides())

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["models"], data["seeds"] = list(self.models), list(self.seeds)
        data["version"] = STUDY_VERSION
        data["recipes"] = {m: train._recipe_dict(self.recipe(m)) for m in self.models}
        return data


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    fold: int  # 1-based; 0: the dataset's own split
    seed: int

    @property
    def name(self) -> str:
        part = f"fold{self.fold}" if self.fold else "split"
        return f"{self.model}/{part}_seed{self.seed}"

    def workdir(self, study_dir: pathlib.Path) -> pathlib.Path:
        return study_dir / "runs" / self.name


def all_runs(settings: Settings) -> list[RunSpec]:
    """Every run, fold-major: after the first fold every model has a result."""
    folds = range(1, settings.folds + 1) if settings.folds else (0,)
    return [RunSpec(m, f, s) for s in settings.seeds for f in folds for m in settings.models]


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise StudyError(f"--shard={text!r}: write it as i/n, e.g. --shard=0/2 and --shard=1/2 for two "
                         "processes.") from None
    if count < 1 or not 0 <= index < count:
        raise StudyError(f"--shard={text}: needs n >= 1 and 0 <= i < n (shards are numbered from 0), e.g. "
                         f"--shard=0/{max(count, 2)}.")
    return index, count


# The paper's seven, by their short names.
PAPER_MODELS = ",".join(registry.short_name(name) for name in registry.PAPER_MODELS)


def resolve_fusions(text: str, models: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`video+skeleton,...` -> ((video model, skeleton model), ...), both models of the study."""
    out = []
    for entry in [e.strip() for e in text.split(",") if e.strip()]:
        parts = entry.split("+")
        if len(parts) != 2:
            raise StudyError(f"--fusions: {entry!r} is not <video model>+<skeleton model> (two models of the "
                             "study, short names allowed).")
        try:
            video, skeleton = (registry.resolve(part.strip()) for part in parts)
        except registry.UnknownModelError as error:
            raise StudyError(f"--fusions: {error}") from None
        kinds = [registry.get(m).family.input_kind for m in (video, skeleton)]
        if kinds[0] != "video" or kinds[1] in ("video", "video+heatmaps"):
            raise StudyError(f"--fusions: {entry!r} must name a video model first and a skeleton model second "
                             f"({video} reads {kinds[0]}, {skeleton} reads {kinds[1]}).")
        absent = [m for m in (video, skeleton) if m not in models]
        if absent:
            raise StudyError(f"--fusions: {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not a model of "
                             "this study; add it to --models first.")
        out.append((video, skeleton))
    return tuple(out)


def resolve_models(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise StudyError(f"--models is empty; name one or more models, e.g. --models={PAPER_MODELS}.")
    models = []
    for name in names:
        try:
            model = registry.resolve(name)
        except registry.UnknownModelError as error:
            raise StudyError(f"--models: {error}") from None
        if model in models:
            raise StudyError(f"--models names {model} twice.")
        models.append(model)
    return tuple(models)


# ----------------------------------------------------------------------------- the workdir

def open_workdir(study_dir: pathlib.Path, settings: Settings) -> Settings:
    """Records the settings in a new workdir, or checks them against an existing study's.

    A study grows by models: a command may name models the study does not have yet (they are
    added), as long as everything else (folds, seeds, preset, dataset, epochs, fold seed) and
    the recipes of the models it already has are unchanged. Returns the study's settings (all of
    its models, the new ones last)."""
    path = study_dir / STUDY_FILE
    wanted = settings.to_json()
    if not path.exists():
        if study_dir.exists() and any(study_dir.iterdir()):
            raise StudyError(f"--workdir={study_dir} is not empty and has no {STUDY_FILE}: it is not a study. "
                             "Pass a new or empty --workdir.")
        study_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, wanted)
        return settings
    try:
        existing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StudyError(f"Cannot read {path}: {error}. Delete {study_dir} or pass another --workdir.") from None
    changed = sorted(k for k in set(existing) | set(wanted)
                     if k not in ("models", "recipes") and existing.get(k) != wanted.get(k))
    details = [f"{k}: {json.dumps(existing.get(k))} there, {json.dumps(wanted.get(k))} now" for k in changed]
    old_recipes = existing.get("recipes", {})
    details += [f"the {m} recipe (presets.py) changed since the study started" for m in settings.models
                if m in old_recipes and old_recipes[m] != wanted["recipes"][m]]
    if details:
        raise StudyError(
            f"--workdir={study_dir} holds another study ({'; '.join(details)}). Pass a new --workdir to start a "
            "fresh study, or rerun with that study's settings to continue it.")
    models = tuple(existing["models"]) + tuple(m for m in settings.models if m not in existing["models"])
    merged = dataclasses.replace(settings, models=models)
    if models != tuple(existing["models"]):
        data = dict(existing, models=list(models), recipes={**old_recipes, **wanted["recipes"]})
        _write_json(path, data)
    return merged


def _write_json(path: pathlib.Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def prepare_splits(study_dir: pathlib.Path, settings: Settings, data_dir: pathlib.Path,
                   log=print) -> tuple[list[folds_lib.Clip], list[folds_lib.Split]]:
    """Builds the dataset if needed, reads its clip table and makes (or checks) the folds."""
    dataset_lib.ensure_built(settings.dataset, data_dir)
    sources = {split: dataset_lib.load_source(split, settings.dataset, data_dir, build=False)
               for split in folds_lib.STORED_SPLITS}
    clips = folds_lib.read_clips(sources)
    clips_path = study_dir / CLIPS_FILE
    if clips_path.exists() and folds_lib.load_clips(clips_path) != clips:
        raise StudyError(f"The dataset {settings.dataset} in {data_dir} is not the one this study was started "
                         f"on ({clips_path} lists other clips). Pass the --data_dir it used, or a new --workdir.")
    primary = distributed.is_primary()  # in a multi-process job, process 0 writes
    if primary:
        folds_lib.save_clips(clips, clips_path)
    try:
        if settings.folds == 0:
            splits = [folds_lib.dataset_split(clips)]
        else:
            splits = folds_lib.assign_folds(clips, settings.folds, settings.fold_seed,
                                            settings.validation_fraction)
    except folds_lib.FoldError as error:
        raise StudyError(f"{settings.dataset}: {error}") from None
    for split in splits:
        folds_lib.check_no_leak(split, clips)  # the assertion the study stands on
        log(folds_lib.describe(split, clips))
    if primary:
        _write_json(study_dir / FOLDS_FILE, {"dataset": settings.dataset, "fold_seed": settings.fold_seed,
                                             "splits": [s.to_json() for s in splits]})
    return clips, splits


def is_finished(run_dir: pathlib.Path) -> bool:
    return (run_dir / "report.json").exists() and (run_dir / report.PREDICTIONS).exists()


# ----------------------------------------------------------------------------- running

def model_figures(recipe: presets.Recipe, fast_init: bool | None = None) -> dict:
    """Parameters and XLA's FLOPs for one clip's forward pass (one view) of the recipe's model."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from strokevision_jax import benchmark
    from strokevision_jax.data.classes import NUM_CLASSES

    model = train.create_model(recipe, NUM_CLASSES, seed=0, log=lambda *a: None, fast_init=fast_init)
    graphdef, state = nnx.split(model)
    parameters = int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    one = recipe.replace(batch_size=1)
    clip = jax.tree.map(jnp.asarray, train.batch_inputs(benchmark.random_batch(one, train=False), recipe.input_key))
    adapt = train.input_adapter(recipe, train=False)

    def forward(state, inputs):
        return nnx.merge(graphdef, state)(adapt(inputs), train=False)

    compiled = jax.jit(forward).lower(state, clip).compile()
    flops = benchmark.compiled_figures(compiled, device_count=1, batch_size=1)["flops_per_clip"]
    return {"parameters": parameters, "flops_per_clip": flops}


def run_one(spec: RunSpec, settings: Settings, split: folds_lib.Split, study_dir: pathlib.Path,
            data_dir: pathlib.Path, num_workers: int, log=print, verbose: bool = False,
            fast_init: bool | None = None) -> dict:
    """Trains (or resumes) one run through the train command's own functions (fast_init: see
    `train.train_and_evaluate`)."""
    recipe = settings.recipe(spec.model)
    run_dir = spec.workdir(study_dir)
    train.check_workdir(run_dir, train.run_config(recipe, settings.overrides(), spec.seed, None, split))
    run_report = train.train_and_evaluate(recipe, run_dir, data_dir, seed=spec.seed, num_workers=num_workers,
                                          split=split, log=log, progress=verbose, fast_init=fast_init)
    info_path = run_dir.parent / MODEL_INFO
    if distributed.is_primary() and not info_path.exists():
        _write_json(info_path, model_figures(recipe, fast_init))
    return run_report


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s")


def run_study(settings: Settings, study_dir: pathlib.Path, data_dir: pathlib.Path, *,
              shard: tuple[int, int] = (0, 1), num_workers: int = 0, quiet_runs: bool = True,
              log=print, fast_init: bool | None = None) -> list[RunSpec]:
    """Runs this shard's unfinished runs; returns the runs that are still missing study-wide
    (fast_init: see `train.train_and_evaluate`)."""
    import jax

    if not distributed.is_primary():  # a multi-process job: process 0 logs and writes
        log = lambda *a, **k: None  # noqa: E731
    study_dir = pathlib.Path(study_dir).absolute()
    asked = settings.models
    settings = distributed.primary_first(lambda: open_workdir(study_dir, settings), (StudyError,))
    _, splits = distributed.primary_first(lambda: prepare_splits(study_dir, settings, data_dir, log), (StudyError,))
    runs = all_runs(settings)
    mine = [run for i, run in enumerate(r for r in runs if r.model in asked) if i % shard[1] == shard[0]]
    # What is finished is read from the disk once, by process 0, for every process of a job.
    todo = [run for run in mine if not distributed.primary_flag(is_finished(run.workdir(study_dir)))]
    log(f"study: {len(runs)} runs in all ({len(settings.models)} models x "
        f"{max(settings.folds, 1)} folds x {len(settings.seeds)} seeds); shard {shard[0]}/{shard[1]} has "
        f"{len(mine)}, {len(mine) - len(todo)} already finished, {len(todo)} to run")
    durations, failed, busy = [], [], []
    for number, run in enumerate(todo, 1):
        if distributed.primary_flag(is_finished(run.workdir(study_dir))):  # finished meanwhile elsewhere
            continue
        started = time.time()
        log(f"study: run {number}/{len(todo)} of this shard: {run.name}")
        split = splits[run.fold - 1] if run.fold else splits[0]
        run_log = (lambda *a, **k: None) if quiet_runs else log
        try:
            run_report = run_one(run, settings, split, study_dir, data_dir, num_workers, log=run_log,
                                 verbose=not quiet_runs, fast_init=fast_init)
        except train.WorkdirInUse:  # another study process (no --shard, or another shard) has it
            log(f"study: {run.name} is being trained by another process; next run")
            busy.append(run)
            continue
        except train.TrainingError as error:  # e.g. a non-finite loss: the other runs go on
            failed.append(run)
            log(f"study: {run.name} failed: {error} (its workdir is kept; the run is listed as missing)")
            continue
        finally:
            jax.clear_caches()  # each run compiles its own steps; do not keep them all
        durations.append(time.time() - started)
        finished = sum(is_finished(r.workdir(study_dir)) for r in runs)
        remaining = len(todo) - number
        eta = _duration(remaining * sum(durations) / len(durations)) if remaining else "0s"
        log(f"study: {run.name}: test accuracy {run_report['test']['accuracy']:.3f}, macro-F1 "
            f"{run_report['test']['macro_f1']:.3f}, in {_duration(durations[-1])} | {finished}/{len(runs)} runs "
            f"finished study-wide | this shard: {remaining} left, ETA {eta}", flush=True)
    if failed:
        log(f"study: {len(failed)} runs failed: {', '.join(r.name for r in failed)}")
    return [run for run in runs if not is_finished(run.workdir(study_dir))]


def read_settings(study_dir: pathlib.Path) -> Settings:
    path = study_dir / STUDY_FILE
    if not path.exists():
        raise StudyError(f"{path} not found: --workdir is not a study (start one without --summarize first).")
    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in data.items() if k in fields}
    values["models"], values["seeds"] = tuple(values["models"]), tuple(values["seeds"])
    return Settings(**values)


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=PAPER_MODELS,
                        help="comma-separated models or short names (default: the paper's seven)")
    parser.add_argument("--folds", type=int, default=5,
                        help="patient-grouped folds (0: the dataset's own train/validation/test split)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. n-1 per (model, fold)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", choices=presets.PRESETS, default=None,
                        help="default: paper with a GPU/TPU, cpu otherwise")
    parser.add_argument("--dataset", default=dataset_lib.DEFAULT_CONFIG)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--num_workers", type=int, default=0, help="grain worker processes per run")
    parser.add_argument("--fold_seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--shard", default=None, help="i/n: run every n-th run from run i (0 <= i < n)")
    parser.add_argument("--fusions", default="",
                        help="late fusions to add to the tables: <video model>+<skeleton model>,... (short names "
                             "allowed; models of the study; computed from their finished runs, nothing is trained)")
    parser.add_argument("--summarize", action="store_true",
                        help="only merge the finished runs into the tables (lists missing runs)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (>= 1000)")
    parser.add_argument("--verbose", action="store_true", help="print every run's epochs too")
    distributed.add_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    local = ("process_id", "initialization_timeout", "workdir", "data_dir", "num_workers")
    return distributed.run_command(args, {k: v for k, v in vars(args).items() if k not in local},
                                   lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from strokevision_jax import study_report

    train.enable_compilation_cache()
    study_dir = pathlib.Path(args.workdir).absolute()
    try:
        if args.resamples < 1000:
            raise StudyError(f"--resamples={args.resamples}: use at least 1000 for a 95 % interval.")
        if args.summarize:
            if not distributed.is_primary():  # nothing to train: process 0 writes the tables
                return 0
            settings = read_settings(study_dir)
        else:
            if args.folds < 0 or args.seeds < 1:
                raise StudyError(f"--folds={args.folds} / --seeds={args.seeds}: need folds >= 0 and seeds >= 1.")
            if args.epochs is not None and args.epochs < 1:
                raise StudyError(f"--epochs={args.epochs} must be at least 1.")
            settings = Settings(
                models=resolve_models(args.models), folds=args.folds, seeds=tuple(range(args.seeds)),
                preset=args.preset or train.default_preset(), dataset=args.dataset, epochs=args.epochs,
                fold_seed=args.fold_seed)
            shard = parse_shard(args.shard)
            for model in settings.models:
                settings.recipe(model)  # a model without a recipe for the preset fails here
            data_dir = dataset_lib.resolve_data_dir(args.data_dir)
            missing = run_study(settings, study_dir, data_dir, shard=shard, num_workers=args.num_workers,
                                quiet_runs=not args.verbose, fast_init=True)
            if not distributed.is_primary():  # process 0 of a multi-process job writes the tables
                return 0
            settings = read_settings(study_dir)  # every model of the study, also those of earlier commands
            if missing and shard[1] > 1:
                print(f"study: {len(missing)} runs of other shards are not finished yet; the tables will list "
                      "them as missing (rerun with --summarize when all shards are done).")
        fusions = resolve_fusions(args.fusions, settings.models)
        summary = study_report.summarize(study_dir, settings, resamples=args.resamples, fusions=fusions)
        print(summary["text"])
        print(f"study: tables in {study_dir} (table.md, results.csv, predictions.csv, summary.json, *.png)")
        running = [r for r in summary["missing"] if live_holder(r.workdir(study_dir)) is not None]
        if running:
            print(f"study: {len(running)} runs are still being trained by other processes "
                  f"({', '.join(r.name for r in running)}); rerun with --summarize when they are done.")
        failed = [r for r in summary["missing"] if r not in running]
        if failed and not args.summarize and parse_shard(args.shard)[1] == 1:
            print(f"error: {len(failed)} runs did not finish (see above); rerun the same command to "
                  "retry them.", file=sys.stderr)
            return 1
    except (StudyError, ValueError, train.TrainingError, dataset_lib.DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (StudyError, ValueError, train.UsageError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
