"""The JPEG-like DCT codec: the transform against scipy, zigzag against T.81's table, quantization tables against
the ones Pillow (libjpeg) writes at every quality, PSNR against Pillow's JPEG on real photos, closed-form PSNR at
quality 100, serialisation round trips, entropy against its definition, and the ``quanta image dct`` command."""

import io
import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quanta.cli import app
from quanta.errors import CorruptDataError, InvalidTensorError, SchemeError
from quanta.image import psnr
from quanta.image_dct import jpeg_scan_bytes, pillow_jpeg, rate_points
from quanta.signal.dct import ZIGZAG, block_dct, block_idct, dct_matrix
from quanta.signal.dct_codec import (
    CHROMA_TABLE,
    LUMA_TABLE,
    _upsample2,
    dct_decode,
    dct_encode,
    entropy_bits,
    from_bytes,
    quality_scale,
    quant_table,
    to_bytes,
)

Image = pytest.importorskip("PIL.Image")
scipy_fft = pytest.importorskip("scipy.fft")
runner = CliRunner()
CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10_sample" / "cifar10_sample.npz"

# ITU-T T.81 Figure A.6: the zigzag index of each coefficient, in row-major position.
T81_ZIGZAG = [
    [0, 1, 5, 6, 14, 15, 27, 28],
    [2, 4, 7, 13, 16, 26, 29, 42],
    [3, 8, 12, 17, 25, 30, 41, 43],
    [9, 11, 18, 24, 31, 40, 44, 53],
    [10, 19, 23, 32, 39, 45, 52, 54],
    [20, 22, 33, 38, 46, 51, 55, 60],
    [21, 34, 37, 47, 50, 56, 59, 61],
    [35, 36, 48, 49, 57, 58, 62, 63],
]


def _photos(n: int = 3) -> list[np.ndarray]:
    """Real photos: the first ``n`` CIFAR-10 test images, upscaled 4x bicubic to 128 x 128."""
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} is not present")
    x = np.load(CIFAR)["x_test"][:n].transpose(0, 2, 3, 1)
    return [np.asarray(Image.fromarray(im).resize((128, 128), Image.Resampling.BICUBIC)) for im in x]


def test_block_dct_matches_scipy_and_inverts() -> None:
    x = np.random.default_rng(0).normal(0, 50, size=(2, 16, 24))
    ours = block_dct(x)  # (2, 2, 3, 8, 8)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                block = x[n, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                np.testing.assert_allclose(ours[n, i, j], scipy_fft.dctn(block, type=2, norm="ortho"), atol=1e-10)
    np.testing.assert_allclose(block_idct(ours), x, atol=1e-10)
    np.testing.assert_allclose(dct_matrix(8), scipy_fft.dct(np.eye(8), type=2, norm="ortho", axis=0), atol=1e-12)
    with pytest.raises(InvalidTensorError, match="multiples of 8"):
        block_dct(np.zeros((8, 12)))


def test_zigzag_is_t81s() -> None:
    position = np.empty(64, dtype=np.int64)
    position[ZIGZAG] = np.arange(64)  # zigzag index of each row-major cell
    assert position.reshape(8, 8).tolist() == T81_ZIGZAG


def test_tables_match_ijg_formula_and_pillow_at_every_quality() -> None:
    # IJG scale factors and their endpoints: 1 -> 5000%, 50 -> 100% (Annex K itself), 100 -> 0% (all ones).
    assert [quality_scale(q) for q in (1, 25, 49, 50, 51, 99, 100)] == [5000, 200, 102, 100, 98, 2, 0]
    np.testing.assert_array_equal(quant_table(50), LUMA_TABLE)
    np.testing.assert_array_equal(quant_table(50, chroma=True), CHROMA_TABLE)
    assert (quant_table(100) == 1).all() and (quant_table(100, chroma=True) == 1).all()
    assert (quant_table(1) == 255).all() and (quant_table(1, chroma=True) == 255).all()  # 8-bit baseline clip
    assert LUMA_TABLE[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]  # T.81 Table K.1, first row
    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    for q in range(1, 101):  # the tables libjpeg writes into the file (Pillow reports them row-major)
        _, data = pillow_jpeg(np.asarray(img), q)
        with Image.open(io.BytesIO(data)) as im:
            tables = im.quantization
        np.testing.assert_array_equal(quant_table(q).reshape(-1), tables[0], err_msg=f"luma at quality {q}")
        np.testing.assert_array_equal(quant_table(q, True).reshape(-1), tables[1], err_msg=f"chroma at quality {q}")


