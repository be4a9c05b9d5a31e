"""quanta.io.load_tensors reads safetensors files exactly as the safetensors package does, into aligned memory,
and turns damaged files into CorruptDataError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from quanta.errors import CorruptDataError
from quanta.io import SafetensorsReader, load_tensors, save_tensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, generator=g).half(),
        "i8": torch.randint(-128, 127, (9,), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (4, 3), dtype=torch.uint8, generator=g),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "fp8": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_reads_what_safetensors_reads_into_aligned_tensors(tmp_path: Path) -> None:
    path = save_tensors(tmp_path / "t.safetensors", _tensors())
    ours, reference = load_tensors(path), load_file(str(path))
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        got = ours[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        # Bit for bit (NaN-safe): the raw bytes of both.
        assert got.reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()
        assert got.numel() == 0 or got.data_ptr() % 64 == 0  # kernels' vector loads want aligned memory


def test_truncated_and_corrupt_files_raise_corrupt_data_errors(tmp_path: Path) -> None:
    path = save_tensors(tmp_path / "t.safetensors", _tensors())
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-7])
    (tmp_path / "header.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    (tmp_path / "tiny.safetensors").write_bytes(b"\\x01\\x02")
    for name in ("short", "header", "tiny"):
        with pytest.raises(CorruptDataError, match="re-create it"):
            load_tensors(tmp_path / f"{name}.safetensors")
    with pytest.raises(CorruptDataError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")


def _crafted(path: Path, header: dict[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    "header",
    [
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}},  # 12 bytes for two floats
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},  # overlap
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},  # past the end of the data
    ],
)  # fmt: skip
def test_headers_safetensors_rejects_are_rejected_without_mapping_the_file(
    tmp_path: Path, header: dict[str, object]
) -> None:
    path = _crafted(tmp_path / "bad.safetensors", header, bytes(12))
    with pytest.raises(SafetensorError):  # the reference implementation rejects the file too
        load_file(str(path))
    with pytest.raises(CorruptDataError, match="re-create it"):
        SafetensorsReader(path)
    good = _crafted(
        tmp_path / "good.safetensors", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, bytes(12)
    )
    assert torch.equal(SafetensorsReader(good).read("a"), load_file(str(good))["a"])
