"""Train an action classifier on StrokeVision-Bench clips.

    python -m strokevision_jax.train --model=r2plus1d

builds the default dataset on first use, trains with the preset for this machine (`paper` on a GPU
or TPU, `cpu` otherwise), keeps the latest and the best checkpoints in --workdir, resumes from the
latest when rerun, and ends by evaluating the best checkpoint on the test split (report.json).

The steps are pure functions of (state, batch), jitted once, with the state donated; the batch is
placed with a NamedSharding over a 1-D 'data' Mesh of all devices, the state is replicated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from strokevision_jax import folds as folds_lib
from strokevision_jax import models as models_lib
from strokevision_jax import presets
from strokevision_jax import report as report_lib
from strokevision_jax.data import dataset as dataset_lib
from strokevision_jax.data import pipeline
from strokevision_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from strokevision_jax.workdir_lock import WorkdirBusy, WorkdirLock

RUN_CONFIG = "run_config.json"


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class UsageError(TrainingError):
    """A bad command-line value (exit status 2, like argparse)."""


class WorkdirInUse(TrainingError):
    """Another live process trains in this workdir."""


# ----------------------------------------------------------------------------- set-up

def default_preset() -> str:
    return "paper" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


def create_model(recipe: presets.Recipe, num_classes: int, seed: int, init: str | None = None,
                 log=print) -> nnx.Module:
    """The recipe's model, freshly initialised, or with the weights of `init`.

    `init`: a directory written by `python -m checkpoints_convert` or a torchvision `.pth` /
    `.safetensors` file. A checkpoint fixes the architecture (torchvision's, or the converted
    config), so the preset's width/depth overrides are not applied; input-size fields (MViT's
    `temporal_size` / `spatial_size`) are, and position embeddings are interpolated to them
    when a `.pth` is converted. The classifier is re-initialised for `num_classes`.
    """
    dtype = jnp.dtype(recipe.compute_dtype)
    with models_lib.fast_init():
        if init is None:
            return models_lib.MODELS[recipe.model](
                num_classes=num_classes, rngs=nnx.Rngs(seed), dtype=dtype, **dict(recipe.model_overrides))
        from checkpoints_convert import api as convert

        sizes = {k: v for k, v in recipe.model_overrides if k in models_lib.INPUT_SIZE_FIELDS}
        dropped = sorted(k for k, _ in recipe.model_overrides if k not in sizes)
        if dropped:
            log(f"--init_from/--pretrained: the checkpoint's architecture is used; the preset's "
                f"{', '.join(dropped)} overrides are not applied")
        path = pathlib.Path(init)
        try:
            target, copied, reset = _load_initial_weights(recipe, path, num_classes, seed, dtype, sizes)
        except (convert.ConversionError, convert.CheckpointError, FileNotFoundError) as error:
            raise TrainingError(f"--init_from/--pretrained: {error}") from None
        log(f"initialised from {init}" + (f" ({copied} arrays; re-initialised: {', '.join(reset)})"
                                          if reset else ""))
        return target


def _load_initial_weights(recipe, path: pathlib.Path, num_classes: int, seed: int, dtype, sizes: dict):
    """(model, arrays copied, paths re-initialised) from a converted directory or a .pth file."""
    from checkpoints_convert import api as convert

    if path.is_file():
        model = convert.load_torch_checkpoint(recipe.model, path, num_classes, seed=seed,
                                              dtype=dtype, **sizes)
        return model, None, None
    if not path.is_dir():
        raise UsageError(f"--init_from/--pretrained={path}: no such file or directory.")
    meta = convert.load_converted_meta(path)
    if meta.get("model") != recipe.model:
        raise UsageError(f"{path} holds a converted {meta.get('model')!r} checkpoint, not {recipe.model!r}.")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    if any(config.get(k) != v for k, v in sizes.items()):
        raise UsageError(f"{path} was converted with config {meta['config']}, but the preset needs "
                         f"{sizes}: convert again with --config='{json.dumps(sizes)}'.")
    factory = models_lib.MODELS[recipe.model]
    source = factory(num_classes=meta["num_classes"], rngs=nnx.Rngs(seed), dtype=dtype, **config)
    convert.restore_converted(source, path)
    model = factory(num_classes=num_classes, rngs=nnx.Rngs(seed), dtype=dtype, **config)
    copied, reset = convert.transfer_weights(source, model)
    return model, copied, reset


HEAD_MODULES = ("head", "cls_head", "fc")  # top-level names of the models' classifiers


def learning_rate_schedule(recipe: presets.Recipe, steps_per_epoch: int, peak: float) -> optax.Schedule:
    """'cosine': linear warm-up over `warmup_epochs`, then cosine decay to zero at the end.
    'exponential': warm-up, then x `lr_decay` after every epoch (MotionBERT's ExponentialLR)."""
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(recipe.warmup_epochs * steps_per_epoch)))
    if recipe.schedule == "exponential":
        decay = optax.exponential_decay(peak, steps_per_epoch, recipe.lr_decay, staircase=True)
        if warmup == 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, total)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, 0.0)


