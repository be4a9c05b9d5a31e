"""quanta.signal.audio: WAV/FLAC round trips exact on the integer grid, the real speech clips, and bad files.

The reference for what a file holds is soundfile's own integer read (libsndfile's decoder), independent of
the float scaling done in quanta.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quanta.errors import (
    CorruptDataError,
    InvalidTensorError,
    NonFiniteError,
    QuantaError,
    SchemeError,
    UnsupportedError,
)
from quanta.signal.audio import audio_info, pcm_bits, read_audio, write_audio

sf = pytest.importorskip("soundfile")

CLIPS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech_audio"
SILERO, JFK = CLIPS / "silero_test.wav", CLIPS / "jfk.flac"
needs_clips = pytest.mark.skipif(not SILERO.exists(), reason="the shared speech clips are not here")


def _codes(bits: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random signed codes of ``bits`` bits, including both extremes and zero."""
    k = np.random.default_rng(seed).integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape)
    k.reshape(-1)[:3] = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0)
    return k


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize(("subtype", "bits"), [("PCM_16", 16), ("PCM_24", 24)])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_round_trip_is_exact_on_the_int_grid(
    tmp_path: Path, suffix: str, subtype: str, bits: int, channels: int
) -> None:
    shape = (2000,) if channels == 1 else (2000, channels)
    k = _codes(bits, shape)
    x = k / 2.0 ** (bits - 1)
    path = write_audio(tmp_path / f"a{suffix}", x, 22050, subtype)
    info = audio_info(path)
    assert (info.rate, info.channels, info.frames, info.subtype, info.bits) == (22050, channels, 2000, subtype, bits)
    assert info.format == suffix[1:].upper()
    # libsndfile's integer read (the top `bits` bits of an int32) holds exactly the codes written.
    stored = sf.read(path, dtype="int32", always_2d=channels > 1)[0] >> (32 - bits)
    assert np.array_equal(stored, k)
    y, rate = read_audio(path)
    assert rate == 22050 and y.dtype == np.float64 and y.shape == shape
    assert np.array_equal(y, x)


@pytest.mark.parametrize("bits", [16, 24])
def test_off_grid_samples_round_to_the_nearest_code(tmp_path: Path, bits: int) -> None:
    scale = 2.0 ** (bits - 1)
    k = _codes(bits, (5000,), seed=1)
    k = np.clip(k, -scale + 1, scale - 2)  # room for the offset either side
    offset = np.random.default_rng(2).uniform(-0.49, 0.49, k.shape)
    x = torch.from_numpy((k + offset) / scale)  # torch in works too
    y, _ = read_audio(write_audio(tmp_path / "a.wav", x, 8000, f"PCM_{bits}"))
    assert np.array_equal(y * scale, k)  # error <= half a step: every sample went to its own code


def test_beyond_full_scale_clips_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="2 samples beyond full scale"):
        path = write_audio(tmp_path / "a.wav", np.array([1.0, -1.5, 0.5]), 8000)
    assert sf.read(path, dtype="int16")[0].tolist() == [32767, -32768, 16384]


def test_float_subtypes(tmp_path: Path) -> None:
    x = np.random.default_rng(3).normal(0, 0.7, (300, 2))  # floats are not clipped
    y, _ = read_audio(write_audio(tmp_path / "d.wav", x, 48000, "DOUBLE"))
    assert np.array_equal(y, x)
    y, _ = read_audio(write_audio(tmp_path / "f.wav", x, 48000, "FLOAT"))
    assert np.array_equal(y, x.astype(np.float32).astype(np.float64))
    assert audio_info(tmp_path / "f.wav").bits is None and pcm_bits("PCM_S8") == 8


