"""Hugging Face checkpoints: export in the compressed-tensors pack-quantized layout, checked against the
independent references, transformers' ``from_pretrained`` and compressed-tensors' own decompressor (and its
AutoAWQ converter); import of compressed-tensors, GPTQ and AWQ layouts, whose test packers below are written from
the formats' documented definitions (AutoGPTQ's ``QuantLinear.pack``, AutoAWQ's ``WQLinear_GEMM``), not from the
reader; and GPTQ -> quanta -> GGUF with the ``gguf`` package's reader."""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import quanta
from quanta.errors import UnsupportedError
from quanta.export import export
from quanta.export.hf_import import gptq_to_qtensor
from quanta.nn.linear import QuantLinear
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.tensor import QTensor

transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")
safetensors_torch = pytest.importorskip("safetensors.torch")

STORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stories260K_hf"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason=f"{STORIES} (shared real data) is not present")
IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
# Weights decompress bit-exactly, so logits differ by fp32 reordering at most: K * eps * |value| for the longest
# reduction (K = 172, the MLP width), relative to the largest logit.
K_MAX = 172


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stories() -> torch.nn.Module:
    from quanta.lm.hf import load_hf

    return load_hf(STORIES)[0]


def _quantized(base: torch.nn.Module, scheme: str, skip: str | None = None) -> torch.nn.Module:
    rules = [Rule(pattern="*lm_head", skip=True)] + ([Rule(pattern=skip, skip=True)] if skip else [])
    rules.append(Rule("model.*", "Linear", weight=QScheme.parse(scheme)))
    return quanta.quantize(copy.deepcopy(base), Recipe(tuple(rules)))


