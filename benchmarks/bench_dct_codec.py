"""quanta's JPEG-like DCT codec against Pillow's JPEG: rate vs PSNR at the same qualities (issue 7).

Data: the first ``--images`` CIFAR-10 test photos of ``../shared/data/cifar10_sample`` (32 x 32), each upscaled
``--scale`` times with Pillow's bicubic filter (default 4: 128 x 128), or with ``--tile`` the photos at their own
resolution tiled 4 x 4 into 128 x 128 mosaics (real-photo detail, no interpolation), or the files given with
``--png``. Each image is coded at every quality with 4:4:4 and with 4:2:0 chroma.

quanta: :func:`quanta.signal.dct_codec.dct_encode` / ``dct_decode`` (same Annex K tables and IJG scaling as
libjpeg); rate as the zlib-compressed coefficients (``to_bytes``) and as the ideal zeroth-order entropy of the
coefficient symbols. Pillow: ``Image.save(format="JPEG", quality=q, subsampling=0|2)`` (libjpeg-turbo, baseline
Huffman tables, no ``optimize``), rate as the whole file and as its entropy-coded scan alone (the file less ~600
bytes of headers and tables). PSNR in sRGB over all pixels and channels, aggregated as the PSNR of the mean MSE;
rates are mean bits per pixel. ``dPSNR`` is quanta minus Pillow per image: min / max over the images.

    .venv/bin/python benchmarks/bench_dct_codec.py [--images 50] [--tile] [--plot rd.png] [--png a.png ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from quanta.image import read_image
from quanta.image_dct import RatePoint, plot_rate_psnr, rate_points

QUALITIES = (5, 10, 20, 30, 50, 70, 80, 90, 95)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_sample" / "cifar10_sample.npz"


def load_images(n: int, scale: int, tile: bool, pngs: list[Path]) -> list[np.ndarray]:
    """The user's files, else ``n`` CIFAR-10 test photos upscaled ``scale`` x bicubic, or tiled 4 x 4 (``tile``)."""
    from PIL import Image

    if pngs:
        return [read_image(p) for p in pngs]
    if not DATA.exists():
        sys.exit(f"{DATA} not found: pass --png FILE ... or put the shared data beside the repository")
    data = np.load(DATA)
    x = np.concatenate([data["x_test"], data["x_train"]]).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) from NCHW
    if tile:  # mosaic k: photos 16k .. 16k+15, four rows of four
        return [np.concatenate([np.concatenate(list(x[16 * k + 4 * r : 16 * k + 4 * r + 4]), axis=1)
                                for r in range(4)]) for k in range(n)]  # fmt: skip
    size = (32 * scale, 32 * scale)
    return [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BICUBIC)) for im in x[:n]]


def _psnr_of_mean(db: list[float]) -> float:
    mse = float(np.mean([10 ** (-d / 10) for d in db]))  # back to MSE / 255^2, averaged
    return -10 * math.log10(mse)


def summarise(points: list[list[RatePoint]]) -> list[dict[str, float]]:
    """Per quality (rows of ``points[image][quality]``): PSNRs of the mean MSE, mean bpp, dPSNR range."""
    rows = []
    for col in zip(*points, strict=True):
        bpp = [8 / p.pixels for p in col]
        d = [p.psnr_db - p.pillow_psnr_db for p in col]
        rows.append(
            {
                "quality": col[0].quality,
                "psnr": _psnr_of_mean([p.psnr_db for p in col]),
                "zlib_bpp": float(np.mean([p.zlib_bytes * b for p, b in zip(col, bpp, strict=True)])),
                "entropy_bpp": float(np.mean([p.entropy_bits / p.pixels for p in col])),
                "pillow_psnr": _psnr_of_mean([p.pillow_psnr_db for p in col]),
                "pillow_bpp": float(np.mean([p.pillow_bytes * b for p, b in zip(col, bpp, strict=True)])),
                "scan_bpp": float(np.mean([p.pillow_scan_bytes * b for p, b in zip(col, bpp, strict=True)])),
                "dmin": min(d),
                "dmax": max(d),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", action="store_true", help="4 x 4 mosaics of 32 x 32 photos instead of upscaling")
    parser.add_argument("--png", type=Path, nargs="*", default=[])
    parser.add_argument("--qualities", type=lambda s: [int(q) for q in s.split(",")], default=list(QUALITIES))
    parser.add_argument("--plot", type=Path, default=None, help="write the rate-PSNR plot here (PNG)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = load_images(args.images, args.scale, args.tile, args.png)
    h, w = images[0].shape[:2]
    what = "4x4 mosaics of CIFAR-10 photos" if args.tile else f"CIFAR-10 photos upscaled {args.scale}x"
    print(f"{len(images)} images ({what if not args.png else 'files'}, first {h}x{w}); PSNR of mean MSE, mean bpp")
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for sub in ("4:4:4", "4:2:0"):
        rows = summarise([rate_points(im, args.qualities, sub) for im in images])
        print(f"\n{sub}")
        head = "quality | quanta dB | zlib bpp | entropy bpp | Pillow dB | JPEG file bpp | JPEG scan bpp | dPSNR"
        print(f"| {head} min..max |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['quality']} | {r['psnr']:.2f} | {r['zlib_bpp']:.3f} | {r['entropy_bpp']:.3f} | "
                f"{r['pillow_psnr']:.2f} | {r['pillow_bpp']:.3f} | {r['scan_bpp']:.3f} | "
                f"{r['dmin']:+.2f}..{r['dmax']:+.2f} |"
            )
        db, pdb = [r["psnr"] for r in rows], [r["pillow_psnr"] for r in rows]
        panels[f"{sub}, {len(images)} images, quality {args.qualities[0]}..{args.qualities[-1]}"] = {
            "quanta DCT + zlib": ([r["zlib_bpp"] for r in rows], db),
            "quanta DCT, ideal entropy": ([r["entropy_bpp"] for r in rows], db),
            "Pillow JPEG file": ([r["pillow_bpp"] for r in rows], pdb),
            "Pillow JPEG scan only": ([r["scan_bpp"] for r in rows], pdb),
        }
    if args.plot:
        print(f"\nwrote {plot_rate_psnr(args.plot, panels)}")


if __name__ == "__main__":
    main()
