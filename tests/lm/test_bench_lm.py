"""benchmarks/bench_lm.py keeps running: a quick run on stories260K (skipped without ../shared/data)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lm.py"
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "stories260K_hf").is_dir(), reason="../shared/data is not present")
def test_bench_lm_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("bench_lm", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_lm"] = module
    spec.loader.exec_module(module)
    module.main(["--quick", "--presets", "w4a16-g32,w4a16-g32-gptq"])
    out = capsys.readouterr().out
    for text in ("float32", "w4a16-g32-gptq", "second half", "Command:"):
        assert text in out
