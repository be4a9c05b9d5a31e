"""Vector quantization as a compression demo: bits per sample against SNR on real speech (issue 6).

Data: ``../shared/data/speech_audio/silero_test.wav`` (60 s, 16 kHz mono speech with pauses), read with
``soundfile``. The first half trains every quantizer, the second half is coded and measured (it is never seen in
training). The signal is cut into frames of ``--dim`` consecutive samples (default 8): each frame is one vector.

Quantizers, at ``bits per sample = code bits per frame / dim``:

- ``KMeans``: one codebook of ``2**b`` frames (``b`` bits per frame);
- ``ProductQuantizer``: ``m`` sub-frames of ``dim / m`` samples, 8 bits each;
- ``ResidualQuantizer``: ``stages`` codebooks of 256 frames, beam 5;
- scalar uniform quantization of each sample at ``B`` bits: over the training signal's full range (``[-max, max]``,
  a plain ADC) and with the step that minimises the training MSE (clipping the rare peaks).

SNR = ``10 log10(sum x^2 / sum (x - x_hat)^2)`` over the held-out half. Prints a markdown table and writes the
curve to ``--out`` (a PNG; default ``vq_compression.png`` in a new temporary directory; the path is printed).

    .venv/bin/python benchmarks/bench_vq_compression.py [--dim 8] [--out curve.png] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quanta.vq import KMeans, ProductQuantizer, ResidualQuantizer

AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech_audio" / "silero_test.wav"


def snr_db(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - x_hat).astype(np.float64) ** 2)))


def uniform(x: np.ndarray, bits: int, clip: float) -> np.ndarray:
    """Mid-rise uniform quantizer of ``2**bits`` levels on ``[-clip, clip]`` (values beyond are clipped)."""
    levels = 2**bits
    step = 2 * clip / levels
    q = np.clip(np.floor(x / step), -levels // 2, levels // 2 - 1)
    return ((q + 0.5) * step).astype(x.dtype)


def best_clip(train: np.ndarray, bits: int) -> float:
    """The clipping range (of 200 between 1% and 100% of max |x|) with the lowest training MSE."""
    peak = float(np.abs(train).max())
    sample = train[:: max(1, len(train) // 200_000)]
    clips = peak * np.geomspace(0.01, 1.0, 200)
    errors = [float(np.mean((sample - uniform(sample, bits, c)) ** 2)) for c in clips]
    return float(clips[int(np.argmin(errors))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=AUDIO, help="a mono (or first-channel) audio file")
    parser.add_argument("--dim", type=int, default=8, help="samples per frame (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNG")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import soundfile
    except ImportError:
        sys.exit("this demo reads audio with soundfile: pip install soundfile (the speech extra)")
    if not args.audio.exists():
        sys.exit(f"{args.audio} not found: pass --audio FILE")
    signal, rate = soundfile.read(args.audio, dtype="float32", always_2d=True)
    signal = signal[:, 0]
    d = args.dim
    n = len(signal) // (2 * d) * d  # samples per half, a whole number of frames
    train, test = signal[:n], signal[n : 2 * n]
    x_train, x_test = train.reshape(-1, d), test.reshape(-1, d)  # (frames, dim)

    rows: list[tuple[str, float, float, float]] = []  # (method, bits per sample, SNR dB, seconds)

    def vq(name: str, quantizer: KMeans | ProductQuantizer | ResidualQuantizer, bits_per_frame: int) -> None:
        start = time.perf_counter()
        quantizer.fit(x_train)
        if isinstance(quantizer, KMeans):
            x_hat = quantizer.cluster_centers_.numpy()[quantizer.predict(x_test)]
        else:
            x_hat = quantizer.decode(quantizer.encode(x_test))
        rows.append((name, bits_per_frame / d, snr_db(x_test, x_hat), time.perf_counter() - start))

    for b in (2, 4, 6, 8, 10):
        vq(f"KMeans k={2**b}", KMeans(2**b, seed=args.seed), b)
    for m in (1, 2, 4, 8):
        if d % m == 0:
            vq(f"PQ m={m} x 8 bits", ProductQuantizer(m=m, nbits=8, seed=args.seed), 8 * m)
    for stages in (1, 2, 3, 4):
        vq(f"RQ {stages} x 8 bits", ResidualQuantizer(stages=stages, nbits=8, seed=args.seed), 8 * stages)
    peak = float(np.abs(train).max())
    for bits in range(1, 9):
        rows.append((f"uniform {bits} bits, full range", bits, snr_db(test, uniform(test, bits, peak)), 0.0))
        start = time.perf_counter()
        clip = best_clip(train, bits)  # the search is the training; coding is one line
        snr = snr_db(test, uniform(test, bits, clip))
        rows.append((f"uniform {bits} bits, MSE clip", bits, snr, time.perf_counter() - start))

    print(
        f"VQ compression of {args.audio.name} ({rate} Hz): frames of {d} samples, train {n / rate:.1f} s, "
        f"test {n / rate:.1f} s; torch {torch.__version__}, {args.threads} thread\n"
    )
    print(f"`{' '.join(['.venv/bin/python', 'benchmarks/bench_vq_compression.py', *(argv or sys.argv[1:])])}`\n")
    print("| method | bits/sample | SNR dB | seconds |\n|---|---:|---:|---:|")
    for name, bps, snr, seconds in sorted(rows, key=lambda r: (r[0].split()[0], r[1])):
        print(f"| {name} | {bps:.3g} | {snr:.2f} | {seconds:.2f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    families = {
        "KMeans": "KMeans (one codebook)",
        "PQ": "ProductQuantizer (8-bit sub-codes)",
        "RQ": "ResidualQuantizer (8-bit stages)",
        "uniform MSE": "scalar uniform, MSE-optimal clip",
        "uniform full": "scalar uniform, full range",
    }
    for key, label in families.items():
        pts = sorted((r[1], r[2]) for r in rows if r[0].startswith(key.split()[0]) and key.split()[-1] in r[0])
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xlabel("bits per sample")
    ax.set_ylabel("SNR on held-out speech, dB")
    ax.set_title(f"{args.audio.name}: frames of {d} samples")
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = args.out or Path(tempfile.mkdtemp(prefix="quanta_vq_")) / "vq_compression.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