def make_optimizer(recipe: presets.Recipe, steps_per_epoch: int) -> optax.GradientTransformation:
    """The recipe's optimiser: AdamW, or SGD with momentum 0.9 (nesterov if asked).

    Weight decay applies to kernels only (parameters of rank > 1), or with `decay_all` to every
    parameter as torch's optimisers do. With `head_lr_scale` != 1 the classifier (top-level
    module in HEAD_MODULES) gets its own learning rate, `learning_rate * head_lr_scale`
    (MotionBERT's backbone / head rates). `grad_clip` clips the global gradient norm first.
    """

    def decay_mask(params):
        return jax.tree.map(lambda p: recipe.decay_all or p.ndim > 1, params)

    def optimizer(peak: float) -> optax.GradientTransformation:
        schedule = learning_rate_schedule(recipe, steps_per_epoch, peak)
        if recipe.optimizer == "sgd":
            return optax.chain(optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask),
                               optax.sgd(schedule, momentum=0.9, nesterov=recipe.nesterov))
        return optax.adamw(schedule, weight_decay=recipe.weight_decay, mask=decay_mask)

    if recipe.head_lr_scale == 1.0:
        tx = optimizer(recipe.learning_rate)
    else:
        def group(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "head" if getattr(path[0], "key", None) in HEAD_MODULES else "backbone",
                params)

        tx = optax.multi_transform(
            {"backbone": optimizer(recipe.learning_rate),
             "head": optimizer(recipe.learning_rate * recipe.head_lr_scale)}, group)
    if recipe.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(recipe.grad_clip), tx)
    return tx


def input_adapter(recipe: presets.Recipe, train: bool):
    """The part of the input pipeline that runs inside the jitted steps: for PoseConv3D the
    keypoint heatmaps, (N, M, T, V, 3) compact-frame keypoints -> (N, T, H, W, V), generated on
    the device; otherwise the identity."""
    config = recipe.heatmaps
    if config is None:
        return lambda inputs: inputs
    from strokevision_jax.data.heatmaps import generate_pose_target

    size = recipe.skeleton.compact_size if train else recipe.skeleton.compact_eval_size

    def to_heatmaps(keypoints):
        return generate_pose_target(keypoints[..., :2], keypoints[..., 2], image_size=tuple(size),
                                    sigma=config.sigma, use_score=config.use_score, mode=config.mode)

    return to_heatmaps


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights, n / (k * count_c), so that each class weighs the same in the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [CLASS_NAMES[c] for c in np.flatnonzero(counts == 0)]
        raise TrainingError(f"The training split has no examples of {', '.join(missing)}.")
    return (counts.sum() / (num_classes * counts)).astype(np.float32)


