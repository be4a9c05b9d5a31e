"""The audio and signal side of the command line.

- ``quanta audio requantize IN --bits N [--dither tpdf] [--shape 2] -o OUT.wav``: requantize a WAV/FLAC file
  with dither and noise shaping (:func:`quanta.signal.requantize`); print the SNR and where the noise went.
- ``quanta audio companding IN --law mu|a -o OUT.wav``: G.711 8-bit encode + decode; SNR vs uniform 8 bits.
- ``quanta signal sqnr --bits 4..16 [--plot OUT.png]``: measured vs theoretical SQNR of a full-scale sine.

Every output is written atomically (a temporary file beside it, renamed into place).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _numbers_table, _Out, app
from quanta.errors import BitWidthError, QuantaError, SchemeError

__all__ = ["audio_app", "parse_bits", "signal_app"]

audio_app = typer.Typer(help="Audio files: requantize with dither and noise shaping, G.711 companding.")
signal_app = typer.Typer(help="Signals: quantizer theory measured (SQNR of a sine).")
app.add_typer(audio_app, name="audio", no_args_is_help=True)
app.add_typer(signal_app, name="signal", no_args_is_help=True)

InOpt = Annotated[Path, typer.Argument(metavar="IN", help="A WAV or FLAC file (any rate, mono or multichannel).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="The file to write (.wav or .flac).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]


def parse_bits(text: str) -> list[int]:
    """Bit widths from ``"4..16"`` (inclusive), ``"4,8,12"`` or a mix (``"4..8,12"``), each 1..24, sorted.

    Raises:
        SchemeError: not a range or list of integers, or a range that runs backwards.
        BitWidthError: a width outside 1..24.
    """
    widths: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("..")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise SchemeError(f"--bits {text!r}: {part!r} is not a width; write e.g. 4..16 or 4,8,12") from None
        if b < a:
            raise SchemeError(f"--bits {text!r}: the range {part} runs backwards; write {b}..{a}")
        widths.update(range(a, b + 1))
    bad = [w for w in sorted(widths) if not 1 <= w <= 24]
    if bad:
        raise BitWidthError(f"--bits {text!r}: {bad} outside 1..24; pick widths in 1..24")
    return sorted(widths)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.suffix.lower() not in (".wav", ".flac"):
        raise QuantaError(f"-o {output} must end in .wav or .flac: the output is an audio file.")
    if output.exists() and not overwrite:
        raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")


def _read(source: Path) -> tuple[np.ndarray, int, Any]:
    from quanta.signal.audio import audio_info, read_audio

    info = audio_info(source)
    x, rate = read_audio(source)
    if x.shape[0] == 0:
        raise QuantaError(f"{source} holds no samples; pass a file with audio in it.")
    return x, rate, info


def _db(power: float) -> float:
    return 10 * math.log10(power) if power > 0 else -math.inf


def _bands(e: np.ndarray, rate: float, coeffs: tuple[float, ...], cutoff: float) -> dict[str, Any]:
    """Noise power in the four quarters of 0..rate/2 and below/above ``cutoff``, with the NTF's prediction.

    ``e`` is ``(channels, frames)``. The prediction is the share of a white error's power that the
    noise-transfer function puts in each band (closed form, :func:`quanta.signal.ntf_band_gain`).
    """
    from quanta.signal import band_power, ntf_band_gain

    total = float(np.mean(e * e))
    gain = ntf_band_gain(coeffs, 0.0, rate / 2, rate)
    edges = [rate * k / 8 for k in range(5)]
    rows = []
    for lo, hi in itertools.pairwise(edges):
        p = band_power(e, rate, lo, hi)
        rows.append(
            {
                "lo_hz": lo,
                "hi_hz": hi,
                "power_db": _db(p),
                "share": p / total if total else 0.0,
                "predicted_share": ntf_band_gain(coeffs, lo, hi, rate) / gain,
            }
        )
    below = band_power(e, rate, 0.0, cutoff)
    return {
        "bands": rows,
        "cutoff_hz": cutoff,
        "below_cutoff_share": below / total if total else 0.0,
        "above_cutoff_share": 1 - below / total if total else 0.0,
        "predicted_above_share": 1 - ntf_band_gain(coeffs, 0.0, cutoff, rate) / gain,
    }


@audio_app.command("requantize")
def requantize_command(
    source: InOpt,
    output: OutOpt,
    bits: Annotated[int, typer.Option("--bits", "-b", help="Bits per sample, 1..24.")] = 8,
    dither: Annotated[str, typer.Option(help="none, rpdf (one step wide) or tpdf (two steps, triangular).")] = "tpdf",
    shape: Annotated[str, typer.Option(help="Noise shaper: 0 (none), 1, 2 ((1 - z^-1)^order) or f9.")] = "0",
    cutoff: Annotated[
        Optional[float],  # noqa: UP045 - typer reads this annotation at runtime
        typer.Option(help="Report the noise share above this frequency, Hz (default: rate / 8)."),
    ] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Requantize an audio file to N bits with dither and noise shaping; print the SNR and the noise spectrum."""
    from quanta.signal import requantize, shaper_coefficients, sqnr, sqnr_theory
    from quanta.signal.audio import write_audio

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        if not 1 <= bits <= 24:
            raise BitWidthError(f"--bits must be in 1..24, got {bits}.")
        if dither not in ("none", "rpdf", "tpdf"):
            raise SchemeError(f"--dither {dither!r}: choose none, rpdf or tpdf.")
        shaper = None if shape in ("0", "none") else shape
        coeffs = shaper_coefficients(shaper)
        _check_output(output, overwrite)
        x, rate, info = _read(source)
        fc = rate / 8 if cutoff is None else cutoff
        if not 0 < fc < rate / 2:
            raise SchemeError(f"--cutoff {fc} Hz must lie between 0 and {rate / 2:g} Hz (half the sample rate).")
        rows = x.T if x.ndim == 2 else x  # time along the last axis: (channels, frames)
        with out.status(f"requantizing {x.size:,} samples to {bits} bits..."):
            r = requantize(rows, bits, dither=dither, shape=shaper, seed=seed)  # type: ignore[arg-type]
        y = np.asarray(r.values).T if x.ndim == 2 else np.asarray(r.values)
        subtype = "PCM_16" if bits <= 16 else "PCM_24"  # every N-bit level is a code of these grids
        write_audio(output, y, rate, subtype)
    e = (y - x).T if x.ndim == 2 else y - x
    white = {"none": 1 / 12, "rpdf": 1 / 6, "tpdf": 1 / 4}[dither] * r.step**2 * (1 + sum(c * c for c in coeffs))
    power = float(np.mean(x * x))
    result = {
        "input": source,
        "output": output,
        "rate": rate,
        "channels": info.channels,
        "frames": x.shape[0],
        "input_subtype": info.subtype,
        "subtype": subtype,
        "bits": bits,
        "dither": dither,
        "shape": shaper or "none",
        "coefficients": list(coeffs),
        "snr_db": sqnr(x, y),
        "expected_snr_db": _db(power / white),
        "sine_theory_db": sqnr_theory(bits),
        "signal_rms_dbfs": _db(power),
        "peak_dbfs": 20 * math.log10(float(np.max(np.abs(x)))) if np.any(x) else -math.inf,
        "clipped": r.clipped,
        "noise_db": _db(float(np.mean(e * e))),
        **_bands(np.atleast_2d(e), rate, coeffs, fc),
        "bytes": output.stat().st_size,
        "seconds": time.perf_counter() - start,
        "seed": seed,
    }
    out.json(result)
    how = f"{dither.upper() if dither != 'none' else 'no'} dither, shaper {shaper or 'none'}"
    out.print(
        f"{source} ({rate} Hz, {info.channels} ch, {x.shape[0] / rate:.2f} s, {info.subtype}): "
        f"requantized to {bits} bits ({how}); {r.clipped} samples clamped"
    )
    out.print(
        f"SNR {result['snr_db']:.2f} dB vs the input (white-error expectation {result['expected_snr_db']:.2f} dB; "
        f"signal RMS {result['signal_rms_dbfs']:.2f} dBFS, 6.02N+1.76 = {result['sine_theory_db']:.2f} dB)"
    )
    table = _numbers_table("noise spectrum (output - input)", "band Hz", ("dB re FS²", "share", "NTF predicts"))
    for b in result["bands"]:
        table.add_row(
            f"{b['lo_hz']:.0f}-{b['hi_hz']:.0f}",
            f"{b['power_db']:.1f}",
            f"{b['share']:.2%}",
            f"{b['predicted_share']:.2%}",
        )
    out.print(table)
    out.print(
        f"noise above {fc:.0f} Hz: {result['above_cutoff_share']:.1%} "
        f"(NTF predicts {result['predicted_above_share']:.1%})"
    )
    out.print(f"wrote {output}: {subtype}, {result['bytes']:,} bytes")
    out.note(f"Done in {result['seconds']:.1f} s; dB re FS²: power re a full-scale (±1) square wave.")


