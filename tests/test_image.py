"""Palette quantization: colour spaces against published values, exact reproduction, Floyd-Steinberg against the
sequential loop, PSNR against its formula, Pillow as a peer on a real photo, and the ``quanta image`` command."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quanta.cli import app
from quanta.colorspace import from_space, srgb_to_lab, srgb_to_linear, srgb_to_oklab, to_space
from quanta.errors import CorruptDataError, InvalidTensorError, QuantaError, SchemeError
from quanta.image import apply_palette, floyd_steinberg, palette, psnr, read_image, render, write_palette_png

Image = pytest.importorskip("PIL.Image")
runner = CliRunner()
CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_sample" / "cifar10_sample.npz"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """k-means on 3-d colours is many small ops: on a busy 2-core machine a second intra-op thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _photo() -> np.ndarray:
    """A real photo: CIFAR-10 test image 0 (a cat), upscaled 4x bicubic to 128 x 128."""
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} is not present")
    x = np.load(CIFAR)["x_test"][0].transpose(1, 2, 0)  # (32, 32, 3) from CHW
    return np.asarray(Image.fromarray(x).resize((128, 128), Image.BICUBIC))


def test_colour_spaces_match_published_values_and_round_trip() -> None:
    red, white = np.array([255.0, 0, 0]), np.array([255.0, 255, 255])
    # CIELAB D65 of sRGB red (Lindbloom's calculator): 53.2408, 80.0925, 67.2032; white is (100, 0, 0).
    np.testing.assert_allclose(srgb_to_lab(red), [53.2408, 80.0925, 67.2032], atol=1e-3)
    np.testing.assert_allclose(srgb_to_lab(white), [100, 0, 0], atol=1e-3)
    # OKLab of sRGB red (CSS Color 4): oklab(0.62796 0.22486 0.12585); white is (1, 0, 0).
    np.testing.assert_allclose(srgb_to_oklab(red), [0.62796, 0.22486, 0.12585], atol=1e-5)
    np.testing.assert_allclose(srgb_to_oklab(white), [1, 0, 0], atol=1e-6)
    # The sRGB transfer curve at its break point and at mid grey.
    np.testing.assert_allclose(srgb_to_linear(np.array([0.04045 * 255, 127.5])), [0.04045 / 12.92, 0.214041], atol=1e-6)
    colors = _noise(64, 64).reshape(-1, 3).astype(np.float64)
    for space in ("rgb", "lab", "oklab"):
        np.testing.assert_allclose(from_space(to_space(colors, space), space), colors, atol=1e-9)
    with pytest.raises(SchemeError, match="hsv"):
        to_space(colors, "hsv")


@pytest.mark.parametrize("space", ["rgb", "lab", "oklab"])
@pytest.mark.parametrize("dither", [False, True])
def test_few_colours_are_reproduced_exactly(space: str, dither: bool) -> None:
    colours = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 10], [12, 99, 250], [7, 7, 8]], dtype=np.uint8)
    img = colours[np.random.default_rng(1).integers(0, 5, size=(20, 30))]
    for n in (5, 16):
        idx, pal = palette(img, n, space=space, dither=dither)
        assert idx.dtype == np.uint8 and len(pal) == 5
        np.testing.assert_array_equal(render(idx, pal), img)
        assert psnr(img, render(idx, pal)) == math.inf


def test_palette_shapes_dtypes_and_determinism() -> None:
    img = _noise(40, 50)
    idx, pal = palette(img, 16, seed=3)
    assert idx.shape == (40, 50) and idx.dtype == np.uint8 and pal.dtype == np.uint8 and 1 < len(pal) <= 16
    assert len(np.unique(pal, axis=0)) == len(pal) and int(idx.max()) < len(pal)
    again = palette(img, 16, seed=3)
    np.testing.assert_array_equal(again[0], idx)
    np.testing.assert_array_equal(again[1], pal)
    big_idx, big_pal = palette(img, 300)  # more than 256 entries: uint16 indices
    assert big_idx.dtype == np.uint16 and len(big_pal) == 300


