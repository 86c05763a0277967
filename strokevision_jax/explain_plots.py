"""The pictures of `explain`: maps over the clip's frames (PNG strip), the two transports side by
side, and an animated GIF. Video maps are Grad-CAM heat in [0, 1] blended over the frames;
skeleton maps colour each joint by its signed attribution (red raises the class's score, blue
lowers it) and size it by the attribution's magnitude.
"""

from __future__ import annotations

import pathlib

import numpy as np

from strokevision_jax.data.classes import CLASS_NAMES, TRANSPORT_PAIR

GIF_SCALE = 4  # the cpu presets' clips are a few dozen pixels: enlarge for viewing
GIF_MS_PER_FRAME = 150

# Bones as pairs of joint names, for each keypoint layout.
_COCO_BONES = (
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_hip", "right_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)
_H36M_BONES = (
    ("root", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"), ("root", "left_hip"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("root", "spine"), ("spine", "thorax"),
    ("thorax", "nose"), ("nose", "head"), ("thorax", "left_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"), ("thorax", "right_shoulder"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
)


def _classes_to_show(predicted: str) -> list[str]:
    return [predicted] + [name for name in TRANSPORT_PAIR if name != predicted]


def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB float in [0, 1] (matplotlib's 'jet')."""
    from matplotlib import colormaps

    return colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3]


def blend(frames: np.ndarray, maps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(T, H, W, 3) uint8 frames and (T, H, W) maps in [0, 1] -> (T, H, W, 3) uint8 overlay."""
    mixed = (1.0 - alpha) * frames.astype(np.float32) / 255.0 + alpha * _heat(maps)
    return np.clip(mixed * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw(result: dict, report: dict, directory: pathlib.Path, stem: str) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    if result["kind"] == "video":
        return _draw_video(result, report, directory, stem)
    return _draw_skeleton(result, report, directory, stem)


def _title(report: dict, name: str) -> str:
    return f"{name} (p={report['probabilities'][name]:.2f})"


# ----------------------------------------------------------------------------- video models

def _draw_video(result: dict, report: dict, directory: pathlib.Path, stem: str) -> list[pathlib.Path]:
    import matplotlib.pyplot as plt

    frames, maps = result["frames"], result["maps"]
    shown = _classes_to_show(report["predicted"])
    count = frames.shape[0]
    rows = [("clip", frames)] + [(_title(report, name), blend(frames, maps[CLASS_NAMES.index(name)]))
                                 for name in shown]
    figure, axes = plt.subplots(len(rows), count, figsize=(1.3 * count, 1.2 * len(rows) + 0.6), squeeze=False)
    for row, (label, images) in enumerate(rows):
        for t in range(count):
            axis = axes[row, t]
            axis.imshow(images[t])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {int(result['frame_indices'][t])}", fontsize=7)
        axes[row, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    truth = f", label {report['label']}" if report["label"] else ""
    figure.suptitle(f"{report['clip']}: {report['model']}, Grad-CAM on {report['layer']}{truth}", fontsize=9)
    figure.tight_layout()
    strip = directory / f"{stem}.png"
    figure.savefig(strip, dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(7.0, 3.4))
    middle = count // 2
    for axis, name in zip(axes, TRANSPORT_PAIR):
        heat = maps[CLASS_NAMES.index(name)]
        axis.imshow(blend(frames[middle:middle + 1], heat.mean(axis=0, keepdims=True) / max(heat.mean(0).max(), 1e-12))[0])
        axis.set_title(_title(report, name) + "\nmap averaged over the clip", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{report['clip']}: transport with vs without the block", fontsize=9)
    figure.tight_layout()
    pair = directory / f"{stem}_transport.png"
    figure.savefig(pair, dpi=110)
    plt.close(figure)

    predicted = blend(frames, maps[CLASS_NAMES.index(report["predicted"])])
    animation = np.concatenate([frames, predicted], axis=2)  # the clip beside its map
    gif = directory / f"{stem}.gif"
    _write_gif(gif, animation, GIF_SCALE)
    return [strip, pair, gif]


def _write_gif(path: pathlib.Path, frames: np.ndarray, scale: int = 1) -> None:
    from PIL import Image

    images = [Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
              for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_MS_PER_FRAME, loop=0)


# ----------------------------------------------------------------------------- skeleton models

def _bones(result: dict) -> list[tuple[int, int]]:
    names = list(result["joint_names"])
    table = _H36M_BONES if result["layout"] == "h36m" else _COCO_BONES
    return [(names.index(a), names.index(b)) for a, b in table]


def _draw_pose(axis, joints: np.ndarray, values: np.ndarray, scale: float, bones, background=None) -> None:
    """One frame's skeleton; joints (V, 3) pixels + score; values (V,) signed attributions."""
    from matplotlib import colormaps

    if background is not None:
        axis.imshow(background)
    visible = joints[:, 2] > 0.05
    for a, b in bones:
        if visible[a] and visible[b]:
            axis.plot(joints[[a, b], 0], joints[[a, b], 1], color="0.6", linewidth=1.0, zorder=1)
    colours = colormaps["coolwarm"](np.clip(0.5 + 0.5 * values / scale, 0.0, 1.0))
    sizes = 6.0 + 90.0 * np.abs(values) / scale
    axis.scatter(joints[visible, 0], joints[visible, 1], s=sizes[visible], c=colours[visible],
                 edgecolors="black", linewidths=0.3, zorder=2)
    if background is None:
        axis.invert_yaxis()
        axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_skeleton(result: dict, report: dict, directory: pathlib.Path, stem: str) -> list[pathlib.Path]:
    import matplotlib.pyplot as plt

    maps, joints, names = result["maps"], result["joints"], list(result["joint_names"])
    frames = result.get("frames")
    bones = _bones(result)
    predicted = CLASS_NAMES.index(report["predicted"])
    scale = max(float(np.abs(maps[predicted]).max()), 1e-12)
    count = joints.shape[0]
    picks = np.unique(np.linspace(0, count - 1, min(6, count)).round().astype(int))
    shown = _classes_to_show(report["predicted"])

    figure = plt.figure(figsize=(12, 3.0 + 2.6 * len(shown)))
    grid = figure.add_gridspec(1 + len(shown), len(picks), height_ratios=[1.2] + [1.0] * len(shown))
    for column, t in enumerate(picks):
        axis = figure.add_subplot(grid[0, column])
        _draw_pose(axis, joints[t], maps[predicted, t], scale, bones, None if frames is None else frames[t])
        axis.set_title(f"frame {int(result['frame_indices'][t])}", fontsize=8)
    for row, name in enumerate(shown, start=1):
        values = maps[CLASS_NAMES.index(name)]
        axis = figure.add_subplot(grid[row, :])
        limit = max(float(np.abs(values).max()), 1e-12)
        image = axis.imshow(values.T, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
        axis.set_yticks(range(len(names)))
        axis.set_yticklabels(names, fontsize=6)
        axis.set_xlabel("model frame", fontsize=7)
        axis.set_title(f"{_title(report, name)}: integrated gradients per joint and frame", fontsize=8)
        figure.colorbar(image, ax=axis, fraction=0.02, pad=0.01)
    truth = f", label {report['label']}" if report["label"] else ""
    figure.suptitle(f"{report['clip']}: {report['model']}, joints coloured for {report['predicted']}{truth}",
                    fontsize=9)
    figure.tight_layout()
    strip = directory / f"{stem}.png"
    figure.savefig(strip, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(1, 3, figsize=(12, 4.0), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    pair_values = [maps[CLASS_NAMES.index(name)] for name in TRANSPORT_PAIR]
    limit = max(max(float(np.abs(v).max()) for v in pair_values), 1e-12)
    for axis, name, values in zip(axes[:2], TRANSPORT_PAIR, pair_values):
        image = axis.imshow(values.T, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
        axis.set_yticks(range(len(names)))
        axis.set_yticklabels(names, fontsize=6)
        axis.set_xlabel("model frame", fontsize=7)
        axis.set_title(_title(report, name), fontsize=8)
    figure.colorbar(image, ax=axes[1], fraction=0.04)
    positions = np.arange(len(names))
    for offset, name, values in zip((-0.2, 0.2), TRANSPORT_PAIR, pair_values):
        axes[2].barh(positions + offset, values.sum(axis=0), height=0.4, label=name.replace("transport_", ""))
    axes[2].set_yticks(positions)
    axes[2].set_yticklabels(names, fontsize=6)
    axes[2].invert_yaxis()
    axes[2].axvline(0.0, color="black", linewidth=0.5)
    axes[2].legend(fontsize=7)
    axes[2].set_title("per joint, summed over frames", fontsize=8)
    figure.suptitle(f"{report['clip']}: transport with vs without the block (same colour scale)", fontsize=9)
    figure.tight_layout()
    pair = directory / f"{stem}_transport.png"
    figure.savefig(pair, dpi=100)
    plt.close(figure)

    gif = directory / f"{stem}.gif"
    _write_gif(gif, _pose_frames(joints, maps[predicted], scale, bones, frames))
    return [strip, pair, gif]


def _pose_frames(joints, values, scale, bones, frames) -> np.ndarray:
    """(T, h, w, 3) uint8 renderings of the skeleton, joints coloured by attribution."""
    import matplotlib.pyplot as plt

    out = []
    for t in range(joints.shape[0]):
        figure = plt.figure(figsize=(2.4, 2.0), dpi=60)
        axis = figure.add_axes([0, 0, 1, 1])
        _draw_pose(axis, joints[t], values[t], scale, bones, None if frames is None else frames[t])
        figure.canvas.draw()
        out.append(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
        plt.close(figure)
    return np.stack(out)