@audio_app.command("companding")
def companding_command(
    source: InOpt,
    output: OutOpt,
    law: Annotated[str, typer.Option(help="mu (mu-law, North America/Japan) or a (A-law, Europe).")] = "mu",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """G.711 8-bit companding (encode + decode of int16 PCM); print its SNR against uniform 8 bits."""
    from quanta.signal import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode, quantize_uniform, sqnr
    from quanta.signal.audio import write_audio

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        if law not in ("mu", "a"):
            raise SchemeError(f"--law {law!r}: choose mu or a.")
        _check_output(output, overwrite)
        x, rate, info = _read(source)
        pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)  # G.711 codes int16 PCM
        encode, decode = (mulaw_encode, mulaw_decode) if law == "mu" else (alaw_encode, alaw_decode)
        companded = np.asarray(decode(encode(pcm))) / 32768.0
        write_audio(output, companded, rate, "PCM_16")
    ref = pcm / 32768.0
    uniform = np.asarray(quantize_uniform(ref, 8, mode="midtread").values)  # the same 8 bits, evenly spaced
    result = {
        "input": source,
        "output": output,
        "law": law,
        "rate": rate,
        "channels": info.channels,
        "frames": x.shape[0],
        "signal_rms_dbfs": _db(float(np.mean(ref * ref))),
        "snr_db": sqnr(ref, companded),
        "uniform_snr_db": sqnr(ref, uniform),
        "bytes": output.stat().st_size,
        "code_bytes": int(pcm.size),
        "seconds": time.perf_counter() - start,
        "seed": seed,
    }
    result["gain_db"] = result["snr_db"] - result["uniform_snr_db"]
    name = "mu-law" if law == "mu" else "A-law"
    out.json(result)
    out.print(
        f"{source} ({rate} Hz, {info.channels} ch, {x.shape[0] / rate:.2f} s, "
        f"RMS {result['signal_rms_dbfs']:.2f} dBFS) as 16-bit PCM, companded with G.711 {name} (8 bits)"
    )
    out.print(
        f"SNR vs the 16-bit input: {name} {result['snr_db']:.2f} dB, uniform 8 bits {result['uniform_snr_db']:.2f} dB "
        f"({result['gain_db']:+.2f} dB for {name})"
    )
    out.print(f"wrote {output}: decoded {name} as PCM_16, {result['bytes']:,} bytes (the codes: {pcm.size:,} bytes)")
    out.note(f"Done in {result['seconds']:.1f} s; uniform 8 bits: mid-tread, step 1/128 of full scale.")