def test_quality_100_psnr_matches_rounding_model() -> None:
    """At quality 100 (all-ones tables) only rounding is left. Grey: the coefficient rounding error (uniform, var
    1/12 per coefficient, so per pixel) flips the final integer rounding where |e| > 1/2: about 8.4% of pixels
    (e nearly Gaussian, sigma 0.29), MSE ~0.084, 58.9 dB. Colour adds the encoder's 8-bit YCbCr rounding (var 1/12
    per channel, times ~2.9 through YCbCr -> RGB): MSE ~0.5, ~51 dB. Bounds: 1-2 dB below the model."""
    for img in _photos(3):
        grey = np.asarray(Image.fromarray(img).convert("L"))
        assert psnr(grey, dct_decode(dct_encode(grey, 100))) > 57.5
        assert psnr(img, dct_decode(dct_encode(img, 100))) > 49.5
        assert psnr(img, dct_decode(dct_encode(img, 100, "4:2:0"))) < psnr(img, dct_decode(dct_encode(img, 100)))


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:0"])
def test_psnr_and_rate_rise_with_quality_on_a_photo(subsampling: str) -> None:
    img = _photos(1)[0]
    encs = [dct_encode(img, q, subsampling) for q in range(10, 101, 10)]
    db = [psnr(img, dct_decode(e)) for e in encs]
    sizes = [len(to_bytes(e)) for e in encs]
    bits = [entropy_bits(e) for e in encs]
    assert all(a < b for a, b in itertools.pairwise(db)), db
    assert all(a < b for a, b in itertools.pairwise(sizes)), sizes
    assert all(a < b for a, b in itertools.pairwise(bits)), bits


PILLOW_BAND_DB = 0.6
"""|quanta - Pillow| PSNR at the same quality. Same tables and rounding rule: the two differ only where libjpeg's
fixed-point DCT, colour conversion and chroma downsampling push a coefficient across a rounding boundary. Over
50 photos x 9 qualities (5..95) x 2 subsamplings (benchmarks/bench_dct_codec.py) the MSEs differ by at most 12%,
0.54 dB; one quality step of 5 moves PSNR by about 0.6 dB at quality 50, so the band still catches a wrong table."""


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:0"])
def test_psnr_within_band_of_pillow_jpeg(subsampling: str) -> None:
    for img in _photos(3):
        points = rate_points(img, [10, 30, 50, 70, 90], subsampling)
        for p in points:
            assert abs(p.psnr_db - p.pillow_psnr_db) <= PILLOW_BAND_DB, (p.quality, p.psnr_db, p.pillow_psnr_db)
            assert 0 < p.pillow_scan_bytes < p.pillow_bytes
        # headers and tables do not depend on quality or content: file - scan is the same at every quality
        assert len({p.pillow_bytes - p.pillow_scan_bytes for p in points}) == 1
        # the band discriminates: quanta at quality 40 is not Pillow at 50
        ours_40 = psnr(img, dct_decode(dct_encode(img, 40, subsampling)))
        assert abs(ours_40 - points[2].pillow_psnr_db) > PILLOW_BAND_DB


