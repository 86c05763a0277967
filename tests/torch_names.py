"""A zero state_dict with torch's names and shapes for a video ResNet, made from the NNX model
(the inverse of its key table; np.zeros pages in nothing): converter tests without torch."""

import numpy as np
from flax import nnx

from checkpoints_convert import api

_LEAVES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


def torch_state_dict(spec, num_classes: int = 400, **overrides) -> dict[str, np.ndarray]:
    model = nnx.eval_shape(lambda: spec.build(num_classes=num_classes, rngs=nnx.Rngs(0), **overrides))
    out = {}
    for path, shape in api.variable_shapes(model).items():
        *module, leaf = map(str, path)
        if leaf == "kernel":
            torch_shape = (shape[-1], shape[-2], *shape[:-2]) if len(shape) > 2 else (shape[1], shape[0])
            out[".".join(module) + ".weight"] = np.zeros(torch_shape, np.float32)
        else:
            out[".".join(module) + "." + _LEAVES.get(leaf, leaf)] = np.zeros(shape, np.float32)
    return out
