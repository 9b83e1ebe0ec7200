"""Read a legacy (non-zip) PyTorch ``torch.save`` file without torch, and without running its code.

The legacy format, written by ``torch.save(obj, f, _use_new_zipfile_serialization=False)``
(and by every torch before 1.6), is a plain sequence of pickles followed by raw bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version (1001);
3. a sys-info dict (``little_endian``, ``type_sizes``);
4. the pickled object (here a state dict). Tensors in it are
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
   calls whose storages are persistent ids
   ``('storage', <torch.XStorage>, key, location, numel, view_metadata)``;
5. the pickled list of storage keys;
6. for each key in that order: a little-endian int64 element count, then the raw elements.

Every pickle goes through :class:`RestrictedUnpickler`, whose ``find_class`` hands out
inert stand-ins for an allow-list of torch globals plus ``collections.OrderedDict`` and
refuses any other global with :class:`~xrayfx.exceptions.UnsafePickleError`. Nothing from
torch is imported (torch need not be installed) and nothing in the file is executed.

Element sizes come from the storage *type* (``LongStorage`` is always int64), not from the
sys-info header: files saved on Windows say ``long: 4`` although their longs are 8 bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xrayfx.exceptions import UnsafePickleError, WeightsError, XrayfxError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_SIGNATURE = b"PK\x03\x04"

# torch storage type name -> little-endian numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = ("collections", "OrderedDict")
ALLOWED_GLOBALS: tuple[str, ...] = (
    f"{_REBUILD_TENSOR[0]}.{_REBUILD_TENSOR[1]}",
    f"{_ORDERED_DICT[0]}.{_ORDERED_DICT[1]}",
    *(f"torch.{name}" for name in STORAGE_DTYPES),
)

# Exceptions the pickle machinery and numpy raise on truncated or garbled bytes.
_GARBLED = (
    EOFError,
    pickle.UnpicklingError,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
)


@dataclass(frozen=True)
class StorageType:
    """Inert stand-in for a ``torch.XStorage`` class named in the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass
class _StorageRef:
    """A storage named by a persistent id; its bytes are read after the pickles."""

    key: str
    storage_type: StorageType
    numel: int
    view: tuple[str, int, int] | None = None  # (view key, element offset, element count)


@dataclass
class _PendingTensor:
    """The arguments of one ``_rebuild_tensor_v2`` call, materialised once storages are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the call, computes nothing."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got a {type(storage).__name__} as storage, not a storage id")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 got malformed offset/size/stride")
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in (*size, *stride, storage_offset)):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got size {size} and stride {stride}")
    return _PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a legacy torch state dict needs.

    ``find_class`` returns inert stand-ins (never torch itself) for
    :data:`ALLOWED_GLOBALS` and raises :class:`UnsafePickleError` for anything else,
    before it can be called. ``persistent_load`` turns storage ids into references
    that are filled in later from the raw bytes at the end of the file.
    """

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _REBUILD_TENSOR:
            return _rebuild_tensor_v2
        if (module, name) == _ORDERED_DICT:
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from {self._source}: only {', '.join(ALLOWED_GLOBALS)} are allowed "
            "in a legacy PyTorch state dict. Nothing was executed. The file is not a plain state dict, or was "
            "tampered with; get the weights from a source you trust."
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"expected a persistent id ('storage', type, key, location, numel[, view]), got {pid!r:.200}")
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.200}")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key} has element count {numel!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _StorageRef(key, storage_type, numel)
        elif root.storage_type != storage_type:
            raise pickle.UnpicklingError(
                f"storage {key} is named as both {root.storage_type.name} and {storage_type.name}"
            )
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
            raise pickle.UnpicklingError(f"malformed storage view {view!r:.200}")
        view_key, view_offset, view_size = view
        if view_offset < 0 or view_size < 0 or view_offset + view_size > root.numel:
            raise pickle.UnpicklingError(f"storage view {view!r} lies outside storage {key} of {root.numel} elements")
        return _StorageRef(str(view_key), storage_type, view_size, (key, view_offset, view_size))


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"{what}: expected {n} bytes, only {len(data)} left")
    return data


def _read_storages(f: BinaryIO, keys: list[str], storages: dict[str, _StorageRef], remaining: int) -> dict[str, np.ndarray]:
    """Read the raw storages that follow the key list, sized by their storage types."""
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise pickle.UnpicklingError(f"the storage key list names {key!r}, which no tensor uses")
        count = struct.unpack("<q", _read_exact(f, 8, f"element count of storage {key}"))[0]
        nbytes = count * ref.storage_type.dtype.itemsize
        if count < 0 or count != ref.numel:
            raise pickle.UnpicklingError(
                f"storage {key} ({ref.storage_type.name}) should hold {ref.numel} elements, its header says {count}"
            )
        if nbytes > remaining:
            raise EOFError(f"storage {key}: expected {nbytes} bytes, only {remaining} left")
        arrays[key] = np.frombuffer(_read_exact(f, nbytes, f"storage {key}"), dtype=ref.storage_type.dtype)
        remaining -= 8 + nbytes
    return arrays


