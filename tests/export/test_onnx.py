"""ONNX export, checked by the file's real consumer: every exported file is loaded by ``onnx.checker`` (full check)
and run in ONNX Runtime, and its outputs are compared with quanta's reference path (dequantize, then the float op).

Tolerances:
* weights: the DequantizeLinear output must equal ``QTensor.dequantize()`` bit for bit (same integers, same fp32
  scales, one multiply);
* weight-only models: both sides then compute the same fp32 graph in another order; a length-K dot product in
  fp32 is within ``K * 2**-24`` of exact, relative to the magnitudes involved, per layer (the classic ``gamma_K``
  bound), summed over the layers;
* static activations: ONNX Runtime's QuantizeLinear divides (``x / s``), quanta multiplies by ``1 / s`` (torch's
  rule), so a value within an fp32 rounding of a half step can round to the neighbouring code: codes differ by at
  most one step, and then the layer's output by at most ``s * sum_i |W_ji|``. Over a deep model such flips
  cascade, so there the check is that the export's deviation is small next to quantization's own error.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import quanta
from quanta.demo import DigitsCNN
from quanta.errors import QuantaError, UnsupportedError
from quanta.export import export, exporters
from quanta.export.onnx_check import onnxruntime_session, reference_outputs, run_onnxruntime
from quanta.nn.base import QuantModule
from quanta.primitives.affine import int_range, quantize_affine
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RESNET = DATA / "resnet_cifar10" / "resnet20-12fca82f.th"
CIFAR = DATA / "cifar10_sample"
STORIES = DATA / "stories260K_hf"
EPS = 2.0**-24  # fp32 unit roundoff
RECIPES = ("w8a16", "w8a8", "w4a16-g32", "w4a16-g128")


def _with(model: nn.Module, recipe: str | Recipe, calib: list[torch.Tensor]) -> nn.Module:
    return quanta.quantize(copy.deepcopy(model), recipe, calib=calib)


def _checked(path: Path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not [n for n in proto.graph.node if n.domain == "quanta"]
    return proto


def _weight_only_bound(model: nn.Module, ref: np.ndarray) -> float:
    """Sum over layers of ``K * eps``, relative to the output's magnitude (the fp32 accumulation-order bound)."""
    ks = [m.weight_shape[1:].numel() for m in model.modules() if isinstance(m, QuantModule)]
    return float(sum(ks) * EPS * max(1.0, np.abs(ref).max()))


# -- weights are exact ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["int8:ch", "int4:g32:asym:sf16", "int4:g128:asym:sbf16", "uint8:tensor:asym", "int3:g16", "uint4:g32"]
)
def test_dequantize_linear_reproduces_quanta_weights_bit_for_bit(scheme: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    # 36 conv columns and 288 linear columns: ragged last blocks for g32 / g128, and a reshaped conv weight.
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 40)).eval()
    quanta.quantize(model, Recipe(rules=(Rule(weight=QScheme.parse(scheme)),)))
    path = tmp_path / "m.onnx"
    export(model, "onnx", path, torch.randn(1, 4, 8, 8))
    proto = _checked(path)
    by_name = {n.name: n.output[0] for n in proto.graph.node}
    # A blocked conv weight is dequantized as (out, in * kh * kw), then reshaped; a per-row one directly.
    names = {"0": by_name.get("0.weight_reshape", by_name["0.weight_dq"]), "3": by_name["3.weight_dq"]}
    for name in names.values():
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {"input_0": np.zeros((1, 4, 8, 8), np.float32)}),
            strict=True,
        )
    )
    conv_w = model[0].qweight.dequantize()
    linear_w = model[3].qweight.dequantize()
    assert torch.equal(torch.from_numpy(got[names["0"]]), conv_w)
    assert torch.equal(torch.from_numpy(got[names["3"]]), linear_w.T)  # MatMul's B is (in, out)
    ops = {n.op_type for n in proto.graph.node}
    assert "DequantizeLinear" in ops and not any(
        t.dims == [40, 288] for t in proto.graph.initializer if t.data_type == 1
    )