@signal_app.command("sqnr")
def sqnr_command(
    bits: Annotated[str, typer.Option("--bits", "-b", help="Widths: a range 4..16, a list 4,8,12, or both.")] = "4..16",
    samples: Annotated[int, typer.Option(min=1024, help="Samples of the sine.")] = 2**18,
    mode: Annotated[str, typer.Option(help="midrise (no level at zero) or midtread.")] = "midrise",
    plot: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Also write a PNG of SQNR vs bits (measured, exact, 6.02N+1.76)."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Measured vs theoretical SQNR (6.02N+1.76 dB) of a full-scale sine at each bit width."""
    from quanta.signal import quantize_uniform, sine_sqnr_exact, sqnr, sqnr_theory

    out = _Out(as_json, quiet, seed)
    with _errors():
        widths = parse_bits(bits)
        if mode not in ("midrise", "midtread"):
            raise SchemeError(f"--mode {mode!r}: choose midrise or midtread.")
        if plot is not None and plot.suffix.lower() != ".png":
            raise QuantaError(f"--plot {plot} must end in .png.")
        # sqrt(2)/97 cycles per sample: irrational, so the phases never repeat and fill the period evenly.
        x = np.sin(2 * math.pi * (math.sqrt(2) / 97) * np.arange(samples))
        rows = []
        for n in widths:
            measured = sqnr(x, quantize_uniform(x, n, mode=mode).values)  # type: ignore[arg-type]
            exact, theory = sine_sqnr_exact(n, mode=mode), sqnr_theory(n)  # type: ignore[arg-type]
            rows.append({"bits": n, "measured_db": measured, "exact_db": exact, "theory_db": theory})
        if plot is not None:
            from quanta.signal.sqnr_plot import plot_sqnr

            plot_sqnr(plot, rows, f"full-scale sine, {samples:,} samples, {mode}")
    out.json(
        {"mode": mode, "samples": samples, "frequency_cycles_per_sample": math.sqrt(2) / 97, "rows": rows, "plot": plot}
    )
    table = _numbers_table(
        f"SQNR of a full-scale sine ({samples:,} samples, {mode})",
        "bits",
        ("measured dB", "exact sine", "6.02N+1.76", "gap"),
    )
    for row in rows:
        table.add_row(
            str(row["bits"]),
            f"{row['measured_db']:.3f}",
            f"{row['exact_db']:.3f}",
            f"{row['theory_db']:.3f}",
            f"{row['measured_db'] - row['theory_db']:+.3f}",
        )
    out.print(table)
    out.note("gap = measured - (6.02N+1.76); at few bits a sine's error is not uniform over a step, hence the gap.")
    if plot is not None:
        out.print(f"wrote {plot}")
