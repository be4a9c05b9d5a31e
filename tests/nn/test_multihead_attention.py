"""Packed nn.MultiheadAttention: equal to the float module on the dequantized projections, for every argument."""

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import quanta
from quanta.errors import UnsupportedError
from quanta.nn.linear import QuantLinear
from quanta.nn.multihead_attention import QuantMultiheadAttention

torch_ao = pytest.importorskip("torch.ao.quantization")

E, HEADS = 16, 4
CONFIGS: list[dict[str, Any]] = [
    {},
    {"batch_first": True},
    {"kdim": 12, "vdim": 8},  # separate q/k/v projections
    {"add_bias_kv": True, "add_zero_attn": True, "batch_first": True},
    {"bias": False},
]
IDS = ["-".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS]


@pytest.fixture(autouse=True)
def _general_path() -> Any:
    """The reference is nn.MultiheadAttention's general path, which the twin takes: torch's fused inference
    fast path (a different kernel, equal only to fp32 rounding) is turned off while these tests run."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(before)


def _mha(**options: Any) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, **options).eval()
    with torch.no_grad():  # non-zero biases, so that keeping them float is checked too
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_()
    return mha


def _quantized(float_mha: nn.MultiheadAttention, preset: str = "w4a16-g4") -> QuantMultiheadAttention:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # out_proj is part of the twin: no "no quantized twin" warning for it
        packed = quanta.quantize(nn.Sequential(copy.deepcopy(float_mha)), preset)[0]
    assert isinstance(packed, QuantMultiheadAttention)
    return packed


def _dequantized_twin(packed: QuantMultiheadAttention, float_mha: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """Independent reference: the float module with each projection replaced by its dequantized QTensor (frozen
    like the twin's: torch picks another matmul kernel for weights that require grad, equal only to fp32 rounding)."""
    ref = copy.deepcopy(float_mha).requires_grad_(False)
    with torch.no_grad():
        for name, qt in packed.qweights.items():
            target = ref.out_proj.weight if name == "out_proj_weight" else getattr(ref, name)
            target.copy_(qt.dequantize())
    return ref


def _qkv(options: dict[str, Any], batch: int = 3, tgt: int = 5, src: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)

    def seq(length: int, dim: int) -> torch.Tensor:
        shape = (batch, length, dim) if options.get("batch_first") else (length, batch, dim)
        return torch.randn(*shape, generator=g)

    return seq(tgt, E), seq(src, options.get("kdim", E)), seq(src, options.get("vdim", E))


def _assert_same(out: tuple[torch.Tensor, torch.Tensor | None], expected: tuple[torch.Tensor, torch.Tensor | None]):
    assert torch.equal(out[0], expected[0])
    assert (out[1] is None) == (expected[1] is None)
    if out[1] is not None and expected[1] is not None:
        assert torch.equal(out[1], expected[1])


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
def test_equals_float_module_on_dequantized_weights(options: dict[str, Any]) -> None:
    float_mha = _mha(**options)
    packed = _quantized(float_mha)
    expected_names = {"q_proj_weight", "k_proj_weight", "v_proj_weight"} if "kdim" in options else {"in_proj_weight"}
    assert set(packed.qweights) == expected_names | {"out_proj_weight"}
    assert all(p.dim() == 1 or name in ("bias_k", "bias_v") for name, p in packed.named_parameters())
    ref = _dequantized_twin(packed, float_mha)
    q, k, v = _qkv(options)
    _assert_same(packed(q, k, v), ref(q, k, v))
    _assert_same(packed(q, k, v, need_weights=False), ref(q, k, v, need_weights=False))
    _assert_same(packed(q, k, v, average_attn_weights=False), ref(q, k, v, average_attn_weights=False))
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False, True] * 3])  # (batch, src)
    bool_mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) > 0.7  # (tgt, src)
    bool_mask[:, 0] = False  # every query sees at least one key
    float_mask = torch.randn(5, 6)
    for kwargs in ({"key_padding_mask": padding}, {"attn_mask": bool_mask, "key_padding_mask": padding}):
        _assert_same(packed(q, k, v, **kwargs), ref(q, k, v, **kwargs))
    _assert_same(packed(q, k, v, attn_mask=float_mask), ref(q, k, v, attn_mask=float_mask))
    if "kdim" not in options:  # self-attention: one tensor for query, key and value; causal
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        _assert_same(packed(q, q, q, attn_mask=causal, is_causal=True), ref(q, q, q, attn_mask=causal, is_causal=True))
        unbatched = q[0] if options.get("batch_first") else q[:, 0]  # (seq, E)
        _assert_same(packed(unbatched, unbatched, unbatched), ref(unbatched, unbatched, unbatched))


