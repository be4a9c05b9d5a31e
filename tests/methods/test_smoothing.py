"""Scale migration into norms (quanta.methods.smoothing) and the methods built on it: SmoothQuant and AWQ, on
random-initialised Llama models from configs and on the real stories260K (skipped without ../shared/data)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import quanta
from quanta.codec import quantize_tensor
from quanta.errors import QuantaError
from quanta.methods.awq import awq_scales
from quanta.methods.smoothing import Group, apply_scales, find_groups
from quanta.methods.smoothquant import smoothquant_scales
from quanta.scheme import QScheme

from .conftest import DATA, needs_data

transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0, outlier: float = 0.0) -> nn.Module:
    """A 2-layer random Llama; ``outlier`` > 0 makes input channel 3 of every norm-fed layer that many times larger
    in the activations (norm weight x outlier, the columns it feeds / outlier: the same function)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    if outlier:
        with torch.no_grad():
            for layer in model.model.layers:
                for norm, linears in (
                    (layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                    (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj)),
                ):
                    norm.weight[3] *= outlier
                    for linear in linears:
                        linear.weight[:, 3] /= outlier
    return model


def _steps(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (2, 32), generator=g) for _ in range(n)]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]


def test_groups_are_the_norm_fed_layers_of_each_block() -> None:
    model = _llama()
    groups = {g.norm_name: sorted(g.layers) for g in find_groups(model, _linear_names(model), _steps())}
    assert groups == {
        f"model.layers.{i}.{norm}": sorted(f"model.layers.{i}.{p}" for p in projs)
        for i in range(2)
        for norm, projs in (
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        )
    }  # o_proj (after attention) and down_proj (after the gated product) have no norm in front


def test_group_statistics_are_those_of_the_layers_inputs() -> None:
    model, steps = _llama(), _steps()
    group = next(g for g in find_groups(model, _linear_names(model), steps, keep_rows=True) if "0.input" in g.norm_name)
    inputs: list[torch.Tensor] = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    for ids in steps:
        _logits(model, ids)
    handle.remove()
    x = torch.cat([t.reshape(-1, 64) for t in inputs]).abs()
    assert group.absmax is not None and group.absmean is not None and group.rows is not None
    torch.testing.assert_close(group.absmax, x.amax(dim=0))
    torch.testing.assert_close(group.absmean, x.mean(dim=0))
    assert group.rows.shape == (x.shape[0], 64)  # fewer rows than the cap: all of them, shuffled


def test_apply_scales_preserves_the_function_and_moves_the_scales() -> None:
    model, steps = _llama(), _steps()
    groups = find_groups(model, _linear_names(model), steps)
    before = _logits(model, steps[1])
    norm, q = model.model.layers[1].input_layernorm, model.model.layers[1].self_attn.q_proj
    w_norm, w_q = norm.weight.detach().clone(), q.weight.detach().clone()
    s = torch.linspace(0.5, 2.0, 64)
    apply_scales(model, {g.norm_name: s for g in groups}, groups, steps[0])
    torch.testing.assert_close(norm.weight.detach(), w_norm / s)
    torch.testing.assert_close(q.weight.detach(), w_q * s)
    torch.testing.assert_close(_logits(model, steps[1]), before, rtol=1e-4, atol=1e-4)


class OffsetNorm(nn.Module):
    """Gemma-style RMSNorm: the output is scaled by ``1 + weight``, not ``weight``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def test_a_norm_that_does_not_scale_by_its_weight_is_refused_and_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), OffsetNorm(16), nn.Linear(16, 4)).eval()
    steps = [torch.randn(5, 8)]
    groups = find_groups(model, ["2"], steps)
    assert [g.norm_name for g in groups] == ["1"]
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(QuantaError, match="OffsetNorm"):
        apply_scales(model, {"1": torch.full((16,), 2.0)}, groups, steps[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_smoothquant_scales_equalize_activation_and_weight_ranges() -> None:
    g = torch.Generator().manual_seed(3)
    act, weight = torch.rand(32, generator=g) * 50 + 0.1, torch.rand(32, generator=g) + 0.01
    s = smoothquant_scales(act, weight, alpha=0.5)
    # alpha = 0.5: afterwards max|X_j / s_j| = max|W_j s_j| = sqrt(max|X_j| max|W_j|).
    torch.testing.assert_close(act / s, weight * s)
    torch.testing.assert_close(act / s, torch.sqrt(act * weight))
    s1 = smoothquant_scales(act, weight, alpha=1.0)  # all difficulty moved to the weights: activations flat at 1
    torch.testing.assert_close(act / s1, torch.ones(32))


def test_smoothquant_cuts_w8a8_error_on_activation_outliers() -> None:
    float_model, steps = _llama(outlier=60.0), _steps(8)
    held_out = _steps(2, seed=9)
    errors = {}
    for preset in ("w8a8", "w8a8-smoothquant"):
        q = quanta.quantize(copy.deepcopy(float_model), preset, steps)
        errors[preset] = sum(float((_logits(q, ids) - _logits(float_model, ids)).pow(2).mean()) for ids in held_out)
    assert errors["w8a8-smoothquant"] < 0.5 * errors["w8a8"]


def _synthetic_group() -> tuple[Group, dict[str, QScheme | None]]:
    """One norm feeding two layers; a few input channels carry most of the activation magnitude."""
    g = torch.Generator().manual_seed(4)
    c = 64
    big = torch.ones(c)
    big[:4] = 20.0
    rows = torch.randn(2048, c, generator=g) * big
    layers = {"a": nn.Linear(c, 48, bias=False), "b": nn.Linear(c, 32, bias=False)}
    for layer in layers.values():
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
    group = Group("norm", nn.LayerNorm(c), layers, rows.abs().amax(0), rows.abs().mean(0), rows, rows.shape[0])
    return group, dict.fromkeys(layers, QScheme.parse("int3:g32:asym"))


def _output_error(group: Group, schemes: dict[str, QScheme | None], s: torch.Tensor) -> float:
    """The search's objective computed independently: float64, each layer quantized with quantize_tensor."""
    assert group.rows is not None
    x = group.rows.double()
    total = 0.0
    for name, layer in group.layers.items():
        w = layer.weight.detach().double()
        scheme = schemes[name]
        assert scheme is not None
        w_hat = quantize_tensor((w * s.double()).float(), scheme).dequantize().double()
        total += float((x @ w.T - (x / s.double()) @ w_hat.T).pow(2).sum())
    return total


