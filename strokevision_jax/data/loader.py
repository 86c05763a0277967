"""grain loader: one epoch of batches from a random-access source, with the records transformed.

Randomness: every random choice for a record comes from np.random.default_rng([seed, epoch,
record_index]), so batches depend only on (seed, epoch) and not on the worker count, and a
resumed run at epoch e reproduces epoch e exactly. Training shuffles the records with
`fold_seed(seed, epoch)`. Sharding (one shard per process of a multi-process job): every shard
orders the epoch alike and reads only its block of rows of each global batch (`_shard_of_epoch`),
so the shards' batches of a step, stacked in shard order, are the one-shard batch of that step;
shards are disjoint and yield the same number of batches. Worker processes call
`retain_freed_memory` on start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags


class RecordTransform(Protocol):
    """What make_loader applies to each record: (record, rng) -> dict of numpy arrays with 'label'."""

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]: ...


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Asks glibc to keep freed blocks up to `mmap_threshold` bytes in the heap instead of the OS.

    By default glibc serves blocks >= 128 KiB (every clip here) with fresh mmaps and unmaps them on
    free, so each clip pays a page fault per 4 KiB touched; on VMs with slow page faults that costs
    several times the arithmetic (16x112x112 bilinear crop on this project's 2-core VM: 13 ms -> 3 ms).
    Called in grain worker processes; call it once in the main process when num_workers=0.
    Returns False where there is no glibc mallopt (other platforms): nothing changes there.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    retain_freed_memory()


_PADDING_INDEX = -1


def fold_seed(seed: int, epoch: int) -> int:
    """One 32-bit shuffle seed per (seed, epoch); unlike seed + epoch, (0, 1) and (1, 0) differ."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class _ReadExample:
    """Record index -> transformed example with 'index' and 'mask'; index -1 -> a masked zero example."""

    source: Any
    transform: RecordTransform
    seed: int
    epoch: int
    template_index: int = 0  # record whose transformed shapes the padding copies

    def __call__(self, record_index: int) -> dict[str, np.ndarray]:
        record_index = int(record_index)
        if record_index == _PADDING_INDEX:
            example = self._example(self.template_index)
            example = {key: np.zeros_like(value) for key, value in example.items()}
            example["index"] = np.int32(_PADDING_INDEX)
            return example
        return self._example(record_index)

    def _example(self, record_index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, record_index])
        example = dict(self.transform(self.source[record_index], rng))
        example["index"] = np.int32(record_index)
        example["mask"] = np.True_
        return example


@dataclasses.dataclass(frozen=True)
class _ShardPosition:
    """Shard-local position -> record index (-1 past the end of the epoch: padding).

    The epoch's order is cut into global batches of batch_size * shard_count positions; in each,
    shard k holds the k-th block of batch_size consecutive positions."""

    order: Any  # the epoch's record indices (a grain MapDataset)
    num_records: int
    shard_index: int
    shard_count: int
    batch_size: int

    def __call__(self, local_position: int) -> int:
        batch, row = divmod(int(local_position), self.batch_size)
        position = (batch * self.shard_count + self.shard_index) * self.batch_size + row
        return int(self.order[position]) if position < self.num_records else _PADDING_INDEX


def _shard_of_epoch(
    num_records: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    shard_index: int,
    shard_count: int,
    batch_size: int,
    drop_remainder: bool,
) -> grain.MapDataset:
    """This shard's record indices for the epoch, whole batches of `batch_size`, padded with -1.

    Every shard orders the epoch the same way (training: all records shuffled with
    fold_seed(seed, epoch)) and cuts it into global batches of batch_size * shard_count; shard k
    takes rows [k * batch_size, (k + 1) * batch_size) of each. The shards' batches of one step,
    stacked in shard order, are therefore exactly the one-shard batch of that step (batch_size *
    shard_count rows): a multi-process job places process k's rows there on the 'data' axis,
    so its global batches are those of a single process. Shards are disjoint and all have the
    same number of batches. With drop_remainder the last partial global batch is dropped;
    otherwise it is padded at its end (so some shards may hold only padding in it).
    """
    order = grain.MapDataset.range(num_records)
    if train:
        order = order.shuffle(seed=fold_seed(seed, epoch))
    global_batch = batch_size * shard_count
    num_batches = num_records // global_batch if drop_remainder else math.ceil(num_records / global_batch)
    position = _ShardPosition(order, num_records, shard_index, shard_count, batch_size)
    return grain.MapDataset.range(num_batches * batch_size).map(position)


