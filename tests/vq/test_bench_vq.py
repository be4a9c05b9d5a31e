"""The benchmark keeps running: a smoke run on tiny synthetic data (needs faiss)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")


def test_bench_vq_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parents[2] / "benchmarks" / "bench_vq.py"
    spec = importlib.util.spec_from_file_location("bench_vq", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vq"] = module
    spec.loader.exec_module(module)
    module.main(["--quick", "--codecs", "pq,rq"])
    out = capsys.readouterr().out
    for text in ("PQ8x8", "RQ2x8", "R@10", "Command:"):
        assert text in out