def test_awq_search_beats_rtn_on_salient_channels() -> None:
    group, schemes = _synthetic_group()
    s, alpha = awq_scales(group, schemes)
    rtn, awq = _output_error(group, schemes, torch.ones(64)), _output_error(group, schemes, s)
    assert 0 < alpha <= 1
    assert awq < 0.8 * rtn  # the salient channels are quantized more finely
    # The chosen alpha is the grid's best by the independent objective too (within float rounding).
    for k in range(21):
        a = k / 20
        sk = group.absmean.clamp(min=1e-8).pow(a)  # type: ignore[union-attr]
        sk = sk / torch.sqrt(sk.max() * sk.min())
        assert awq <= _output_error(group, schemes, sk) * (1 + 1e-6)


def test_awq_keeps_the_function_before_rounding_and_composes_with_gptq(tmp_path: object) -> None:
    float_model, steps = _llama(seed=2, outlier=8.0), _steps(8)
    held_out = _steps(2, seed=11)
    errors = {}
    for preset in ("w3a16-g16", "w3a16-g16-awq", "w3a16-g16-gptq", "w3a16-g16-awq_gptq"):
        q = quanta.quantize(copy.deepcopy(float_model), preset, steps)
        errors[preset] = sum(float((_logits(q, ids) - _logits(float_model, ids)).pow(2).mean()) for ids in held_out)
    assert errors["w3a16-g16-awq"] < errors["w3a16-g16"]
    assert errors["w3a16-g16-awq_gptq"] < errors["w3a16-g16-gptq"]


@needs_data
def test_stories260k_awq_and_awq_gptq_remove_much_of_rtns_perplexity_increase() -> None:
    from quanta.eval import mean_nll
    from quanta.lm import calibration_windows, load_hf, tokenize_file

    model, tokenizer = load_hf(DATA / "stories260K_hf")
    ids = tokenize_file(DATA / "tinystories_val" / "tinystories_val.txt", tokenizer)
    half = ids.numel() // 2
    calib = list(calibration_windows(ids[:half], n=16, length=256, seed=0).split(8))
    held_out = ids[half : half + 20_480]  # disjoint from calibration
    base = math.exp(mean_nll(model, held_out, 256))
    ppl = {
        preset: math.exp(mean_nll(quanta.quantize(copy.deepcopy(model), preset, calib), held_out, 256))
        for preset in ("w4a16-g32", "w4a16-g32-awq", "w4a16-g32-awq_gptq")
    }
    rtn_increase = ppl["w4a16-g32"] - base
    assert ppl["w4a16-g32-awq"] < ppl["w4a16-g32"]
    # The measure; BENCHMARKS.md has the full protocol (52% there), this slice measured 54%.
    assert ppl["w4a16-g32-awq_gptq"] - base < 0.6 * rtn_increase


