"""The training loop: a `Run` (recipe, data, steps, mesh), epochs with checkpoints and resume,
and the final evaluation of the best checkpoint (report.json).

In a multi-process job (strokevision_jax.distributed) every process runs this loop on its rows
of each global batch; metrics are those of the global batch, and process 0 alone logs and writes
the run's files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from strokevision_jax import dataset as dataset_lib
from strokevision_jax import distributed, presets
from strokevision_jax import folds as folds_lib
from strokevision_jax import report as report_lib
from strokevision_jax.checkpoints import Checkpoints
from strokevision_jax.data import pipeline
from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.errors import TrainingError, WorkdirInUse
from strokevision_jax.steps import (
    TrainState,
    input_adapter,
    make_eval_step,
    make_heads_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
    to_host,
)
from strokevision_jax.weights import create_model
from strokevision_jax.workdir_lock import WorkdirBusy, WorkdirLock

RUN_CONFIG = "run_config.json"


def default_preset() -> str:
    return "paper" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights, n / (k * count_c), so that each class weighs the same in the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [CLASS_NAMES[c] for c in np.flatnonzero(counts == 0)]
        raise TrainingError(f"The training split has no examples of {', '.join(missing)}.")
    return (counts.sum() / (num_classes * counts)).astype(np.float32)


# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Run:
    """What the loop needs, made once: recipe, data sources, steps, sharding, checkpoint managers."""

    recipe: presets.Recipe
    workdir: pathlib.Path
    data_dir: pathlib.Path
    seed: int
    num_workers: int
    mesh: jax.sharding.Mesh
    init: str | None = None  # checkpoint to start from (see create_model)
    log: Any = print
    split: folds_lib.Split | None = None  # the clips of train / validation / test; None: the dataset's
    progress: bool = True  # a progress bar per training epoch
    fast_init: bool | None = None  # initialise under models.fast_init (see weights.create_model)

    def __post_init__(self):
        self.input_key = self.recipe.input_key
        self.data_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        stored = {split: dataset_lib.load_source(split, self.recipe.dataset, self.data_dir)
                  for split in folds_lib.STORED_SPLITS}
        if self.split is None:
            self.sources = stored
            self.refs = {split: tuple((split, i) for i in range(len(stored[split]))) for split in stored}
        else:
            self.sources = {part: folds_lib.SubsetSource(stored, self.split.refs[part])
                            for part in folds_lib.PARTS}
            self.refs = dict(self.split.refs)
            for part, source in self.sources.items():
                if len(source) == 0:
                    raise TrainingError(f"{self.split.name}: the {part} part has no clips.")
        labels = np.array([int(self.sources["train"][i]["label"])
                           for i in range(len(self.sources["train"]))])
        self.weights = class_weights(labels, NUM_CLASSES)
        self.steps_per_epoch = len(self.sources["train"]) // self.recipe.batch_size
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"--batch_size={self.recipe.batch_size} is larger than the training split "
                f"({len(self.sources['train'])} clips).")
        if self.recipe.batch_size % jax.device_count():  # the same on every process: no one waits
            lower = self.recipe.batch_size // jax.device_count() * jax.device_count()
            raise TrainingError(
                f"--batch_size={self.recipe.batch_size} (the global batch) must be a multiple of the device "
                f"count, {jax.device_count()} ({jax.process_count()} x {jax.local_device_count()} per process): "
                f"pass --batch_size={lower + jax.device_count()}" + (f" or {lower}." if lower else "."))
        # This process reads the rows of each global batch that its devices hold (shard k of S).
        start, stop = distributed.process_rows(self.data_sharding, self.recipe.batch_size)
        self.local_batch_size = stop - start
        self.shard = (start // self.local_batch_size, self.recipe.batch_size // self.local_batch_size)
        model = create_model(self.recipe, NUM_CLASSES, self.seed, self.init, self.log,
                             fast_init=self.fast_init)
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.has_heads = getattr(model, "loss_components", None) is not None
        self.tx = make_optimizer(self.recipe, self.steps_per_epoch)
        # The average starts as a copy: the state is donated to the step, its buffers must be distinct.
        ema = jax.tree.map(jnp.copy, (params, rest)) if self.recipe.ema_decay else None
        state = TrainState(jnp.zeros((), jnp.int32), params, rest, self.tx.init(params), ema)
        self.initial_state = replicate(state, self.replicated)
        self.train_step = make_train_step(self.graphdef, self.tx, self.weights, self.input_key,
                                          self.recipe.label_smoothing, self.seed, self.recipe.ema_decay,
                                          input_adapter(self.recipe, train=True))
        self.eval_step = make_eval_step(self.graphdef, self.weights, self.input_key, self.recipe.eval_flip,
                                        input_adapter(self.recipe, train=False))

    def loader(self, split: str, epoch: int):
        train = split == "train"
        return pipeline.make_loader(
            self.sources[split], self.recipe.transform(train), batch_size=self.local_batch_size, train=train,
            seed=self.seed, epoch=epoch, num_workers=self.num_workers, shard_index=self.shard[0],
            shard_count=self.shard[1])

    def evaluate(self, state: TrainState, split: str, with_logits: bool = False) -> dict:
        """Metrics of `state` on a whole split (every clip exactly once, in the split's order);
        with_logits: also the (clips, classes) logits under "logits" and the labels under "labels"."""
        outputs, loss_sum = [], 0.0
        for batch in self.loader(split, epoch=0):
            inputs = shard_batch(_model_inputs(batch, self.input_key), self.data_sharding)
            logits, batch_loss = self.eval_step(state, inputs)
            outputs.append({"logits": logits, "label": inputs["label"], "mask": inputs["mask"]})
            loss_sum += float(batch_loss)
        gathered = _gather_batches(outputs)
        all_logits, all_labels, weight_sum = [], [], 0.0
        for logits, labels, mask in zip(gathered["logits"], gathered["label"], gathered["mask"].astype(bool)):
            all_logits.append(logits[mask])  # the padding left out
            all_labels.append(labels[mask])
            weight_sum += float(self.weights[labels[mask]].sum())
        labels = np.concatenate(all_labels)
        predictions = np.concatenate(all_logits).argmax(-1)
        metrics = report_lib.classification_metrics(labels, predictions)
        metrics["loss"] = loss_sum / max(weight_sum, 1e-12)
        if with_logits:
            metrics["logits"], metrics["labels"] = np.concatenate(all_logits), labels
        return metrics

    def evaluate_heads(self, state: TrainState, split: str) -> dict[str, dict]:
        """Per head of a several-headed model (the two-pathway network's 'rgb', 'pose' and
        'fused'): accuracy and macro-F1 on a whole split. {} for a one-headed model."""
        if not self.has_heads:
            return {}
        step = make_heads_step(self.graphdef, self.input_key, input_adapter(self.recipe, train=False))
        outputs = []
        for batch in self.loader(split, epoch=0):
            inputs = shard_batch(_model_inputs(batch, self.input_key), self.data_sharding)
            outputs.append({"heads": step(state, inputs), "label": inputs["label"], "mask": inputs["mask"]})
        gathered = _gather_batches(outputs)
        mask = gathered["mask"].astype(bool)  # (batches, rows): the padding left out
        labels = gathered["label"][mask]
        out = {}
        for name, logits in gathered["heads"].items():
            metrics = report_lib.classification_metrics(labels, logits[mask].argmax(-1))
            out[name] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
        return out


def _gather_batches(outputs: list[dict]) -> dict:
    """Per-batch device outputs (global arrays, rows split over the 'data' axis) -> host arrays
    of (batches, global batch rows, ...), every process's rows: stacked on the devices, then
    gathered once per output (one exchange per evaluation, not per batch, in a multi-process job)."""
    stacked = jax.tree.map(lambda *parts: jnp.stack(parts), *outputs)
    return jax.tree.map(to_host, stacked)


def _model_inputs(batch: dict, input_key: str | tuple[str, ...]) -> dict:
    keys = [*([input_key] if isinstance(input_key, str) else input_key), "label"]
    keys += ["mask"] if "mask" in batch else []
    return {k: batch[k] for k in keys}


# ----------------------------------------------------------------------------- the loop

def train_one_epoch(run: Run, state: TrainState, epoch: int, log) -> tuple[TrainState, dict]:
    from tqdm import tqdm

    totals = {"loss": 0.0, "accuracy": 0.0}
    steps = 0
    pending = None  # the previous step's metrics, read after the next step is dispatched

    def collect(metrics, step_in_epoch):
        values = {k: float(v) for k, v in metrics.items()}
        if not math.isfinite(values["loss"]):
            raise TrainingError(
                f"Non-finite loss ({values['loss']}) at epoch {epoch + 1}, step {step_in_epoch}. "
                f"The last good checkpoint is in {run.workdir / 'checkpoints' / 'latest'}; "
                "lower --learning_rate or check the input data, then rerun to resume.")
        for key in totals:
            totals[key] += values[key]
        return values

    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.recipe.epochs}", unit="step",
               mininterval=1.0, dynamic_ncols=True, file=sys.stdout, disable=not run.progress)
    for batch in run.loader("train", epoch):
        state, metrics = run.train_step(state, shard_batch(_model_inputs(batch, run.input_key),
                                                           run.data_sharding))
        if pending is not None:
            values = collect(*pending)
            bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.2f}", refresh=False)
        pending = (metrics, steps + 1)
        steps += 1
        bar.update(1)
    if pending is not None:
        collect(*pending)
    bar.close()
    return state, {key: value / max(steps, 1) for key, value in totals.items()}


def _is_better(val: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"])


def train_and_evaluate(recipe: presets.Recipe, workdir: pathlib.Path, data_dir: pathlib.Path, *,
                       seed: int = 0, num_workers: int = 0, init: str | None = None,
                       split: folds_lib.Split | None = None, log=print, progress: bool = True,
                       fast_init: bool | None = None) -> dict:
    """Trains (or resumes), then evaluates the best checkpoint on the test split; returns the report.

    split: the clips of each part (a patient-grouped fold); None uses the dataset's own splits.
    log: where the epoch lines go (None: nowhere); progress: show a progress bar per epoch.
    fast_init: initialise the model under `models.fast_init` (process-wide; for programs that own
    their process; None: as $STROKEVISION_FAST_INIT says)."""
    if not distributed.is_primary():  # a multi-process job logs once, from process 0
        log, progress = None, False
    log = log or (lambda *a, **k: None)
    workdir = pathlib.Path(workdir).absolute()  # orbax needs absolute paths
    lock = WorkdirLock(workdir)

    def take_lock():  # a second run on this workdir stops here (process 0 holds the lock of a job)
        try:
            lock.acquire()
        except WorkdirBusy as error:
            raise WorkdirInUse(str(error)) from None

    distributed.on_primary(take_lock, errors=(WorkdirInUse,))
    try:
        return _train_and_evaluate(recipe, workdir, data_dir, seed, num_workers, init, split, log, progress,
                                   fast_init)
    finally:
        lock.release()


def _train_and_evaluate(recipe, workdir, data_dir, seed, num_workers, init, split, log, progress,
                        fast_init) -> dict:
    started = time.time()
    run = Run(recipe, workdir, data_dir, seed, num_workers, make_mesh(), init=init, log=log, split=split,
              progress=progress, fast_init=fast_init)
    checkpoints = Checkpoints(workdir, log)
    state, history, best, start_epoch = run.initial_state, [], None, 0
    restored = checkpoints.restore(checkpoints.latest, run.initial_state)
    if restored is not None:
        state, meta = restored
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"]
        log(f"Resuming from the checkpoint of epoch {start_epoch} in {workdir / 'checkpoints' / 'latest'}")
    metrics_path = workdir / "metrics.jsonl"
    primary = distributed.is_primary()
    if primary:
        metrics_path.write_text("".join(json.dumps(record) + "\n" for record in history))

    for epoch in range(start_epoch, recipe.epochs):
        epoch_started = time.time()
        state, train_metrics = train_one_epoch(run, state, epoch, log)
        train_seconds = time.time() - epoch_started
        val = run.evaluate(state, "validation")
        record = {
            "epoch": epoch + 1,
            "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "seconds": round(time.time() - epoch_started, 2), "train_seconds": round(train_seconds, 2),
            "train_clips": run.steps_per_epoch * recipe.batch_size,
        }
        history.append(record)
        if primary:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch + 1}/{recipe.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f} | val loss {val['loss']:.4f} acc {val['accuracy']:.3f} "
            f"macro-F1 {val['macro_f1']:.3f} | {record['seconds']:.1f} s")
        if _is_better(val, best):
            best = {"epoch": epoch + 1, "accuracy": val["accuracy"], "loss": val["loss"]}
            checkpoints.save(checkpoints.best, epoch + 1, state, {"epoch": epoch + 1, "val": best})
        checkpoints.save(checkpoints.latest, epoch + 1, state,
                         {"epoch": epoch + 1, "history": history, "best": best})

    report = evaluate_best(run, checkpoints, history, log)
    report["run"]["wall_seconds_this_invocation"] = round(time.time() - started, 1)
    if primary:
        (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    checkpoints.close()
    return report


def evaluate_best(run: Run, checkpoints: Checkpoints, history: list[dict], log) -> dict:
    if not distributed.is_primary():
        log = lambda *a, **k: None  # noqa: E731
    restored = checkpoints.restore(checkpoints.best, run.initial_state)
    if restored is None:
        raise TrainingError(f"No best checkpoint in {run.workdir / 'checkpoints' / 'best'}; train first.")
    state, meta = restored
    primary = distributed.is_primary()  # every process evaluates; process 0 writes
    test = run.evaluate(state, "test", with_logits=True)
    test_labels, test_logits = test.pop("labels"), test.pop("logits")
    if primary:
        report_lib.write_predictions(run.workdir / report_lib.PREDICTIONS, run.refs["test"], test_labels, test_logits)
    # The validation clips' probabilities of the chosen checkpoint: what late fusion tunes on.
    val = run.evaluate(state, "validation", with_logits=True)
    val_labels, val_logits = val.pop("labels"), val.pop("logits")
    if primary:
        report_lib.write_predictions(run.workdir / report_lib.VALIDATION_PREDICTIONS, run.refs["validation"],
                                     val_labels, val_logits)
    info = {
        "model": run.recipe.model, "preset": run.recipe.preset, "dataset": run.recipe.dataset,
        "split": run.split.name if run.split is not None else "dataset split",
        "best_epoch": meta["epoch"], "best_val_accuracy": meta["val"]["accuracy"],
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"
                   + (f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""),
        "recipe": _recipe_dict(run.recipe),
    }
    heads = run.evaluate_heads(state, "test")
    if heads:  # each head of a two-pathway network, and their fusion (what `test` reports)
        test["heads"] = heads
    report = (report_lib.write_report(run.workdir, info, test, history) if primary
              else {"run": info, "test": test, "history": history})
    log(f"test ({test['num_examples']} clips, best epoch {meta['epoch']}): accuracy {test['accuracy']:.4f}, "
        f"macro-F1 {test['macro_f1']:.4f}")
    for name, metrics in heads.items():
        log(f"  {name} head: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    log(report_lib.format_confusion(test["confusion_matrix"]))
    log(f"report: {run.workdir / 'report.json'}")
    return report


def _recipe_dict(recipe: presets.Recipe) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(recipe), default=str))


def run_config(recipe: presets.Recipe, overrides: dict, seed: int, init: str | None = None,
               split: folds_lib.Split | None = None) -> dict:
    config = {"model": recipe.model, "preset": recipe.preset, "overrides": overrides, "seed": seed}
    if init is not None:
        config["init"] = init
    if split is not None:
        config["split"] = split.to_json()
    return config


def split_from_config(config: dict) -> folds_lib.Split | None:
    """The run's patient-grouped split, or None for the dataset's own."""
    return folds_lib.Split.from_json(config["split"]) if "split" in config else None


def check_workdir(workdir: pathlib.Path, config: dict) -> None:
    """Refuses a workdir that holds another run's checkpoints; records this run's config otherwise.
    (In a multi-process job process 0 checks and writes; every process gets its verdict.)"""
    distributed.on_primary(lambda: _check_workdir(pathlib.Path(workdir), config))


def _check_workdir(workdir: pathlib.Path, config: dict) -> None:
    path = workdir / RUN_CONFIG
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise TrainingError(f"Cannot read {path}: {error}. Delete it or choose another --workdir.")
        if existing.get("model") != config["model"]:
            raise TrainingError(
                f"--workdir={workdir} holds checkpoints of model {existing.get('model')!r}, not "
                f"{config['model']!r}. Choose another --workdir (or delete that one to start over).")
        if existing != config:
            raise TrainingError(
                f"--workdir={workdir} holds a run with other settings ({json.dumps(existing)}); "
                f"this one is {json.dumps(config)}. Choose another --workdir to start a new run.")
    elif (workdir / "checkpoints").exists():
        raise TrainingError(f"--workdir={workdir} has checkpoints but no {RUN_CONFIG}; choose another --workdir.")
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")


def recipe_from_config(config: dict) -> presets.Recipe:
    return presets.recipe(config["model"], config["preset"]).replace(**config["overrides"])

