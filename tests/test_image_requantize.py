"""Bit-depth requantization: levels against their formula, no-dither error against brute-force nearest level,
Floyd-Steinberg against the textbook sequential loop, local means under dithering on a real photo, the Bayer
matrix against its published 4 x 4 form, bad input, and the ``quanta image requantize`` command."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quanta.cli import app
from quanta.errors import BitWidthError, InvalidTensorError, SchemeError
from quanta.image import psnr, read_image
from quanta.image_requantize import DITHERS, bayer_matrix, requantize_image, requantize_levels

Image = pytest.importorskip("PIL.Image")
ndimage = pytest.importorskip("scipy.ndimage")
runner = CliRunner()
CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_sample" / "cifar10_sample.npz"
RAMP = np.arange(256, dtype=np.uint8)


def _photo() -> np.ndarray:
    """A real photo: CIFAR-10 test image 3, upscaled 4x bicubic to 128 x 128."""
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} is not present")
    x = np.load(CIFAR)["x_test"][3].transpose(1, 2, 0)  # (32, 32, 3) from CHW
    return np.asarray(Image.fromarray(x).resize((128, 128), Image.Resampling.BICUBIC))


@pytest.mark.parametrize("bits", range(1, 9))
def test_levels_and_plain_error_within_half_a_step(bits: int) -> None:
    n = 2**bits
    levels = requantize_levels(bits)
    expected = [int(Fraction(255 * k, n - 1) + Fraction(1, 2)) for k in range(n)]  # round half up, exactly
    assert levels.tolist() == expected and levels[0] == 0 and levels[-1] == 255
    out = requantize_image(RAMP[None, :], bits)[0]
    assert len(np.unique(out)) == n  # a full ramp uses every one of the 2^N levels, and no other value
    assert set(np.unique(out).tolist()) == set(expected)
    err = np.abs(out.astype(int) - RAMP)
    brute = np.abs(RAMP[:, None].astype(int) - levels[None, :].astype(int)).min(axis=1)  # nearest level, by search
    np.testing.assert_array_equal(err, brute)
    assert err.max() <= 255 / (n - 1) / 2  # half the nominal step


@pytest.mark.parametrize("dither", DITHERS)
def test_eight_bits_is_the_identity(dither: str) -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(13, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(requantize_image(img, 8, dither), img)


def _fs_loop(img: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Textbook Floyd-Steinberg, one pixel at a time, per channel; ties between two levels go up."""
    h, w, _ = img.shape
    buf, out = img.astype(np.float64), np.zeros(img.shape, dtype=np.uint8)
    lv = levels.astype(np.float64)
    mids = (lv[1:] + lv[:-1]) / 2
    for y in range(h):
        for x in range(w):
            v = np.clip(buf[y, x], 0, 255)
            q = lv[(v[:, None] >= mids[None, :]).sum(axis=1)]
            out[y, x] = q
            e = v - q
            for dy, dx, f in ((0, 1, 7), (1, -1, 3), (1, 0, 5), (1, 1, 1)):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    buf[y + dy, x + dx] += e * f / 16
    return out


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_floyd_steinberg_matches_sequential_loop(bits: int) -> None:
    rng = np.random.default_rng(bits)
    rgb = rng.integers(0, 256, size=(9, 14, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        requantize_image(rgb, bits, "floyd-steinberg"), _fs_loop(rgb, requantize_levels(bits))
    )
    grey = rng.integers(0, 256, size=(7, 10), dtype=np.uint8)
    fs = requantize_image(grey, bits, "floyd-steinberg")
    assert fs.shape == grey.shape
    np.testing.assert_array_equal(fs, _fs_loop(grey[:, :, None], requantize_levels(bits))[:, :, 0])


@pytest.mark.parametrize("bits", [2, 3])
def test_dithers_keep_local_means_on_a_photo(bits: int) -> None:
    """Blurred (Gaussian, sigma 2 px) error: dithering moves the error to high frequencies, so after a blur it is
    far below plain rounding's (measured 20-30x for Floyd-Steinberg, 5x for Bayer); unblurred it is higher."""
    img = _photo()
    x = img.astype(np.float64)

    def blurred_mse(out: np.ndarray) -> float:
        return float(np.mean(ndimage.gaussian_filter(out.astype(np.float64) - x, (2, 2, 0)) ** 2))

    plain, fs, bayer = (requantize_image(img, bits, d) for d in ("none", "floyd-steinberg", "bayer"))
    assert blurred_mse(fs) < blurred_mse(plain) / 4
    assert blurred_mse(bayer) < blurred_mse(plain) / 4
    assert psnr(img, fs) < psnr(img, plain) and psnr(img, bayer) < psnr(img, plain)  # dither costs raw PSNR


def test_bayer_matrix_and_flat_tile_means() -> None:
    # The 4 x 4 Bayer matrix as published (e.g. Ulichney, "Digital Halftoning", 1987).
    published = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]
    assert bayer_matrix(4).tolist() == published
    assert sorted(bayer_matrix(8).reshape(-1).tolist()) == list(range(64))
    for bits in (1, 2, 3, 4):
        step = 255 / (2**bits - 1)
        # 64 thresholds: an 8 x 8 tile mean is within step/128 of a flat input on an exact grid; the levels' and
        # decision points' rounding to integers adds at most 1/2 each.
        bound = step / 128 + 1
        flat = np.repeat(RAMP, 64).reshape(256 * 8, 8)  # a greyscale column of 256 flat 8 x 8 tiles, one per value

        def tile_mean_error(out: np.ndarray) -> np.ndarray:
            return np.abs(out.reshape(256, 8, 8).mean(axis=(1, 2)) - RAMP)

        bayer_err = tile_mean_error(requantize_image(flat, bits, "bayer"))
        plain_err = tile_mean_error(requantize_image(flat, bits))
        assert bayer_err.max() <= bound < plain_err.max()
    with pytest.raises(SchemeError, match="power of two"):
        bayer_matrix(6)