def test_clip_search_picks_per_row_ratios_that_lower_each_rows_error() -> None:
    from quanta.methods.awq import CLIP_RATIOS, clip_weight

    g = torch.Generator().manual_seed(6)
    w = torch.randn(24, 40, generator=g)
    w[::3, 5] = 9.0  # an outlier in some rows: clipping it buys resolution for the rest of that group
    x = torch.randn(512, 40, generator=g)
    scheme = QScheme.parse("int3:g16")  # symmetric, groups of 16, 16, 8 (ragged)
    clipped, ratios = clip_weight(w, x, scheme)
    assert ratios.shape == (24, 3)
    grid = torch.tensor(CLIP_RATIOS)
    assert bool(((ratios[..., None] - grid).abs().amin(dim=-1) < 1e-6).all())  # every choice is a grid ratio
    assert bool((ratios < 1).any())  # some rows clip

    def group_errors(weight: torch.Tensor, start: int) -> torch.Tensor:
        """Per row, the output error of one group's columns with that slice rounded by the scheme (float64)."""
        w_g, x_g = weight[:, start : start + 16], x[:, start : start + 16].double()
        w_hat = quantize_tensor(w_g, scheme).dequantize().double()
        return ((x_g @ w_hat.T) - (x_g @ w[:, start : start + 16].double().T)).pow(2).sum(dim=0)

    # The objective the search minimises, per row and group: never worse than no clipping (r = 1 is a candidate),
    # and clearly better in the rows with the outlier.
    for start in range(0, 40, 16):
        assert bool((group_errors(clipped, start) <= group_errors(w, start) * (1 + 1e-6) + 1e-9).all())
    assert float(group_errors(clipped, 0)[::3].sum()) < 0.9 * float(group_errors(w, 0)[::3].sum())
    # Clipped weights never leave the row-group's original range, and unclipped groups are untouched.
    for k, start in enumerate(range(0, 40, 16)):
        block, original = clipped[:, start : start + 16], w[:, start : start + 16]
        peak = original.abs().amax(dim=1, keepdim=True)
        assert bool((block.abs() <= peak * ratios[:, k : k + 1] + 1e-6).all())
        keep = ratios[:, k] == 1.0
        assert torch.equal(block[keep], original[keep])


def test_awq_clips_for_min_max_roundings_and_leaves_gptq_its_own_grid_search() -> None:
    from quanta.methods import awq
    from quanta.methods.registry import TransformTarget, get_method

    steps = _steps(4)
    scheme = QScheme.parse("int3:g16:asym")
    weights = {}
    for rounding in ("rtn", "gptq"):
        model = _llama(seed=3)
        names = _linear_names(model)
        original = {n: model.get_submodule(n).weight.detach().clone() for n in names}
        awq._transform(model, {n: TransformTarget(scheme, get_method(rounding)) for n in names}, steps)
        weights[rounding] = {n: model.get_submodule(n).weight.detach() for n in names}
        # o_proj is fed by no norm: no scales, so any change there is clipping.
        o_proj = "model.layers.0.self_attn.o_proj"
        changed = not torch.equal(weights[rounding][o_proj], original[o_proj])
        assert changed == (rounding == "rtn")


def test_error_minimising_grid_is_no_worse_than_min_max_per_row() -> None:
    from quanta.methods.gptq import NORM, _error_minimising_grid

    g = torch.Generator().manual_seed(8)
    x = torch.randn(16, 32, generator=g) * torch.rand(16, 1, generator=g) * 3
    x[::4, 0] = 6.0  # rows with an outlier, where shrinking the range pays
    blocks = x.unsqueeze(1)

    def row_error(scheme: QScheme, params: dict[str, torch.Tensor]) -> torch.Tensor:
        q = scheme.fmt.decode(scheme.fmt.encode(blocks, params, scheme, None), params, scheme)
        return (q - blocks).abs().pow(NORM).sum(dim=(1, 2))

    for text in ("int3:g32:asym", "int4:g32", "uint4:g32:asym"):
        scheme = QScheme.parse(text)
        searched = row_error(scheme, _error_minimising_grid(x, scheme))
        min_max = row_error(scheme, scheme.fmt.fit(blocks, scheme, None))
        assert bool((searched <= min_max * (1 + 1e-6)).all())
        assert float(searched[::4].sum()) < float(min_max[::4].sum())


def test_bf16_models_take_scale_migration_and_bad_calibration_gets_a_named_error() -> None:
    model = _llama(seed=4).to(torch.bfloat16)
    q = quanta.quantize(model, "w4a16-g32-awq", _steps(2))  # bf16 rounding must not read as a wrong norm
    assert any(type(m).__name__ == "QuantLinear" for m in q.modules())
    for preset in ("w4a16-g32-awq", "w8a8-smoothquant"):
        with pytest.raises(QuantaError, match="does not fit"):
            quanta.quantize(_llama(), preset, [torch.randn(2, 32)])  # float "token ids"
        with pytest.raises(QuantaError, match="does not fit"):
            quanta.quantize(_llama(), preset, [torch.randint(1000, 2000, (2, 8))])  # ids past the vocabulary


def test_gptq_grid_search_also_serves_static_groups_and_act_order() -> None:
    from quanta.methods.gptq import gptq_weight

    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    x = torch.randn(256, 64)
    x[:, ::7] *= 4  # uneven channels, so act-order reorders
    h = x.T @ x
    scheme = QScheme.parse("int3:g16:asym")

    def output_error(**kwargs: bool) -> float:
        w_hat = gptq_weight(layer, scheme, h, **kwargs).dequantize()
        return float(((x @ layer.weight.T - x @ w_hat.T) ** 2).mean())

    for order in ({"desc_act": True}, {"static_groups": True}):
        assert output_error(**order, grid_search=True) < output_error(**order)