def test_static_input_codes_differ_from_quanta_by_at_most_one_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).eval()
    calib = [torch.randn(256, 64)]
    quanta.quantize(model, "w8a8", calib=calib)
    layer = model[0]
    path = tmp_path / "m.onnx"
    export(model, "onnx", path, calib[0][:1])
    proto = _checked(path)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("0.input_quantized", onnx.TensorProto.INT8, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(4096, 64) * 1.3
    y, codes = session.run(None, {"input_0": x.numpy()})
    qmin, qmax = int_range(8, True)
    want = quantize_affine(x, layer.act_scale, layer.act_zero, qmin, qmax)
    flips = np.abs(codes.astype(np.int32) - want.numpy())
    assert flips.max() <= 1 and flips.mean() < 1e-3  # only values within an fp32 rounding of a half step
    ref = reference_outputs(model, (x,))
    w = layer.qweight.dequantize()
    bound = float(layer.act_scale) * w.abs().sum(1).max().item() + 64 * EPS * np.abs(ref).max()
    assert np.abs(y - ref).max() <= bound


# -- end to end: demo CNN, ResNet-20, a small transformer --------------------------------------------------------


def _compare(
    model: nn.Module,
    quantized: nn.Module,
    recipe: str,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    trace: tuple[torch.Tensor, ...],
    hf: bool = False,
) -> None:
    result = export(quantized, "onnx", path, trace)
    proto = _checked(path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") >= len(result.quantized)
    blocks = [
        a.i for n in proto.graph.node for a in n.attribute if n.op_type == "DequantizeLinear" and a.name == "block_size"
    ]
    if "-g" in recipe:
        assert blocks and set(blocks) == {int(recipe.split("-g")[1])}
    got = run_onnxruntime(onnxruntime_session(path), inputs)
    ref = reference_outputs(quantized, inputs, hf=hf)
    if recipe == "w8a8":
        assert "QuantizeLinear" in ops
        with torch.no_grad():
            flt = (model(input_ids=inputs[0]).logits if hf else model(*inputs)).numpy()
        quant_error = np.abs(ref - flt).mean()
        assert np.abs(got - ref).mean() <= 0.25 * quant_error
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    else:
        assert np.abs(got - ref).max() <= _weight_only_bound(quantized, ref)


@pytest.mark.parametrize("recipe", RECIPES)
def test_demo_cnn_runs_in_onnxruntime_as_in_quanta(recipe: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(128, 1, 8, 8)
    quantized = _with(model, recipe, [x[:64]])
    _compare(model, quantized, recipe, (x,), tmp_path / "cnn.onnx", (x[:1],))


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    if not RESNET.is_file() or not CIFAR.is_dir():
        pytest.skip(f"{RESNET} / {CIFAR} (shared real data) are not present")
    from quanta.zoo import cifar10_sample, load_pretrained

    return load_pretrained("resnet20", RESNET), cifar10_sample(CIFAR)


@pytest.mark.parametrize("recipe", RECIPES)
def test_resnet20_runs_in_onnxruntime_as_in_quanta(recipe: str, resnet: tuple, tmp_path: Path) -> None:
    model, data = resnet
    quantized = _with(model, recipe, [data["x_train"][:32]])
    _compare(model, quantized, recipe, (data["x_test"][:32],), tmp_path / "r20.onnx", (data["x_test"][:1],))


@pytest.fixture(scope="module")
def stories() -> nn.Module:
    pytest.importorskip("transformers")
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} (shared real data) is not present")
    from quanta.lm.hf import load_hf

    return load_hf(STORIES)[0].eval()


@pytest.mark.parametrize("recipe", RECIPES)
def test_small_llama_runs_in_onnxruntime_as_in_quanta(recipe: str, stories: nn.Module, tmp_path: Path) -> None:
    ids = torch.randint(3, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    quantized = _with(stories, recipe, [ids[:2]])
    # Traced on 8 tokens, run on 32: the sequence length stays free in the graph.
    _compare(stories, quantized, recipe, (ids,), tmp_path / "llama.onnx", (ids[:1, :8],), hf=True)


# -- errors, fallbacks, files --------------------------------------------------------------------------------


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


@pytest.mark.parametrize(("recipe", "says"), [("nf4-g64", "nf4"), ("w8a8-dyn", "dynamically"), ("fp8", "fp8_e4m3")])
def test_unsupported_schemes_raise_listing_what_onnx_supports(recipe: str, says: str, tmp_path: Path) -> None:
    model = quanta.quantize(_small(), recipe, calib=[torch.randn(16, 64)])
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedError, match=says) as info:
        export(model, "onnx", path, torch.randn(1, 64))
    assert "supports integer weights" in str(info.value) and "static per-tensor" in str(info.value)
    assert not path.exists()


def test_allow_float_writes_unsupported_weights_as_float_with_a_warning(tmp_path: Path) -> None:
    model = quanta.quantize(_small(), "nf4-g64")
    path = tmp_path / "m.onnx"
    with pytest.warns(UserWarning, match="dequantized float"):
        result = export(model, "onnx", path, torch.randn(1, 64), allow_float=True)
    assert set(result.in_float) == {"0", "2"}
    _checked(path)
    x = torch.randn(16, 64)
    ref = reference_outputs(model, (x,))
    assert np.abs(run_onnxruntime(onnxruntime_session(path), (x,)) - ref).max() <= _weight_only_bound(model, ref)


def test_export_gives_the_model_back_unchanged(tmp_path: Path) -> None:
    model = quanta.quantize(_small(), "w4a16-g32")
    x = torch.randn(4, 64)
    with torch.no_grad():
        before = model(x)
    export(model, "onnx", tmp_path / "m.onnx", x[:1])
    assert all(isinstance(model[i], QuantModule) for i in (0, 2))
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = quanta.quantize(_small(), "w8a16")
    path = tmp_path / "m.onnx"

    def half_written(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError, match="disk full"):
        export(model, "onnx", path, torch.randn(1, 64))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_missing_inputs_are_errors(tmp_path: Path) -> None:
    model = quanta.quantize(_small(), "w8a16")
    assert "onnx" in exporters()
    with pytest.raises(QuantaError, match=r"available: .*onnx"):
        export(model, "tflite", tmp_path / "m.tflite", torch.randn(1, 64))
    with pytest.raises(QuantaError, match="example_inputs"):
        export(model, "onnx", tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match="opset"):
        export(model, "onnx", tmp_path / "m.onnx", torch.randn(1, 64), opset=17)


def test_cli_exports_a_saved_zoo_model_and_verifies_it(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from quanta.cli import app
    from quanta.zoo import build

    torch.manual_seed(0)
    model = build("resnet20").eval()
    quanta.quantize(model, "w4a16-g32")
    quanta.save(model, tmp_path / "q")
    out = tmp_path / "r20.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = CliRunner().invoke(app, ["export", str(tmp_path / "q"), "--format", "onnx", "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    info = json.loads(run.stdout)
    assert info["bytes"] == out.stat().st_size and len(info["quantized"]) == 20
    assert info["max_abs_diff_vs_quanta"] <= 1e-3
    _checked(out)
    again = CliRunner().invoke(app, ["export", str(tmp_path / "q"), "--format", "onnx", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_input_smoothing_becomes_a_multiply_before_the_input_qdq(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scales = torch.tensor([50.0, 1.0, 0.02, 3.0] * 4)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    calib = [torch.randn(256, 16) * scales]
    quantized = quanta.quantize(copy.deepcopy(model), "w8a8-smoothinput", calib=calib)
    path = tmp_path / "m.onnx"
    export(quantized, "onnx", path, calib[0][:1])
    assert "Mul" in [n.op_type for n in _checked(path).graph.node]
    x = torch.randn(2048, 16) * scales
    got = run_onnxruntime(onnxruntime_session(path), (x,))
    ref = reference_outputs(quantized, (x,))
    with torch.no_grad():
        quant_error = np.abs(ref - model(x).numpy()).mean()
    assert np.abs(got - ref).mean() <= 0.25 * quant_error  # as any w8a8 export: only half-step code flips differ