def test_bad_input_raises_named_errors() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    for bits in (0, 9, True, 2.5):
        with pytest.raises(BitWidthError, match=r"1\.\.8"):
            requantize_image(img, bits)  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="dither"):
        requantize_image(img, 4, "random")
    with pytest.raises(InvalidTensorError, match="uint8"):
        requantize_image(img.astype(np.float32), 4)
    with pytest.raises(InvalidTensorError, match="empty"):
        requantize_image(np.zeros((0, 4), dtype=np.uint8), 4)


def test_cli_requantize_writes_what_the_function_gives(tmp_path: Path) -> None:
    src, out = tmp_path / "photo.png", tmp_path / "out" / "p3.png"
    Image.fromarray(_photo()).save(src)
    result = runner.invoke(
        app, ["image", "requantize", str(src), "--bits", "3", "--dither", "floyd-steinberg", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    written = read_image(out)
    expected = requantize_image(read_image(src), 3, "floyd-steinberg")
    np.testing.assert_array_equal(written, expected)
    assert record["levels"] == requantize_levels(3).tolist() and record["bytes"] == out.stat().st_size
    assert record["psnr_db"] == pytest.approx(psnr(read_image(src), written))
    text = runner.invoke(app, ["image", "requantize", str(src), "-b", "2", "-o", str(out), "--overwrite"])
    assert text.exit_code == 0 and "4 levels (0, 85, 170, 255)" in text.stdout and str(out) in text.stdout
    assert [p.name for p in out.parent.iterdir()] == ["p3.png"]  # atomic: no temporary file left behind


def test_cli_requantize_rejects_bad_input(tmp_path: Path) -> None:
    src, out = tmp_path / "photo.png", tmp_path / "o.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(src)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for args, message in (
        (["--bits", "9"], "1..8"),
        (["--bits", "0"], "1..8"),
        (["--dither", "noise"], "floyd-steinberg"),
    ):
        result = runner.invoke(app, ["image", "requantize", str(src), "-o", str(out), *args])
        assert result.exit_code == 2 and message in result.stderr
    result = runner.invoke(app, ["image", "requantize", str(bad), "-o", str(out)])
    assert result.exit_code == 2 and "not an image" in result.stderr
    assert not out.exists()
    out.write_bytes(b"keep")
    result = runner.invoke(app, ["image", "requantize", str(src), "-o", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.stderr and out.read_bytes() == b"keep"
