"""Safe, atomic file I/O: safetensors only (never pickle), written to a temporary file and renamed into place."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from quanta.errors import CorruptDataError, InvalidTensorError, QuantaError

__all__ = ["atomic_path", "load_tensors", "save_tensors"]


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
    try:
        with safe_open(str(path), framework="pt") as handle:  # validates without reading the data
            names = list(handle.keys())
        with open(path, "rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(size))
            base = 8 + size
            out: dict[str, torch.Tensor] = {}
            for name in names:
                info = header[name]
                dtype = _DTYPES.get(info["dtype"])
                if dtype is None:  # a dtype this reader does not map: let safetensors read the file
                    return load_file(str(path))
                start, end = info["data_offsets"]
                data = torch.empty(end - start, dtype=torch.uint8)
                file.seek(base + start)
                if end > start and file.readinto(data.numpy().data) != end - start:
                    raise CorruptDataError(f"{path} ends inside tensor {name!r}; it is truncated, so re-create it.")
                out[name] = data.view(dtype).reshape(info["shape"])
            return out
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{path} does not exist.") from exc
    except (SafetensorError, OSError, ValueError, KeyError, struct.error) as exc:
        raise CorruptDataError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt, so re-create it."
        ) from exc
