"""Benchmarks are not tests, but they must keep running: a smoke run of each script on tiny inputs."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_bench_primitives_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_primitives")
    bench.main(["--quick", "--size", "64", "--formats", "int8:ch,nf4:g64,fp8_e4m3,lloyd2:ch"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("int8:ch", "nf4:g64", "fake_quantize_per_channel_affine", "time ratio", "Command:"):
        assert text in out


def test_bench_linear_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_linear")
    bench.main(["--quick"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("fp32 F.linear", "int8_weight_only", "torch dynamic int8", "vs bf16"):
        assert text in out


def test_bench_memory_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_memory")
    bench.main(["--quick"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("ResNet-20", "w4a16-g32", "measured / theory", "Largest deviation"):
        assert text in out


def test_bench_rl_policy_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gymnasium")
    bench = _load("bench_rl_policy")
    bench.main(["--episodes", "2", "--train-iters", "1", "--max-steps", "50", "--qat-epochs", "1"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("float32", "w8a16", "ternary", "QAT"):
        assert text in out


def test_bench_sensitivity_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    if not (BENCHMARKS.parent.parent / "shared" / "data" / "resnet_cifar10").is_dir():
        pytest.skip("../shared/data (real models) is not present")
    bench = _load("bench_sensitivity")
    bench.main(["--quick"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("ResNet-20", "layer1.0.conv1", "hessian_diag", "all pairs", "Command:"):
        assert text in out


def test_bench_kquant_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_kquant")
    bench.main(["--quick"])  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for text in ("q4_k:g256:sf16", "int4:g32:fmin:sf16 (Q4_1)", "vs Q4_1 dB", "Command:"):
        assert text in out
