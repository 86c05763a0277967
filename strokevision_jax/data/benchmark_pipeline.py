"""Throughput of the grain input pipelines, in clips per second, per worker count.

    python -m strokevision_jax.data.benchmark_pipeline --source=fake --num_workers=0,1,2
    python -m strokevision_jax.data.benchmark_pipeline --source=tfds --config=synthetic_small --data_dir=/tmp/tfds

Rows: the video pipeline at the paper size (16x112x112 crops of a 128x171 resize) and the CPU size
(8x64x64 crops of a 72x96 resize), and the MotionBERT-style skeleton pipeline (H36M, screen
coordinates). Each row runs one training epoch (random crops and flips, shuffled) and reports the
time to the first batch (worker start-up included) and the steady rate over the following batches.

--source=fake reads in-memory random records of the stored shape (30, 128, 171, 3), so it measures
the transforms alone; --source=tfds reads `strokevision_jax.data.dataset.load_source(split=, config=,
data_dir=)` and includes decoding (building the dataset first if needed). The default (auto) reads
the dataset when it is already built, else falls back to fake.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from strokevision_jax import presets
from strokevision_jax.data import pipeline

STORED_SHAPE = (30, 128, 171, 3)  # frames, height, width, channels of the default 'synthetic' config


class FakeSource:
    """`num_records` records that cycle through a few random ones of the stored shape."""

    def __init__(self, num_records: int, num_distinct: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        frames, height, width, _ = STORED_SHAPE
        self._records = [
            {
                "video": rng.integers(0, 256, STORED_SHAPE, dtype=np.uint8),
                "keypoints": rng.uniform([0, 0], [width, height], (frames, 17, 2)).astype(np.float32),
                "keypoint_scores": rng.uniform(0, 1, (frames, 17)).astype(np.float32),
                "label": i % 4,
                "patient_id": "P000",
                "clip_id": f"P000_C{i:04d}",
            }
            for i in range(num_distinct)
        ]
        self._num_records = num_records

    def __len__(self) -> int:
        return self._num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[index % len(self._records)]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    transform: Callable[..., dict[str, np.ndarray]]
    output_key: str


def _cases(selected: Sequence[str], resize_method: str) -> list[Case]:
    # The clip configs of R(2+1)D-18's training presets (strokevision_jax/presets.py).
    paper, cpu = (dataclasses.replace(presets.recipe("r2plus1d_18", name).video, resize_method=resize_method)
                  for name in ("paper", "cpu"))
    skeleton = pipeline.SkeletonConfig(num_frames=30, layout="h36m", normalization="screen", num_persons=1)
    cases = {
        "video_paper": Case("video paper", pipeline.video_transform(paper, train=True), "video"),
        "video_cpu": Case("video cpu", pipeline.video_transform(cpu, train=True), "video"),
        "skeleton": Case("skeleton h36m", pipeline.skeleton_transform(skeleton, train=True), "keypoints"),
    }
    unknown = sorted(set(selected) - set(cases))
    if unknown:
        raise SystemExit(f"Unknown pipeline(s) {unknown}; choose from {sorted(cases)}.")
    return [cases[name] for name in selected]


def _load_source(args: argparse.Namespace, min_records: int) -> tuple[Any, str]:
    """--source=tfds builds the dataset if needed; auto uses it only when it is already built."""
    fake = FakeSource(max(min_records, args.fake_records)), f"fake records {STORED_SHAPE}"
    if args.source == "fake":
        return fake
    try:
        from strokevision_jax.data import dataset  # pylint: disable=import-outside-toplevel

        source = dataset.load_source(
            split=args.split, config=args.config, data_dir=args.data_dir, build=args.source == "tfds"
        )
    except Exception as error:  # pylint: disable=broad-except
        if args.source == "tfds":
            raise
        print(f"No built strokevision/{args.config} dataset ({type(error).__name__}: {error}).")
        print("Benchmarking --source=fake instead; pass --source=tfds to build and read the dataset.")
        return fake
    return source, f"tfds strokevision/{args.config} split={args.split} ({len(source)} records)"


def _measure(source: Any, case: Case, args: argparse.Namespace, num_workers: int) -> dict[str, Any]:
    loader = pipeline.make_loader(
        source,
        case.transform,
        batch_size=args.batch_size,
        train=True,
        seed=0,
        num_workers=num_workers,
        num_threads=args.num_threads,
        shard_index=0,
        shard_count=1,
    )
    start = time.perf_counter()
    steady_start, steady_batches, shape = None, 0, None
    for batch_number, batch in enumerate(loader):
        if batch_number == 0:
            steady_start = time.perf_counter()
            shape = batch[case.output_key].shape[1:]
            dtype = batch[case.output_key].dtype
        else:
            steady_batches += 1
        if steady_batches >= args.batches:
            break
    end = time.perf_counter()
    if steady_start is None:
        raise SystemExit("The loader produced no batch; lower --batch_size.")
    steady_seconds = end - steady_start
    rate = steady_batches * args.batch_size / steady_seconds if steady_batches else float("nan")
    return {
        "first": steady_start - start,
        "rate": rate,
        "batches": steady_batches,
        "output": "x".join(map(str, shape)) + f" {dtype}",
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("auto", "fake", "tfds"), default="auto")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (tfds source).")
    parser.add_argument("--config", default="synthetic", help="synthetic_small | synthetic (tfds source).")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", default="0,1,2", help="Comma-separated grain worker counts.")
    parser.add_argument("--num_threads", type=int, default=2, help="Batches computed ahead in threads, per process.")
    parser.add_argument("--batches", type=int, default=20, help="Timed batches per row, after the first.")
    parser.add_argument("--pipelines", default="video_paper,video_cpu,skeleton")
    parser.add_argument("--resize_method", choices=("bilinear", "pil"), default="bilinear")
    parser.add_argument(
        "--retain_freed_memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Keep freed memory in glibc's heap in the main process (workers always do).",
    )
    parser.add_argument("--fake_records", type=int, default=0, help="Records in the fake source (0: just enough).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    # The training loop should do the same (see pipeline.retain_freed_memory).
    retained = pipeline.retain_freed_memory() if args.retain_freed_memory else False
    worker_counts = [int(count) for count in args.num_workers.split(",") if count.strip()]
    cases = _cases([name.strip() for name in args.pipelines.split(",") if name.strip()], args.resize_method)
    source, description = _load_source(args, min_records=(args.batches + 1) * args.batch_size)
    print(
        f"source: {description}; batch_size={args.batch_size}, num_threads={args.num_threads}, "
        f"resize_method={args.resize_method}, glibc keeps freed memory: {retained}"
    )
    header = f"{'pipeline':<14} {'output':<22} {'workers':>7} {'first batch s':>13} {'clips/s':>9} {'batches':>7}"
    print(header)
    print("-" * len(header))
    for case in cases:
        for num_workers in worker_counts:
            result = _measure(source, case, args, num_workers)
            print(
                f"{case.name:<14} {result['output']:<22} {num_workers:>7} {result['first']:>13.2f} "
                f"{result['rate']:>9.1f} {result['batches']:>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
