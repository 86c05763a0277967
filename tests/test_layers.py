"""layers.Conv3d: the factorised (2D) lowerings give the 3D convolution's result."""

import jax
import numpy as np
import pytest
from flax import nnx

from strokevision_jax.models.layers import Conv3d
from strokevision_jax.models.registry import MODELS

CASES = [  # kernel, strides, padding: the shapes the video ResNets use, plus odd sizes
    ((1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ((1, 7, 7), (1, 2, 2), (0, 3, 3)),
    ((1, 3, 3), (2, 2, 2), (0, 1, 1)),
    ((3, 1, 1), (1, 1, 1), (1, 0, 0)),
    ((3, 1, 1), (2, 1, 1), (1, 0, 0)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 0)),
    ((1, 1, 1), (1, 2, 2), (0, 0, 0)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 7, 7), (1, 2, 2), (1, 3, 3)),
    ((2, 3, 3), (1, 2, 2), (0, 1, 1)),
]


@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_factorised_lowering_equals_3d_convolution(kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), (2, 5, 9, 11, 3))
    conv = Conv3d(3, 4, kernel, strides, padding, rngs=nnx.Rngs(1))
    factorised = conv(x)
    conv.factorize = False
    reference = conv(x)
    assert factorised.shape == reference.shape
    np.testing.assert_allclose(np.asarray(factorised), np.asarray(reference), atol=1e-5, rtol=1e-5)


def test_zero_init_residual_makes_blocks_start_as_identity_shortcuts():
    model = MODELS["r2plus1d_18"].build(num_classes=4, base_width=8, zero_init_residual=True, rngs=nnx.Rngs(0))
    for block in (*model.layer1, *model.layer2):
        scale = block.conv2[1].scale[...]
        assert np.all(np.asarray(scale) == 0)
    default = MODELS["r2plus1d_18"].build(num_classes=4, base_width=8, rngs=nnx.Rngs(0))
    assert np.all(np.asarray(default.layer1[0].conv2[1].scale[...]) == 1)
