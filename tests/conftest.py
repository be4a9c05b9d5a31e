"""Shared test settings: hypothesis is derandomized in CI so every run checks the same examples."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: two workers with two threads each on two cores thrash.
    torch.set_num_threads(1)

# One representative scheme per format family and mode; conformance tests run over all of them.
ALL_SCHEMES = (
    "int8",
    "int8:ch",
    "int8:ch:narrow",
    "uint8:tensor:asym",
    "int4:g128:asym",
    "int4:g32:fmin:sf16",
    "int3:g16",
    "uint4:ch:asym:sbf16",
    "int2:g8:asym",
    "int1:g16:asym",
    "int12:ch",
    "uint16:tensor:asym",
    "q4.4",
    "q1.7",
    "q8.8",
    "binary",
    "binary:ch",
    "binary:g16:fmin",
    "ternary:ch",
    "pot3:ch",
    "pot4",
    "nf4:g64",
    "fp8_e4m3",
    "fp8_e5m2:ch",
    "fp6_e3m2:g32",
    "fp6_e2m3:g32",
    "fp4_e2m1:g32",
    "lloyd1:ch",
    "lloyd3:g64",
    "lloyd4:ch:sf16",
    "vq2x16",
    "vq4x256:tensor:sf16",
    "q4_k:g256:sf16",
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
