"""GGUF export and import, checked against the independent reference: the ``gguf`` package's reader and its
numpy dequantizers (``gguf.quants.dequantize``), plus llama.cpp itself when llama-cpp-python is installed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import quanta
from quanta.errors import CorruptDataError, QuantaError, UnsupportedError
from quanta.export import export
from quanta.export.gguf_codec import encode, lossless_type, requantize
from quanta.export.gguf_import import read_gguf
from quanta.export.gguf_model import load_gguf_llama
from quanta.nn.linear import QuantLinear
from quanta.primitives.packing import pack
from quanta.recipe import Recipe, Rule
from quanta.scheme import QScheme
from quanta.tensor import QTensor

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STORIES = DATA / "stories260K_hf"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(), reason=f"{STORIES} (shared real data) is not present")
T = gguf.GGMLQuantizationType


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # The tiny models here run thousands of small ops; on 2 shared cores extra threads only add waiting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(data: np.ndarray, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(np.array(data), T[kind])).reshape(shape)


def _tiny_llama(hidden: int = 256, layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    setattr(model, "quanta_hf_source", str(STORIES))  # noqa: B010  # stories260K's 512-piece tokenizer
    return model


def _quantized(model: torch.nn.Module, scheme: str) -> torch.nn.Module:
    return quanta.quantize(model, Recipe((Rule("*", "Linear", weight=QScheme.parse(scheme)),)))


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [
        ("int8:g32:sf16", "Q8_0"),
        ("int8:g64:sf16", "Q8_0"),  # a group of 64 is two Q8_0 blocks with the same d
        ("int8:ch:narrow:sf16", "Q8_0"),
        ("uint8:g32:sf16", "Q8_0"),
        ("int4:g32:sf16", "Q4_0"),
        ("uint4:g32:sf16", "Q4_0"),
        ("int4:g32:fmin:sf16", "Q4_1"),
        ("uint4:g64:fmin:sf16", "Q4_1"),
    ],
)
def test_lossless_schemes_transcode_bit_exactly(scheme: str, kind: str) -> None:
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    w[3, :32] = 0  # an all-zero block: ggml writes d = 0 there
    qt = quanta.quantize_tensor(w, scheme)
    assert lossless_type(qt) == (kind, "")
    data = encode(qt, kind)
    assert torch.equal(_reference(data, kind, (16, 256)), qt.dequantize())
    blocks = data.reshape(-1, data.shape[1] // 8)  # 8 blocks of 32 per row
    d = torch.from_numpy(blocks[:, :2].copy().view(np.float16).reshape(-1)).float()
    scale = qt.params["scale"].float().reshape(16, -1).repeat_interleave(256 // 32 // qt.grouping.n_groups, 1)
    idle = d == 0
    assert bool(idle.any()) or ("fmin" in scheme and "g32" not in scheme)  # zeros are not a code of a g64 min
    assert torch.equal(d[~idle].abs(), scale.reshape(-1)[~idle])  # the fp16 scales carried over unchanged
    if kind == "Q8_0":  # the int8 codes themselves, relative to the symmetric zero point
        codes = qt.unpacked_codes().reshape(-1, 32) - (128 if scheme.startswith("uint") else 0)
        assert torch.equal(torch.from_numpy(blocks[:, 2:].copy().view(np.int8)).int()[~idle], codes[~idle])


def test_asymmetric_int4_goes_to_q4_1_when_the_offset_is_exact_in_fp16() -> None:
    g = torch.Generator().manual_seed(2)
    rows, cols = 8, 128
    codes = torch.randint(0, 16, (rows * cols,), generator=g)
    zero = torch.randint(0, 16, (rows, cols // 32), generator=g).to(torch.uint8)
    scheme = QScheme.parse("uint4:g32:asym:sf16")
    exact = (2.0 ** -torch.randint(2, 8, (rows, cols // 32), generator=g).float()).half()  # -z * s exact
    qt = QTensor(pack(codes, 4), {"scale": exact, "zero": zero}, scheme, torch.Size((rows, cols)))
    assert lossless_type(qt)[0] == "Q4_1"
    assert torch.equal(_reference(encode(qt, "Q4_1"), "Q4_1", (rows, cols)), qt.dequantize())
    odd = QTensor(pack(codes, 4), {"scale": exact * 1.0009765625 / 3, "zero": zero}, scheme, qt.shape)
    kind, why = lossless_type(odd)
    assert kind is None and "fp16" in why
    with pytest.raises(UnsupportedError, match="losslessly"):
        encode(odd, "Q4_1")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q4_K"])
def test_requantize_error_is_at_most_half_a_step(kind: str) -> None:
    w = torch.randn(16, 512, generator=torch.Generator().manual_seed(3)) * 0.05
    data = encode(requantize(w, kind), kind)
    err = (_reference(data, kind, (16, 512)) - w).abs()
    if kind == "Q4_K":  # step of each 32-value sub-block: d * sc, both read with gguf's own unpacking
        blocks = data.reshape(-1, 144)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        sc, _ = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
        step = torch.from_numpy(d * sc.astype(np.float32)).reshape(16, -1).repeat_interleave(32, 1)
    else:
        half = data.reshape(-1, data.shape[1] // 16)[:, :2].copy().view(np.float16).astype(np.float32)
        step = torch.from_numpy(np.abs(half)).reshape(16, -1).repeat_interleave(32, 1)
    assert bool((err <= step * (0.5 + 2**-10)).all())


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_requantized_tensors_warn_and_stay_within_the_q4_k_step(tmp_path: Path) -> None:
    model = _quantized(_tiny_llama(), "int4:g128")  # no lossless GGUF form: requantized to Q4_K
    path = tmp_path / "m.gguf"
    with pytest.warns(UserWarning, match="requantized"):
        result = export(model, "gguf", path)
    reader = gguf.GGUFReader(str(path))
    q = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert q.tensor_type == T.Q4_K
    quanta_w = model.model.layers[0].mlp.up_proj.qweight.dequantize()
    err = (_reference(q.data, "Q4_K", tuple(quanta_w.shape)) - quanta_w).abs()
    blocks = np.asarray(q.data).reshape(-1, 144)
    sc, _ = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
    step = blocks[:, :2].copy().view(np.float16).astype(np.float32) * sc.astype(np.float32)
    assert bool((err <= torch.from_numpy(step).reshape(err.shape[0], -1).repeat_interleave(32, 1) * 0.501).all())
    assert "requantized" in result.quantized["blk.0.ffn_up.weight"]


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_k_quants_on_a_random_llama_and_rope_row_order(tmp_path: Path) -> None:
    model = _tiny_llama(hidden=256, layers=2)
    path = tmp_path / "k.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float weights quantized on request: no warning
        result = export(model, "gguf", path, qtype="Q4_K")
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert {types[n] for n in types if "norm" not in n} == {T.Q4_K} and types["output_norm.weight"] == T.F32
    assert len(types) == 2 * 9 + 3 and not result.in_float
    meta = read_gguf(path).metadata
    assert (meta["llama.block_count"], meta["llama.attention.head_count_kv"], meta["llama.embedding_length"]) == (
        2,
        2,
        256,
    )
    assert len(meta["tokenizer.ggml.tokens"]) == 512 and meta["general.file_type"] == 15
    wq = model.model.layers[1].self_attn.q_proj.weight.detach()
    # llama.cpp's rope pairs rows (i, i + half) of each head: rotate-half -> interleaved, per head of 64 rows
    perm = torch.arange(256).reshape(4, 2, 32).transpose(1, 2).reshape(-1)
    t = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    got = _reference(t.data, "Q4_K", (256, 256))
    assert float((got - wq[perm]).abs().max()) < 0.5 * float((got - wq).abs().max())
    assert float((got - wq[perm]).abs().max()) <= float(wq.abs().max()) * 2 / 15 / 2 * 1.01  # half a Q4_K step


@needs_stories
def test_stories260k_rows_of_172_fall_back_to_float_and_are_reported(tmp_path: Path) -> None:
    model, _ = quanta.lm.load_hf(STORIES)
    _quantized(model, "int8:g32:sf16")
    path = tmp_path / "s.gguf"
    result = export(model, "gguf", path)
    assert sorted(result.in_float) == [f"blk.{i}.ffn_down.weight" for i in range(5)]
    assert any("172" in note and "Q8_0" in note for note in result.notes)
    by_name = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    down = by_name["blk.2.ffn_down.weight"]
    assert down.tensor_type == T.F32  # int8 codes x fp16 scales are not exact in fp16
    want = model.model.layers[2].mlp.down_proj.qweight.dequantize()
    assert torch.equal(torch.from_numpy(np.array(down.data)).reshape(want.shape), want)
    up = by_name["blk.2.ffn_up.weight"]
    assert up.tensor_type == T.Q8_0
    # the tied lm_head was quantized as a Linear while the embedding stayed float: two tensors now
    assert (by_name["output.weight"].tensor_type, by_name["token_embd.weight"].tensor_type) == (T.Q8_0, T.F16)
    want = model.model.layers[2].mlp.up_proj.qweight.dequantize()
    assert torch.equal(_reference(up.data, "Q8_0", tuple(want.shape)), want)


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_import_gives_qtensors_that_reexport_to_the_same_bytes(tmp_path: Path) -> None:
    model = _tiny_llama(hidden=256)
    recipe = Recipe(
        (
            Rule("*q_proj", weight=QScheme.parse("int8:g32:sf16")),
            Rule("*k_proj", weight=QScheme.parse("int4:g32:sf16")),
            Rule("*v_proj", weight=QScheme.parse("int4:g32:fmin:sf16")),
        )
    )
    quanta.quantize(model, recipe)
    path = tmp_path / "mixed.gguf"
    export(model, "gguf", path, qtype="Q4_K")
    contents = read_gguf(path)
    kinds = set()
    for t in gguf.GGUFReader(str(path)).tensors:
        kind = contents.types[t.name]
        value = contents.tensors[t.name]
        if isinstance(value, QTensor):
            kinds.add(kind)
            assert lossless_type(value)[0] == kind
            assert np.array_equal(encode(value, kind).reshape(-1), np.asarray(t.data).reshape(-1))
            assert torch.equal(value.dequantize(), _reference(t.data, kind, tuple(value.shape)))
    assert kinds == {"Q8_0", "Q4_0", "Q4_1", "Q4_K"}


@needs_stories
def test_gguf_read_back_as_a_quanta_model_gives_identical_logits(tmp_path: Path) -> None:
    model, _ = quanta.lm.load_hf(STORIES)
    quanta.quantize(model, Recipe((Rule("model.*", "Linear", weight=QScheme.parse("int8:g32:sf16")),)))
    export(model, "gguf", tmp_path / "s.gguf", float_type="f32")  # F32 floats: nothing rounded on the way
    back = load_gguf_llama(tmp_path / "s.gguf")
    assert isinstance(back.model.layers[0].self_attn.q_proj, QuantLinear)  # codes kept packed, rows un-permuted
    ids = torch.tensor([[1, 403, 407, 261, 378, 432, 383, 286]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_cli_export_gguf(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from quanta.cli import app

    model = _quantized(_tiny_llama(hidden=64), "int4:g32:sf16")
    quanta.save(model, tmp_path / "q")
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "q"), "--format", "gguf", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["quantized"]["blk.0.ffn_up.weight"].startswith("int4:g32:sf16 -> Q4_0 lossless")
    assert {t.tensor_type for t in gguf.GGUFReader(str(out)).tensors if t.name.endswith("ffn_up.weight")} == {T.Q4_0}
    bad = CliRunner().invoke(
        app, ["export", str(tmp_path / "q"), "-f", "gguf", "-o", str(tmp_path / "x.gguf"), "--qtype", "q6_k"]
    )
    assert bad.exit_code == 2 and "Q8_0, Q4_0, Q4_1, Q4_K" in bad.output


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_bad_files_and_unsupported_targets_raise_named_errors(tmp_path: Path) -> None:
    model = _tiny_llama(hidden=64)
    path = tmp_path / "m.gguf"
    export(model, "gguf", path)
    data = path.read_bytes()
    for cut in (7, 200, len(data) - 100):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(CorruptDataError, match="truncated"):
            read_gguf(tmp_path / "cut.gguf")
    with pytest.raises(QuantaError, match="does not exist"):
        read_gguf(tmp_path / "none.gguf")
    with pytest.raises(UnsupportedError, match="Q8_0, Q4_0, Q4_1, Q4_K"):
        export(model, "gguf", tmp_path / "x.gguf", qtype="Q6_K")
    with pytest.raises(UnsupportedError, match="Llama"):
        export(torch.nn.Linear(4, 4), "gguf", tmp_path / "x.gguf")
    with pytest.raises(UnsupportedError, match="losslessly"):
        encode(quanta.quantize_tensor(torch.randn(4, 64), "nf4:g32"), "Q4_0")
    writer = gguf.GGUFWriter(str(tmp_path / "q6.gguf"), "llama")
    writer.add_tensor("t", np.zeros((2, 210), dtype=np.uint8), raw_dtype=T.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedError, match="Q6_K; quanta reads Q8_0, Q4_0, Q4_1, Q4_K"):
        read_gguf(tmp_path / "q6.gguf")


@needs_stories  # the tiny models borrow stories260K's 512-piece tokenizer
def test_a_failed_export_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")

    def boom(self: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export(_tiny_llama(hidden=64), "gguf", path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


@needs_stories
def test_vocab_from_tokenizer_json_matches_tokenizer_model(tmp_path: Path) -> None:
    from quanta.export.gguf_vocab import read_hf_spm, read_sentencepiece

    spm = read_sentencepiece(STORIES / "tokenizer.model")
    assert read_hf_spm(STORIES / "tokenizer.json") == spm  # two sources: the protobuf and transformers' JSON
    assert (spm.tokens[:3], spm.types[:4], spm.scores[259:261]) == (["<unk>", "<s>", "</s>"], [2, 3, 3, 6], [0, -1])
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\xff")
    with pytest.raises(CorruptDataError, match="sentencepiece"):
        read_sentencepiece(tmp_path / "tokenizer.model")


@needs_stories
def test_llama_cpp_greedy_tokens_match_quanta(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    model, _ = quanta.lm.load_hf(STORIES)
    _quantized(model, "int8:g32:sf16")
    path = tmp_path / "s.gguf"
    export(model, "gguf", path)
    ids = model.generate(torch.tensor([[1]]), max_new_tokens=24, do_sample=False)[0, 1:].tolist()
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, verbose=False, logits_all=False)
    got: list[int] = []
    for token in llm.generate([1], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        got.append(int(token))
        if len(got) == len(ids):
            break
    assert got == ids


@needs_stories
def test_run_time_input_smoothing_is_refused_by_name(tmp_path: Path) -> None:
    model = _tiny_llama(hidden=64)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    quanta.quantize(model, "w8a16-smoothinput", calib=[ids])
    with pytest.raises(UnsupportedError, match="input smoothing"):
        export(model, "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
