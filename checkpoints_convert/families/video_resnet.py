"""torchvision's video ResNets (`r3d_18`, `mc3_18`, `r2plus1d_18`).

The NNX modules nest exactly as torchvision's (`layer1.0.conv1.0.3` is the temporal conv of
the first (2+1)D conv of block 0 of stage 1), so the table only renames leaves and transposes
kernels: Conv3d (O, I, T, H, W) -> (T, H, W, I, O), Linear (O, I) -> (I, O), BatchNorm
weight / running stats -> scale / mean / var.
"""

from checkpoints_convert.rules import Ignore, Rule
from strokevision_jax.models.video_resnet import mc3_18, r2plus1d_18, r3d_18

MODELS = {"r3d_18": r3d_18, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18}

_BLOCK = r"layer\d\.\d+"
# Conv3d modules: the stem's convs (0; R(2+1)D also 3), a block conv (convN.0, or in R(2+1)D
# the spatial and temporal halves convN.0.0 / convN.0.3) and the shortcut (downsample.0).
_CONV = rf"(stem\.[03]|{_BLOCK}\.conv\d\.0(?:\.[03])?|{_BLOCK}\.downsample\.0)"
# BatchNorm3d modules: after each conv (stem.1 / stem.4, convN.1, the (2+1)D middle BN
# convN.0.1, downsample.1).
_BN = rf"(stem\.[14]|{_BLOCK}\.conv\d\.(?:0\.)?1|{_BLOCK}\.downsample\.1)"

TABLE = [
    Rule(rf"{_CONV}\.weight", "{0}.kernel", "conv"),
    Rule(rf"{_BN}\.weight", "{0}.scale"),
    Rule(rf"{_BN}\.bias", "{0}.bias"),
    Rule(rf"{_BN}\.running_mean", "{0}.mean"),
    Rule(rf"{_BN}\.running_var", "{0}.var"),
    Ignore(rf"{_BN}\.num_batches_tracked",
           "flax BatchNorm uses a fixed momentum; torchvision's is 0.1, so the counter is unused"),
    Rule(r"fc\.weight", "fc.kernel", "linear"),
    Rule(r"fc\.bias", "fc.bias"),
]
HEAD_KEYS = ("fc.weight", "fc.bias")
CONFIG_KWARGS: dict[str, str] = {}
