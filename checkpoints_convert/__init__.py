"""PyTorch checkpoints -> Flax NNX models, without PyTorch and without executing the file.

    model = checkpoints_convert.load_torch_checkpoint("r3d_18", "r3d_18-b3b3357e.pth", num_classes=4)
    logits = model(frames, train=False)  # frames: (N, T, H, W, 3) float32, normalised

or from the shell: `python -m checkpoints_convert --model=r3d_18 --src=FILE.pth --out=DIR`.
"""

from checkpoints_convert.api import (
    CheckpointError,
    ConversionError,
    from_state_dict,
    load_torch_checkpoint,
    model_names,
    restore_converted,
    save_converted,
    transfer_weights,
)
from checkpoints_convert.torch_io import UnsafeCheckpointError, read_checkpoint

__all__ = [
    "CheckpointError", "ConversionError", "UnsafeCheckpointError", "from_state_dict",
    "load_torch_checkpoint", "model_names", "read_checkpoint", "restore_converted",
    "save_converted", "transfer_weights",
]
