"""Safe, atomic file I/O: safetensors only (never pickle), written to a temporary file and renamed into place."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from quanta.errors import CorruptDataError, InvalidTensorError, QuantaError

__all__ = ["SafetensorsReader", "atomic_dir", "atomic_path", "load_tensors", "save_tensors"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    A reader therefore sees either the old file or the complete new one, never a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging directory beside ``path``; on success it replaces ``path``, on error it is removed.

    An existing directory at ``path`` is moved aside, the staging one renamed into place, then the old one deleted,
    so a reader sees the old directory or the complete new one, never a half-written model.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write tensors to a safetensors file atomically and return its path."""
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidTensorError(f"save_tensors needs torch tensors; {bad[:3]} are not. Convert them first.")
    if Path(path).is_dir():
        raise QuantaError(f"{path} is a directory; give a file path such as {Path(path) / 'model.safetensors'}.")
    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)
    return Path(path)


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file into freshly allocated tensors (torch's allocator aligns them to 64 bytes).

    safetensors itself validates the file first (header, offsets, sizes). The bytes are then read straight into
    each tensor's own memory, with no memory map: a map would keep the file's pages in the process while the
    aligned copies that kernels need are made, doubling a load's peak memory.

    Raises:
        CorruptDataError: the file is missing, truncated or not a safetensors file.
    """
    reader = SafetensorsReader(path)
    if not reader.readable:  # a dtype this reader does not map: let safetensors read the file
        with _corrupt_as_error(path):
            return load_file(str(path))
    return {name: reader.read(name) for name in reader.names()}


class SafetensorsReader:
    """Reads the tensors of one safetensors file one at a time, each into its own fresh memory (no memory map).

    Made for streaming: a reader holds the header only, so a process can go through a file many times its memory
    a tensor at a time (the sequential LM pipeline's ``--offload``). The file is validated by safetensors once, on
    construction.

    Raises:
        CorruptDataError: the file is missing, truncated or not a safetensors file (on construction or on a read).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with _corrupt_as_error(self.path):
            self._header, self._base = _validated_header(self.path)
        self._names = [n for n in self._header if n != "__metadata__"]
        # False when a tensor has a dtype this reader does not map (the caller falls back to safetensors).
        self.readable = all(self._header[n]["dtype"] in _DTYPES for n in self._names)

    def names(self) -> list[str]:
        """The tensor names, in file order."""
        return list(self._names)

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as stored (its dtype and shape), in freshly allocated memory."""
        if name not in self._header or name == "__metadata__":
            raise QuantaError(f"{self.path} has no tensor {name!r}.")
        info = self._header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise CorruptDataError(f"{self.path}: tensor {name!r} has dtype {info['dtype']}, which quanta cannot read.")
        start, end = info["data_offsets"]
        data = torch.empty(end - start, dtype=torch.uint8)
        with _corrupt_as_error(self.path), open(self.path, "rb") as file:
            file.seek(self._base + start)
            if end > start and file.readinto(data.numpy().data) != end - start:
                raise CorruptDataError(f"{self.path} ends inside tensor {name!r}; it is truncated, so re-create it.")
        return data.view(dtype).reshape(info["shape"])


_ITEM_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8}
_ITEM_BITS |= {"BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "U16": 16, "U32": 32, "U64": 64}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def _validated_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data starts, checked the way safetensors checks it
    (sizes, offsets inside the file, each tensor's bytes matching its dtype and shape, no overlap), without
    mapping the file: a memory map of a multi-GB shard would count against an address-space limit."""
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) != 8:
            raise ValueError("shorter than the 8-byte header length")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER or 8 + size > file_size:
            raise ValueError(f"header length {size} does not fit the file")
        header = json.loads(file.read(size))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (int(v) for v in info["data_offsets"])
        bits = _ITEM_BITS.get(info["dtype"])
        numel = math.prod(int(d) for d in info["shape"])
        if bits is not None and (end - start) * 8 != numel * bits:
            raise ValueError(
                f"tensor {name!r} holds {end - start} bytes, not what {info['dtype']}{info['shape']} needs"
            )
        if not 0 <= start <= end <= file_size - 8 - size:
            raise ValueError(f"tensor {name!r} lies outside the file (offsets {start}..{end})")
        spans.append((start, end))
    spans.sort()
    if any(a_end > b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)):
        raise ValueError("two tensors overlap")
    return header, 8 + size


@contextmanager
def _corrupt_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{path} does not exist.") from exc
    except (SafetensorError, OSError, ValueError, KeyError, struct.error) as exc:
        raise CorruptDataError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt, so re-create it."
        ) from exc
