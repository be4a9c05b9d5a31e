"""Language models: Hugging Face models from local directories, and text turned into calibration windows."""

from quanta.lm.hf import is_hf_model, load_hf
from quanta.lm.offload import load_offloaded
from quanta.lm.resume import BlockState
from quanta.lm.sequential import find_blocks, quantize_sequential
from quanta.lm.text import calibration_windows, context_length, tokenize_file

__all__ = [
    "BlockState",
    "calibration_windows",
    "context_length",
    "find_blocks",
    "is_hf_model",
    "load_hf",
    "load_offloaded",
    "quantize_sequential",
    "tokenize_file",
]
