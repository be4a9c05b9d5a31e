"""The tokenizer of a Llama-family model as GGUF metadata: sentencepiece pieces, scores and types.

llama.cpp's ``llama`` tokenizer (SPM) needs every piece, its score (merge priority) and its type. They are read
from the model's ``tokenizer.model``, a sentencepiece ``ModelProto`` protobuf, decoded here with a dozen lines
of wire-format reading (field 1: repeated ``SentencePiece {1: piece, 2: score, 3: type}``) so the export does
not need the sentencepiece package. sentencepiece's type numbers (1 normal, 2 unknown, 3 control, 4 user
defined, 5 unused, 6 byte) are GGUF's ``TokenType`` numbers.

A directory with only the ``tokenizer.json`` that transformers derives from such a model (``quanta.save`` writes
that one) is read by :func:`read_hf_spm`: the same pieces in id order; special added tokens are control tokens
(the unknown token unknown), ``<0xNN>`` pieces bytes, and the n-th remaining piece scores ``-n``, which is how
sentencepiece's BPE trainer scores its merges (checked against ``tokenizer.model`` on stories260K).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quanta.errors import CorruptDataError, QuantaError, UnsupportedError

__all__ = ["Vocab", "read_hf_spm", "read_sentencepiece", "read_vocab"]


@dataclass(frozen=True)
class Vocab:
    """A sentencepiece vocabulary: ``tokens[i]``, ``scores[i]`` and ``types[i]`` of token id ``i``."""

    tokens: list[str]
    scores: list[float]
    types: list[int]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The ``(field number, value)`` pairs of one protobuf message (varints as int, the rest as bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
            continue
        size = {1: 8, 5: 4}.get(wire)
        if wire == 2:
            size, pos = _varint(buf, pos)
        if size is None or pos + size > len(buf):
            raise ValueError(f"field {number} has wire type {wire} or a length that runs past the end")
        out.append((number, buf[pos : pos + size]))
        pos += size
    return out


def read_sentencepiece(path: str | Path) -> Vocab:
    """Read the pieces of a sentencepiece ``tokenizer.model``.

    Raises:
        QuantaError: the file does not exist.
        CorruptDataError: it is not a sentencepiece model (unreadable protobuf, or no pieces).
    """
    file = Path(path)
    if not file.is_file():
        raise QuantaError(f"{file} does not exist; a Llama GGUF export needs the sentencepiece tokenizer.model.")
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    try:
        for number, value in _fields(file.read_bytes()):
            if number != 1 or not isinstance(value, bytes):
                continue
            piece, score, kind = "", 0.0, 1
            for sub, v in _fields(value):
                if sub == 1 and isinstance(v, bytes):
                    piece = v.decode("utf-8")
                elif sub == 2 and isinstance(v, bytes):
                    score = struct.unpack("<f", v)[0]
                elif sub == 3 and isinstance(v, int):
                    kind = v
            tokens.append(piece)
            scores.append(score)
            types.append(kind)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"{file} is not a readable sentencepiece model ({exc}); copy the original.") from exc
    if not tokens:
        raise CorruptDataError(f"{file} holds no sentencepiece pieces; it is not a tokenizer.model.")
    return Vocab(tokens, scores, types)


def read_hf_spm(path: str | Path) -> Vocab:
    """The sentencepiece vocabulary of a transformers ``tokenizer.json`` converted from a BPE sentencepiece model.

    Raises:
        QuantaError: the file does not exist.
        UnsupportedError: it is not a byte-fallback BPE tokenizer with a Metaspace (``▁``) pre-tokenizer.
        CorruptDataError: it is not readable JSON, or its ids do not run 0..n-1.
    """
    file = Path(path)
    if not file.is_file():
        raise QuantaError(f"{file} does not exist; a Llama GGUF export needs tokenizer.model or tokenizer.json.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        model, added = data["model"], data.get("added_tokens") or []
        vocab: dict[str, int] = dict(model["vocab"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"{file} is not a readable tokenizer.json ({exc}).") from exc
    pre = json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not model.get("byte_fallback") or "Metaspace" not in pre:
        raise UnsupportedError(
            f"{file} is not a sentencepiece-style tokenizer (byte-fallback BPE with a Metaspace pre-tokenizer); "
            "GGUF export writes the llama (SPM) tokenizer only: add the model's tokenizer.model."
        )
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise CorruptDataError(f"{file}: token ids do not run 0..{len(tokens) - 1}.")
    special = {a["content"] for a in added if a.get("special")}
    unk = model.get("unk_token") or _config_value(file.parent, "unk_token")  # converted files often drop it here
    types, scores, rank = [], [], 0
    for token in tokens:
        if token == unk:
            kind = 2
        elif token in special:
            kind = 3
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            kind = 6
        else:
            kind = 1
        types.append(kind)
        scores.append(-float(rank) if kind == 1 else 0.0)
        rank += kind == 1
    return Vocab(tokens, scores, types)


def _config_value(folder: Path, key: str) -> Any:
    config = folder / "tokenizer_config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get(key) if config.is_file() else None
    except ValueError:
        return None


def read_vocab(directory: str | Path) -> Vocab:
    """The vocabulary of a model folder: ``tokenizer.model`` if there is one, else ``tokenizer.json``."""
    folder = Path(directory)
    if (folder / "tokenizer.model").is_file():
        return read_sentencepiece(folder / "tokenizer.model")
    return read_hf_spm(folder / "tokenizer.json")


def add_bos_eos(directory: Path) -> tuple[bool, bool]:
    """Whether the HF tokenizer adds BOS / EOS when encoding (``tokenizer_config.json``; Llama's defaults)."""
    bos, eos = _config_value(directory, "add_bos_token"), _config_value(directory, "add_eos_token")
    return bool(True if bos is None else bos), bool(eos)
