"""Read a GGUF file into quanta: Q8_0 / Q4_0 / Q4_1 / Q4_K tensors become QTensors with their codes preserved.

``read_gguf(path)`` returns the file's metadata and its tensors under their GGUF names, in GGUF's row order
(llama.cpp's interleaved q/k rows; :func:`quanta.export.gguf.hf_rows` undoes that). Quantized tensors become
QTensors (schemes in :func:`quanta.export.gguf_codec.to_qtensor`) whose ``dequantize()`` equals ggml's
dequantization exactly, so they can be evaluated, saved with ``quanta.save``-style safetensors, or written back
with :func:`quanta.export.gguf_codec.encode`, which gives the same bytes. F32, F16 and BF16 tensors stay float.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quanta.errors import CorruptDataError, QuantaError, UnsupportedError
from quanta.export.ggml_blocks import BLOCKS
from quanta.export.gguf_codec import to_qtensor
from quanta.tensor import QTensor

__all__ = ["GGUFContents", "read_gguf"]

_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class GGUFContents:
    """What :func:`read_gguf` found.

    Attributes:
        metadata: key -> value (strings, numbers, lists), e.g. ``"llama.block_count": 5``.
        tensors: GGUF name -> QTensor (quantized) or float tensor, shaped ``(rows, cols)`` as torch orders them.
        types: GGUF name -> ggml type name (``"Q4_K"``, ``"F32"``).
    """

    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, QTensor | torch.Tensor] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)


def _field_value(f: Any) -> Any:
    import gguf

    values = [f.parts[i] for i in f.data]
    kinds = f.types
    if kinds and kinds[0] == gguf.GGUFValueType.STRING and len(kinds) == 1:
        return bytes(values[0]).decode("utf-8", "replace")
    if kinds and kinds[0] == gguf.GGUFValueType.ARRAY:
        if len(kinds) > 1 and kinds[1] == gguf.GGUFValueType.STRING:
            return [bytes(v).decode("utf-8", "replace") for v in values]
        return [v.tolist()[0] for v in values]
    return values[0].tolist()[0] if values else None


def read_gguf(path: str | os.PathLike[str]) -> GGUFContents:
    """Read every tensor and metadata value of a GGUF file.

    Args:
        path: the ``.gguf`` file.

    Returns:
        A :class:`GGUFContents`.

    Raises:
        QuantaError: the file does not exist.
        CorruptDataError: it is truncated or not a GGUF file.
        UnsupportedError: it holds a tensor type quanta does not read (the message lists those it does).
    """
    import gguf

    file = Path(path)
    if not file.is_file():
        raise QuantaError(f"{file} does not exist; pass a .gguf file.")
    try:
        reader = gguf.GGUFReader(str(file))
    except (ValueError, KeyError, IndexError, OSError, TypeError) as exc:
        raise CorruptDataError(
            f"{file} is not a readable GGUF file ({exc}); it may be truncated or damaged, so re-create it."
        ) from exc
    out = GGUFContents()
    for name, f in reader.fields.items():
        if not name.startswith("GGUF."):
            out.metadata[name] = _field_value(f)
    for t in reader.tensors:
        kind = t.tensor_type.name
        cols = int(t.shape[0])
        rows = int(math.prod(int(s) for s in t.shape[1:]))
        data = np.asarray(t.data)
        if kind in BLOCKS:
            out.tensors[t.name] = to_qtensor(kind, data.view(np.uint8).reshape(-1), rows, cols)
        elif kind in _FLOATS:
            shape = tuple(int(s) for s in reversed(t.shape))
            raw = torch.from_numpy(np.array(data, copy=True).reshape(-1).view(np.uint8))
            if raw.numel() != math.prod(shape) * _FLOATS[kind].itemsize:
                raise CorruptDataError(f"{file}: tensor {t.name!r} holds {raw.numel()} bytes, not {kind}{shape}.")
            out.tensors[t.name] = raw.view(_FLOATS[kind]).reshape(shape)
        else:
            raise UnsupportedError(
                f"{file}: tensor {t.name!r} is {kind}; quanta reads {', '.join(BLOCKS)} (as QTensors) "
                f"and {', '.join(_FLOATS)} (as float tensors)."
            )
        out.types[t.name] = kind
    return out
