"""The image side of the command line: ``quanta image palette``, ``quanta image requantize``, ``quanta image dct``.

Reads any image Pillow can open, reduces it to a k-means palette (:func:`quanta.image.palette`) and writes a
palette ("P" mode) PNG atomically (a temporary file beside OUT, renamed into place), then reports the PSNR of the
written image against the input, the palette size and the bytes. ``requantize`` reduces each channel to N bits
(:mod:`quanta.image_requantize`) and writes an RGB PNG the same way; ``dct`` codes the image with the JPEG-like
codec of :mod:`quanta.signal.dct_codec` and with Pillow's JPEG and prints rate against PSNR.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _Out, app
from quanta.errors import QuantaError

__all__ = ["image_app"]

image_app = typer.Typer(help="Images: palettes, bit-depth requantization, a DCT codec.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("palette")
def palette_command(
    source: Annotated[Path, typer.Argument(metavar="IN", help="The image to quantize (PNG, JPEG, ...: RGB).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The palette PNG to write.")],
    colors: Annotated[int, typer.Option("--colors", "-c", help="Palette size, 2..256.")] = 16,
    space: Annotated[
        str, typer.Option(help="Colour space of the k-means: rgb (best PSNR), lab or oklab (perceptual).")
    ] = "rgb",
    dither: Annotated[bool, typer.Option("--dither", help="Floyd-Steinberg error diffusion.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Reduce an image to a k-means palette of N colours and write a palette PNG; print PSNR and bytes."""
    from quanta.colorspace import SPACES
    from quanta.image import palette, psnr, read_image, render, write_palette_png

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        if not 2 <= colors <= 256:
            raise QuantaError(f"--colors must be in 2..256 (a PNG palette's range), got {colors}.")
        if space not in SPACES:
            raise QuantaError(f"--space {space!r} is not a colour space; choose one of {', '.join(SPACES)}.")
        if output.suffix.lower() != ".png":
            raise QuantaError(f"-o {output} must end in .png: the output is a palette PNG.")
        if output.exists() and not overwrite:
            raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
        image = read_image(source)
        with out.status(f"k-means palette of {colors} colours in {space}..."):
            indices, pal = palette(image, colors, space=space, dither=dither, seed=seed)
        nbytes = write_palette_png(output, indices, pal)
    quality = psnr(image, render(indices, pal))
    h, w = image.shape[:2]
    result = {
        "input": source,
        "output": output,
        "width": w,
        "height": h,
        "colors": colors,
        "palette_size": len(pal),
        "space": space,
        "dither": dither,
        "psnr_db": quality,
        "input_bytes": source.stat().st_size,
        "bytes": nbytes,
        "seconds": time.perf_counter() - start,
        "seed": seed,
    }
    out.json(result)
    how = f"k-means in {space}{', Floyd-Steinberg dithering' if dither else ''}"
    out.print(f"{source} ({w}x{h}): {len(pal)} colours ({how}), PSNR {quality:.2f} dB vs the input")
    out.print(f"wrote {output}: palette PNG, {nbytes:,} bytes (input {result['input_bytes']:,} bytes)")
    out.note(f"Done in {result['seconds']:.1f} s; PSNR is measured in sRGB over all pixels and channels.")


def _fresh_png(output: Path, overwrite: bool, flag: str = "-o") -> None:
    """Refuse an OUT that is not a .png or already exists (without --overwrite), before any work is done."""
    if output.suffix.lower() != ".png":
        raise QuantaError(f"{flag} {output} must end in .png: the output is a PNG.")
    if output.exists() and not overwrite:
        raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another {flag}.")