def test_inside_a_transformer_encoder_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    float_layer = nn.TransformerEncoderLayer(E, HEADS, 32, dropout=0.0, batch_first=True).eval()
    layer = quanta.quantize(copy.deepcopy(float_layer), "w8a16")
    assert isinstance(layer.self_attn, QuantMultiheadAttention)
    assert isinstance(layer.linear1, QuantLinear) and isinstance(layer.linear2, QuantLinear)
    ref = _dequantized_twin(layer.self_attn, float_layer.self_attn)
    ref_layer = copy.deepcopy(float_layer).requires_grad_(False)
    ref_layer.self_attn = ref
    with torch.no_grad():
        ref_layer.linear1.weight.copy_(layer.linear1.qweight.dequantize())
        ref_layer.linear2.weight.copy_(layer.linear2.qweight.dequantize())
    x = torch.randn(2, 7, E)  # (batch, seq, E)
    mask = nn.Transformer.generate_square_subsequent_mask(7)
    y = layer(x, src_mask=mask)
    assert torch.equal(y, ref_layer(x, src_mask=mask))
    # Size: 1 byte per projection weight + one fp32 scale per output row; biases and norms stay float.
    projections = [float_layer.self_attn.in_proj_weight, float_layer.self_attn.out_proj.weight]
    projections += [float_layer.linear1.weight, float_layer.linear2.weight]
    floats = [p for p in float_layer.parameters() if not any(p is w for w in projections)]
    assert quanta.model_nbytes(layer) == sum(w.numel() + 4 * w.shape[0] for w in projections) + 4 * sum(
        p.numel() for p in floats
    )
    path = quanta.save(layer, tmp_path / "encoder")
    with torch.device("meta"):
        skeleton = nn.TransformerEncoderLayer(E, HEADS, 32, dropout=0.0, batch_first=True).eval()
    loaded = quanta.load(path, skeleton)
    assert isinstance(loaded.self_attn, QuantMultiheadAttention)
    assert torch.equal(loaded(x, src_mask=mask), y)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _mha(batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_static_int8_inputs_match_torch_observer() -> None:
    calib = [torch.randn(2, 5, E, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    observer = torch_ao.MinMaxObserver(
        dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127
    )
    for x in calib:
        observer(x)
    float_model = SelfAttention()
    model = quanta.quantize(SelfAttention(), "w8a8", calib=calib)
    packed = model.attn
    assert isinstance(packed, QuantMultiheadAttention)
    scale, zero = observer.calculate_qparams()
    assert float(packed.act_scale) == pytest.approx(float(scale), rel=1e-6)
    x = torch.randn(2, 5, E)
    xq = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), -128, 127)
    ref = _dequantized_twin(packed, float_model.attn)
    torch.testing.assert_close(model(x), ref(xq, xq, xq, need_weights=False)[0], rtol=0, atol=1e-6)
    with pytest.raises(UnsupportedError, match="cross-attention"):
        packed(x, x + 1, x + 1)


def test_dynamic_per_token_inputs_for_cross_attention() -> None:
    float_mha = _mha(kdim=12, vdim=8)
    packed = _quantized(float_mha, "w8a8-dyn")
    q, k, v = _qkv({"kdim": 12, "vdim": 8})

    def fake_quant(x: torch.Tensor) -> torch.Tensor:  # symmetric per token on codes -128..127
        scale = torch.maximum(-x.amin(-1, keepdim=True) / 128, x.amax(-1, keepdim=True) / 127)
        return torch.clamp(torch.round(x / scale), -128, 127) * scale

    ref = _dequantized_twin(packed, float_mha)
    out, weights = packed(q, k, v)
    expected, expected_weights = ref(fake_quant(q), fake_quant(k), fake_quant(v))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