def _packed(model: torch.nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


SCHEMES = ["int8:ch", "int4:g32:asym:sf16", "int4:g32:sf16", "int8:ch:asym", "uint4:g64:asym", "int4:ch:asym"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transformers_reloads_export_with_quanta_logits(stories, scheme, tmp_path, monkeypatch) -> None:
    model = _quantized(stories, scheme)
    result = export(model, "hf", tmp_path / "out")
    assert set(result.quantized) == set(_packed(model))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    with torch.no_grad():
        want, got = model(IDS).logits, hf(IDS).logits
    tol = K_MAX * torch.finfo(torch.float32).eps * float(want.abs().max())
    assert float((got - want).abs().max()) <= tol
    # After the first forward (symmetric files decompress lazily, asymmetric ones on load) every weight is
    # compressed-tensors' decompression, which must equal quanta's bit for bit.
    for name, module in _packed(model).items():
        assert torch.equal(hf.get_submodule(name).weight, module.qweight.dequantize()), name


def test_quantized_lm_head_is_written_untied(stories, tmp_path, monkeypatch) -> None:
    model = quanta.quantize(copy.deepcopy(stories), Recipe((Rule("*", "Linear", weight=QScheme.parse("int8:ch")),)))
    assert isinstance(model.lm_head, QuantLinear)  # tied to the float embedding before quantization
    export(model, "hf", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    monkeypatch.setenv("QUANTA_KERNEL", "reference")
    with torch.no_grad():
        want, got = model(IDS).logits, hf(IDS).logits
    assert torch.equal(hf.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert float((got - want).abs().max()) <= K_MAX * torch.finfo(torch.float32).eps * float(want.abs().max())
    with torch.no_grad():
        assert torch.equal(quanta.load(tmp_path / "out")(IDS).logits, want)


@pytest.mark.parametrize("scheme", ["int4:g32:asym:sf16", "int8:ch", "uint4:g64:asym"])
def test_compressed_tensors_decompressor_gives_dequantize(stories, scheme, tmp_path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    model = _quantized(stories, scheme)
    export(model, "hf", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    tensors = safetensors_torch.load_file(str(tmp_path / "out" / "model.safetensors"))
    for group in config["config_groups"].values():
        cts = QuantizationScheme(targets=group["targets"], weights=group["weights"])
        for name in group["targets"]:
            local = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.weight_")}
            weight = PackedQuantizationCompressor.decompress(local, cts)["weight"]
            assert torch.equal(weight, model.get_submodule(name).qweight.dequantize()), name


def test_compressed_tensors_import_keeps_codes(stories, tmp_path) -> None:
    model = _quantized(stories, "int4:g32:asym:sf16")
    export(model, "hf", tmp_path / "out")
    back = quanta.load(tmp_path / "out")  # config.json's quantization_config: read by hf_import
    for name, module in _packed(model).items():
        a, b = module.qweight, back.get_submodule(name).qweight
        assert str(a.scheme) == str(b.scheme) and torch.equal(a.codes, b.codes), name
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, model(IDS).logits)
    quanta.save(back, tmp_path / "saved")  # and quanta's own format takes it
    with torch.no_grad():
        assert torch.equal(quanta.load(tmp_path / "saved")(IDS).logits, model(IDS).logits)
    # Without quanta's scheme entry the file's own scheme is read: groups of 4 (172 = gcd(32, 172) * 43), fp32.
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    del config["quanta"]
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    plain = quanta.load(tmp_path / "out")
    down = plain.get_submodule("model.layers.0.mlp.down_proj").qweight
    assert str(down.scheme) == "int4:g4:asym"
    assert torch.equal(down.dequantize(), model.get_submodule("model.layers.0.mlp.down_proj").qweight.dequantize())


# -- GPTQ and AWQ layouts (test packers from the formats' definitions) ---------------------------------------


def _gptq_pack(codes_t: np.ndarray, zeros: np.ndarray, bits: int, old_format: bool) -> tuple[np.ndarray, np.ndarray]:
    """AutoGPTQ QuantLinear.pack: rows i*per..i*per+per-1 of column j in qweight[i, j], row k at bits k*bits;
    zeros (minus one in the old format, wrapping) packed the same way across columns."""
    per, mask = 32 // bits, (1 << bits) - 1
    qweight = np.zeros((codes_t.shape[0] // per, codes_t.shape[1]), dtype=np.uint32)
    for i in range(qweight.shape[0]):
        for k in range(per):
            qweight[i] |= codes_t[i * per + k].astype(np.uint32) << np.uint32(bits * k)
    stored = ((zeros - 1) & mask if old_format else zeros).astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // per), dtype=np.uint32)
    for j in range(qzeros.shape[1]):
        for k in range(per):
            qzeros[:, j] |= stored[:, j * per + k] << np.uint32(bits * k)
    return qweight.view(np.int32), qzeros.view(np.int32)


def _awq_pack(values: np.ndarray) -> np.ndarray:
    """AutoAWQ WQLinear_GEMM: columns col*8 + [0, 2, 4, 6, 1, 3, 5, 7][i] at bits 4*i of word col."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    out = np.zeros((values.shape[0], values.shape[1] // 8), dtype=np.uint32)
    for col in range(out.shape[1]):
        for i in range(8):
            out[:, col] |= values[:, col * 8 + order[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def _raw(qt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsigned codes (in, out), zeros (groups, out), fp16 scales (groups, out) of a uint4 QTensor."""
    codes = qt.unpacked_codes().T.numpy().astype(np.int64)
    zeros = qt.params["zero"] if "zero" in qt.params else torch.full_like(qt.params["scale"], 8, dtype=torch.int32)
    return codes, zeros.T.numpy().astype(np.int64), qt.params["scale"].T.contiguous().numpy()


def _write_checkpoint(model, tmp: Path, quantization_config: dict, layer_tensors) -> Path:
    out = tmp / "ckpt"
    out.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    packed = _packed(model)
    for name, module in packed.items():
        tensors.update({f"{name}.{k}": v for k, v in layer_tensors(module.qweight).items()})
    for name, param in model.named_parameters():
        if name.rpartition(".")[0] not in packed:
            tensors[name] = param.detach().contiguous()
    safetensors_torch.save_file(tensors, str(out / "model.safetensors"))
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, default=str))
    for file in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (out / file).write_bytes((STORIES / file).read_bytes())
    return out


@pytest.mark.parametrize(
    ("scheme", "fmt", "ggml"),
    [
        ("uint4:g32:asym:sf16", "gptq", "Q4_1"),
        ("uint4:g32:asym:sf16", "gptq_v2", "Q4_1"),
        ("uint4:g32:sf16", "gptq", "Q4_0"),
    ],
)
def test_gptq_layout_round_trip_and_gguf_codes(stories, scheme, fmt, ggml, tmp_path) -> None:
    from quanta.export.gguf_import import read_gguf
    from quanta.export.gguf_model import load_gguf_llama

    model = _quantized(stories, scheme, skip="*.mlp.*")  # 172 rows/columns: GPTQ packs 8 a word
    for name, module in _packed(model).items():  # power-of-two scales: Q4_1's offset -z*s is then exact in fp16
        qt = module.qweight
        scale = torch.exp2(torch.round(torch.log2(qt.params["scale"].float()))).to(qt.params["scale"].dtype)
        qt = QTensor(qt.codes, {**qt.params, "scale": scale}, qt.scheme, qt.shape, qt.dtype, qt.axis)
        model.set_submodule(name, QuantLinear(module.in_features, module.out_features, qt, None))

    def layer(qt) -> dict[str, torch.Tensor]:
        codes, zeros, scales = _raw(qt)
        qweight, qzeros = _gptq_pack(codes, zeros, 4, old_format=fmt == "gptq")
        g_idx = np.arange(codes.shape[0], dtype=np.int32) // 32
        return {
            "qweight": torch.from_numpy(qweight),
            "qzeros": torch.from_numpy(qzeros),
            "scales": torch.from_numpy(scales),
            "g_idx": torch.from_numpy(g_idx),
        }

    qc = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 32,
        "desc_act": False,
        "sym": "asym" not in scheme,
        "checkpoint_format": fmt,
    }
    path = _write_checkpoint(model, tmp_path, qc, layer)
    back = quanta.load(path)
    for name, module in _packed(model).items():
        a, b = module.qweight, back.get_submodule(name).qweight
        assert str(b.scheme) == scheme and torch.equal(a.codes, b.codes), name
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a requantization would warn: the transcoding must be lossless
        export(back, "gguf", tmp_path / "m.gguf")
    assert {t for n, t in read_gguf(tmp_path / "m.gguf").types.items() if "attn_v" in n} == {ggml}
    gguf_model = load_gguf_llama(tmp_path / "m.gguf")  # q/k rows put back in transformers' order
    for name, module in _packed(model).items():
        got = gguf_model.get_submodule(name).qweight
        assert torch.equal(got.unpacked_codes(), module.qweight.unpacked_codes()), name
        assert torch.equal(got.dequantize(), module.qweight.dequantize()), name


def test_gptq_act_order_is_reordered_and_the_model_loader_refuses(stories, tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    rows_in, out, group = 64, 16, 16
    codes = torch.randint(0, 16, (rows_in, out), generator=g).numpy()
    zeros = torch.randint(1, 16, (rows_in // group, out), generator=g).numpy()  # old format: no zero 0
    scales = (torch.rand(rows_in // group, out, generator=g) + 0.5).half().numpy()
    perm = torch.randperm(rows_in, generator=g)
    g_idx = torch.empty(rows_in, dtype=torch.int32)
    g_idx[perm] = (torch.arange(rows_in) // group).int()  # act-order: row perm[i] is the i-th quantized
    qweight, qzeros = _gptq_pack(codes, zeros, 4, old_format=True)
    qt, order = gptq_to_qtensor(torch.from_numpy(qweight), torch.from_numpy(qzeros), torch.from_numpy(scales), g_idx, 4)
    assert order is not None
    gi = g_idx.long().numpy()
    reference = (codes - zeros[gi]) * scales[gi].astype(np.float32)  # W^T (in, out) as GPTQ defines it
    assert torch.equal(qt.dequantize(), torch.from_numpy(reference).T[:, order])
    model = _quantized(stories, "uint4:g16:asym:sf16", skip="*.mlp.*")

    def layer(q) -> dict[str, torch.Tensor]:
        c, z, s = _raw(q)
        qw, qz = _gptq_pack(c, z, 4, old_format=True)
        gidx = np.random.default_rng(0).permutation(np.arange(c.shape[0], dtype=np.int32) // 16)
        return {
            "qweight": torch.from_numpy(qw),
            "qzeros": torch.from_numpy(qz),
            "scales": torch.from_numpy(s),
            "g_idx": torch.from_numpy(gidx),
        }

    qc = {"quant_method": "gptq", "bits": 4, "group_size": 16, "desc_act": True, "sym": False}
    with pytest.raises(UnsupportedError, match="act-order"):
        quanta.load(_write_checkpoint(model, tmp_path, qc, layer))


def test_awq_layout_round_trip_matches_compressed_tensors_converter(stories, tmp_path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
    from compressed_tensors.quantization import QuantizationScheme

    model = _quantized(stories, "uint4:g32:asym:sf16", skip="*.mlp.*")  # 172 columns: AWQ packs 8 a word

    def layer(qt) -> dict[str, torch.Tensor]:
        codes, zeros, scales = _raw(qt)
        return {
            "qweight": torch.from_numpy(_awq_pack(codes)),
            "qzeros": torch.from_numpy(_awq_pack(zeros)),
            "scales": torch.from_numpy(scales),
        }

    qc = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    path = _write_checkpoint(model, tmp_path, qc, layer)
    back = quanta.load(path)
    converter = AutoAWQConverter(group_size=32)
    cts = QuantizationScheme(
        targets=["Linear"], weights={"num_bits": 4, "symmetric": False, "group_size": 32, "strategy": "group"}
    )
    for name, module in _packed(model).items():
        a, b = module.qweight, back.get_submodule(name).qweight
        assert str(b.scheme) == "uint4:g32:asym:sf16" and torch.equal(a.codes, b.codes), name
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
        peer = converter.process({f"x.{k}": v for k, v in layer(a).items()})  # the peer's AWQ unpacker
        local = {k.removeprefix("x."): v.float() if k.endswith("scale") else v for k, v in peer.items()}
        assert torch.equal(PackedQuantizationCompressor.decompress(local, cts)["weight"], b.dequantize()), name


# -- errors and atomic writes -----------------------------------------------------------------------------


def test_unsupported_schemes_raise_listing_supported(stories, tmp_path) -> None:
    for scheme in ("nf4:g64:sf16", "int4:g32:fmin"):
        with pytest.raises(UnsupportedError, match=r"int1\.\.int8 / uint1\.\.uint8"):
            export(_quantized(stories, scheme), "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    mixed = _quantized(stories, "int8:ch", skip="*down_proj")
    quanta.quantize(mixed, Recipe((Rule("*down_proj", "Linear", weight=QScheme.parse("nf4:g4")),)))
    result = export(mixed, "hf", tmp_path / "out", allow_float=True)
    assert set(result.in_float) == {f"model.layers.{i}.mlp.down_proj" for i in range(5)}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    down = mixed.get_submodule("model.layers.0.mlp.down_proj").qweight.dequantize()
    assert torch.equal(hf.get_submodule("model.layers.0.mlp.down_proj").weight, down)


def test_input_smoothing_is_refused_or_folded_back_into_float_weights(stories, tmp_path) -> None:
    linear = Rule("model.*", "Linear", weight=QScheme.parse("int8:ch"), method="smoothinput")
    smoothed = quanta.quantize(
        copy.deepcopy(stories), Recipe((Rule(pattern="*lm_head", skip=True), linear)), calib=[IDS]
    )
    with pytest.raises(UnsupportedError, match="input smoothing"):
        export(smoothed, "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    export(smoothed, "hf", tmp_path / "out", allow_float=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    with torch.no_grad():
        want, got = smoothed(input_ids=IDS).logits, hf(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # the smoothing is in the float weights


def test_export_is_atomic(stories, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(importlib.import_module("quanta.export.hf"), "save_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        export(_quantized(stories, "int8:ch"), "hf", out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind
    assert (out / "old.txt").read_text() == "previous export"


def test_cli_export_hf(stories, tmp_path) -> None:
    from typer.testing import CliRunner

    from quanta.cli import app

    quanta.save(_quantized(stories, "int4:g32:sf16"), tmp_path / "q")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "q"), "-f", "hf", "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["quantized"]["model.layers.0.mlp.up_proj"] == "int4:g32:sf16 -> pack-quantized int4 group g32"
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (tmp_path / "o" / "tokenizer.json").is_file()