@image_app.command("requantize")
def requantize_command(
    source: Annotated[Path, typer.Argument(metavar="IN", help="The image to requantize (PNG, JPEG, ...: RGB).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The RGB PNG to write.")],
    bits: Annotated[int, typer.Option("--bits", "-b", help="Bits per channel, 1..8.")] = 4,
    dither: Annotated[str, typer.Option(help="none, floyd-steinberg (error diffusion) or bayer (ordered).")] = "none",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Reduce every channel of an image to N bits (2^N levels), optionally dithered; print PSNR and levels."""
    from quanta.image import _pil, psnr, read_image
    from quanta.image_requantize import DITHERS, requantize_image, requantize_levels
    from quanta.io import atomic_path

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        levels = requantize_levels(bits)  # BitWidthError outside 1..8, before the image is read
        if dither not in DITHERS:
            raise QuantaError(f"--dither {dither!r} is not a dither; choose one of {', '.join(DITHERS)}.")
        _fresh_png(output, overwrite)
        image = read_image(source)
        with out.status(f"requantizing to {bits} bits per channel ({dither})..."):
            result = requantize_image(image, bits, dither)
        with atomic_path(output) as tmp:
            _pil().fromarray(result).save(tmp, format="PNG", optimize=True)
    quality = psnr(image, result)
    h, w = image.shape[:2]
    nbytes = output.stat().st_size
    record = {
        "input": source,
        "output": output,
        "width": w,
        "height": h,
        "bits": bits,
        "dither": dither,
        "levels": levels.tolist(),
        "psnr_db": quality,
        "bytes": nbytes,
        "seconds": time.perf_counter() - start,
    }
    out.json(record)
    shown = ", ".join(map(str, levels)) if len(levels) <= 8 else f"{levels[0]}, {levels[1]}, ..., {levels[-1]}"
    out.print(f"{source} ({w}x{h}): {bits} bits per channel, {len(levels)} levels ({shown}), dither {dither}")
    out.print(f"PSNR {quality:.2f} dB vs the input; wrote {output}: RGB PNG, {nbytes:,} bytes")
    out.note(f"Done in {record['seconds']:.1f} s; PSNR is measured in sRGB over all pixels and channels.")


@image_app.command("dct")
def dct_command(
    source: Annotated[Path, typer.Argument(metavar="IN", help="The image to code (PNG, JPEG, ...: RGB).")],
    quality: Annotated[str, typer.Option("--quality", help="Comma-separated JPEG qualities, 1..100.")] = "10,50,90",
    subsampling: Annotated[str, typer.Option(help="Chroma: 4:4:4 or 4:2:0.")] = "4:4:4",
    plot: Annotated[Optional[Path], typer.Option(help="Write a rate-PSNR plot here (PNG).")] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the plot if it exists.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Code an image with quanta's JPEG-like DCT codec and with Pillow's JPEG at each quality; print rate and PSNR."""
    from quanta.cli import _numbers_table
    from quanta.image import read_image
    from quanta.image_dct import plot_rate_psnr, rate_points
    from quanta.signal.dct_codec import SUBSAMPLINGS, quality_scale

    out = _Out(as_json, quiet, seed)
    with _errors():
        try:
            qualities = [int(q) for q in quality.split(",")]
        except ValueError as exc:
            raise QuantaError(
                f"--quality {quality!r} must be integers 1..100 separated by commas, e.g. 10,50,90."
            ) from exc
        for q in qualities:
            quality_scale(q)  # SchemeError outside 1..100
        if subsampling not in SUBSAMPLINGS:
            raise QuantaError(f"--subsampling {subsampling!r}: choose one of {', '.join(SUBSAMPLINGS)}.")
        if plot is not None:
            _fresh_png(plot, overwrite, "--plot")
        image = read_image(source)
        with out.status(f"coding at {len(qualities)} qualities..."):
            points = rate_points(image, qualities, subsampling)
        if plot is not None:
            bpp = [8 / p.pixels for p in points]
            db, pdb = [p.psnr_db for p in points], [p.pillow_psnr_db for p in points]
            curves = {
                "quanta DCT + zlib": ([p.zlib_bytes * b for p, b in zip(points, bpp, strict=True)], db),
                "quanta DCT, ideal entropy": ([p.entropy_bits / p.pixels for p in points], db),
                "Pillow JPEG file": ([p.pillow_bytes * b for p, b in zip(points, bpp, strict=True)], pdb),
            }
            plot_rate_psnr(plot, {f"{source.name}, {subsampling}": curves})
    h, w = image.shape[:2]
    out.json({"input": source, "width": w, "height": h, "subsampling": subsampling, "plot": plot,
              "points": [p.__dict__ for p in points]})  # fmt: skip
    table = _numbers_table(
        f"{source} ({w}x{h}), {subsampling}: quanta DCT codec vs Pillow JPEG",
        "q",
        ("dB", "zlib B", "zlib bpp", "H bpp", "JPEG dB", "JPEG B", "JPEG bpp"),
    )
    for p in points:
        s = 8 / p.pixels
        table.add_row(str(p.quality), f"{p.psnr_db:.2f}", f"{p.zlib_bytes:,}", f"{p.zlib_bytes * s:.3f}",
                      f"{p.entropy_bits / p.pixels:.3f}", f"{p.pillow_psnr_db:.2f}", f"{p.pillow_bytes:,}",
                      f"{p.pillow_bytes * s:.3f}")  # fmt: skip
    out.print(table)
    if plot is not None:
        out.print(f"wrote {plot}: rate-PSNR plot")
    out.note(
        "dB: PSNR in sRGB over all pixels and channels; zlib B: quanta's coefficients under zlib; H bpp: their ideal"
        " zeroth-order entropy; JPEG B: Pillow's whole file (headers and tables too)."
    )
