"""Import speed of the `manual` config: clips/s for one-second H.264 clips of a given source size.

    python -m tfds_builder.strokevision.benchmark_import --clips=24 --height=480 --width=640

Writes `--clips` clip files (30 frames at 30 fps, a moving texture, one file per clip as
cut_clips writes them) to a temporary directory, then times pass 1 (labels.csv, probing, keypoint
files), pass 2 alone (decoding and resizing on the import's threads) and a whole build (both
passes plus TFDS writing ArrayRecord and the TFRecord twins).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
import time

import numpy as np

from strokevision_jax.data import recordings
from strokevision_jax.data.classes import CLASS_NAMES
from tfds_builder.strokevision import manual


def write_clip(path: pathlib.Path, height: int, width: int, seed: int, frames: int = 30) -> None:
    """An H.264 clip whose content moves every frame (flat frames would decode unrealistically fast)."""
    import av

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), np.uint8)
    texture = blocks.repeat(8, 0).repeat(8, 1)[:height, :width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(frames):
            image = np.roll(texture, 3 * i, axis=1)
            top = (10 + 5 * i) % height
            image[top: top + height // 6, width // 3: width // 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_recordings(root: pathlib.Path, clips: int, height: int, width: int, distinct: int = 4) -> pathlib.Path:
    """`clips` rows over three patients (one per split); `distinct` encoded files, copied per clip."""
    root.mkdir(parents=True)
    for k in range(distinct):
        write_clip(root / f"source{k}.mp4", height, width, seed=k)
    rows = ["clip_id,patient_id,label,video,keypoints,split"]
    for i in range(clips):
        shutil.copy(root / f"source{i % distinct}.mp4", root / f"c{i:04d}.mp4")
        np.save(root / f"c{i:04d}.npy", np.full((30, 17, 3), 10.0, np.float32))
        split = manual.SPLITS[i % 3]
        rows.append(f"c{i:04d},P{i % 3},{CLASS_NAMES[i % 4]},c{i:04d}.mp4,c{i:04d}.npy,{split}")
    (root / manual.LABELS_FILE).write_text("\n".join(rows) + "\n")
    return root


def build_manual(manual_dir: pathlib.Path, data_dir: pathlib.Path) -> None:
    """Builds strokevision/manual from `manual_dir` into `data_dir` (both passes, TFDS writing)."""
    import tensorflow_datasets as tfds

    from tfds_builder.strokevision import Builder

    builder = Builder(config="manual", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tfds_builder.strokevision.benchmark_import",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        manual_dir = make_recordings(pathlib.Path(tmp) / "recordings", args.clips, args.height, args.width)
        started = time.perf_counter()
        plan = manual.plan_import(manual_dir, recordings.ImportConfig())
        plan_seconds = time.perf_counter() - started
        started = time.perf_counter()
        decoded = sum(1 for split in manual.SPLITS for _ in manual.import_split(plan, split))
        decode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        build_manual(manual_dir, pathlib.Path(tmp) / "tfds")
        build_seconds = time.perf_counter() - started
    print(f"{args.width} x {args.height} source, {decoded} clips of 30 frames -> 30 x 128 x 171:")
    print(f"  pass 1 (labels, probing, keypoints): {plan_seconds:.2f} s")
    print(f"  pass 2 (decode + resize, {manual.decode_workers(decoded)} threads): {decoded / decode_seconds:.1f} clips/s")
    print(f"  whole build (both passes + TFDS writing): {decoded / build_seconds:.1f} clips/s")


if __name__ == "__main__":
    main()