@needs_clips
def test_reads_the_real_speech_clips() -> None:
    # SOURCE.md: silero_test.wav is 60.0 s 16 kHz mono 16-bit; jfk.flac 11.0 s 44.1 kHz stereo 24-bit.
    x, rate = read_audio(SILERO)
    assert rate == 16000 and x.shape == (960000,)
    assert np.array_equal(x * 32768, sf.read(SILERO, dtype="int16")[0])
    info = audio_info(JFK)
    assert (info.rate, info.channels, info.subtype, info.duration) == (44100, 2, "PCM_24", 11.0)
    y, rate = read_audio(JFK, start=44100, frames=4410)
    full, _ = read_audio(JFK)
    assert rate == 44100 and y.shape == (4410, 2) and np.array_equal(y, full[44100:48510])
    assert np.array_equal(full * 2**23, sf.read(JFK, dtype="int32")[0] >> 8)
    assert np.abs(full - sf.read(JFK, dtype="float64")[0]).max() <= 2.0**-24  # libsndfile's own scaling


@needs_clips
def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    head = tmp_path / "head.wav"
    head.write_bytes(SILERO.read_bytes()[:30])  # cut inside the header
    with pytest.raises(CorruptDataError, match="not an audio file"):
        read_audio(head)
    short = tmp_path / "short.wav"
    short.write_bytes(SILERO.read_bytes()[:1001])  # header + 478 samples of 960000
    with pytest.raises(CorruptDataError, match=r"truncated.*1,920,000 bytes"):
        read_audio(short)
    partial, _ = read_audio(short, allow_truncated=True)
    assert np.array_equal(partial, read_audio(SILERO, frames=478)[0])
    flac = tmp_path / "short.flac"
    flac.write_bytes(JFK.read_bytes()[:50000])  # a FLAC stream that breaks off
    with pytest.raises(CorruptDataError, match="damaged or truncated"):
        read_audio(flac)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(CorruptDataError):
        read_audio(junk)
    with pytest.raises(QuantaError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")


def test_header_with_zero_sample_rate_is_corrupt(tmp_path: Path) -> None:
    data = np.zeros(10, np.int16).tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 0, 0, 2, 16)  # PCM, mono, 0 Hz, 0 bytes/s
    path = tmp_path / "r0.wav"
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 20) + data
    )
    with pytest.raises(CorruptDataError):
        read_audio(path)


def test_bad_arguments(tmp_path: Path) -> None:
    x = np.zeros(16)
    for rate in (0, -8000, 8000.5):
        with pytest.raises(SchemeError, match="rate"):
            write_audio(tmp_path / "a.wav", x, rate)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match="1 NaN"):
        write_audio(tmp_path / "a.wav", np.array([0.0, np.nan]), 8000)
    with pytest.raises(InvalidTensorError, match="frames, channels"):
        write_audio(tmp_path / "a.wav", np.zeros((2, 2, 2)), 8000)
    with pytest.raises(UnsupportedError, match="FLAC stores integer"):
        write_audio(tmp_path / "a.flac", x, 8000, "FLOAT")
    with pytest.raises(UnsupportedError, match=r"\.wav or \.flac"):
        write_audio(tmp_path / "a.mp3", x, 8000)
    with pytest.raises(UnsupportedError, match="subtype"):
        write_audio(tmp_path / "a.wav", x, 8000, "PCM_12")
    assert not list(tmp_path.iterdir())  # nothing written by a refused call
    write_audio(tmp_path / "named.bin", x, 8000, format="wav")  # the suffix does not matter with format=
    assert audio_info(tmp_path / "named.bin").format == "WAV"
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2]), 8000, subtype="FLOAT")  # a float file can hold NaN
    with pytest.raises(NonFiniteError, match="first at frame 1"):
        read_audio(nan)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_audio(tmp_path / "a.wav", np.full(8, 0.5), 8000)
    before = path.read_bytes()

    def broken(file: object, *args: object, **kwargs: object) -> None:
        Path(str(file)).write_bytes(b"RIFF half")
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_audio(path, np.zeros(8), 8000)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_missing_soundfile_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile now raises ImportError
    with pytest.raises(QuantaError, match="pip install soundfile"):
        read_audio(tmp_path / "a.wav")
