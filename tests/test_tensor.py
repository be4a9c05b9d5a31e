"""QTensor storage: dict round trip and refusal of damaged data."""

import pytest
import torch

import quanta
from quanta.errors import CorruptDataError
from quanta.io import load_tensors, save_tensors


@pytest.fixture
def qt(gen: torch.Generator) -> quanta.QTensor:
    return quanta.quantize_tensor(torch.randn(16, 96, generator=gen), "int4:g32:asym:sf16")


def test_nbytes_and_bits_per_value(qt: quanta.QTensor) -> None:
    # 4-bit codes + per group of 32: an fp16 scale and an int8 zero point = 4 + 24/32 bits.
    assert qt.nbytes == 16 * 96 // 2 + 16 * 3 * (2 + 1)
    assert qt.bits_per_value == pytest.approx(4.75)
    assert "int4:g32:asym:sf16" in repr(qt)


def test_missing_entry(qt: quanta.QTensor) -> None:
    flat = qt.to_dict()
    del flat["zero"]
    with pytest.raises(CorruptDataError, match="missing its 'zero'"):
        quanta.QTensor.from_dict(flat)
    with pytest.raises(CorruptDataError, match=r"no quantized tensor under prefix 'x\.'"):
        quanta.QTensor.from_dict(qt.to_dict(), prefix="x.")


def test_truncated_codes(qt: quanta.QTensor) -> None:
    flat = qt.to_dict()
    flat["codes"] = flat["codes"][:-1]
    with pytest.raises(CorruptDataError, match="truncated"):
        quanta.QTensor.from_dict(flat)


def test_wrong_parameter_shape_or_dtype(qt: quanta.QTensor) -> None:
    flat = qt.to_dict()
    flat["scale"] = flat["scale"].float()
    with pytest.raises(CorruptDataError, match=r"expected torch\.float16"):
        quanta.QTensor.from_dict(flat)
    flat = qt.to_dict()
    flat["scale"] = flat["scale"][:, :2]
    with pytest.raises(CorruptDataError, match=r"\(16, 3\)"):
        quanta.QTensor.from_dict(flat)


def test_garbled_metadata(qt: quanta.QTensor) -> None:
    flat = qt.to_dict()
    flat["qmeta"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    with pytest.raises(CorruptDataError, match="unreadable"):
        quanta.QTensor.from_dict(flat)
    flat["qmeta"] = torch.tensor(list(b'{"format_version": 99}'), dtype=torch.uint8)
    with pytest.raises(CorruptDataError):
        quanta.QTensor.from_dict(flat)


def test_truncated_file_is_refused(qt: quanta.QTensor, tmp_path: object) -> None:
    path = save_tensors(f"{tmp_path}/w.safetensors", qt.to_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        load_tensors(path)
    with pytest.raises(CorruptDataError, match="does not exist"):
        load_tensors(f"{tmp_path}/nope.safetensors")


def test_failed_write_leaves_old_file_and_no_temp(
    qt: quanta.QTensor, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_tensors(f"{tmp_path}/w.safetensors", qt.to_dict())
    before = path.read_bytes()

    def crash_half_way(tensors: dict, filename: str, metadata: object = None) -> None:
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(quanta.io, "save_file", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, qt.to_dict())
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"axis": 5}, "inconsistent"),
        ({"shape": [-16, 96]}, "inconsistent"),
        ({"dtype": "int8"}, "not a float dtype"),
    ],
)
def test_inconsistent_metadata(qt: quanta.QTensor, change: dict, words: str) -> None:
    import json

    meta = {"format_version": 1, "scheme": str(qt.scheme), "shape": [16, 96], "dtype": "float32", "axis": None}
    meta.update(change)
    flat = qt.to_dict()
    flat["qmeta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    with pytest.raises(CorruptDataError, match=words):
        quanta.QTensor.from_dict(flat)


def test_codes_of_the_wrong_dtype(qt: quanta.QTensor) -> None:
    flat = qt.to_dict()
    flat["codes"] = flat["codes"].view(torch.int8)
    with pytest.raises(CorruptDataError, match=r"packed as torch\.uint8"):
        quanta.QTensor.from_dict(flat)


def test_saved_files_get_ordinary_permissions(qt: quanta.QTensor, tmp_path: object) -> None:
    import os

    umask = os.umask(0o022)
    try:
        path = save_tensors(f"{tmp_path}/w.safetensors", qt.to_dict())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
