"""quanta audio requantize / companding and quanta signal sqnr through typer's CliRunner, on real speech clips.

References are computed here from the written files with numpy and soundfile (and Python's audioop for G.711),
not with the functions the commands use.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from quanta.cli import app
from quanta.cli_audio import parse_bits
from quanta.errors import BitWidthError, SchemeError

sf = pytest.importorskip("soundfile")

runner = CliRunner()
CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech_audio"
pytestmark = pytest.mark.skipif(not (CLIPS / "silero_test.wav").exists(), reason="the shared speech clips are not here")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 s of speech from each clip (16-bit copies are bit-exact; jfk stays 24-bit stereo FLAC)."""
    root = tmp_path_factory.mktemp("clips")
    silero, rate = sf.read(CLIPS / "silero_test.wav", dtype="int16", start=2 * 16000, frames=3 * 16000)
    sf.write(root / "silero.wav", silero, rate, subtype="PCM_16")
    jfk, rate = sf.read(CLIPS / "jfk.flac", dtype="int32", start=44100, frames=2 * 44100)
    sf.write(root / "jfk.flac", jfk, rate, subtype="PCM_24")
    return {"silero": root / "silero.wav", "jfk": root / "jfk.flac", "root": root}


def _run(args: list[str]) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _fails(args: list[str], *needles: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _snr(x: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(float(np.sum(x * x)) / float(np.sum((x - y) ** 2)))


def _share_below(e: np.ndarray, rate: float, cutoff: float) -> float:
    """Share of the power of ``e`` (frames[, channels]) below ``cutoff`` Hz, from a plain FFT periodogram."""
    spec = np.abs(np.fft.rfft(e, axis=0)) ** 2
    f = np.fft.rfftfreq(e.shape[0], 1 / rate)
    return float(spec[f < cutoff].sum() / spec.sum())


def test_requantize_snr_matches_the_written_file_and_theory(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q8.wav"
    report = _run(["audio", "requantize", str(clips["silero"]), "--bits", "8", "--dither", "tpdf", "-o", str(out)])
    x = sf.read(clips["silero"], dtype="int16")[0] / 32768
    stored = sf.read(out, dtype="int16")[0]
    assert np.all(stored % 256 == 0)  # an 8-bit grid in a 16-bit file
    y = stored / 32768
    assert report["snr_db"] == pytest.approx(_snr(x, y), abs=1e-9)
    # TPDF error is white with power 3 Δ²/12 whatever the signal: 6.02N+1.76 moved by the clip's level
    # against a full-scale sine (power 1/2) and by 10 log10(3) for the dither.
    expected = 6.0206 * 8 + 1.7609 + 10 * math.log10(2 * np.mean(x * x)) - 10 * math.log10(3)
    assert abs(report["snr_db"] - expected) < 0.2, (report["snr_db"], expected)
    assert report["clipped"] == 0 and report["subtype"] == "PCM_16" and report["bytes"] == out.stat().st_size


def test_requantize_without_dither_on_stereo_24_bit(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q8.flac"
    report = _run(["audio", "requantize", str(clips["jfk"]), "-b", "8", "--dither", "none", "-o", str(out)])
    x = sf.read(clips["jfk"], dtype="int32")[0] / 2.0**31
    y = sf.read(out, dtype="int16")[0] / 32768
    assert y.shape == x.shape == (2 * 44100, 2)
    assert np.abs(y - x).max() <= 2.0**-8  # half an 8-bit step (2/256): plain rounding
    assert report["snr_db"] == pytest.approx(_snr(x, y), abs=1e-9)
    crest_loss = 10 * math.log10(2 * np.mean(x * x))  # the clip's power against a full-scale sine's
    assert abs(report["snr_db"] - (6.0206 * 8 + 1.7609 + crest_loss)) < 1.5


def test_second_order_shaping_moves_noise_above_the_cutoff(clips: dict[str, Path], tmp_path: Path) -> None:
    x = sf.read(clips["silero"], dtype="int16")[0] / 32768
    errors, reports = {}, {}
    for shape in ("0", "2"):
        out = tmp_path / f"s{shape}.wav"
        reports[shape] = _run(
            ["audio", "requantize", str(clips["silero"]), "-b", "8", "--shape", shape, "-o", str(out)]
        )
        errors[shape] = sf.read(out, dtype="int16")[0] / 32768 - x
    cutoff = 16000 / 8
    # (1 - z^-1)^2: |NTF|^2 = (2 - 2 cos w)^2, whose integral is 6w - 8 sin w + sin 2w; total gain 6.
    wc = math.pi * cutoff / 8000
    predicted = (6 * wc - 8 * math.sin(wc) + math.sin(2 * wc)) / (6 * math.pi)
    below0, below2 = (_share_below(errors[s], 16000, cutoff) for s in ("0", "2"))
    assert below0 == pytest.approx(2 * cutoff / 16000, rel=0.1)  # white: a quarter of the band
    assert below2 == pytest.approx(predicted, rel=0.2) and below2 < below0 / 50
    assert np.mean(errors["2"] ** 2) / np.mean(errors["0"] ** 2) == pytest.approx(6, rel=0.05)
    assert reports["2"]["above_cutoff_share"] == pytest.approx(1 - below2, abs=1e-6)
    assert reports["2"]["predicted_above_share"] == pytest.approx(1 - predicted, abs=1e-9)
    assert sum(b["share"] for b in reports["2"]["bands"]) == pytest.approx(1, abs=1e-9)


def test_requantize_prints_what_it_did(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "q.wav"
    result = runner.invoke(
        app, ["audio", "requantize", str(clips["silero"]), "-b", "6", "--shape", "1", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    for text in ("requantized to 6 bits", "TPDF dither, shaper 1", "SNR", "noise above 2000 Hz", f"wrote {out}"):
        assert text in result.output, text


def test_mulaw_beats_uniform_8_bits_on_speech(clips: dict[str, Path], tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # Python <= 3.12: the Sun G.711 codec as a peer
    out = tmp_path / "mu.wav"
    report = _run(["audio", "companding", str(clips["silero"]), "--law", "mu", "-o", str(out)])
    pcm = sf.read(clips["silero"], dtype="int16")[0]
    x = pcm / 32768
    peer = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(pcm.tobytes(), 2), 2), dtype=np.int16)
    written = sf.read(out, dtype="int16")[0]
    assert report["snr_db"] == pytest.approx(_snr(x, written / 32768), abs=1e-9)
    # G.191 and Sun's audioop part only on the 508 negative inputs whose 14-bit value sits on a decision
    # threshold (one's complement vs negation): G.191 takes the level nearer zero.
    differ = written != peer
    assert np.all(pcm[differ] < 0) and len(np.unique(pcm[differ])) <= 508
    assert np.all(np.abs(written[differ].astype(int)) < np.abs(peer[differ].astype(int)))
    uniform = np.clip(np.floor(pcm / 256 + 0.5), -128, 127) * 256 / 32768  # 8-bit mid-tread rounding
    assert report["uniform_snr_db"] == pytest.approx(_snr(x, uniform), abs=1e-9)
    assert report["snr_db"] > report["uniform_snr_db"] + 3  # speech at -27 dBFS: companding wins
    assert _snr(x, peer / 32768) > report["uniform_snr_db"] + 3  # and so it does with the peer codec


def test_alaw_matches_audioop_exactly(clips: dict[str, Path], tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    out = tmp_path / "a.wav"
    result = runner.invoke(app, ["audio", "companding", str(clips["jfk"]), "--law", "a", "-o", str(out)])
    assert result.exit_code == 0 and "A-law" in result.output and f"wrote {out}" in result.output
    x = sf.read(clips["jfk"], dtype="int32")[0] / 2.0**31
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)  # the 24-bit clip as 16-bit PCM
    peer = np.frombuffer(audioop.alaw2lin(audioop.lin2alaw(pcm.tobytes(), 2), 2), dtype=np.int16)
    assert np.array_equal(sf.read(out, dtype="int16")[0], peer.reshape(pcm.shape))


def test_sqnr_command_meets_theory_and_plots(tmp_path: Path) -> None:
    from PIL import Image

    plot = tmp_path / "sqnr.png"
    report = _run(["signal", "sqnr", "--bits", "4..16", "--plot", str(plot)])
    rows = report["rows"]
    assert [r["bits"] for r in rows] == list(range(4, 17))
    for r in rows:
        assert r["theory_db"] == pytest.approx(6.0206 * r["bits"] + 1.7609, abs=1e-3)
        assert abs(r["measured_db"] - r["exact_db"]) < 0.01
        if r["bits"] >= 10:
            assert abs(r["measured_db"] - r["theory_db"]) < 0.1
    assert rows[0]["theory_db"] - rows[0]["measured_db"] > 0.4  # at 4 bits a sine's error is not uniform
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
        im.load()
    assert [p.name for p in tmp_path.iterdir()] == ["sqnr.png"]  # no temporary file left


def test_parse_bits() -> None:
    assert parse_bits("4..16") == list(range(4, 17))
    assert parse_bits("4,8,12") == [4, 8, 12]
    assert parse_bits("12, 4..6") == [4, 5, 6, 12]
    for text, error in (("x", SchemeError), ("8..4", SchemeError), ("0..4", BitWidthError), ("25", BitWidthError)):
        with pytest.raises(error):
            parse_bits(text)


def test_bad_input_is_one_line(clips: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 8)
    out = str(tmp_path / "o.wav")
    src = str(clips["silero"])
    _fails(["audio", "requantize", str(junk), "-o", out], "junk.wav", "not an audio file")
    _fails(["audio", "requantize", src, "-b", "25", "-o", out], "1..24")
    _fails(["audio", "requantize", src, "--dither", "gauss", "-o", out], "none, rpdf or tpdf")
    _fails(["audio", "requantize", src, "--shape", "7", "-o", out], "noise shaper")
    _fails(["audio", "requantize", src, "-o", str(tmp_path / "o.mp3")], ".wav or .flac")
    _fails(["audio", "requantize", src, "--cutoff", "9000", "-o", out], "8000 Hz")
    _fails(["audio", "companding", src, "--law", "b", "-o", out], "mu or a")
    _fails(["audio", "companding", str(tmp_path / "none.wav"), "-o", out], "does not exist")
    _fails(["signal", "sqnr", "--bits", "4..30"], "1..24")
    _fails(["signal", "sqnr", "--plot", str(tmp_path / "p.jpg")], ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.wav"]  # nothing written
    Path(out).write_bytes(b"keep")
    _fails(["audio", "companding", src, "-o", out], "already exists", "--overwrite")
    assert Path(out).read_bytes() == b"keep"


@pytest.mark.parametrize("command", [["audio", "requantize"], ["audio", "companding"], ["signal", "sqnr"]])
def test_commands_take_json_quiet_and_seed(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    for flag in ("--json", "--quiet", "--seed"):
        assert flag in result.output
    top = runner.invoke(app, ["--help"]).output
    assert "audio" in top and "signal" in top
