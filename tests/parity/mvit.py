"""torchvision's MViTs (mvit_v1_b, mvit_v2_s).

torchvision's mvit builders hard-code `spatial_size` / `temporal_size` (passing them raises
"got multiple values for keyword argument"), and its forward only runs on the clip size the
model was built for, so the builder-made reference runs on 16 x 224 x 224 only (batch 1:
the full model is ~65 GFLOPs per clip). The second spec of each model changes the token
grid through another builder kwarg, `patch_embed_stride=(4, 8, 8)` (a 4 x 28 x 28 grid at
16 x 224 x 224, cheap enough for batch 2): the v1 position encoding and the v2 relative
position tables then have other shapes, and v2's last stage interpolates its tables at run
time (torchvision sizes them for 7 // 2 = 3 positions, the pooled grid has 4).
`torchvision_mvit` builds the reference for other clip sizes (as the builders would).
"""

import numpy as np

FEATURES = {"patch_embed": "pos_encoding", "stage1": "blocks.0", "stage2": "blocks.2",
            "stage3": "blocks.13", "stage4": "blocks.15"}
COARSE = {"patch_embed_stride": (4, 8, 8)}


def torch_feature(name, output) -> np.ndarray:
    """pos_encoding gives the (N, 1 + THW, C) tokens, a block (tokens, thw): same layout."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.detach().numpy()


def torchvision_mvit(name: str, temporal_size: int, spatial_size: tuple[int, int], **kwargs):
    """torchvision's `name` MViT built for another clip size (its builder can't do it)."""
    from torchvision.models.video import mvit as tv

    from strokevision_jax.models import registry

    cfg = registry.get(name).config
    blocks = [tv.MSBlockConfig(b.num_heads, b.input_channels, b.output_channels, list(b.kernel_q),
                               list(b.kernel_kv), list(b.stride_q), list(b.stride_kv))
              for b in cfg.block_setting]
    kwargs.setdefault("stochastic_depth_prob", 0.2)
    return tv.MViT(spatial_size=tuple(spatial_size), temporal_size=temporal_size,
                   block_setting=blocks, residual_pool=cfg.residual_pool,
                   residual_with_cls_embed=cfg.residual_with_cls_embed,
                   rel_pos_embed=cfg.rel_pos_embed, proj_after_attn=cfg.proj_after_attn, **kwargs)


SPECS = [
    {"name": name, "torch_kwargs": kwargs, "config": dict(kwargs), "shapes": shapes,
     "features": FEATURES, "torch_feature": torch_feature}
    for name in ("mvit_v1_b", "mvit_v2_s")
    for kwargs, shapes in (({}, [(1, 16, 224, 224)]), (COARSE, [(2, 16, 224, 224)]))
] + [
    # The cpu presets' kind of clip: 8 x 112 x 112, batch 2, a model built for that size.
    {"name": name, "torch_kwargs": {"temporal_size": 8, "spatial_size": (112, 112)},
     "torch_builder": lambda name=name, **kw: torchvision_mvit(name, **kw),
     "config": {"temporal_size": 8, "spatial_size": (112, 112)}, "shapes": [(2, 8, 112, 112)],
     "features": FEATURES, "torch_feature": torch_feature}
    for name in ("mvit_v1_b", "mvit_v2_s")
] + [
    # Training mode (no BatchNorm here; stochastic depth and dropout off so that it is defined).
    {"name": "mvit_v2_s", "torch_kwargs": {"temporal_size": 8, "spatial_size": (112, 112),
                                           "stochastic_depth_prob": 0.0, "dropout": 0.0},
     "torch_builder": lambda **kw: torchvision_mvit("mvit_v2_s", **kw),
     "config": {"temporal_size": 8, "spatial_size": (112, 112), "stochastic_depth_prob": 0.0,
                "dropout": 0.0},
     "shapes": [(2, 8, 112, 112)], "features": FEATURES, "torch_feature": torch_feature,
     "train_mode": True},
]
