"""Colour palette quantization: quanta's k-means palettes against Pillow's ``Image.quantize`` (issue 6).

Data: the first ``--images`` CIFAR-10 test photos of ``../shared/data/cifar10_sample`` (32 x 32), each upscaled
``--scale`` times with Pillow's bicubic filter (default 4: 128 x 128, about 10,000 distinct colours each), or the
PNG/JPEG files given with ``--png``. Every method quantizes every image to 4, 16, 64 and 256 colours.

quanta: :func:`quanta.image.palette` with k-means in ``rgb``, ``lab`` and ``oklab``, each without and with
Floyd-Steinberg dithering (the dithered rows reuse the same palette). Pillow: ``Image.quantize(n, method=...)``
with MEDIANCUT, MAXCOVERAGE and FASTOCTREE, MEDIANCUT refined by Pillow's own k-means (``kmeans=16``), and
LIBIMAGEQUANT when this Pillow was built with it; none of them dithers (Pillow applies ``dither`` only when mapping
to a given palette).

Columns: PSNR in dB (computed in sRGB over all pixels and channels, the usual definition) of the mean MSE over
the images (an image with no more distinct colours than the palette, reproduced exactly, adds MSE 0), then mean
CIEDE76 (Euclidean distance in CIELAB, a rough perceptual error: lower is better), and the mean time per image in
milliseconds at each size. The last table gives quanta's default (rgb, no dithering) minus the best Pillow method
per size in dB, and on how many images it is at least as good as that method.

    .venv/bin/python benchmarks/bench_palette.py [--images 50] [--scale 4] [--png a.png b.png] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from quanta.colorspace import srgb_to_lab
from quanta.image import apply_palette, palette, psnr, read_image, render

SIZES = (4, 16, 64, 256)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_sample" / "cifar10_sample.npz"

Method = Callable[[np.ndarray, int], np.ndarray]  # (image, colours) -> quantized RGB image


def load_images(n: int, scale: int, pngs: list[Path]) -> list[np.ndarray]:
    """The user's files, else ``n`` CIFAR-10 test photos (then train photos) upscaled ``scale`` x bicubic."""
    from PIL import Image

    if pngs:
        return [read_image(p) for p in pngs]
    if not DATA.exists():
        sys.exit(f"{DATA} not found: pass --png FILE ... or put the shared data beside the repository")
    data = np.load(DATA)
    x = np.concatenate([data["x_test"], data["x_train"]])[:n].transpose(0, 2, 3, 1)  # (n, 32, 32, 3) from NCHW
    size = (32 * scale, 32 * scale)
    return [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BICUBIC)) for im in x]


def pillow_methods() -> dict[str, Method]:
    from PIL import Image, features

    def method(m: Image.Quantize, kmeans: int = 0) -> Method:
        return lambda im, n: np.asarray(Image.fromarray(im).quantize(n, method=m, kmeans=kmeans).convert("RGB"))

    methods = {
        "Pillow MEDIANCUT": method(Image.Quantize.MEDIANCUT),
        "Pillow MAXCOVERAGE": method(Image.Quantize.MAXCOVERAGE),
        "Pillow FASTOCTREE": method(Image.Quantize.FASTOCTREE),
        "Pillow MEDIANCUT kmeans=16": method(Image.Quantize.MEDIANCUT, 16),
    }
    if features.check("libimagequant"):
        methods["Pillow LIBIMAGEQUANT"] = method(Image.Quantize.LIBIMAGEQUANT)
    return methods


