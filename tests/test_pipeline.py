"""Tests for the grain pipelines (data.pipeline, data.resample, data.loader) and the keypoint conversions."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

from strokevision_jax.data import keypoints as kp
from strokevision_jax.data import pipeline as pl
from strokevision_jax.data import resample as rs

CLIP_FRAMES, HEIGHT, WIDTH = 6, 16, 20


def _record(index: int, rng: np.random.Generator) -> dict:
    return {
        "video": rng.integers(0, 256, (CLIP_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8),
        "keypoints": rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (CLIP_FRAMES, 17, 2)).astype(np.float32),
        "keypoint_scores": rng.uniform(0, 1, (CLIP_FRAMES, 17)).astype(np.float32),
        "label": index % 4,
        "patient_id": f"P{index % 3:03d}",
        "clip_id": f"P{index % 3:03d}_C{index:04d}",
    }


def _records(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [_record(i, rng) for i in range(count)]


SMALL_VIDEO = pl.VideoConfig(num_frames=4, resize=(12, 15), crop=(8, 8))
SMALL_SKELETON = pl.SkeletonConfig(num_frames=4, layout="h36m")


def _denormalize(video: np.ndarray, config: pl.VideoConfig) -> np.ndarray:
    """Model input -> pixel values in [0, 255] (float)."""
    return (np.asarray(video, np.float32) * np.asarray(config.std) + np.asarray(config.mean)) * 255.0


def _loader(records, **kwargs):
    options = dict(batch_size=4, train=True, seed=0, shard_index=0, shard_count=1)
    options.update(kwargs)
    transform = options.pop("transform", pl.video_transform(SMALL_VIDEO, options["train"]))
    return pl.make_loader(records, transform, **options)


# ----------------------------------------------------------------------------------------------
# keypoints.py


def test_coco_to_h36m_matches_hand_computed_joints():
    coco = np.arange(17 * 3, dtype=np.float32).reshape(17, 3) ** 1.5  # distinct, non-linear values
    h36m = kp.coco_to_h36m(coco[None])[0]
    c = kp.COCO17
    root = (coco[c["left_hip"]] + coco[c["right_hip"]]) / 2
    thorax = (coco[c["left_shoulder"]] + coco[c["right_shoulder"]]) / 2
    expected = {
        "root": root,
        "thorax": thorax,
        "spine": (root + thorax) / 2,
        "head": (coco[c["left_eye"]] + coco[c["right_eye"]]) / 2,
        "nose": coco[c["nose"]],
        "right_hip": coco[c["right_hip"]],
        "left_knee": coco[c["left_knee"]],
        "right_ankle": coco[c["right_ankle"]],
        "left_shoulder": coco[c["left_shoulder"]],
        "right_elbow": coco[c["right_elbow"]],
        "left_wrist": coco[c["left_wrist"]],
        "right_wrist": coco[c["right_wrist"]],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(h36m[kp.H36M17[name]], value, rtol=1e-6, err_msg=name)
    assert h36m.dtype == np.float32


def test_coco_to_h36m_rejects_wrong_joint_count():
    with pytest.raises(ValueError, match="expects \\(..., 17, C\\)"):
        kp.coco_to_h36m(np.zeros((4, 18, 3)))


def test_h36m_flip_index_swaps_sides_and_keeps_centre():
    flip = kp.H36M17_FLIP_INDEX
    assert flip[kp.H36M17["left_wrist"]] == kp.H36M17["right_wrist"]
    assert flip[kp.H36M17["right_hip"]] == kp.H36M17["left_hip"]
    for name in ("root", "spine", "thorax", "nose", "head"):
        assert flip[kp.H36M17[name]] == kp.H36M17[name]
    assert sorted(flip) == list(range(17))


def test_screen_normalisation_values_and_round_trip():
    width, height = 171, 128
    points = np.array([[0.0, 0.0, 0.3], [width, height / 2, 0.7], [40.5, 99.25, 1.0]], np.float32)
    screen = kp.normalize_screen(points, width, height)
    np.testing.assert_allclose(screen[0, :2], [-1.0, -height / width], atol=1e-6)
    np.testing.assert_allclose(screen[1, :2], [1.0, 0.0], atol=1e-6)  # right edge, vertical centre
    np.testing.assert_array_equal(screen[:, 2], points[:, 2])  # scores pass through
    np.testing.assert_allclose(kp.denormalize_screen(screen, width, height), points, atol=1e-4)


def test_flip_keypoints_mirrors_x_and_swaps_joints():
    joints = np.zeros((17, 3), np.float32)
    joints[kp.COCO17["left_wrist"]] = (3.0, 7.0, 0.9)
    flipped = kp.flip_keypoints(joints, width=20, flip_index=kp.COCO17_FLIP_INDEX)
    np.testing.assert_allclose(flipped[kp.COCO17["right_wrist"]], (20 - 1 - 3.0, 7.0, 0.9))
    np.testing.assert_allclose(flipped[kp.COCO17["left_wrist"]], (19.0, 0.0, 0.0))  # was the empty right wrist
    with pytest.raises(ValueError, match="flip index"):
        kp.flip_keypoints(joints, 20, kp.COCO17_FLIP_INDEX[:5])


# ----------------------------------------------------------------------------------------------
# Temporal sampling


def test_uniform_sampling_eval_is_centred_and_train_covers_the_clip():
    np.testing.assert_array_equal(pl.sample_frame_indices(30, 8, None), [1, 5, 9, 13, 16, 20, 24, 28])
    np.testing.assert_array_equal(pl.sample_frame_indices(30, 30, None), np.arange(30))
    rng = np.random.default_rng(0)
    for _ in range(50):
        indices = pl.sample_frame_indices(30, 8, rng)
        assert indices[0] <= 3 and indices[-1] >= 26  # spans the whole clip
        assert np.all(np.diff(indices) >= 3) and np.all(np.diff(indices) <= 4)
    assert len({tuple(pl.sample_frame_indices(30, 8, rng)) for _ in range(20)}) > 1
    np.testing.assert_array_equal(pl.sample_frame_indices(4, 8, None), [0, 0, 1, 1, 2, 2, 3, 3])


def test_strided_sampling_windows():
    centred = pl.sample_frame_indices(30, 4, None, sampling="strided", frame_stride=2)
    np.testing.assert_array_equal(centred, [11, 13, 15, 17])  # slack 23 -> start 23 // 2
    rng = np.random.default_rng(1)
    starts = {pl.sample_frame_indices(30, 4, rng, sampling="strided", frame_stride=2)[0] for _ in range(100)}
    assert min(starts) >= 0 and max(starts) <= 30 - 7 and len(starts) > 5
    np.testing.assert_array_equal(pl.sample_frame_indices(3, 4, None, sampling="strided"), [0, 0, 1, 2])


# ----------------------------------------------------------------------------------------------
# Video transform


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("train", [True, False])
def test_video_shapes_and_dtypes(dtype, train):
    config = dataclasses.replace(SMALL_VIDEO, dtype=dtype, scale_jitter=(0.8, 1.2))
    example = pl.video_transform(config, train)(_records(1)[0], np.random.default_rng(0))
    assert example["video"].shape == (4, 8, 8, 3)
    assert example["video"].dtype == (np.float32 if dtype == "float32" else ml_dtypes.bfloat16)
    assert example["label"].dtype == np.int32 and example["label"] == 0
    assert set(example) == {"video", "label"}


@pytest.mark.parametrize("method", ["bilinear", "pil"])
def test_frame_equal_to_the_mean_normalises_to_zero(method):
    config = dataclasses.replace(SMALL_VIDEO, resize_method=method)
    mean_pixel = np.round(np.asarray(config.mean) * 255).astype(np.uint8)
    record = {"video": np.broadcast_to(mean_pixel, (CLIP_FRAMES, HEIGHT, WIDTH, 3)).copy(), "label": 1}
    video = pl.video_transform(config, train=True)(record, np.random.default_rng(0))["video"]
    # Only the rounding of the mean to a uint8 remains: at most 0.5 / (255 * std) ~ 0.009.
    np.testing.assert_allclose(video, 0.0, atol=0.5 / (255 * min(config.std)) + 1e-6)


def test_normalisation_value():
    config = SMALL_VIDEO
    record = {"video": np.full((CLIP_FRAMES, HEIGHT, WIDTH, 3), 255, np.uint8), "label": 0}
    video = pl.video_transform(config, train=False)(record, None)["video"]
    expected = (1.0 - np.asarray(config.mean)) / np.asarray(config.std)
    np.testing.assert_allclose(video[0, 0, 0], expected, rtol=1e-5)


def _coordinate_clip() -> np.ndarray:
    """(T, H, W, 3) with channel 0 = row, channel 1 = column, channel 2 = frame, all in 0..255."""
    frames, rows, cols = np.meshgrid(np.arange(CLIP_FRAMES), np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    return np.stack([rows, cols, frames], axis=-1).astype(np.uint8)


def test_centre_crop_picks_the_centre():
    config = pl.VideoConfig(num_frames=CLIP_FRAMES, resize=(HEIGHT, WIDTH), crop=(8, 10))
    video = pl.video_transform(config, train=False)({"video": _coordinate_clip(), "label": 0}, None)["video"]
    pixels = np.round(_denormalize(video, config))
    top, left = (HEIGHT - 8) // 2, (WIDTH - 10) // 2
    np.testing.assert_array_equal(pixels[0, :, 0, 0], np.arange(top, top + 8))
    np.testing.assert_array_equal(pixels[0, 0, :, 1], np.arange(left, left + 10))
    np.testing.assert_array_equal(pixels[:, 0, 0, 2], np.arange(CLIP_FRAMES))


def test_crop_in_stored_coordinates_equals_resize_then_crop():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, HEIGHT, WIDTH, 3), dtype=np.uint8)
    resized_hw, crop_hw = (11, 13), (7, 9)
    full = rs.resample_bilinear(frames, rs.CropBox(0, 0, HEIGHT, WIDTH), resized_hw)
    for top, left in [(0, 0), (2, 3), (4, 4)]:
        box = rs.CropBox(top * HEIGHT / 11, left * WIDTH / 13, 7 * HEIGHT / 11, 9 * WIDTH / 13)
        direct = rs.resample_bilinear(frames, box, crop_hw)
        np.testing.assert_allclose(direct, full[:, top : top + 7, left : left + 9], atol=1e-3)
        flipped = rs.resample_bilinear(frames, box, crop_hw, flip=True)
        np.testing.assert_allclose(flipped, direct[:, :, ::-1], atol=1e-3)


def test_bilinear_matches_pil_when_upsampling():
    # Upsampling has no antialiasing, so numpy's bilinear and PIL's agree up to PIL's uint8 rounding.
    rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    smooth = (120 + 100 * np.sin(rows / 3.0) * np.cos(cols / 4.0)).astype(np.uint8)
    frames = np.repeat(np.stack([smooth] * 2)[..., None], 3, axis=-1)
    box = rs.CropBox(2.0, 3.0, 10.0, 12.0)
    ours = rs.resample_bilinear(frames, box, (15, 18))
    pil = rs.resample_pil(frames, box, (15, 18)).astype(np.float32)
    assert np.abs(ours - pil).max() <= 1.0


def test_video_flip_mirrors_frames():
    config = pl.VideoConfig(num_frames=CLIP_FRAMES, resize=(HEIGHT, WIDTH), crop=(HEIGHT, WIDTH))
    record = {"video": _coordinate_clip(), "label": 0}
    unflipped = pl.video_transform(config, train=False)(record, None)["video"]
    transform = pl.video_transform(config, train=True)
    outcomes = set()
    for seed in range(12):
        video = transform(record, np.random.default_rng(seed))["video"]
        if np.array_equal(video, unflipped):
            outcomes.add("same")
        else:
            np.testing.assert_array_equal(video, unflipped[:, :, ::-1])
            # The pixel from column j now sits on column W - 1 - j (the keypoint flip convention).
            np.testing.assert_allclose(_denormalize(video, config)[0, 0, :, 1], np.arange(WIDTH)[::-1], atol=1e-3)
            outcomes.add("mirrored")
    assert outcomes == {"same", "mirrored"}


def test_person_region_spans_the_upper_body_with_margin_and_aspect():
    keypoints = np.zeros((3, 17, 2), np.float32)
    scores = np.zeros((3, 17), np.float32)
    # Nose, shoulders, elbows, wrists spread over x 40..80, y 20..50; a confident hip far away
    # and a low-score wrist far away must not count.
    keypoints[:, [0, 5, 6, 7, 8, 9, 10]] = [[60, 20], [40, 30], [80, 30], [40, 40], [80, 40], [45, 50], [75, 50]]
    scores[:, [0, 5, 6, 7, 8, 9, 10]] = 0.9
    keypoints[:, 11], scores[:, 11] = [150, 120], 0.9
    keypoints[1, 9], scores[1, 9] = [0, 0], 0.1
    box = rs.person_region(keypoints, scores, (128, 171), aspect_hw=(3, 4), margin=0.25)
    # 40 x 30 grown by 25 % each side -> 60 x 45, which already has the 4:3 aspect; centred on (60, 35).
    assert (box.left, box.top, box.width, box.height) == pytest.approx((30.0, 12.5, 60.0, 45.0))
    # Too big for the frame, or nothing confident: the whole frame.
    whole = (0.0, 0.0, 20.0, 30.0)
    small = rs.person_region(keypoints, scores, (20, 30), aspect_hw=(3, 4), margin=0.25)
    assert (small.top, small.left, small.height, small.width) == whole
    nothing = rs.person_region(keypoints, np.zeros_like(scores), (20, 30), aspect_hw=(3, 4), margin=0.25)
    assert (nothing.top, nothing.left, nothing.height, nothing.width) == whole


def test_person_region_crop_resamples_inside_the_region():
    """With region='person', the eval centre crop of the resized region equals cropping the region by hand."""
    record = _records(1, seed=3)[0]
    record["keypoint_scores"][:] = 0.9
    record["keypoints"][:] = [4.0, 3.0]
    record["keypoints"][:, 5] = [12.0, 9.0]  # the upper-body box: x 4..12, y 3..9
    config = dataclasses.replace(SMALL_VIDEO, region="person", region_margin=0.0, resize=(6, 8), crop=(6, 8))
    region = rs.person_region(record["keypoints"], record["keypoint_scores"], (HEIGHT, WIDTH), (6, 8), 0.0)
    assert (region.left, region.top, region.width, region.height) == (4.0, 3.0, 8.0, 6.0)
    out = _denormalize(pl.video_transform(config, train=False)(record, None)["video"], config)
    frames = pl.sample_frame_indices(CLIP_FRAMES, config.num_frames, None)
    np.testing.assert_allclose(out, record["video"][frames, 3:9, 4:12].astype(np.float32), atol=1e-3)


def test_centre_normalisation_maps_the_frame_to_the_unit_square():
    xy = np.array([[0.0, 0.0, 0.7], [20.0, 10.0, 0.5], [10.0, 5.0, 1.0]], np.float32)
    out = kp.normalize_centre(xy, width=20, height=10)
    np.testing.assert_allclose(out, [[-1, -1, 0.7], [1, 1, 0.5], [0, 0, 1.0]])


def test_compact_box_follows_pose_compact():
    xy = np.zeros((2, 17, 2), np.float32)
    xy[0, :3] = [[10, 20], [30, 20], [20, 60]]  # x 10..30, y 20..60; zeros are missing joints
    left, top, width, height = pl.compact_box(xy, padding=0.25)
    # Square of half-size 20 * 1.25 = 25 around (20, 40), edges truncated to integers.
    assert (left, top, width, height) == (-5.0, 15.0, 50.0, 50.0)
    assert pl.compact_box(np.full((1, 17, 2), 5.0, np.float32), 0.25) is None  # under 10 px


def test_compact_keypoints_in_evaluation_and_training():
    joints = np.zeros((2, 17, 3), np.float32)
    joints[:, :3, :2] = [[10, 20], [30, 20], [20, 60]]
    joints[..., 2] = 0.8
    config = pl.SkeletonConfig(num_frames=2, layout="coco", normalization="compact",
                               compact_size=(56, 56), compact_eval_size=(64, 64))
    out = pl.compact_keypoints(joints, config, None)
    # Box (-5, 15) of side 50 -> a 64 x 64 frame; missing joints stay at 0; scores pass through.
    np.testing.assert_allclose(out[0, :3, :2], (joints[0, :3, :2] - [-5, 15]) * 64 / 50, rtol=1e-6)
    assert (out[:, 3:, :2] == 0).all() and (out[..., 2] == 0.8).all()
    rng = np.random.default_rng(0)
    crops = np.stack([pl.compact_keypoints(joints, config, rng)[0, :3, :2] for _ in range(50)])
    # A random crop of area 56-100 % of the box: coordinates of the 56-px frame, shifted and
    # scaled up by at most 1 / sqrt(0.56 * 3 / 4) per axis.
    spread = crops.std(axis=0)
    assert (spread > 0.5).all()
    assert crops.min() > -56 / 0.64 and crops.max() < 56 * 1.7


def test_compact_flip_mirrors_nonzero_x_and_swaps_sides():
    joints = np.zeros((1, 17, 3), np.float32)
    joints[0, kp.COCO17["left_wrist"]] = [10.0, 5.0, 0.9]
    flipped = pl.flip_compact(joints, width=56)
    np.testing.assert_allclose(flipped[0, kp.COCO17["right_wrist"]], [46.0, 5.0, 0.9])
    assert (flipped[0, kp.COCO17["left_wrist"]] == 0).all()


@pytest.mark.parametrize("normalization", ["centre", "compact"])
def test_skeleton_pyskl_normalisations_through_the_transform(normalization):
    record = _records(1, seed=5)[0]
    config = pl.SkeletonConfig(num_frames=4, layout="coco", normalization=normalization, num_persons=2)
    for train in (False, True):
        out = pl.skeleton_transform(config, train)(record, np.random.default_rng(0))["keypoints"]
        assert out.shape == (2, 4, 17, 3) and out.dtype == np.float32
        assert (out[1] == 0).all()
    evaluated = pl.skeleton_transform(config, False)(record, None)["keypoints"][0]
    if normalization == "centre":
        assert -1 <= evaluated[..., :2].min() and evaluated[..., :2].max() <= 1
    else:
        assert 0 <= evaluated[..., :2].min() and evaluated[..., :2].max() <= 64


def test_video_config_errors_name_the_field():
    with pytest.raises(ValueError, match="crop=\\(20, 20\\) is larger than resize"):
        pl.VideoConfig(resize=(16, 16), crop=(20, 20))
    with pytest.raises(ValueError, match="dtype='float16'"):
        pl.VideoConfig(dtype="float16")


# ----------------------------------------------------------------------------------------------
# Skeleton transform


@pytest.mark.parametrize("num_persons, shape", [(None, (4, 17, 3)), (1, (1, 4, 17, 3)), (2, (2, 4, 17, 3))])
def test_skeleton_shapes(num_persons, shape):
    config = dataclasses.replace(SMALL_SKELETON, num_persons=num_persons)
    example = pl.skeleton_transform(config, train=True)(_records(1)[0], np.random.default_rng(0))
    assert example["keypoints"].shape == shape and example["keypoints"].dtype == np.float32
    if num_persons == 2:
        np.testing.assert_array_equal(example["keypoints"][1], 0.0)


def test_skeleton_eval_values_are_screen_normalised_h36m():
    record = _records(1)[0]
    config = pl.SkeletonConfig(num_frames=3, layout="h36m", normalization="screen")
    keypoints = pl.skeleton_transform(config, train=False)(record, None)["keypoints"]
    frames = pl.sample_frame_indices(CLIP_FRAMES, 3, None)
    coco = np.concatenate([record["keypoints"], record["keypoint_scores"][..., None]], axis=-1)[frames]
    expected = kp.normalize_screen(kp.coco_to_h36m(coco), WIDTH, HEIGHT)
    np.testing.assert_allclose(keypoints, expected, atol=1e-6)
    np.testing.assert_allclose(keypoints[..., 2], kp.coco_to_h36m(coco)[..., 2], atol=1e-6)  # scores channel


@pytest.mark.parametrize("layout", ["coco", "h36m"])
def test_skeleton_flip_moves_left_wrist_to_right_wrist_at_mirrored_x(layout):
    record = _records(1)[0]
    record["keypoints"][:, kp.COCO17["left_wrist"]] = (3.0, 7.0)
    record["keypoint_scores"][:, kp.COCO17["left_wrist"]] = 0.9
    config = pl.SkeletonConfig(num_frames=CLIP_FRAMES, layout=layout, normalization="none", flip=True)
    names = kp.COCO17 if layout == "coco" else kp.H36M17
    transform = pl.skeleton_transform(config, train=True)
    outcomes = set()
    for seed in range(12):
        keypoints = transform(record, np.random.default_rng(seed))["keypoints"]
        if np.allclose(keypoints[:, names["left_wrist"]], (3.0, 7.0, 0.9)):
            outcomes.add("same")
        else:
            np.testing.assert_allclose(keypoints[:, names["right_wrist"]], np.tile((WIDTH - 1 - 3.0, 7.0, 0.9), (6, 1)))
            outcomes.add("mirrored")
    assert outcomes == {"same", "mirrored"}


def test_skeleton_needs_a_frame_size():
    record = {key: value for key, value in _records(1)[0].items() if key != "video"}
    with pytest.raises(ValueError, match="set SkeletonConfig.frame_size"):
        pl.skeleton_transform(SMALL_SKELETON, train=False)(record, None)
    sized = dataclasses.replace(SMALL_SKELETON, frame_size=(HEIGHT, WIDTH))
    assert pl.skeleton_transform(sized, train=False)(record, None)["keypoints"].shape == (4, 17, 3)


# ----------------------------------------------------------------------------------------------
# Loader


def _batches(loader) -> list[dict]:
    return [{key: np.array(value) for key, value in batch.items()} for batch in loader]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_stacked_arrays_and_no_strings():
    batches = _batches(_loader(_records(8)))
    assert set(batches[0]) == {"video", "label", "index", "mask"}
    assert batches[0]["video"].shape == (4, 4, 8, 8, 3)
    assert batches[0]["label"].dtype == np.int32 and batches[0]["index"].dtype == np.int32
    assert batches[0]["mask"].dtype == bool and batches[0]["mask"].all()
    skeleton = _batches(_loader(_records(8), transform=pl.skeleton_transform(SMALL_SKELETON, True)))
    assert skeleton[0]["keypoints"].shape == (4, 4, 17, 3)


def test_same_seed_gives_identical_batches():
    records = _records(10)
    _assert_same_batches(_batches(_loader(records, seed=5)), _batches(_loader(records, seed=5)))
    _assert_same_batches(_batches(_loader(records, seed=5, num_threads=0)), _batches(_loader(records, seed=5)))
    other = _batches(_loader(records, seed=6))
    assert any(
        not np.array_equal(a["index"], b["index"])
        for a, b in zip(_batches(_loader(records, seed=5)), other, strict=True)
    )


def test_epochs_change_order_and_augmentation():
    records = _records(12)
    first, second = _batches(_loader(records, epoch=0)), _batches(_loader(records, epoch=1))
    order_first = np.concatenate([batch["index"] for batch in first])
    order_second = np.concatenate([batch["index"] for batch in second])
    assert not np.array_equal(order_first, order_second)
    clips_first = {int(i): clip for batch in first for i, clip in zip(batch["index"], batch["video"], strict=True)}
    clips_second = {int(i): clip for batch in second for i, clip in zip(batch["index"], batch["video"], strict=True)}
    common = set(clips_first) & set(clips_second)
    assert any(not np.array_equal(clips_first[i], clips_second[i]) for i in common)


def test_training_drops_the_remainder():
    loader = _loader(_records(10), batch_size=4)
    batches = _batches(loader)
    assert len(loader) == len(batches) == 2
    assert all(batch["video"].shape[0] == 4 and batch["mask"].all() for batch in batches)
    indices = np.concatenate([batch["index"] for batch in batches])
    assert len(set(indices.tolist())) == 8


def test_training_with_too_few_records_explains():
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        _loader(_records(3), batch_size=4)


def test_evaluation_keeps_every_record_once_with_mask():
    records = _records(10)
    loader = _loader(records, batch_size=4, train=False)
    batches = _batches(loader)
    assert len(loader) == len(batches) == 3
    assert all(batch["video"].shape[0] == 4 for batch in batches)
    index = np.concatenate([batch["index"] for batch in batches])
    mask = np.concatenate([batch["mask"] for batch in batches])
    np.testing.assert_array_equal(index[mask], np.arange(10))  # in order, each once
    np.testing.assert_array_equal(index[~mask], [-1, -1])
    np.testing.assert_array_equal(batches[-1]["video"][2:], 0.0)
    labels = np.concatenate([batch["label"] for batch in batches])
    np.testing.assert_array_equal(labels[mask], [record["label"] for record in records])
    # Evaluation is deterministic: the same clip gives the same input in any epoch.
    _assert_same_batches(batches, _batches(_loader(records, batch_size=4, train=False, epoch=3)))


@pytest.mark.parametrize("train, num_records", [(True, 13), (False, 11)])
def test_two_shards_are_disjoint_and_cover(train, num_records):
    records = _records(num_records)
    shards = [_batches(_loader(records, batch_size=2, train=train, shard_index=k, shard_count=2)) for k in range(2)]
    assert len(shards[0]) == len(shards[1])  # every process runs the same number of steps
    kept = [set(np.concatenate([b["index"][b["mask"]] for b in batches]).tolist()) for batches in shards]
    assert not kept[0] & kept[1]
    covered = kept[0] | kept[1]
    if train:  # 13 records over 2 shards x 3 batches of 2: 12 used, one dropped this epoch
        assert len(covered) == 12 and covered <= set(range(num_records))
    else:
        assert covered == set(range(num_records))


@pytest.mark.parametrize("train, num_records", [(True, 13), (False, 9)])
def test_shards_stacked_are_the_one_shard_batches(train, num_records):
    """A multi-process job's global batch (each process's rows, in process order) is the batch a
    single process reads at that step: same clips, same rows, same random choices."""
    records = _records(num_records)
    whole = _batches(_loader(records, batch_size=4, train=train, epoch=1))
    shards = [_batches(_loader(records, batch_size=2, train=train, epoch=1, shard_index=k, shard_count=2))
              for k in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 3
    stacked = [{key: np.concatenate([a[key], b[key]]) for key in a} for a, b in zip(*shards)]
    _assert_same_batches(stacked, whole)
    if not train:  # 9 records: the last global batch is one clip and three masked rows
        np.testing.assert_array_equal(shards[1][-1]["mask"], [False, False])


def test_default_shard_is_this_jax_process():
    loader = pl.make_loader(_records(8), pl.video_transform(SMALL_VIDEO, True), batch_size=4, train=True, seed=0)
    assert len(loader) == 2  # one process: the whole dataset


def test_worker_processes_give_the_same_batches():
    records = _records(8)
    in_process = _batches(_loader(records, batch_size=2))
    with_workers = _batches(_loader(records, batch_size=2, num_workers=2))
    _assert_same_batches(in_process, with_workers)