class EpochLoader:
    """One epoch of batches; iterate it (more than once gives the same batches) or ask its len()."""

    def __init__(self, dataset: grain.IterDataset, num_batches: int):
        self.dataset = dataset
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        iterator = iter(self.dataset)
        try:
            yield from iterator
        finally:
            # Stops grain's worker processes now instead of at garbage collection.
            iterator.close()


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; a program without absl.app never parses them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # every flag keeps its default


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None and shard_count is None:
        options = grain.sharding.ShardByJaxProcess()
        return options.shard_index, options.shard_count
    if shard_index is None or shard_count is None:
        raise ValueError(f"Pass both shard_index and shard_count or neither (got {shard_index}, {shard_count}).")
    grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count)  # validates the pair
    return shard_index, shard_count


def make_loader(
    source: Any,
    transform: RecordTransform,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool | None = None,
    num_threads: int = 2,
) -> EpochLoader:
    """One epoch of batches from `source` (random access: len() and [i] -> record dict).

    Batches are dicts of stacked numpy arrays: the transform's outputs ('video' or 'keypoints',
    'label' int32), 'index' int32 (the record index; -1 for padding) and 'mask' bool (False for
    padding). Every batch has exactly batch_size rows: this shard's rows of a global batch of
    batch_size * shard_count (see `_shard_of_epoch`).
      train=True: records shuffled with fold_seed(seed, epoch), drop_remainder defaults to True.
      train=False: records in order; drop_remainder defaults to False, so the last partial batch
        is padded with masked zero examples and every record appears exactly once with mask True.
    Sharding: defaults to this JAX process's share (jax.process_index() of jax.process_count());
    all shards yield the same number of batches. (A training run passes the shard its devices'
    rows of the global batch occupy, `distributed.process_rows`.)
    num_workers > 0 runs the transforms in that many grain worker processes (each computes whole
    batches, so batches are identical for any worker count; the calling script needs an
    `if __name__ == "__main__":` guard, as workers are spawned). num_threads > 0 computes that many
    batches ahead in background threads of each process (numpy releases the GIL, so on 2 cores 2
    threads nearly double the rate); 0 computes each batch when it is asked for.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive.")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed={seed} and epoch={epoch} must be non-negative.")
    if num_workers < 0 or num_threads < 0:
        raise ValueError(f"num_workers={num_workers} and num_threads={num_threads} must be non-negative.")
    num_records = len(source)
    if num_records == 0:
        raise ValueError("The source has no records; check the split and data_dir.")
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    drop_remainder = train if drop_remainder is None else drop_remainder

    indices = _shard_of_epoch(
        num_records,
        train=train,
        seed=seed,
        epoch=epoch,
        shard_index=shard_index,
        shard_count=shard_count,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
    )
    num_batches = len(indices) // batch_size
    if num_batches == 0:
        raise ValueError(
            f"{num_records} records leave each of {shard_count} shard(s) fewer than batch_size={batch_size} "
            f"(one global batch is {batch_size * shard_count}), and drop_remainder=True drops them all; lower "
            "batch_size or pass drop_remainder=False."
        )
    examples = indices.map(_ReadExample(source, transform, seed, epoch))
    batches = examples.batch(batch_size, drop_remainder=True)  # whole batches by construction
    # Elements here are whole batches, so the read-ahead buffer is counted in batches.
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads))
    dataset = batches.to_iter_dataset(read_options)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
            worker_init_fn=_init_worker,
        )
    return EpochLoader(dataset, num_batches)
