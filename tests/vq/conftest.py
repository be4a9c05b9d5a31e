"""Small data sets shared by the vector-quantization tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def gaussian() -> np.ndarray:
    """1,200 correlated Gaussian vectors of 16 dimensions (float32)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16)) / 4.0
    return (rng.normal(size=(1200, 16)) @ mix).astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The problems here are small: on a shared machine two intra-op threads cost 10-100x in synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
