from strokevision_jax.models.video_resnet import mc3_18, r2plus1d_18, r3d_18

MODELS = {
    "r2plus1d_18": r2plus1d_18,
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
}

# The paper's short names.
ALIASES = {
    "r2plus1d": "r2plus1d_18",
    "r3d": "r3d_18",
    "mc3": "mc3_18",
}
