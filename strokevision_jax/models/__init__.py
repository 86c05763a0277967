"""Model registry: torchvision builder names -> NNX factories."""

import contextlib

import jax

# The skeleton factories share their module's name: import the modules, so that
# `strokevision_jax.models.motionbert` stays the module.
from strokevision_jax.models import motionbert as motionbert_lib
from strokevision_jax.models import msg3d as msg3d_lib
from strokevision_jax.models import poseconv3d as poseconv3d_lib
from strokevision_jax.models.mvit import mvit_v1_b, mvit_v2_s
from strokevision_jax.models.swin3d import swin3d_b, swin3d_s, swin3d_t
from strokevision_jax.models.video_resnet import mc3_18, r2plus1d_18, r3d_18

MODELS = {
    "r2plus1d_18": r2plus1d_18,
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "mvit_v1_b": mvit_v1_b,
    "mvit_v2_s": mvit_v2_s,
    "swin3d_t": swin3d_t,
    "swin3d_s": swin3d_s,
    "swin3d_b": swin3d_b,
    # skeleton models
    "motionbert": motionbert_lib.motionbert,
    "poseconv3d": poseconv3d_lib.poseconv3d,
    "msg3d": msg3d_lib.msg3d,
}

# The paper's short names.
ALIASES = {
    "r2plus1d": "r2plus1d_18",
    "r3d": "r3d_18",
    "mc3": "mc3_18",
    "mvit": "mvit_v2_s",  # the stronger of torchvision's two Kinetics-400 MViTs
    "swin": "swin3d_b",  # the strongest Kinetics-400 Video Swin in torchvision
}

# Config fields that set the input size a model is built for (its position embeddings).
INPUT_SIZE_FIELDS = ("temporal_size", "spatial_size")


@contextlib.contextmanager
def fast_init():
    """Eager initialisation compiles one small random-number program per parameter shape; XLA's
    optimisations only cost time there (20 s -> 8 s for the cpu preset's R(2+1)D-18)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
