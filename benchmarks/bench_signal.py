"""quanta.signal figures: SQNR vs theory, G.711 vs uniform level sweep, dither/noise shaping, rate-distortion.

Run: .venv/bin/python benchmarks/bench_signal.py [--plot rd.png]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from quanta.signal import (
    band_power,
    mulaw_decode,
    mulaw_encode,
    ntf_band_gain,
    plot_rate_distortion,
    quantize_uniform,
    rate_distortion_table,
    requantize,
    shaper_coefficients,
    sine_sqnr_exact,
    sqnr,
    sqnr_theory,
    tone_powers,
)
from quanta.signal.rate_distortion_vq import vq_distortion


def sqnr_table() -> None:
    x = np.sin(2 * np.pi * (math.sqrt(2) / 97) * np.arange(1 << 20) + 0.3)
    print("bits  measured  exact-sine  6.02N+1.76  gap")
    for bits in range(4, 17):
        m, theory = sqnr(x, quantize_uniform(x, bits).values), sqnr_theory(bits)
        print(f"{bits:4d}  {m:8.3f}  {sine_sqnr_exact(bits):10.3f}  {theory:10.3f}  {m - theory:+.3f}")


def level_sweep() -> None:
    t = np.arange(1 << 15)
    print("\ndBFS  mu-law SQNR  uniform-8 SQNR")
    worst = math.inf
    for level in range(0, -41, -1):
        x = 32767 * 10 ** (level / 20) * np.sin(2 * np.pi * (math.sqrt(5) / 37) * t + 0.1)
        pcm = np.round(x).astype(np.int16)
        mu = sqnr(pcm.astype(float), mulaw_decode(mulaw_encode(pcm)).astype(float))
        uni = sqnr(x, quantize_uniform(x, 8, full_scale=32768).values)
        worst = min(worst, mu)
        if level % 5 == 0:
            print(f"{level:4d}  {mu:11.2f}  {uni:14.2f}")
    print(f"worst mu-law SQNR over 0..-40 dBFS in 1 dB steps: {worst:.2f} dB")


def dither_table() -> None:
    n, k0 = 1 << 14, 157
    x = 0.01 * np.sin(2 * np.pi * k0 * np.arange(n) / n + 0.1)
    print("\n-40 dBFS sine at 8 bits  H3 re noise floor (dB)  |corr(x, e)|")
    for kind in ("none", "rpdf", "tpdf"):
        ys = np.stack([requantize(x, 8, dither=kind, seed=s).values for s in range(16)])  # type: ignore[arg-type]
        p = tone_powers(ys, k0)
        corr = abs(np.corrcoef(x, ys[0] - x)[0, 1])
        print(f"{kind:>24}  {p.harmonic_db(3):25.1f}  {corr:.4f}")
    rate, cutoff = 44100.0, 5512.5
    xs = 0.3 * np.sin(2 * np.pi * 1000.3 * np.arange(1 << 15) / rate)
    print(f"\nnoise shaping, 8 bits TPDF at {rate:.0f} Hz: band power / (Δ²/4), measured (NTF prediction)")
    print(f"{'shaper':>8}  {'0..' + str(cutoff) + ' Hz':>22}  {'above':>22}")
    for shape in (None, 1, 2, "f9"):
        r = requantize(xs, 8, shape=shape)
        e, white, c = r.values - xs, r.step**2 / 4, shaper_coefficients(shape)
        lo, hi = band_power(e, rate, 0, cutoff) / white, band_power(e, rate, cutoff, rate / 2) / white
        plo, phi = ntf_band_gain(c, 0, cutoff, rate), ntf_band_gain(c, cutoff, rate / 2, rate)
        print(f"{shape!s:>8}  {lo:10.4f} ({plo:8.4f})  {hi:10.4f} ({phi:8.4f})")


def rd_table(plot: str | None) -> None:
    rows = rate_distortion_table()
    print("\nD/σ² (dB) at R bits/sample")
    print("source     R  uniform  lloyd-max   ecsq  shannon")
    for r in rows:
        db = [10 * math.log10(v) for v in (r.uniform, r.lloyd_max, r.ecsq, r.shannon)]
        print(f"{r.source:9} {r.bits:2d}  {db[0]:7.2f}  {db[1]:9.2f}  {db[2]:5.2f}  {db[3]:7.2f}")
    # Trained vector quantizers (k-means codebooks of at most 2^10 entries) where the dimension is at least 2.
    vq = [vq_distortion(src, rate) for src in ("gaussian", "laplacian") for rate in (1, 2, 3, 4, 5)]  # type: ignore[arg-type]
    # Beyond one codebook: two residual codebooks on pairs of samples at 6..8 bits (2^12..2^16 codes a pair).
    vq += [vq_distortion(src, rate, 2, stages=2) for src in ("gaussian", "laplacian") for rate in (6, 7, 8)]  # type: ignore[arg-type]
    print("\nvector quantizers, D/σ² (dB) on 100,000 held-out vectors (± 2 standard errors)")
    print("source     R   d  stages x entries      vq  lloyd-max  shannon")
    lloyd = {(r.source, r.bits): r.lloyd_max for r in rows}
    for p in vq:
        db, err = 10 * math.log10(p.distortion), 20 / math.log(10) * p.stderr / p.distortion
        print(
            f"{p.source:9} {p.rate:2.0f}  {p.dim:2d}  {p.stages:6d} x {p.entries:7d}  {db:6.2f}±{err:.2f}  "
            f"{10 * math.log10(lloyd[(p.source, int(p.rate))]):9.2f}  {-6.0206 * p.rate:7.2f}"
        )
    if plot:
        print("plot:", plot_rate_distortion(plot, rows, vq))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plot", default=None, help="write the rate-distortion PNG here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sqnr_table()
    level_sweep()
    dither_table()
    rd_table(args.plot)


if __name__ == "__main__":
    main()
