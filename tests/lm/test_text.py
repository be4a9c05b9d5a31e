"""Text to token ids: whole-file tokenization without BOS, seeded calibration windows."""

from pathlib import Path

import pytest
import torch

from quanta.errors import QuantaError
from quanta.lm import calibration_windows, context_length, tokenize_file


class _Chars:
    """A character tokenizer: ids are code points, BOS (0) only when special tokens are asked for."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [0] * add_special_tokens + [ord(c) for c in text]


def test_tokenize_file_has_no_bos(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abc")
    assert tokenize_file(tmp_path / "t.txt", _Chars()).tolist() == [97, 98, 99]


def test_tokenize_file_refuses_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(QuantaError, match="not a file"):
        tokenize_file(tmp_path / "none.txt", _Chars())
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(QuantaError, match="no tokens"):
        tokenize_file(tmp_path / "e.txt", _Chars())


def test_windows_are_seeded_slices_of_the_stream() -> None:
    ids = torch.arange(1000) * 7
    w = calibration_windows(ids, n=16, length=32, seed=3)
    assert w.shape == (16, 32) and w.dtype == torch.int64
    assert torch.equal(w, calibration_windows(ids, n=16, length=32, seed=3))
    assert not torch.equal(w, calibration_windows(ids, n=16, length=32, seed=4))
    starts = w[:, 0] // 7
    assert torch.equal(w, (starts[:, None] + torch.arange(32)) * 7)  # consecutive tokens
    assert int(starts.max()) <= 1000 - 32


def test_window_longer_than_text_is_refused() -> None:
    assert calibration_windows(torch.arange(8), n=2, length=8).shape == (2, 8)  # exactly one window fits
    with pytest.raises(QuantaError, match="fewer than one window"):
        calibration_windows(torch.arange(7), n=2, length=8)


def test_context_length_is_capped_at_2048() -> None:
    class Cfg:
        max_position_embeddings = 512

    model = torch.nn.Linear(1, 1)
    assert context_length(model) == 2048
    model.config = Cfg()  # type: ignore[assignment]
    assert context_length(model) == 512
