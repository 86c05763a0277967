"""torchvision's Video Swin Transformers (swin3d_t / _s / _b), eval mode.

Shapes (N, T, H, W) -> token grids (T/2, H/4, W/4) against the (8, 7, 7) window:
  (2, 8, 112, 112)  4 x 28 x 28: the temporal window shrinks to 4 and its shift to 0;
                    spatial windows shifted by 3, no padding.
  (1, 4, 64, 96)    2 x 16 x 24: temporal window 2, spatial padding to 21 x 28 then
                    shrinking (stage 3: 4 x 6 < 7), odd-free PatchMerging.
  (2, 18, 32, 40)   9 x 8 x 10: a full 8 x 7 x 7 window shifted on all three axes, padded
                    to 16 x 14 x 14 (the -100 mask on every axis), batch 2; odd widths in
                    PatchMerging (8 x 10 -> 4 x 5 -> 2 x 3 -> 1 x 2).
The default 32 x 224 x 224 clip costs ~20 s per model on 2 cores; it was checked by hand.
"""


def _channels_last_already(key, output):
    # torchvision's Swin works in (N, T, H, W, C) after the patch embedding: keep the layout.
    return output.detach().numpy()


FEATURES = {"patch_embed": "patch_embed", "stage1": "features.0", "stage2": "features.2",
            "stage3": "features.4", "stage4": "features.6"}

_SMALL = [(1, 4, 64, 96), (2, 18, 32, 40)]

SPECS = [
    {"name": "swin3d_t", "torch_kwargs": {}, "config": {}, "shapes": [(2, 8, 112, 112), *_SMALL],
     "features": FEATURES, "torch_feature": _channels_last_already},
    {"name": "swin3d_s", "torch_kwargs": {}, "config": {}, "shapes": _SMALL,
     "features": FEATURES, "torch_feature": _channels_last_already},
    {"name": "swin3d_b", "torch_kwargs": {}, "config": {}, "shapes": _SMALL,
     "features": FEATURES, "torch_feature": _channels_last_already},
]


def _swin3d_t_without_stochastic_depth():
    # The builder fixes stochastic_depth_prob=0.1; switch its StochasticDepth layers off instead.
    import torchvision

    model = torchvision.models.video.swin3d_t()
    for module in model.modules():
        if isinstance(module, torchvision.ops.StochasticDepth):
            module.p = 0.0
    return model


SPECS.append(  # training mode, stochastic depth off (dropout is 0 in torchvision's Swin3D)
    {"name": "swin3d_t", "torch_kwargs": {}, "torch_builder": _swin3d_t_without_stochastic_depth,
     "config": {"stochastic_depth_prob": 0.0}, "shapes": [(2, 4, 64, 96)], "features": FEATURES,
     "torch_feature": _channels_last_already, "train_mode": True})