def mean_delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE76: Euclidean distance in CIELAB (D65) per pixel."""
    return float(np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1).mean())


def run(images: list[np.ndarray], seed: int) -> dict[str, dict[int, tuple[list[float], list[float], float]]]:
    """method -> colours -> (PSNR per image, CIEDE76 per image, mean seconds per image)."""
    results: dict[str, dict[int, tuple[list[float], list[float], float]]] = {}

    def record(name: str, n: int, outs: list[np.ndarray], seconds: float) -> None:
        scores = [psnr(im, o) for im, o in zip(images, outs, strict=True)]
        results.setdefault(name, {})[n] = (
            scores,
            [mean_delta_e(im, o) for im, o in zip(images, outs, strict=True)],
            seconds,
        )

    for n in SIZES:
        for space in ("rgb", "lab", "oklab"):
            plain, dithered, t_plain, t_dither = [], [], 0.0, 0.0
            for im in images:
                start = time.perf_counter()
                idx, pal = palette(im, n, space=space, seed=seed)
                mid = time.perf_counter()
                didx = apply_palette(im, pal, space=space, dither=True)
                t_plain += mid - start
                t_dither += time.perf_counter() - start  # palette + dithered mapping
                plain.append(render(idx, pal))
                dithered.append(render(didx, pal))
            record(f"quanta {space}", n, plain, t_plain / len(images))
            record(f"quanta {space} + dither", n, dithered, t_dither / len(images))
        for name, method in pillow_methods().items():
            start = time.perf_counter()
            outs = [method(im, n) for im in images]
            record(name, n, outs, (time.perf_counter() - start) / len(images))
    return results


def aggregate(values: list[float], column: int) -> float:
    """PSNR column: the PSNR of the mean MSE over the images (an image reproduced exactly, PSNR inf, counts as
    MSE 0 instead of making the mean infinite); CIEDE76 column: the mean."""
    if column == 0:
        mse = float(np.mean([255.0**2 / 10 ** (p / 10) for p in values]))
        return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return float(np.mean(values))


def table(results: dict[str, dict[int, tuple[list[float], list[float], float]]], column: int, fmt: str) -> str:
    lines = ["| method | " + " | ".join(f"{n} colours" for n in SIZES) + " |", "|---" + "|---:" * len(SIZES) + "|"]
    for name, by_size in results.items():
        cells = []
        for n in SIZES:
            value = by_size[n][column]
            cells.append(format(aggregate(value, column) if isinstance(value, list) else 1000 * value, fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versus(results: dict[str, dict[int, tuple[list[float], list[float], float]]], ours: str) -> str:
    lines = [
        f"| colours | {ours} dB | best Pillow | Pillow dB | difference dB | images at least as good |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for n in SIZES:
        mine = np.array(results[ours][n][0])
        peers = {k: np.array(v[n][0]) for k, v in results.items() if k.startswith("Pillow")}
        best = max(peers, key=lambda k: aggregate(list(peers[k]), 0))
        wins = int((mine >= peers[best] - 1e-9).sum())
        ours_db, theirs_db = aggregate(list(mine), 0), aggregate(list(peers[best]), 0)
        lines.append(
            f"| {n} | {ours_db:.2f} | {best.removeprefix('Pillow ')} | {theirs_db:.2f} | "
            f"{ours_db - theirs_db:+.2f} | {wins}/{len(mine)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import PIL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50, help="CIFAR-10 photos to use (default 50)")
    parser.add_argument("--scale", type=int, default=4, help="bicubic upscaling factor (default 4: 128 x 128)")
    parser.add_argument("--png", type=Path, nargs="*", default=[], help="use these image files instead")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_images(args.images, args.scale, args.png)
    h, w = images[0].shape[:2]
    results = run(images, args.seed)
    what = f"{len(args.png)} user images" if args.png else f"{len(images)} CIFAR-10 photos at {h}x{w} (bicubic)"
    print(f"Palette quantization, {what}; Pillow {PIL.__version__}, torch {torch.__version__}, {args.threads} thread")
    print(f"\n`{' '.join(['.venv/bin/python', 'benchmarks/bench_palette.py', *(argv or sys.argv[1:])])}`\n")
    print("PSNR of the mean MSE over the images, dB (higher is better; sRGB):\n")
    print(table(results, 0, ".2f"))
    print("\nMean CIEDE76 (Euclidean distance in CIELAB; lower is better):\n")
    print(table(results, 1, ".2f"))
    print("\nMean time per image, ms (quanta + dither rows: palette and dithered mapping):\n")
    print(table(results, 2, ".1f"))
    print("\nquanta's default against the best Pillow method at each size (PSNR of the mean MSE):\n")
    print(versus(results, "quanta rgb"))


if __name__ == "__main__":
    main()
