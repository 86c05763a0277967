"""GeneratePoseTarget in JAX against pyskl's own outputs (../shared/fixtures/heatmaps).

Tolerance: 1e-5 absolute. Keypoint maps agree to ~1e-7 (float32 exp). Limb maps differ by up
to ~5e-6: pyskl's segment distance cancels large terms (d2_start - d2_end + d2_ab, each up to
W^2 + H^2), so its float32 result carries rounding noise of that size (4.4e-6 from the float64
value on the fixture's longest limb), and XLA rounds differently (it fuses multiply-adds).
pyskl also keeps subnormal values (~1e-38) that XLA flushes to 0.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strokevision_jax.data import heatmaps

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "heatmaps"
ATOL = 1e-5

generate = jax.jit(heatmaps.generate_pose_target,
                   static_argnames=("image_size", "sigma", "use_score", "mode", "skeletons",
                                    "scaling"))


@functools.cache
def fixture():
    if not (FIXTURES / "generate_pose_target.npz").is_file():
        pytest.skip(f"heatmap fixtures not found in {FIXTURES} (they live beside the repository, "
                    "in ../shared/fixtures)")
    meta = json.loads((FIXTURES / "generate_pose_target.json").read_text())
    return dict(np.load(FIXTURES / "generate_pose_target.npz")), meta


@pytest.mark.parametrize("mode, use_score", [("keypoint", True), ("keypoint", False),
                                             ("limb", True), ("limb", False)])
def test_matches_pyskl(mode, use_score):
    data, meta = fixture()
    assert meta["params"]["sigma"] == 0.6 and meta["params"]["scaling"] == 1.0
    key = f"heatmap_{'kp' if mode == 'keypoint' else 'limb'}_score{int(use_score)}"
    expected = data[key].transpose(0, 2, 3, 1)  # pyskl (T, K, H, W) -> (T, H, W, K)
    out = generate(data["keypoint"], data["keypoint_score"],
                   image_size=tuple(int(s) for s in data["img_shape"]), sigma=0.6,
                   use_score=use_score, mode=mode)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    error = np.abs(np.asarray(out) - expected)
    print(f"{key}: max abs error {error.max():.2e}")
    assert error.max() <= ATOL
    # The truncated windows: every pixel pyskl leaves at 0 is 0 here too.
    assert not np.any(np.asarray(out)[expected == 0])


def test_fixture_exercises_the_edge_cases():
    """The fixture has keypoints outside the frame and scores below the threshold."""
    data, _ = fixture()
    x, y = data["keypoint"][..., 0], data["keypoint"][..., 1]
    height, width = data["img_shape"]
    assert np.any((x < 0) | (x >= width) | (y < 0) | (y >= height))
    assert np.any(data["keypoint_score"] < heatmaps.EPS)


def _one_point(x, y, score=1.0, joints=17, joint=3):
    """(M=1, T=1, V, 2) keypoints with one joint at (x, y), the others far outside."""
    keypoints = np.full((1, 1, joints, 2), -100.0, np.float32)
    keypoints[0, 0, joint] = (x, y)
    scores = np.zeros((1, 1, joints), np.float32)
    scores[0, 0, joint] = score
    return keypoints, scores


def test_window_is_truncated_three_sigma():
    """Inside the window the value is the Gaussian, outside exactly 0; int() truncates."""
    sigma = 1.5
    keypoints, scores = _one_point(10.3, 7.6, score=0.8)
    out = np.asarray(generate(keypoints, scores, image_size=(20, 24), sigma=sigma))[0, :, :, 3]
    cols, rows = np.arange(24), np.arange(20)[:, None]
    inside = ((cols >= int(10.3 - 4.5)) & (cols < int(10.3 + 4.5) + 1)
              & (rows >= int(7.6 - 4.5)) & (rows < int(7.6 + 4.5) + 1))
    gauss = 0.8 * np.exp(-((cols - 10.3) ** 2 + (rows - 7.6) ** 2) / 2 / sigma**2)
    np.testing.assert_allclose(out, np.where(inside, gauss, 0.0), rtol=1e-6, atol=1e-7)
    # Column 5 is 3.5 sigma away but inside the truncated window; column 4 is outside it.
    assert out[7, 5] > 0 and out[7, 4] == 0


def test_point_left_of_the_frame_lights_column_zero():
    """x = -2, sigma 0.6: int(-2 + 1.8) = int(-0.2) = 0, so column 0 is drawn (floor would not)."""
    keypoints, scores = _one_point(-2.0, 5.0)
    out = np.asarray(generate(keypoints, scores, image_size=(10, 10), sigma=0.6))[0, :, :, 3]
    rows = np.arange(int(5.0 - 1.8), int(5.0 + 1.8) + 1)  # rows 3..6
    expected = np.zeros((10, 10), np.float32)
    expected[rows, 0] = np.exp(-(4.0 + (rows - 5.0) ** 2) / 2 / 0.6**2)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)


def test_score_below_threshold_contributes_nothing():
    keypoints, scores = _one_point(4.0, 4.0, score=0.9 * heatmaps.EPS)
    out = generate(keypoints, scores, image_size=(8, 8))
    assert not np.any(np.asarray(out))
    limbs = generate(keypoints, scores, image_size=(8, 8), mode="limb")
    assert not np.any(np.asarray(limbs))
    # use_score=False draws every keypoint with peak 1, whatever its score (as pyskl).
    unscored = np.asarray(generate(keypoints, scores, image_size=(8, 8), use_score=False))
    assert unscored[0, 4, 4, 3] == 1.0


def test_low_score_person_leaves_the_other_untouched():
    """Two persons on the same joint: the maximum over persons, the skipped one adds nothing."""
    first, first_scores = _one_point(3.0, 3.0, score=0.7)
    second, second_scores = _one_point(3.4, 3.2, score=0.5 * heatmaps.EPS)
    both = generate(np.concatenate([first, second]), np.concatenate([first_scores, second_scores]),
                    image_size=(8, 8))
    alone = generate(first, first_scores, image_size=(8, 8))
    np.testing.assert_array_equal(np.asarray(both), np.asarray(alone))


def test_short_limb_draws_its_start_keypoint():
    """A limb under 1 px is the start keypoint's Gaussian with the start's score."""
    keypoints = np.zeros((1, 1, 2, 2), np.float32)
    keypoints[0, 0] = [(5.0, 4.0), (5.5, 4.5)]
    scores = np.array([[[0.6, 0.9]]], np.float32)
    limb = generate(keypoints, scores, image_size=(10, 12), mode="limb", skeletons=((0, 1),))
    point = generate(keypoints, scores, image_size=(10, 12))
    np.testing.assert_array_equal(np.asarray(limb)[..., 0], np.asarray(point)[..., 0])


def test_leading_batch_axes_and_layout():
    data, _ = fixture()
    keypoints = np.stack([data["keypoint"], data["keypoint"][:, ::-1]])  # (2, M, T, V, 2)
    scores = np.stack([data["keypoint_score"], data["keypoint_score"][:, ::-1]])
    size = tuple(int(s) for s in data["img_shape"])
    batched = generate(keypoints, scores, image_size=size)
    assert batched.shape == (2, 8, *size, 17)
    np.testing.assert_array_equal(np.asarray(batched[1]),
                                  np.asarray(generate(keypoints[1], scores[1], image_size=size)))


def test_scaling_resizes_the_map():
    keypoints, scores = _one_point(4.0, 2.0)
    out = generate(keypoints, scores, image_size=(5, 7), scaling=2.0)
    assert out.shape == (1, 10, 14, 17)  # int(5 * 2 + 0.5), int(7 * 2 + 0.5)
    assert np.asarray(out)[0, 4, 8, 3] == 1.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(\.\.\., M, T, V, 2\)"):
        heatmaps.generate_pose_target(np.zeros((1, 2, 17, 3)), image_size=(8, 8))
    with pytest.raises(ValueError, match="scores must be"):
        heatmaps.generate_pose_target(np.zeros((1, 2, 17, 2)), np.ones((1, 2, 16)),
                                      image_size=(8, 8))
    with pytest.raises(ValueError, match="skeletons must be"):
        heatmaps.generate_pose_target(np.zeros((1, 2, 5, 2)), image_size=(8, 8), mode="limb")
    with pytest.raises(ValueError, match="mode must be"):
        heatmaps.generate_pose_target(np.zeros((1, 2, 5, 2)), image_size=(8, 8), mode="kp")
