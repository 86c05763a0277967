"""pyskl PoseConv3D (Recognizer3D: ResNet3dSlowOnly backbone + I3DHead).

Reads what pyskl training writes (`mmcv.runner.save_checkpoint`: `{'meta', 'state_dict'}`, the
reader unwraps `state_dict`). The NNX modules nest as mmcv's ConvModules do, so the table only
renames leaves and transposes kernels: `<module>.conv.weight` (O, I, T, H, W) -> `.conv.kernel`
(T, H, W, I, O); `<module>.bn.{weight, bias, running_mean, running_var}` -> `.bn.{scale, bias,
mean, var}`; `cls_head.fc_cls.weight` (O, I) -> `.kernel` (I, O).
"""

from checkpoints_convert.rules import Ignore, Rule
from strokevision_jax.models.poseconv3d import poseconv3d

MODELS = {"poseconv3d": poseconv3d}

# ConvModules: the stem conv, a bottleneck's conv1..conv3 and its shortcut.
_MODULE = r"(backbone\.(?:conv1|layer\d\.\d+\.(?:conv[123]|downsample)))"

TABLE = [
    Rule(rf"{_MODULE}\.conv\.weight", "{0}.conv.kernel", "conv"),
    Rule(rf"{_MODULE}\.bn\.weight", "{0}.bn.scale"),
    Rule(rf"{_MODULE}\.bn\.bias", "{0}.bn.bias"),
    Rule(rf"{_MODULE}\.bn\.running_mean", "{0}.bn.mean"),
    Rule(rf"{_MODULE}\.bn\.running_var", "{0}.bn.var"),
    Ignore(rf"{_MODULE}\.bn\.num_batches_tracked",
           "a training-step counter; torch only uses it when BN momentum is None (pyskl: 0.1), "
           "flax BatchNorm keeps a fixed momentum"),
    Rule(r"cls_head\.fc_cls\.weight", "cls_head.fc_cls.kernel", "linear"),
    Rule(r"cls_head\.fc_cls\.bias", "cls_head.fc_cls.bias"),
]
HEAD_KEYS = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")
# pyskl's names (in_channels, base_channels, stage_blocks, ...) are PoseConv3DConfig's.
CONFIG_KWARGS: dict[str, str] = {}
