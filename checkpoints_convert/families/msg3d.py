"""pyskl's MS-G3D (`msg3d`: RecognizerGCN = MSG3D backbone + GCNHead), mmcv checkpoints.

Files are what `mmcv.runner.save_checkpoint` writes, `{'meta': ..., 'state_dict': ...}` (the
reader unwraps `state_dict`), with keys `backbone.*` and `cls_head.*`. The NNX model nests as
pyskl's (strokevision_jax/models/msg3d.py), so the table renames leaves and transposes
kernels: Conv2d (O, I, kt, 1) -> (kt, 1, I, O), the window-collapsing Conv3d (O, I, 1, w, 1)
-> (1, w, 1, I, O), Linear (O, I) -> (I, O), BatchNorm weight / running stats -> scale /
mean / var. The learnable adjacency offsets `PA` are Params, copied as they are.

The fixed adjacency buffers (`backbone.A`, and `.A` next to each `PA`) are not variables: the
model computes them from its graph layout. `check_fixed` compares each with the model's own
and refuses the file when one differs (another graph layout or mode, another number of
scales), so a checkpoint trained on another graph is never loaded silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from checkpoints_convert.rules import ConversionError, Ignore, Rule
from strokevision_jax.models.msg3d import msg3d

MODELS = {"msg3d": msg3d}

# pyskl MSTCN modules: the two in each factorized pathway, and the stage TCN.
_MSTCN = r"backbone\.(?:sgcn\d\.[12]|tcn\d)"
# Graph convs: MSGCN (sgcn_i.0) and the window graph conv of each G3D block (gcn3d.1).
_GRAPH_CONV = r"backbone\.(?:sgcn\d\.0|gcn3d\d\.gcn3d\.\d\.gcn3d\.1)"
_G3D_BLOCK = r"backbone\.gcn3d\d\.gcn3d\.\d"
_CONV = (rf"({_MSTCN}\.branches\.\d\.0|{_MSTCN}\.branches\.[0-3]\.3\.conv|{_MSTCN}\.residual\.conv"
         rf"|{_GRAPH_CONV}\.mlp\.layers\.0|{_G3D_BLOCK}\.out_conv)")
_BN = (rf"(backbone\.data_bn|{_MSTCN}\.branches\.\d\.1|{_MSTCN}\.branches\.[0-3]\.3\.bn"
       rf"|{_MSTCN}\.branches\.4\.4|{_MSTCN}\.residual\.bn|{_GRAPH_CONV}\.mlp\.layers\.1"
       rf"|{_G3D_BLOCK}\.out_bn)")

TABLE = [
    Rule(rf"{_CONV}\.weight", "{0}.kernel", "conv"),
    Rule(rf"{_CONV}\.bias", "{0}.bias"),
    Rule(rf"{_BN}\.weight", "{0}.scale"),
    Rule(rf"{_BN}\.bias", "{0}.bias"),
    Rule(rf"{_BN}\.running_mean", "{0}.mean"),
    Rule(rf"{_BN}\.running_var", "{0}.var"),
    Ignore(rf"{_BN}\.num_batches_tracked",
           "flax BatchNorm uses a fixed momentum; pyskl's is 0.1, so the counter is unused"),
    Rule(rf"({_GRAPH_CONV})\.PA", "{0}.PA"),
    Rule(r"cls_head\.fc_cls\.weight", "cls_head.fc_cls.kernel", "linear"),
    Rule(r"cls_head\.fc_cls\.bias", "cls_head.fc_cls.bias"),
]
HEAD_KEYS = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")
# pyskl's MSG3D kwargs (in_channels, base_channels, num_gcn_scales, num_g3d_scales,
# num_person, tcn_dropout) are the config's field names.
CONFIG_KWARGS: dict[str, str] = {}

_FIXED_SUFFIX = ".A"
# Adjacencies are 0/1 matrices scaled by 1/column sum: any real difference is >= 1e-3.
FIXED_ATOL = 1e-6


def fixed_buffers(model: nnx.Module) -> dict[str, np.ndarray]:
    """{pyskl buffer key: the model's own value} for every `.A` buffer pyskl would save."""
    out = {}
    for path, module in model.iter_modules():
        fixed = getattr(module, "fixed_adjacency", None)
        if callable(fixed):
            out[".".join(map(str, path)) + _FIXED_SUFFIX] = fixed()
    return out


def _is_fixed_key(key: str) -> bool:
    return re.fullmatch(r"backbone(?:\..+)?\.A", key) is not None


def check_fixed(state_dict: Mapping[str, np.ndarray], model: nnx.Module) -> dict[str, np.ndarray]:
    """Compares the checkpoint's adjacency buffers with the model's graph; returns the
    state_dict without them. Raises ConversionError naming every missing, surplus, mis-shaped
    or differing buffer (with its largest difference)."""
    expected = fixed_buffers(model)
    config = model.config
    graph = (f"graph layout={config.layout!r} mode={config.mode!r}, "
             f"num_gcn_scales={config.num_gcn_scales}, num_g3d_scales={config.num_g3d_scales}")
    problems = []
    for key in sorted(k for k in state_dict if _is_fixed_key(k)):
        if key not in expected:
            problems.append(f"{key}: the model has no adjacency buffer there")
            continue
        stored, own = np.asarray(state_dict[key], np.float32), expected[key]
        if stored.shape != own.shape:
            problems.append(f"{key}: shape {stored.shape}, but the model's graph gives {own.shape}")
            continue
        difference = float(np.max(np.abs(stored - own))) if own.size else 0.0
        if difference > FIXED_ATOL:
            problems.append(f"{key}: differs from the model's adjacency by up to {difference:.3g}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        problems.append("missing adjacency buffers (pyskl saves them all): " + ", ".join(missing))
    if problems:
        raise ConversionError(
            f"the checkpoint's graph is not this model's ({graph}); a pyskl MSG3D with "
            "graph_cfg=dict(layout='coco', mode='binary_adj') stores exactly these buffers. "
            "Pass the checkpoint's num_gcn_scales / num_g3d_scales if they differ, or convert "
            "a checkpoint trained on this graph:\n  " + "\n  ".join(problems))
    return {key: value for key, value in state_dict.items() if key not in expected}
