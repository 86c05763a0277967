"""MotionBERT action models (DSTformer + ActionNet "class" head) as train_action.py saves them.

Files: `{'model': state_dict, 'epoch', 'lr', 'optimizer', 'best_acc'}` (the reader unwraps
`model`), keys `backbone.*` / `head.*`, with the `module.` prefix of nn.DataParallel (GPU
training) or without it (CPU training); `prepare` strips it.

The NNX model nests as upstream's (see strokevision_jax/models/motionbert.py) with these
renames: `pre_logits.fc` -> `pre_logits`, LayerNorm / BatchNorm `weight` -> `scale`, BatchNorm
`running_mean` / `running_var` -> `mean` / `var`; Linear (out, in) -> kernel (in, out).
`temp_embed` (1, maxlen, 1, C) -> (maxlen, C) and `pos_embed` (1, J, C) -> (J, C). A model built
with a smaller maxlen takes the first maxlen rows of `temp_embed`: exactly what upstream uses on
clips that short (it slices `temp_embed[:, :T]`).

`backbone.head` (upstream's 3D pose output Linear(dim_rep, 3)) is unused by the action model,
but it is a parameter of upstream's model and its checkpoints (and counts in its 60.4M), so the
NNX model keeps it too and it is converted like any other weight.

The architecture is not stored in the file except through the shapes; `check_fixed` reads the
sizes off the shapes and, when they are not the model's, names the config to pass (num_heads
does not show in any shape: it must be given when it is not the published 8).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from checkpoints_convert.rules import ConversionError, Ignore, Rule
from strokevision_jax.models.motionbert import motionbert

MODELS = {"motionbert": motionbert}

_PREFIX = "module."


def prepare(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips nn.DataParallel's `module.` prefix (present or not, per key)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if name in out:
            raise ConversionError(f"{name!r} appears both with and without the {_PREFIX!r} "
                                  "prefix: the state_dict mixes two models")
        out[name] = value
    if "head.fc1.weight" in out and "head.fc2.weight" not in out:
        raise ConversionError("this is an ActionNet(version='embed') checkpoint (head.fc1 only, "
                              "the one-shot embedding head); only version='class' is supported")
    return out


def _drop_singletons(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """pos_embed (1, J, C) -> (J, C)."""
    if value.ndim != 3 or value.shape[0] != 1:
        raise ConversionError(f"expected a (1, J, C) embedding, got shape {value.shape}")
    return value[0]


def _temp_embed(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """temp_embed (1, L, 1, C) -> (maxlen, C): the first maxlen rows (maxlen <= L)."""
    if value.ndim != 4 or value.shape[0] != 1 or value.shape[2] != 1:
        raise ConversionError(f"expected a (1, maxlen, 1, C) temporal embedding, got shape "
                              f"{value.shape}")
    table = value[0, :, 0]
    if table.shape[0] < shape[0]:
        raise ConversionError(f"the checkpoint's temporal embedding has {table.shape[0]} frames, "
                              f"the model maxlen={shape[0]}: build it with maxlen <= "
                              f"{table.shape[0]}")
    return table[: shape[0]]


_BLOCK = r"backbone\.(blocks_st|blocks_ts)\.(\d+)"

TABLE = [
    Rule(r"backbone\.temp_embed", "backbone.temp_embed", _temp_embed),
    Rule(r"backbone\.pos_embed", "backbone.pos_embed", _drop_singletons),
    Rule(r"backbone\.(joints_embed|head)\.weight", "backbone.{0}.kernel", "linear"),
    Rule(r"backbone\.(joints_embed|head)\.bias", "backbone.{0}.bias"),
    Rule(rf"{_BLOCK}\.(norm[12]_[st])\.weight", "backbone.{0}.{1}.{2}.scale"),
    Rule(rf"{_BLOCK}\.(norm[12]_[st])\.bias", "backbone.{0}.{1}.{2}.bias"),
    Rule(rf"{_BLOCK}\.(attn_[st])\.(qkv|proj)\.weight", "backbone.{0}.{1}.{2}.{3}.kernel", "linear"),
    Rule(rf"{_BLOCK}\.(attn_[st])\.(qkv|proj)\.bias", "backbone.{0}.{1}.{2}.{3}.bias"),
    Rule(rf"{_BLOCK}\.(mlp_[st])\.(fc[12])\.weight", "backbone.{0}.{1}.{2}.{3}.kernel", "linear"),
    Rule(rf"{_BLOCK}\.(mlp_[st])\.(fc[12])\.bias", "backbone.{0}.{1}.{2}.{3}.bias"),
    Rule(r"backbone\.ts_attn\.(\d+)\.weight", "backbone.ts_attn.{0}.kernel", "linear"),
    Rule(r"backbone\.ts_attn\.(\d+)\.bias", "backbone.ts_attn.{0}.bias"),
    Rule(r"backbone\.norm\.weight", "backbone.norm.scale"),
    Rule(r"backbone\.norm\.bias", "backbone.norm.bias"),
    Rule(r"backbone\.pre_logits\.fc\.weight", "backbone.pre_logits.kernel", "linear"),
    Rule(r"backbone\.pre_logits\.fc\.bias", "backbone.pre_logits.bias"),
    Rule(r"head\.(fc[12])\.weight", "head.{0}.kernel", "linear"),
    Rule(r"head\.(fc[12])\.bias", "head.{0}.bias"),
    Rule(r"head\.bn\.weight", "head.bn.scale"),
    Rule(r"head\.bn\.bias", "head.bn.bias"),
    Rule(r"head\.bn\.running_mean", "head.bn.mean"),
    Rule(r"head\.bn\.running_var", "head.bn.var"),
    Ignore(r"head\.bn\.num_batches_tracked",
           "BatchNorm's step counter: torch reads it only with momentum=None (a cumulative "
           "average); upstream's BatchNorm1d has momentum 0.1"),
]
HEAD_KEYS = ("head.fc2.weight", "head.fc2.bias")
# The config fields carry upstream's DSTformer / ActionNet argument names already.
CONFIG_KWARGS: dict[str, str] = {}


def checkpoint_sizes(state_dict: Mapping[str, np.ndarray]) -> dict[str, tuple[int, str]]:
    """{config field: (value, key it was read from)} for the sizes the shapes reveal."""
    shapes = {key: tuple(np.shape(value)) for key, value in state_dict.items()}
    found: dict[str, tuple[int, str]] = {}

    def read(field: str, key: str, axis: int) -> None:
        if key in shapes and len(shapes[key]) > axis:
            found[field] = (shapes[key][axis], key)

    read("dim_feat", "backbone.joints_embed.weight", 0)
    read("dim_in", "backbone.joints_embed.weight", 1)
    read("dim_rep", "backbone.pre_logits.fc.weight", 0)
    read("dim_out", "backbone.head.weight", 0)
    read("num_joints", "backbone.pos_embed", 1)
    read("hidden_dim", "head.fc1.weight", 0)
    blocks = {int(key.split(".")[2]) for key in shapes if key.startswith("backbone.blocks_st.")}
    if blocks:
        found["depth"] = (max(blocks) + 1, "backbone.blocks_st.*")
    hidden = shapes.get("backbone.blocks_st.0.mlp_s.fc1.weight")
    if hidden and "dim_feat" in found:
        found["mlp_ratio"] = (hidden[0] / found["dim_feat"][0], "backbone.blocks_st.0.mlp_s.fc1.weight")
    return found


def check_fixed(state_dict: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    """Raises ConversionError naming the config to pass when the checkpoint's sizes are not
    the model's (rather than a list of every mis-shaped tensor); returns the state_dict."""
    config = model.config
    sizes = checkpoint_sizes(state_dict)
    # mlp_ratio: compare the hidden widths (upstream truncates dim_feat * mlp_ratio to int)
    ours = {field: getattr(config, field) for field in sizes}
    if "mlp_ratio" in sizes and config.mlp_hidden == round(sizes["mlp_ratio"][0] * config.dim_feat):
        ours["mlp_ratio"] = sizes["mlp_ratio"][0]
    wrong = {field: (value, key) for field, (value, key) in sizes.items() if value != ours[field]}
    if "backbone.ts_attn.0.weight" in state_dict and not config.att_fuse:
        wrong["att_fuse"] = (True, "backbone.ts_attn.*")
    elif "backbone.ts_attn.0.weight" not in state_dict and config.att_fuse and sizes:
        wrong["att_fuse"] = (False, "backbone.ts_attn.* (absent)")
    if not wrong:
        return dict(state_dict)
    found = ", ".join(f"{field}={value} (from {key})" for field, (value, key) in wrong.items())
    built = ", ".join(f"{field}={getattr(config, field)}" for field in wrong)
    kwargs = ", ".join(f"{field}={value!r}" for field, (value, _) in wrong.items())
    raise ConversionError(
        f"the checkpoint's architecture is not the model's: the checkpoint has {found}; the "
        f"model was built with {built}. Pass them as config, e.g. load_torch_checkpoint("
        f"'motionbert', path, {kwargs}, num_heads=...) (num_heads is in no tensor shape: give "
        f"the one the checkpoint was trained with; the published model uses 8)")
