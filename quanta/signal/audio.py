"""Audio files: read and write WAV and FLAC through ``soundfile`` (libsndfile), samples as float64 in full scale.

Samples are ``(frames,)`` for mono and ``(frames, channels)`` otherwise, with full scale ``[-1, 1)``: a
``b``-bit PCM code ``k`` is the sample ``k / 2^(b-1)``, so every 16- and 24-bit code is exact in float64 and a
file read and written back at the same subtype is bit-identical. The integer conversion is done here (not by
libsndfile, whose float scaling differs between versions): writing PCM rounds ``x · 2^(b-1)`` to the nearest
integer and clips to ``[-2^(b-1), 2^(b-1) - 1]``. ``soundfile`` is an optional dependency (the ``speech``
extra), imported only when a file is read or written.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quanta.errors import (
    CorruptDataError,
    InvalidTensorError,
    NonFiniteError,
    QuantaError,
    SchemeError,
    UnsupportedError,
)
from quanta.signal._arrays import Array, check_positive, to_float64

__all__ = ["FORMATS", "SUBTYPES", "AudioInfo", "audio_info", "pcm_bits", "read_audio", "write_audio"]

FORMATS = {".wav": "WAV", ".flac": "FLAC"}
"""Containers by file suffix."""

SUBTYPES = {"PCM_16": 16, "PCM_24": 24, "FLOAT": None, "DOUBLE": None}
"""Sample encodings :func:`write_audio` writes, with their PCM bit width (``None``: floating point, WAV only)."""

_STREAMED = (0, 0xFFFFFFFF)  # data sizes streaming writers leave in a WAV header: not truncation


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libsndfile is not
        raise QuantaError(
            f"reading and writing audio needs the soundfile package ({exc}): pip install soundfile "
            "(or pip install 'quanta[speech]')"
        ) from exc
    return soundfile


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: ``rate`` (Hz), ``channels``, ``frames``, ``format`` ("WAV", "FLAC", ...),
    ``subtype`` ("PCM_16", "PCM_24", "FLOAT", ...) and ``bits`` (the PCM width, ``None`` for floating point)."""

    rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    bits: int | None

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.rate


def pcm_bits(subtype: str) -> int | None:
    """The bit width of a PCM subtype (``"PCM_24"`` -> 24), ``None`` for anything else (float, compressed).

    Example:
        >>> pcm_bits("PCM_24"), pcm_bits("FLOAT")
        (24, None)
    """
    match = re.fullmatch(r"PCM_[SU]?(\d+)", subtype)
    return int(match.group(1)) if match else None


