"""Conversion with resizing, against torchvision: a Kinetics-shaped checkpoint loaded into a
model built for another input size (MViT: its position encodings) or another window (Swin3D: its
relative-position bias tables) must compute what torchvision computes once the same tensors are
resized with torch's own `F.interpolate` (linear for MViT's temporal and relative tables, as
torchvision's `_interpolate`; bicubic antialiased for MViT-v1's spatial grid, as timm's
`resample_abs_pos_embed`; trilinear for Swin's bias tables) and loaded into a torchvision model
of that size. Needs the `parity` extra."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install -e '.[parity]'")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision: pip install -e '.[parity]'")
F = torch.nn.functional

from checkpoints_convert import load_torch_checkpoint  # noqa: E402
from tests.parity.mvit import torchvision_mvit  # noqa: E402
from tests.test_parity import assert_close, randomise  # noqa: E402


def _linear_rows(table, rows):
    """(L, d) -> (rows, d), torchvision's `_interpolate` of MViT-v2's relative tables."""
    return F.interpolate(table.T[None], size=rows, mode="linear").reshape(-1, rows).T


def _resized_mvit_state(state, reference):
    """The Kinetics state_dict resized to `reference`'s shapes with torch's interpolations."""
    target = reference.state_dict()
    out = {}
    for key, value in state.items():
        shape = target[key].shape
        if value.shape == shape:
            out[key] = value
        elif key.endswith("temporal_pos") or ".rel_pos_" in key:
            out[key] = _linear_rows(value, shape[0])
        elif key.endswith("spatial_pos"):  # (H'W', C) square grid -> (H2 W2, C)
            side, channels = int(round(value.shape[0] ** 0.5)), value.shape[1]
            grid = value.reshape(side, side, channels).permute(2, 0, 1)[None]
            h2, w2 = reference.pos_encoding.spatial_size  # the token grid the model was built for
            out[key] = F.interpolate(grid, size=(h2, w2), mode="bicubic", antialias=True,
                                     align_corners=False)[0].permute(1, 2, 0).reshape(h2 * w2, channels)
        else:
            raise AssertionError(f"unexpected shape change of {key}: {tuple(value.shape)} -> {tuple(shape)}")
    return out


@pytest.mark.parametrize("name", ["mvit_v1_b", "mvit_v2_s"])
def test_mvit_converted_to_another_clip_size_matches_torchvision(name, tmp_path):
    torch.manual_seed(0)
    kinetics = getattr(torchvision.models.video, name)()  # built for 16 x 224 x 224
    randomise(kinetics, seed=1)
    path = tmp_path / f"{name}.pth"
    torch.save(kinetics.state_dict(), path)

    size = {"temporal_size": 8, "spatial_size": (96, 128)}  # 4 x 24 x 32 tokens, not square
    reference = torchvision_mvit(name, **size).eval()
    reference.load_state_dict(_resized_mvit_state(kinetics.state_dict(), reference))
    model = load_torch_checkpoint(name, path, **size)

    x = torch.randn(1, 3, 8, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(x).numpy()
    ours = jax.jit(lambda m, v: m(v, train=False))(model, np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).numpy()))
    error = assert_close(f"{name} resized logits", ours, expected)
    print(name, "resized to 8 x 96 x 128: max |logit difference|", f"{error:.2e}")


def test_swin3d_converted_to_another_window_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    kinetics = torchvision.models.video.swin3d_t()  # window (8, 7, 7): tables of 15 x 13 x 13 rows
    randomise(kinetics, seed=1)
    path = tmp_path / "swin3d_t.pth"
    torch.save(kinetics.state_dict(), path)

    window = (4, 5, 5)
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    # swin3d_t's arguments with another window (its builder fixes window_size).
    reference = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                  window_size=list(window), stochastic_depth_prob=0.1).eval()
    state = {}
    for key, value in kinetics.state_dict().items():
        if key.endswith("relative_position_bias_table"):
            heads = value.shape[1]
            grid = value.T.reshape(1, heads, 15, 13, 13)
            size = tuple(2 * w - 1 for w in window)
            value = F.interpolate(grid, size=size, mode="trilinear", align_corners=False).reshape(heads, -1).T
        if not key.endswith("relative_position_index"):
            state[key] = value
    missing = reference.load_state_dict(state, strict=False).missing_keys
    assert all(k.endswith("relative_position_index") for k in missing), missing
    model = load_torch_checkpoint("swin3d_t", path, window_size=window)

    x = torch.randn(1, 3, 8, 64, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(x).numpy()
    ours = jax.jit(lambda m, v: m(v, train=False))(model, np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).numpy()))
    error = assert_close("swin3d_t window (4, 5, 5) logits", ours, expected)
    print("swin3d_t with window (4, 5, 5): max |logit difference|", f"{error:.2e}")
