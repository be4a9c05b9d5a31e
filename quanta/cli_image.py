"""The image side of the command line: ``quanta image palette IN --colors N -o OUT.png``.

Reads any image Pillow can open, reduces it to a k-means palette (:func:`quanta.image.palette`) and writes a
palette ("P" mode) PNG atomically (a temporary file beside OUT, renamed into place), then reports the PSNR of the
written image against the input, the palette size and the bytes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _Out, app
from quanta.errors import QuantaError

__all__ = ["image_app"]

image_app = typer.Typer(help="Images: colour palette quantization.", no_args_is_help=True)
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
