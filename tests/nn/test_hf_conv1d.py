"""Packed transformers Conv1D (GPT-2's projections): per-output-feature scales, equal to the float Conv1D."""

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import CorruptDataError
from quanta.nn.hf_conv1d import QuantHFConv1D
from quanta.primitives.metrics import sqnr_db

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _transformers() -> Any:
    return pytest.importorskip("transformers", reason="transformers is not installed (pip install quanta[hf])")


def _conv1d(nf: int = 24, nx: int = 64) -> nn.Module:
    conv1d = _transformers().pytorch_utils.Conv1D
    torch.manual_seed(0)
    module = conv1d(nf, nx)
    with torch.no_grad():
        module.bias.normal_()
    return module


@pytest.mark.parametrize(("preset", "scheme"), [("w8a16", "int8:ch"), ("w4a16-g32", "int4:g32:asym:sf16")])
def test_scales_run_per_output_feature_and_output_equals_float(preset: str, scheme: str) -> None:
    float_conv = _conv1d()
    packed = quanta.quantize(nn.Sequential(copy.deepcopy(float_conv)), preset)[0]
    assert isinstance(packed, QuantHFConv1D)
    # Independent reference: quantize W^T (out, in) as a Linear weight, one channel per output feature.
    w = float_conv.weight.detach()  # (nx=in, nf=out)
    as_linear = quanta.quantize_tensor(w.t().contiguous(), scheme).dequantize()  # (out, in)
    assert torch.equal(packed.qweight.dequantize(), as_linear.t())
    ref = copy.deepcopy(float_conv).requires_grad_(False)
    with torch.no_grad():
        ref.weight.copy_(as_linear.t())
    x = torch.randn(2, 5, 64)
    # Same weights, same sums; the GEMM layouts differ (Conv1D's addmm on (in, out) vs a linear on (out, in)).
    torch.testing.assert_close(packed(x), ref(x))  # fp32 tolerances
    if preset == "w8a16":  # 1 byte per weight, an fp32 scale per output feature, float bias
        assert quanta.model_nbytes(packed) == 64 * 24 + 4 * 24 + 4 * 24


def test_tiny_gpt2_quantized_saved_and_reloaded(tmp_path: Path) -> None:
    transformers = _transformers()
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64)
    torch.manual_seed(0)
    float_model = transformers.GPT2LMHeadModel(config).eval()
    model = quanta.quantize(copy.deepcopy(float_model), "w8a16")
    conv1d = transformers.pytorch_utils.Conv1D
    packed = {n: m for n, m in model.named_modules() if isinstance(m, QuantHFConv1D)}
    assert set(packed) == {n for n, m in float_model.named_modules() if isinstance(m, conv1d)}
    assert len(packed) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
        # Reference: the float model with each Conv1D weight replaced by its dequantized QTensor.
        ref = copy.deepcopy(float_model)
        for name, module in packed.items():
            ref.get_submodule(name).weight.copy_(module.qweight.dequantize())
        torch.testing.assert_close(logits, ref(ids).logits, rtol=0, atol=1e-5)
        assert sqnr_db(float_model(ids).logits, logits) > 30.0  # 8-bit weights: ~6 dB per bit, less margin
    path = quanta.save(model, tmp_path / "gpt2")
    loaded = quanta.load(path, transformers.GPT2LMHeadModel(config).eval())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_wrong_layout_is_refused() -> None:
    float_conv = _conv1d(nf=24, nx=64)
    transposed = quanta.quantize_tensor(float_conv.weight.detach().t().contiguous(), "int8:ch")  # (out, in)
    with pytest.raises(CorruptDataError, match="axis 0"):
        QuantHFConv1D.from_float(float_conv, transposed)


def test_quanta_imports_without_transformers() -> None:
    # A None entry in sys.modules makes `import transformers` raise ImportError, as if it were not installed.
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import quanta, torch\n"
        "from quanta.nn import hf_conv1d, registered_types\n"
        "assert hf_conv1d.hf_conv1d is None\n"
        "assert torch.nn.LSTM in registered_types() and hf_conv1d.QuantHFConv1D not in registered_types()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