def test_rgb_kmeans_maps_each_pixel_to_its_nearest_entry() -> None:
    img = _noise(30, 30)
    idx, pal = palette(img, 8)
    d2 = ((img.reshape(-1, 1, 3).astype(np.int64) - pal.astype(np.int64)) ** 2).sum(axis=2)  # (n, k)
    np.testing.assert_array_equal(d2[np.arange(d2.shape[0]), idx.reshape(-1)], d2.min(axis=1))


def test_large_image_trains_on_a_sample_and_maps_every_pixel() -> None:
    img = _noise(400, 400)  # 160,000 pixels > MAX_TRAIN
    idx, pal = palette(img, 8)
    assert idx.shape == (400, 400) and len(pal) == 8
    assert psnr(img, render(idx, pal)) > 14.0  # uniform noise: 8 colours give ~15 dB, a random palette ~11


def test_psnr_matches_its_formula() -> None:
    a, b = _noise(16, 16, 1), _noise(16, 16, 2)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / mse), rel=1e-12)
    assert psnr(a, a) == math.inf
    assert psnr(np.zeros((2, 2)), np.ones((2, 2))) == pytest.approx(20 * np.log10(255.0))
    assert psnr(np.zeros(4), np.full(4, 0.5), peak=1.0) == pytest.approx(10 * np.log10(4.0))
    with pytest.raises(InvalidTensorError, match="equal shapes"):
        psnr(a, a[:2])


def _floyd_steinberg_loop(work: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """The textbook sequential loop, with the same clipping to the palette's bounding box."""
    buf = work.astype(np.float64).copy()
    h, w, _ = buf.shape
    lo, hi = pal.min(axis=0), pal.max(axis=0)
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            v = np.clip(buf[y, x], lo, hi)
            j = int(((pal - v) ** 2).sum(axis=1).argmin())
            out[y, x] = j
            e = v - pal[j]
            for dy, dx, f in ((0, 1, 7), (1, -1, 3), (1, 0, 5), (1, 1, 1)):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    buf[y + dy, x + dx] += e * f / 16
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 12), (12, 5)])
def test_wavefront_floyd_steinberg_equals_the_sequential_loop(shape: tuple[int, int]) -> None:
    work = _noise(*shape, seed=shape[0] * 31 + shape[1]).astype(np.float64)
    pal = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 90, 200], [128, 128, 128.0]])
    np.testing.assert_array_equal(floyd_steinberg(work, pal), _floyd_steinberg_loop(work, pal))


def test_dithering_keeps_local_mean_colour_on_a_gradient() -> None:
    ramp = np.linspace(0, 255, 256).round().astype(np.uint8)
    img = np.repeat(np.repeat(ramp[None, :, None], 64, axis=0), 3, axis=2)  # (64, 256, 3) grey ramp
    pal = np.array([[0, 0, 0], [85, 85, 85], [170, 170, 170], [255, 255, 255]], dtype=np.uint8)

    def block_error(indices: np.ndarray) -> float:  # mean |difference| of 8 x 8 block means
        diff = render(indices, pal).astype(np.float64) - img
        return float(np.abs(diff.reshape(8, 8, 32, 8, 3).mean(axis=(1, 3))).mean())

    plain, dithered = apply_palette(img, pal), apply_palette(img, pal, dither=True)
    assert block_error(dithered) < 0.25 * block_error(plain)  # banding of +-21 levels becomes noise
    assert abs(render(dithered, pal).mean() - img.mean()) < abs(render(plain, pal).mean() - img.mean()) + 0.5
    assert psnr(img, render(dithered, pal)) < psnr(img, render(plain, pal))  # the price, in PSNR


@pytest.mark.parametrize("colors", [4, 16, 64, 256])
def test_psnr_at_least_pillow_on_a_real_photo(colors: int) -> None:
    photo = _photo()
    idx, pal = palette(photo, colors)
    ours = psnr(photo, render(idx, pal))
    pil = Image.fromarray(photo)
    for method in (Image.Quantize.MEDIANCUT, Image.Quantize.MAXCOVERAGE, Image.Quantize.FASTOCTREE):
        theirs = psnr(photo, np.asarray(pil.quantize(colors, method=method).convert("RGB")))
        assert ours >= theirs, (colors, method, ours, theirs)