def _materialise(tensor: _PendingTensor, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Emulate ``_rebuild_tensor_v2`` with numpy: a bounds-checked strided view, then a C-ordered copy."""
    ref = tensor.storage
    if ref.view is None:
        flat = arrays.get(ref.key)
    else:
        root_key, view_offset, view_size = ref.view
        root = arrays.get(root_key)
        flat = None if root is None else root[view_offset : view_offset + view_size]
    if flat is None:
        raise pickle.UnpicklingError(f"storage {ref.key} is used by a tensor but missing from the key list")
    if any(s == 0 for s in tensor.size):
        return np.zeros(tensor.size, dtype=flat.dtype)
    numel = int(np.prod(tensor.size, dtype=object))
    if numel > flat.size:
        # A state dict never broadcasts (stride 0); refusing it also bounds the memory a file can claim.
        raise pickle.UnpicklingError(
            f"tensor of size {tensor.size} has {numel} elements, more than the {flat.size} of storage {ref.key}"
        )
    last = tensor.offset + sum((n - 1) * st for n, st in zip(tensor.size, tensor.stride))
    if last >= flat.size:
        raise pickle.UnpicklingError(
            f"tensor of size {tensor.size}, stride {tensor.stride} at offset {tensor.offset} reaches element {last} "
            f"of storage {ref.key}, which holds {flat.size}"
        )
    base = flat[tensor.offset :]
    view = np.lib.stride_tricks.as_strided(
        base, shape=tensor.size, strides=tuple(st * flat.itemsize for st in tensor.stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype, order="C", copy=True)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch state dict as an ordered ``{name: numpy array}`` dict.

    Only tensors rebuilt by ``torch._utils._rebuild_tensor_v2`` on the storage types of
    :data:`STORAGE_DTYPES` are accepted; any other global in the pickle raises
    :class:`UnsafePickleError` before anything runs. Truncated or garbled files, and files
    in the newer zip format, raise :class:`WeightsError` naming the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read PyTorch weights {path}: {exc.strerror or exc}; check the path") from exc
    if data.startswith(ZIP_SIGNATURE):
        raise WeightsError(
            f"{path} is in the newer zip-based PyTorch format (torch >= 1.6 default), which xrayfx does not read; "
            "expected the legacy format. Re-save it with "
            "torch.save(state_dict, path, _use_new_zipfile_serialization=False)."
        )
    source = str(path)
    f = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}
    stage = "the magic number"
    try:
        magic = RestrictedUnpickler(f, source, storages).load()
        if magic != MAGIC_NUMBER:
            raise pickle.UnpicklingError(f"magic number {magic!r:.40}, expected {MAGIC_NUMBER:#x}")
        stage = "the protocol version"
        version = RestrictedUnpickler(f, source, storages).load()
        if version != PROTOCOL_VERSION:
            raise pickle.UnpicklingError(f"protocol version {version!r:.40}, expected {PROTOCOL_VERSION}")
        stage = "the sys-info header"
        sys_info = RestrictedUnpickler(f, source, storages).load()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise pickle.UnpicklingError(f"sys-info {sys_info!r:.200}, expected a dict with little_endian=True")
        stage = "the state dict"
        obj = RestrictedUnpickler(f, source, storages).load()
        if not isinstance(obj, dict):
            raise pickle.UnpicklingError(f"the saved object is a {type(obj).__name__}, expected a state dict")
        stage = "the storage key list"
        keys = RestrictedUnpickler(f, source, storages).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise pickle.UnpicklingError("the storage key list is not a list of strings")
        stage = "the raw storages"
        arrays = _read_storages(f, keys, storages, len(data) - f.tell())
        stage = "the tensors"
        state: dict[str, np.ndarray] = {}
        for name, value in obj.items():
            if not isinstance(name, str) or not isinstance(value, _PendingTensor):
                raise pickle.UnpicklingError(f"entry {name!r:.80} is a {type(value).__name__}, expected a tensor")
            state[name] = _materialise(value, arrays)
    except XrayfxError:
        raise
    except _GARBLED as exc:
        raise WeightsError(
            f"{path} is truncated or not a legacy PyTorch state dict: reading {stage} failed "
            f"({type(exc).__name__}: {exc}). Expected magic number, protocol version, sys info, state dict, "
            "storage keys, then raw storages. Reinstall or re-download the weights file."
        ) from exc
    return state