def test_serialisation_round_trips_and_rejects_damage() -> None:
    rng = np.random.default_rng(3)
    for shape, sub in (((37, 53, 3), "4:4:4"), ((37, 53, 3), "4:2:0"), ((9, 70), "4:4:4"), ((16, 16, 3), "4:2:0")):
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        for q in (1, 50, 100):
            enc = dct_encode(img, q, sub)
            back = from_bytes(to_bytes(enc))
            assert (back.height, back.width, back.quality, back.subsampling) == (*shape[:2], q, enc.subsampling)
            assert all(np.array_equal(a, b) for a, b in zip(enc.planes, back.planes, strict=True))
            assert dct_decode(back).shape == img.shape
    data = to_bytes(dct_encode(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), 50))
    with pytest.raises(CorruptDataError, match="zlib"):
        from_bytes(data[:-5])
    with pytest.raises(CorruptDataError, match="magic"):
        from_bytes(zlib.compress(b"XXX" + bytes(20)))


def test_entropy_is_the_zeroth_order_code_length() -> None:
    img = _photos(1)[0]
    enc = dct_encode(img, 50)
    expected = 0.0
    for planes in (enc.planes[:1], enc.planes[1:]):  # luma, then the two chroma planes pooled
        flat = np.concatenate([p.reshape(-1, 64) for p in planes])
        for stream in (flat[:, 0], flat[:, 1:].reshape(-1)):
            symbols = stream.tolist()
            counts = {s: symbols.count(s) for s in set(symbols)}
            expected += sum(-c * math.log2(c / len(symbols)) for c in counts.values())
    assert entropy_bits(enc) == pytest.approx(expected, rel=1e-12)
    flat_img = np.full((32, 32, 3), 77, dtype=np.uint8)  # one DC, then zero differences, no AC: almost free
    assert entropy_bits(dct_encode(flat_img, 50)) < 0.05 * 32 * 32


def test_triangle_upsampling_interpolates_a_ramp() -> None:
    # libjpeg's "fancy" upsampling puts output samples at +-1/4 of an input spacing: exact on a linear ramp.
    ramp = np.arange(6, dtype=np.float64) * 4
    assert _upsample2(ramp, 0)[2:-2].tolist() == (np.arange(2, 10) * 2.0 - 1.0).tolist()
    assert _upsample2(ramp, 0)[[0, -1]].tolist() == [0.0, 20.0]  # edges repeat


def test_bad_input_raises_named_errors() -> None:
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    for q in (0, 101, True, 50.5):
        with pytest.raises(SchemeError, match=r"1\.\.100"):
            dct_encode(img, q)  # type: ignore[arg-type]
    with pytest.raises(SchemeError, match="subsampling"):
        dct_encode(img, 50, "4:2:2")
    for bad in (img.astype(np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8), np.uint8)):
        with pytest.raises(InvalidTensorError, match="uint8"):
            dct_encode(bad, 50)
    with pytest.raises(CorruptDataError, match="SOI"):
        jpeg_scan_bytes(b"PNG....")


def test_cli_dct_reports_rate_points_and_writes_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    img = _photos(1)[0]
    src, plot = tmp_path / "photo.png", tmp_path / "rd.png"
    Image.fromarray(img).save(src)
    result = runner.invoke(app, ["image", "dct", str(src), "--quality", "10,50,90", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    expected = rate_points(img, [10, 50, 90])
    assert [p["quality"] for p in record["points"]] == [10, 50, 90]
    for got, want in zip(record["points"], expected, strict=True):
        assert got["zlib_bytes"] == want.zlib_bytes and got["psnr_db"] == pytest.approx(want.psnr_db)
        assert got["pillow_bytes"] == want.pillow_bytes
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
    text = runner.invoke(app, ["image", "dct", str(src), "--quality", "50", "--subsampling", "4:2:0"])
    assert text.exit_code == 0 and "4:2:0" in text.stdout
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    for args, message in (
        ([str(src), "--quality", "0,50"], "1..100"),
        ([str(src), "--quality", "ten"], "integers"),
        ([str(src), "--subsampling", "4:1:1"], "4:2:0"),
        ([str(bad)], "not an image"),
        ([str(src), "--plot", str(plot)], "--overwrite"),
    ):
        result = runner.invoke(app, ["image", "dct", *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
