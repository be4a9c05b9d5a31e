"""Language models: Hugging Face models from local directories, and text turned into calibration windows."""

from quanta.lm.hf import is_hf_model, load_hf
from quanta.lm.text import calibration_windows, context_length, tokenize_file

__all__ = ["calibration_windows", "context_length", "is_hf_model", "load_hf", "tokenize_file"]
