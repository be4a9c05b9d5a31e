"""Running an exported ONNX file in ONNX Runtime and comparing it with quanta (the CLI's ``--verify``, benchmarks).

ONNX Runtime's default CPU session fuses a 4- or 8-bit ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` and,
by default (``session.qdq_matmulnbits_accuracy_level`` 4), quantizes that MatMul's *activations* to int8 per
block: faster, but no longer the computation quanta's model does. ``exact=True`` asks for fp32 activations
(accuracy level 1), so the session computes what the graph says; ``exact=False`` keeps the runtime's default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quanta.errors import QuantaError

__all__ = ["onnxruntime_session", "reference_outputs", "run_onnxruntime"]


def onnxruntime_session(path: str | os.PathLike[str], threads: int = 1, exact: bool = True) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; see the module docstring on ``exact``).

    Raises:
        QuantaError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise QuantaError(f"running ONNX files needs onnxruntime ({exc}); run: pip install 'quanta[export]'") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about hardware-specific optimizations are not for the user
    if exact:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(session: Any, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The first output of ``session`` on ``inputs`` (fed in the graph's input order)."""
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0])


def reference_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], hf: bool = False) -> np.ndarray:
    """quanta's reference path (``QUANTA_KERNEL=reference``: dequantize, then the float op) on ``inputs``."""
    old = os.environ.get("QUANTA_KERNEL")
    os.environ["QUANTA_KERNEL"] = "reference"
    try:
        with torch.no_grad():
            out = model(input_ids=inputs[0], use_cache=False).logits if hf else model(*inputs)
    finally:
        if old is None:
            del os.environ["QUANTA_KERNEL"]
        else:
            os.environ["QUANTA_KERNEL"] = old
    return np.asarray(out.float().numpy())
