"""The pure parts of training: optimiser and schedule, loss, the jitted train and eval steps,
the weight average, and placing batches on the device mesh.

The steps are pure functions of (state, batch), jitted once, with the state donated; the batch is
placed with a NamedSharding over a 1-D 'data' Mesh of all devices, the state is replicated.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from strokevision_jax import presets
from strokevision_jax.models import registry


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
    module named by the model family's `head`) gets its own learning rate, `learning_rate * head_lr_scale`
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
        head = registry.get(recipe.model).family.head

        def group(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "head" if getattr(path[0], "key", None) == head else "backbone",
                params)

        tx = optax.multi_transform(
            {"backbone": optimizer(recipe.learning_rate),
             "head": optimizer(recipe.learning_rate * recipe.head_lr_scale)}, group)
    if recipe.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(recipe.grad_clip), tx)
    return tx


def batch_inputs(batch: dict, input_key: str | tuple[str, ...]):
    """The model input of a batch: one entry, or a dict of several (see Recipe.input_key)."""
    return batch[input_key] if isinstance(input_key, str) else {k: batch[k] for k in input_key}


def input_adapter(recipe: presets.Recipe, train: bool):
    """The part of the input pipeline that runs inside the jitted steps: for PoseConv3D the
    keypoint heatmaps, (N, M, T, V, 3) compact-frame keypoints -> (N, T, H, W, V), generated on
    the device; for the two-pathway network {'video', 'keypoints'} -> {'video', 'heatmaps'};
    otherwise the identity."""
    config = recipe.heatmaps
    if config is None:
        return lambda inputs: inputs
    from strokevision_jax.data.heatmaps import generate_pose_target

    size = recipe.skeleton.compact_size if train else recipe.skeleton.compact_eval_size

    def to_heatmaps(keypoints):
        return generate_pose_target(keypoints[..., :2], keypoints[..., 2], image_size=tuple(size),
                                    sigma=config.sigma, use_score=config.use_score, mode=config.mode)

    if recipe.video is not None:  # two pathways: the video passes through
        return lambda inputs: {"video": inputs["video"], "heatmaps": to_heatmaps(inputs["keypoints"])}
    return to_heatmaps


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


def training_logits_and_loss(model, inputs, labels, weights, label_smoothing: float = 0.0):
    """(logits, loss) of a training forward pass. A model with several heads
    (`loss_components`, e.g. the two-pathway network) is trained on the sum of its heads'
    losses, and its fused prediction (`__call__`'s) is what the logits report."""
    components = getattr(model, "loss_components", None)
    if components is None:
        logits = model(inputs, train=True)
        return logits, weighted_cross_entropy(logits, labels, weights, None, label_smoothing)
    heads = model.heads(inputs, train=True)
    loss = sum(weighted_cross_entropy(heads[name], labels, weights, None, label_smoothing)
               for name in components)
    return heads["fused"], loss


def make_train_step(graphdef, tx, weights, input_key: str | tuple[str, ...], label_smoothing: float,
                    dropout_seed: int, ema_decay: float | None = None, adapt=lambda inputs: inputs):
    """The jitted step (state, batch) -> (state, metrics); `adapt` maps the batch's input to the
    model's (see `input_adapter`)."""
    weights = jnp.asarray(weights)

    def train_step(state: TrainState, batch):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            # Dropout (where a model has it) draws from a key folded with the step: a resumed
            # run continues exactly.
            nnx.reseed(model, dropout=jax.random.fold_in(jax.random.key(dropout_seed), state.step))
            logits, loss = training_logits_and_loss(model, adapt(batch_inputs(batch, input_key)),
                                                    batch["label"], weights, label_smoothing)
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


def make_eval_step(graphdef, weights, input_key: str | tuple[str, ...], flip_view: bool = False,
                   adapt=lambda inputs: inputs):
    """Logits and summed weighted loss of a batch; with `flip_view`, the clip and its mirror
    image are two views whose softmax probabilities are averaged (the logits returned are the
    log of that average), as multi-view testing does in video recognition."""
    weights = jnp.asarray(weights)

    def eval_step(state: TrainState, batch):
        model = nnx.merge(graphdef, *state.eval_weights())
        clips = adapt(batch_inputs(batch, input_key))
        logits = model(clips, train=False)
        if flip_view:  # (N, T, H, W, C): mirror the width axis
            views = jnp.stack([logits, model(clips[:, :, :, ::-1], train=False)]).astype(jnp.float32)
            logits = jax.nn.logsumexp(jax.nn.log_softmax(views, axis=-1), axis=0) - jnp.log(2.0)
        mask = batch["mask"].astype(jnp.float32)
        loss_sum = weighted_cross_entropy(logits, batch["label"], weights, mask) * jnp.sum(
            weights[batch["label"]] * mask)
        return logits, loss_sum

    return jax.jit(eval_step)


def make_heads_step(graphdef, input_key: str | tuple[str, ...], adapt=lambda inputs: inputs):
    """For a model with several heads (`loss_components`): (state, batch) -> {head: logits}."""

    def heads_step(state: TrainState, batch):
        model = nnx.merge(graphdef, *state.eval_weights())
        return model.heads(adapt(batch_inputs(batch, input_key)), train=False)

    return jax.jit(heads_step)


# ----------------------------------------------------------------------------- data on the mesh

def make_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, sharding):
    """`tree` (the same on every process: the initial state) as arrays replicated over the mesh.

    One process: `jax.device_put`. Several: each process supplies its copy of every leaf
    (`make_array_from_process_local_data`); device_put would compare each leaf across the processes
    first and does not take typed PRNG keys (Dropout's state), whose data are placed instead."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(place, tree)


def shard_batch(batch: dict, sharding) -> dict:
    """Host numpy batch (this process's rows) -> global jax arrays split over the 'data' axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def to_host(array) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)