def test_bad_inputs_raise_quanta_errors(tmp_path: Path) -> None:
    img = _noise(4, 4)
    with pytest.raises(InvalidTensorError, match="uint8"):
        palette(img.astype(np.float32), 4)  # type: ignore[arg-type]
    with pytest.raises(InvalidTensorError, match=r"\(H, W, 3\)"):
        palette(img[:, :, :2], 4)
    with pytest.raises(SchemeError, match="colors"):
        palette(img, 0)
    with pytest.raises(SchemeError, match="hsv"):
        palette(img, 4, space="hsv")
    with pytest.raises(InvalidTensorError, match=r"0\.\.1"):
        render(np.full((2, 2), 2), np.zeros((2, 3), np.uint8))
    with pytest.raises(QuantaError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(CorruptDataError, match="not an image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(InvalidTensorError, match="256"):
        write_palette_png(tmp_path / "x.png", np.zeros((2, 2), np.uint16), np.zeros((300, 3), np.uint8))


def test_read_image_drops_alpha_and_expands_palettes(tmp_path: Path) -> None:
    rgba = np.dstack([_noise(5, 6), np.full((5, 6), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[:, :, :3])
    idx, pal = palette(_noise(5, 6), 4)
    assert write_palette_png(tmp_path / "p.png", idx, pal) == (tmp_path / "p.png").stat().st_size
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), render(idx, pal))


def test_cli_writes_a_palette_png_and_json(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    img = _noise(24, 32)
    Image.fromarray(img).save(src)
    result = runner.invoke(app, ["image", "palette", str(src), "--colors", "16", "-o", str(dst), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["palette_size"] == 16 and data["colors"] == 16 and data["space"] == "rgb" and not data["dither"]
    assert data["bytes"] == dst.stat().st_size and (data["width"], data["height"]) == (32, 24)
    with Image.open(dst) as im:
        assert im.mode == "P" and len(im.getpalette()) == 3 * 16
        written = np.asarray(im.convert("RGB"))
    assert data["psnr_db"] == pytest.approx(psnr(img, written))
    assert dst.read_bytes()[24:26] == bytes([4, 3])  # IHDR: bit depth 4, colour type 3 (palette)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporary file left

    text = runner.invoke(app, ["image", "palette", str(src), "-c", "4", "--space", "lab", "--dither", "-o", str(dst)])
    assert text.exit_code == 2 and "already exists" in text.stderr
    text = runner.invoke(
        app, ["image", "palette", str(src), "-c", "4", "--space", "lab", "--dither", "-o", str(dst), "--overwrite"]
    )
    assert text.exit_code == 0 and "4 colours" in text.stdout and "PSNR" in text.stdout and "wrote" in text.stdout
    for flag in ("--json", "--quiet", "--seed"):
        assert flag in runner.invoke(app, ["image", "palette", "--help"]).output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-c", "1"], "2..256"),
        (["-c", "257"], "2..256"),
        (["--space", "hsv"], "hsv"),
    ],
)
def test_cli_rejects_bad_settings(tmp_path: Path, args: list[str], needle: str) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(_noise(4, 4)).save(src)
    result = runner.invoke(app, ["image", "palette", str(src), "-o", str(tmp_path / "o.png"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_cli_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for src, out, needle in [
        (tmp_path / "missing.png", tmp_path / "o.png", "does not exist"),
        (tmp_path / "notes.txt", tmp_path / "o.png", "not an image"),
        (tmp_path / "notes.txt", tmp_path / "o.jpg", ".png"),
    ]:
        result = runner.invoke(app, ["image", "palette", str(src), "-o", str(out)])
        assert result.exit_code == 2 and needle in result.stderr, result.output
    assert not (tmp_path / "o.png").exists()
