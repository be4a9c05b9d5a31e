"""Safe, atomic file I/O: safetensors only (never pickle), written to a temporary file and renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
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


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file.

    Raises:
        CorruptDataError: the file is missing, truncated or not a safetensors file.
    """
    try:
        return load_file(str(path))
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{path} does not exist.") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt, so re-create it."
        ) from exc