# ----------------------------------------------------------------------------- pure steps

@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics, ...)
    opt_state: Any
    ema: Any = None  # (params, rest) averaged over steps when the recipe has ema_decay, else None

    def eval_weights(self):
        """The (params, rest) to evaluate: the moving average where there is one."""
        return self.ema if self.ema is not None else (self.params, self.rest)


def update_ema(ema, new, step, decay: float):
    """ema <- d * ema + (1 - d) * new on floating leaves, d = min(decay, (1 + step) / (10 + step)).

    The ramp (as TensorFlow's ExponentialMovingAverage with num_updates) keeps the first steps'
    random weights from dominating the average. Integer and key leaves (RNG state) are copied.
    """
    step = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))

    def mix(e, n):
        if jnp.issubdtype(n.dtype, jnp.floating):
            return (d * e.astype(jnp.float32) + (1.0 - d) * n.astype(jnp.float32)).astype(n.dtype)
        return n

    return jax.tree.map(mix, ema, new)


def weighted_cross_entropy(logits, labels, weights, mask=None, label_smoothing=0.0):
    """PyTorch's weighted mean: sum_i w[y_i] * CE_i / sum_i w[y_i] (over unmasked examples)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    example_weights = weights[labels]
    if mask is not None:
        example_weights = example_weights * mask
    return jnp.sum(losses * example_weights) / jnp.maximum(jnp.sum(example_weights), 1e-12)


def make_train_step(graphdef, tx, weights, input_key: str, label_smoothing: float, dropout_seed: int,
                    ema_decay: float | None = None, adapt=lambda inputs: inputs):
    """The jitted step (state, batch) -> (state, metrics); `adapt` maps the batch's input to the
    model's (see `input_adapter`)."""
    weights = jnp.asarray(weights)

    def train_step(state: TrainState, batch):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            # Dropout (where a model has it) draws from a key folded with the step: a resumed
            # run continues exactly.
            nnx.reseed(model, dropout=jax.random.fold_in(jax.random.key(dropout_seed), state.step))
            logits = model(adapt(batch[input_key]), train=True)
            loss = weighted_cross_entropy(logits, batch["label"], weights, None, label_smoothing)
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (logits, rest)

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.global_norm(grads),
        }
        ema = None if state.ema is None else update_ema(state.ema, (params, rest), state.step, ema_decay)
        return TrainState(state.step + 1, params, rest, opt_state, ema), metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef, weights, input_key: str, flip_view: bool = False,
                   adapt=lambda inputs: inputs):
    """Logits and summed weighted loss of a batch; with `flip_view`, the clip and its mirror
    image are two views whose softmax probabilities are averaged (the logits returned are the
    log of that average), as multi-view testing does in video recognition."""
    weights = jnp.asarray(weights)

    def eval_step(state: TrainState, batch):
        model = nnx.merge(graphdef, *state.eval_weights())
        clips = adapt(batch[input_key])
        logits = model(clips, train=False)
        if flip_view:  # (N, T, H, W, C): mirror the width axis
            views = jnp.stack([logits, model(clips[:, :, :, ::-1], train=False)]).astype(jnp.float32)
            logits = jax.nn.logsumexp(jax.nn.log_softmax(views, axis=-1), axis=0) - jnp.log(2.0)
        mask = batch["mask"].astype(jnp.float32)
        loss_sum = weighted_cross_entropy(logits, batch["label"], weights, mask) * jnp.sum(
            weights[batch["label"]] * mask)
        return logits, loss_sum

    return jax.jit(eval_step)


# ----------------------------------------------------------------------------- data on the mesh

