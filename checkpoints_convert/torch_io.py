"""Reading PyTorch checkpoints without PyTorch, and without running code from the file.

`torch.save` writes a pickle. Unpickling an untrusted pickle can call any importable function,
so `read_checkpoint` uses a restricted unpickler: the only globals it resolves are
`collections.OrderedDict`, torch's tensor-rebuild functions and its typed storage classes, and
torch dtypes; they are mapped onto local numpy code, never onto torch. Any other global (for
example `os.system`, `builtins.eval`, a user's `nn.Module` subclass) is refused with
`UnsafeCheckpointError` before anything is called.

Formats: the zip archive of `torch.save` (PyTorch >= 1.6, the default), the legacy
non-zip stream (`_use_new_zipfile_serialization=False`), and `.safetensors`.
Tensors come back as numpy arrays (bfloat16 as `ml_dtypes.bfloat16`).
"""

from __future__ import annotations

import collections
import io
import json
import pathlib
import pickle
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file cannot be read; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list; nothing from it was executed."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
    """Stands for `torch.<X>Storage` inside the pickle: only its dtype is used."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Dtype:
    """Stands for a `torch.<dtype>` object inside the pickle."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_TORCH_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *rest) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 / _v3 on a flat numpy storage (elements, not bytes)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(rest) >= 3 and isinstance(rest[2], _Dtype):  # _v3: the dtype comes separately
        storage = storage.view(rest[2].dtype)
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or len(size) != len(stride):
        raise CheckpointError(f"invalid tensor geometry: size {size}, stride {stride}")
    if not size or all(s > 0 for s in size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or last >= storage.size:
            raise CheckpointError(
                f"tensor of size {size}, stride {stride} at offset {offset} reaches past its "
                f"storage of {storage.size} elements")
    else:  # an empty tensor
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)  # own, contiguous memory


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


_REBUILDERS = (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"))
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch", name): _Dtype(name) for name in _TORCH_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage, rebuild=None):
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage
        self._rebuild = rebuild  # replaces the tensor rebuilders (legacy format: deferred)

    def find_class(self, module: str, name: str):
        if self._rebuild is not None and (module, name) in _REBUILDERS:
            return self._rebuild
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load: the pickle asks for the global "
                f"'{module}.{name}', which is not a tensor, storage or plain container. "
                "Only state_dicts of tensors can be converted; re-save the checkpoint with "
                "torch.save(model.state_dict(), path) or as .safetensors.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, *view = pid
        if view and view[0] is not None:
            raise CheckpointError(f"{self._source}: storage views (legacy format) are not supported")
        return self._load_storage(str(key), storage_type.dtype, int(numel))


def _unpickle(data: bytes, source: str, load_storage) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), source, load_storage).load()


def _read_zip(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a torch.save archive holds one data.pkl; found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            member = f"{prefix}data/{key}"
            try:
                raw = archive.read(member)
            except KeyError:
                raise CheckpointError(f"{path}: storage {member!r} is missing from the archive") from None
            if len(raw) < numel * dtype.itemsize:
                raise CheckpointError(f"{path}: storage {member!r} holds {len(raw)} bytes, "
                                      f"{numel} x {dtype} need {numel * dtype.itemsize}")
            return np.frombuffer(raw, dtype, count=numel)

        return _unpickle(archive.read(pickles[0]), str(path), load_storage)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path: pathlib.Path) -> Any:
    stream = io.BytesIO(path.read_bytes())

    def header():
        return _RestrictedUnpickler(stream, str(path), None).load()

    if header() != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: neither a zip archive nor a legacy torch.save file")
    header()  # protocol version
    sys_info = header()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    wanted: dict[str, tuple[np.dtype, int]] = {}
    placeholders: dict[str, list] = {}

    def load_storage(key: str, dtype: np.dtype, numel: int):
        # The storages follow the main pickle: hand out a placeholder, fill it afterwards.
        wanted[key] = (dtype, numel)
        return placeholders.setdefault(key, _LazyStorage(key))

    def rebuild(storage, *args):
        return _LazyTensor(storage, args)

    tree = _RestrictedUnpickler(stream, str(path), load_storage, rebuild).load()
    keys = _RestrictedUnpickler(stream, str(path), None).load()
    storages = {}
    for key in keys:
        dtype, _ = wanted[key]
        (numel,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"{path}: truncated storage {key}")
        storages[key] = np.frombuffer(raw, dtype)
    return _resolve(tree, storages)


class _LazyStorage:
    def __init__(self, key):
        self.key = key


class _LazyTensor:
    def __init__(self, storage: _LazyStorage, args):
        self.storage, self.args = storage, args


def _resolve(tree, storages):
    if isinstance(tree, _LazyTensor):
        return _rebuild_tensor(storages[tree.storage.key], *tree.args)
    if isinstance(tree, dict):
        out = type(tree)((k, _resolve(v, storages)) for k, v in tree.items())
        if hasattr(tree, "__dict__"):
            out.__dict__.update(tree.__dict__)
        return out
    if isinstance(tree, (list, tuple)):
        return type(tree)(_resolve(v, storages) for v in tree)
    return tree


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    path = pathlib.Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(f"{path}: too short for a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8: 8 + size])
    except ValueError as error:
        raise CheckpointError(f"{path}: unreadable safetensors header ({error})") from None
    body = memoryview(data)[8 + size:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize or end > len(body):
            raise CheckpointError(f"{path}: tensor {name!r} has inconsistent data offsets")
        out[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).copy()
    return out


def _starts_like_a_zip(path: pathlib.Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """{key: numpy array} from a `.pth`/`.pt` (torch.save) or `.safetensors` file.

    A checkpoint that wraps its state_dict (`{"state_dict": ...}` or `{"model": ...}`, as
    training scripts often save) is unwrapped; other non-tensor entries are refused.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if zipfile.is_zipfile(path):
        try:
            tree = _read_zip(path)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
            raise CheckpointError(f"{path}: a damaged torch.save archive ({type(error).__name__}: {error}); "
                                  "copy or download the file again") from None
    elif _starts_like_a_zip(path):
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: a truncated or damaged torch.save archive ({size:,} bytes: the file begins as a zip "
            "archive but its end is missing or corrupt, as an interrupted download or copy leaves it); "
            "copy or download the file again")
    else:
        try:
            tree = _read_legacy(path)
        except (pickle.UnpicklingError, EOFError, struct.error) as error:
            raise CheckpointError(f"{path}: not a torch.save file ({error})") from None
    return _state_dict(tree, path)


def _state_dict(tree: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
    if isinstance(tree, Mapping):
        for wrapper in ("state_dict", "model", "model_state"):
            if wrapper in tree and isinstance(tree[wrapper], Mapping):
                return _state_dict(tree[wrapper], path)
        bad = [str(k) for k, v in tree.items() if not isinstance(v, np.ndarray)]
        if not bad:
            return {str(k): v for k, v in tree.items()}
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:10])}"
                              + (" ..." if len(bad) > 10 else ""))
    raise CheckpointError(f"{path}: holds a {type(tree).__name__}, not a state_dict of tensors")
