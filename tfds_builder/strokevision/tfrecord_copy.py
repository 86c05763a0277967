"""Copy ArrayRecord shards into TFRecord shards without TensorFlow.

The builder writes ArrayRecord (random access: `tfds.data_source`, grain) and then
this module writes the same serialized `tf.train.Example` records into TFRecord
files (sequential: `tfds.load`, tf.data). TFRecord framing per record is
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
with little-endian integers.
"""

from __future__ import annotations

import pathlib
import struct

import google_crc32c
from array_record.python import array_record_module

_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def write_tfrecord(path: pathlib.Path, records) -> int:
    """Writes serialized records to a TFRecord file; returns how many were written."""
    count = 0
    with open(path, "wb") as out:
        for record in records:
            length = struct.pack("<Q", len(record))
            out.write(length)
            out.write(struct.pack("<I", masked_crc32c(length)))
            out.write(record)
            out.write(struct.pack("<I", masked_crc32c(record)))
            count += 1
    return count


def read_array_record(path: pathlib.Path):
    """Yields the serialized records of one ArrayRecord file, in order."""
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        for start in range(0, reader.num_records(), 64):
            stop = min(start + 64, reader.num_records())
            yield from reader.read(list(range(start, stop)))
    finally:
        reader.close()


def copy_shards_to_tfrecord(directory: pathlib.Path) -> list[pathlib.Path]:
    """Writes a `.tfrecord-` twin of every `.array_record-` shard in `directory`."""
    written = []
    for shard in sorted(directory.glob("*.array_record-*")):
        twin = shard.with_name(shard.name.replace(".array_record-", ".tfrecord-"))
        write_tfrecord(twin, read_array_record(shard))
        written.append(twin)
    if not written:
        raise FileNotFoundError(f"No ArrayRecord shards to copy in {directory}.")
    return written