def _truncated(log: str) -> tuple[int, int] | None:
    """(declared, present) bytes of a WAV data chunk libsndfile's log reports as short, else None."""
    match = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", log, re.MULTILINE)
    if match is None or int(match.group(1)) in _STREAMED or int(match.group(1)) <= int(match.group(2)):
        return None
    return int(match.group(1)), int(match.group(2))


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read a WAV/FLAC file's header.

    Raises:
        QuantaError: the file does not exist (or soundfile is missing).
        CorruptDataError: libsndfile cannot open it (not audio, damaged header, unsupported encoding).
    """
    sf = _soundfile()
    path = Path(path)
    if not path.is_file():
        raise QuantaError(f"{path} does not exist or is not a file; pass the path of a WAV or FLAC file.")
    try:
        with sf.SoundFile(path) as f:
            info = AudioInfo(f.samplerate, f.channels, f.frames, f.format, f.subtype, pcm_bits(f.subtype))
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        raise CorruptDataError(
            f"{path} is not an audio file libsndfile can read ({exc}); pass a WAV or FLAC file."
        ) from exc
    if info.rate <= 0 or info.channels <= 0:
        raise CorruptDataError(f"{path} declares {info.rate} Hz and {info.channels} channels; the header is damaged.")
    return info


def read_audio(
    path: str | os.PathLike[str], start: int = 0, frames: int = -1, allow_truncated: bool = False
) -> tuple[np.ndarray, int]:
    """Read a WAV or FLAC file as float64 samples in full scale ``[-1, 1)`` and its sample rate.

    Args:
        path: the file (any format libsndfile reads; WAV and FLAC are tested).
        start: first frame to read.
        frames: how many frames (``-1``: to the end).
        allow_truncated: read what a WAV whose data chunk is shorter than its header says still holds,
            instead of raising.

    Returns:
        ``(samples, rate)``: samples ``(frames,)`` for mono, ``(frames, channels)`` otherwise; PCM code ``k``
        of a ``b``-bit file is ``k / 2^(b-1)`` exactly.

    Raises:
        QuantaError: the file does not exist.
        CorruptDataError: not readable audio, or truncated (a WAV shorter than its header, a FLAC stream
            that breaks off).
        NonFiniteError: a floating-point file holds NaN or Inf samples.

    Example:
        >>> write_audio("/tmp/quanta_doc.wav", np.array([0.5, -0.25]), 8000)  # doctest: +SKIP
        >>> read_audio("/tmp/quanta_doc.wav")  # doctest: +SKIP
        (array([ 0.5 , -0.25]), 8000)
    """
    sf = _soundfile()
    info = audio_info(path)
    if start < 0 or frames < -1:
        raise SchemeError(f"start must be >= 0 and frames >= -1 (to the end), got start={start}, frames={frames}")
    as_int = info.bits is not None or info.subtype in ("ULAW", "ALAW")  # integer codes: exact through int32
    try:
        with sf.SoundFile(path) as f:
            short = None if allow_truncated or info.format != "WAV" else _truncated(f.extra_info)
            f.seek(min(start, info.frames))
            data = f.read(frames, dtype="int32" if as_int else "float64", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise CorruptDataError(f"{path} could not be decoded ({exc}); the file is damaged or truncated.") from exc
    if short is not None:
        raise CorruptDataError(
            f"{path} is truncated: its header declares {short[0]:,} bytes of samples but the file holds "
            f"{short[1]:,}; re-export it, or pass allow_truncated=True to read the samples that are there."
        )
    samples = data / 2.0**31 if as_int else np.asarray(data, dtype=np.float64)  # int32 codes: exact scaling
    bad = ~np.isfinite(samples)
    if bad.any():
        raise NonFiniteError(
            f"{path} holds {int(bad.sum())} NaN/Inf samples (first at frame {int(np.argwhere(bad)[0, 0])}); "
            "repair the file (e.g. np.nan_to_num and write it again)."
        )
    return (samples[:, 0] if info.channels == 1 else samples), info.rate


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt.upper() not in FORMATS.values():
            raise UnsupportedError(f"format {fmt!r} is not one of {sorted(FORMATS.values())}")
        return fmt.upper()
    if path.suffix.lower() not in FORMATS:
        raise UnsupportedError(
            f"{path} ends in {path.suffix or 'no suffix'!r}; name it .wav or .flac, or pass format='WAV'"
        )
    return FORMATS[path.suffix.lower()]


def write_audio(
    path: str | os.PathLike[str], samples: Array, rate: int, subtype: str = "PCM_16", format: str | None = None
) -> Path:
    """Write samples to a WAV or FLAC file atomically (a temporary file beside ``path``, renamed into place).

    Args:
        path: the file; ``.wav`` or ``.flac`` picks the container unless ``format`` is given.
        samples: ``(frames,)`` or ``(frames, channels)``, full scale ``[-1, 1)``; numpy or torch.
        rate: sample rate in Hz, a positive integer.
        subtype: ``"PCM_16"``, ``"PCM_24"`` (integer codes ``round(x · 2^(b-1))``, clipped to the range with a
            warning), ``"FLOAT"`` or ``"DOUBLE"`` (WAV only; not clipped).
        format: ``"WAV"`` or ``"FLAC"``, overriding the suffix.

    Returns:
        The path written.

    Raises:
        NonFiniteError, InvalidTensorError: NaN/Inf samples, no samples, or more than 2 dimensions.
        SchemeError: ``rate`` not a positive integer.
        UnsupportedError: an unknown subtype or container, or a float subtype in FLAC.

    Example:
        >>> write_audio("/tmp/quanta_doc.flac", np.zeros((4, 2)), 16000, "PCM_24")  # doctest: +SKIP
        PosixPath('/tmp/quanta_doc.flac')
    """
    from quanta.io import atomic_path

    sf = _soundfile()
    path = Path(path)
    container = _format_of(path, format)
    if subtype not in SUBTYPES:
        raise UnsupportedError(f"subtype {subtype!r} is not one of {list(SUBTYPES)}; PCM_16 is CD quality")
    bits = SUBTYPES[subtype]
    if container == "FLAC" and bits is None:
        raise UnsupportedError(f"FLAC stores integer PCM only, not {subtype}; use PCM_16 or PCM_24, or a .wav file")
    hz = check_positive(rate, "rate")
    if hz != int(hz):
        raise SchemeError(f"rate must be a whole number of Hz for a {container} file, got {rate!r}; round it")
    arr, _ = to_float64(samples, "samples")
    if arr.ndim not in (1, 2):
        raise InvalidTensorError(f"samples must be (frames,) or (frames, channels), got shape {arr.shape}")
    if bits is None:
        data: np.ndarray = arr.astype(np.float32) if subtype == "FLOAT" else arr
    else:
        scale = 2.0 ** (bits - 1)
        raw = np.rint(arr * scale)
        codes = np.clip(raw, -scale, scale - 1)
        clipped = int(np.count_nonzero(codes != raw))
        if clipped:
            warnings.warn(f"{clipped} samples beyond full scale [-1, 1) were clipped writing {path}", stacklevel=2)
        # 16 bits go as int16; 24 bits as int32 whose top 24 bits libsndfile keeps.
        data = codes.astype(np.int16) if bits == 16 else codes.astype(np.int32) << (32 - bits)
    with atomic_path(path) as tmp:
        sf.write(tmp, data, int(hz), subtype=subtype, format=container)
    return path