def make_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(batch: dict, sharding) -> dict:
    """Host numpy batch (this process's rows) -> global jax arrays split over the 'data' axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def to_host(array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


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
        if self.recipe.batch_size % jax.device_count():
            raise TrainingError(
                f"--batch_size={self.recipe.batch_size} must be a multiple of the device count "
                f"({jax.device_count()}).")
        model = create_model(self.recipe, NUM_CLASSES, self.seed, self.init, self.log)
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.tx = make_optimizer(self.recipe, self.steps_per_epoch)
        # The average starts as a copy: the state is donated to the step, its buffers must be distinct.
        ema = jax.tree.map(jnp.copy, (params, rest)) if self.recipe.ema_decay else None
        state = TrainState(jnp.zeros((), jnp.int32), params, rest, self.tx.init(params), ema)
        self.initial_state = jax.device_put(state, self.replicated)
        self.train_step = make_train_step(self.graphdef, self.tx, self.weights, self.input_key,
                                          self.recipe.label_smoothing, self.seed, self.recipe.ema_decay,
                                          input_adapter(self.recipe, train=True))
        self.eval_step = make_eval_step(self.graphdef, self.weights, self.input_key, self.recipe.eval_flip,
                                        input_adapter(self.recipe, train=False))

    def loader(self, split: str, epoch: int):
        train = split == "train"
        if self.recipe.video is not None:
            transform = pipeline.video_transform(self.recipe.video, train=train)
        else:
            transform = pipeline.skeleton_transform(self.recipe.skeleton, train=train)
        return pipeline.make_loader(
            self.sources[split], transform, batch_size=self.recipe.batch_size, train=train,
            seed=self.seed, epoch=epoch, num_workers=self.num_workers)

    def evaluate(self, state: TrainState, split: str, with_logits: bool = False) -> dict:
        """Metrics of `state` on a whole split (every clip exactly once, in the split's order);
        with_logits: also the (clips, classes) logits under "logits" and the labels under "labels"."""
        all_logits, all_labels, loss_sum, weight_sum = [], [], 0.0, 0.0
        for batch in self.loader(split, epoch=0):
            mask = np.asarray(batch["mask"], bool)
            logits, batch_loss = self.eval_step(state, shard_batch(_model_inputs(batch, self.input_key),
                                                                   self.data_sharding))
            logits = to_host(logits)[mask]
            labels = np.asarray(batch["label"])[mask]
            all_logits.append(logits)
            all_labels.append(labels)
            loss_sum += float(batch_loss)
            weight_sum += float(self.weights[labels].sum())
        labels = np.concatenate(all_labels)
        predictions = np.concatenate(all_logits).argmax(-1)
        metrics = report_lib.classification_metrics(labels, predictions)
        metrics["loss"] = loss_sum / max(weight_sum, 1e-12)
        if with_logits:
            metrics["logits"], metrics["labels"] = np.concatenate(all_logits), labels
        return metrics


def _model_inputs(batch: dict, input_key: str) -> dict:
    keys = [input_key, "label"] + (["mask"] if "mask" in batch else [])
    return {k: batch[k] for k in keys}


class Checkpoints:
    """Orbax checkpoints of the train state: `latest` (for resuming) and `best` (by validation)."""

    def __init__(self, workdir: pathlib.Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self.latest = ocp.CheckpointManager(workdir / "checkpoints" / "latest", options=options)
        self.best = ocp.CheckpointManager(workdir / "checkpoints" / "best", options=options)

    def save(self, manager, epoch: int, state: TrainState, meta: dict) -> None:
        ocp = self._ocp
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()

    def restore(self, manager, like: TrainState) -> tuple[TrainState, dict] | None:
        ocp = self._ocp
        epoch = manager.latest_step()
        if epoch is None:
            return None
        # The target carries shapes, dtypes and shardings (replicated over the mesh).
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self):
        self.latest.close()
        self.best.close()


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
                       split: folds_lib.Split | None = None, log=print, progress: bool = True) -> dict:
    """Trains (or resumes), then evaluates the best checkpoint on the test split; returns the report.

    split: the clips of each part (a patient-grouped fold); None uses the dataset's own splits.
    log: where the epoch lines go (None: nowhere); progress: show a progress bar per epoch."""
    log = log or (lambda *a, **k: None)
    workdir = pathlib.Path(workdir).absolute()  # orbax needs absolute paths
    try:
        lock = WorkdirLock(workdir).acquire()  # a second process on this workdir stops here
    except WorkdirBusy as error:
        raise WorkdirInUse(str(error)) from None
    try:
        return _train_and_evaluate(recipe, workdir, data_dir, seed, num_workers, init, split, log, progress)
    finally:
        lock.release()


def _train_and_evaluate(recipe, workdir, data_dir, seed, num_workers, init, split, log, progress) -> dict:
    started = time.time()
    run = Run(recipe, workdir, data_dir, seed, num_workers, make_mesh(), init=init, log=log, split=split,
              progress=progress)
    checkpoints = Checkpoints(workdir)
    state, history, best, start_epoch = run.initial_state, [], None, 0
    restored = checkpoints.restore(checkpoints.latest, run.initial_state)
    if restored is not None:
        state, meta = restored
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"]
        log(f"Resuming from the checkpoint of epoch {start_epoch} in {workdir / 'checkpoints' / 'latest'}")
    metrics_path = workdir / "metrics.jsonl"
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
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    checkpoints.close()
    return report


def evaluate_best(run: Run, checkpoints: Checkpoints, history: list[dict], log) -> dict:
    restored = checkpoints.restore(checkpoints.best, run.initial_state)
    if restored is None:
        raise TrainingError(f"No best checkpoint in {run.workdir / 'checkpoints' / 'best'}; train first.")
    state, meta = restored
    test = run.evaluate(state, "test", with_logits=True)
    report_lib.write_predictions(run.workdir / report_lib.PREDICTIONS, run.refs["test"], test.pop("labels"), test.pop("logits"))
    info = {
        "model": run.recipe.model, "preset": run.recipe.preset, "dataset": run.recipe.dataset,
        "split": run.split.name if run.split is not None else "dataset split",
        "best_epoch": meta["epoch"], "best_val_accuracy": meta["val"]["accuracy"],
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "recipe": _recipe_dict(run.recipe),
    }
    report = report_lib.write_report(run.workdir, info, test, history)
    log(f"test ({test['num_examples']} clips, best epoch {meta['epoch']}): accuracy {test['accuracy']:.4f}, "
        f"macro-F1 {test['macro_f1']:.4f}")
    log(report_lib.format_confusion(test["confusion_matrix"]))
    log(f"report: {run.workdir / 'report.json'}")
    return report


def _recipe_dict(recipe: presets.Recipe) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(recipe), default=str))


# ----------------------------------------------------------------------------- command line

def resolve_model(name: str | None) -> str:
    valid = sorted(models_lib.MODELS)
    aliases = ", ".join(f"{a} -> {m}" for a, m in sorted(models_lib.ALIASES.items()))
    if name in models_lib.MODELS:
        return name
    if name in models_lib.ALIASES:
        return models_lib.ALIASES[name]
    raise UsageError(f"Unknown --model={name!r}. Valid models: {', '.join(valid)} (aliases: {aliases}).")


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


def check_workdir(workdir: pathlib.Path, config: dict) -> None:
    """Refuses a workdir that holds another run's checkpoints; records this run's config otherwise."""
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m strokevision_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="e.g. r2plus1d_18 (or its short name r2plus1d)")
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
    return parser.parse_args(argv)


def enable_compilation_cache() -> None:
    """XLA's persistent cache: a rerun (resume, evaluate) skips recompiling the steps."""
    cache = os.environ.get("STROKEVISION_XLA_CACHE", os.path.expanduser("~/.cache/strokevision_jax/xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def main(argv=None) -> int:
    args = parse_args(argv)
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
                           init=init, split=split)
    except (TrainingError, dataset_lib.DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
