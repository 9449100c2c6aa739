"""Read TensorFlow checkpoints (tensor bundles) with plain Python and numpy.

A TF2/TF1 "V2" checkpoint with prefix ``P`` is two kinds of file:

- ``P.index``: a LevelDB-style sorted table mapping each tensor name to a
  ``BundleEntryProto`` (dtype, shape, shard, byte offset and size); the
  empty key holds a ``BundleHeaderProto``.
- ``P.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes.

Only what the musicnn checkpoints use is supported: uncompressed table
blocks, numeric dtypes and unsliced tensors. Anything else raises
:class:`CheckpointError` rather than returning wrong numbers.
"""

from __future__ import annotations

import glob
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musichash.errors import MusichashError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two padded BlockHandles (40 bytes) + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c

# tensorflow/core/framework/types.proto
DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


class CheckpointError(MusichashError):
    """A checkpoint file is missing, truncated or uses an unsupported feature."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data shards."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint in checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Decode one protobuf message into ``(field_number, value)`` pairs."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        fields.append((field, value))
    return fields


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for field, value in _proto_fields(buf):
        if field == 2:  # repeated Dim
            size = next((v for f, v in _proto_fields(value) if f == 1), 0)
            dims.append(int(size))
        elif field == 3 and value:
            raise CheckpointError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    values: dict[int, int | bytes] = {}
    for field, value in _proto_fields(buf):
        if field == 7:
            raise CheckpointError(f"{name}: sliced tensors are not supported")
        values[field] = value
    shape = _parse_shape(values[2]) if 2 in values else ()
    return TensorEntry(
        name=name,
        dtype=int(values.get(1, 0)),
        shape=shape,
        shard_id=int(values.get(3, 0)),
        offset=int(values.get(4, 0)),
        size=int(values.get(5, 0)),
    )


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """Decode the block a BlockHandle points to into ``(key, value)`` pairs."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError("checkpoint index is truncated")
    if data[offset + size] != 0:
        raise CheckpointError("compressed checkpoint index blocks are not supported")
    block = data[offset : offset + size]
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    entries = []
    key = b""
    pos = 0
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_index(index_path: str | Path) -> dict[str, TensorEntry]:
    """Parse a ``.index`` file into tensor entries, keyed by variable name."""
    path = Path(index_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint index ({e.strerror})") from e
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path}: too short to be a checkpoint index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (bad magic)")
    _, pos = _varint(footer, 0)  # metaindex handle: offset
    _, pos = _varint(footer, pos)  # metaindex handle: size
    index_handle = footer[pos:40]
    entries: dict[str, TensorEntry] = {}
    for _, data_handle in _block(data, index_handle):
        for key, value in _block(data, data_handle):
            if key:  # the empty key is the bundle header
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
    return entries


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of the checkpoint with this prefix.

    ``prefix`` is what TensorFlow's ``Saver`` was given, e.g. ``model/ckpt-10``
    for ``model/ckpt-10.index``; for the musicnn models the prefix ends in a
    slash (``MTT_vgg/``) and the files are ``MTT_vgg/.index`` and friends.
    """
    prefix = str(prefix)
    entries = read_index(prefix + ".index")
    shards: dict[int, bytes] = {}
    tensors = {}
    for name, e in sorted(entries.items()):
        if e.dtype not in DTYPES:
            raise CheckpointError(f"{name}: unsupported dtype code {e.dtype}")
        if e.shard_id not in shards:
            matches = sorted(glob.glob(glob.escape(prefix) + f".data-{e.shard_id:05d}-of-*"))
            if not matches:
                raise CheckpointError(f"{prefix}: data shard {e.shard_id} is missing")
            shards[e.shard_id] = Path(matches[0]).read_bytes()
        buf = shards[e.shard_id]
        dtype = np.dtype(DTYPES[e.dtype]).newbyteorder("<")
        expected = int(np.prod(e.shape, dtype=np.int64)) * dtype.itemsize
        if e.size != expected or e.offset + e.size > len(buf):
            raise CheckpointError(f"{name}: data shard is truncated or inconsistent")
        arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=e.offset)
        tensors[name] = arr.reshape(e.shape).astype(dtype.newbyteorder("="))
    return tensors
