import math

import pytest
import torch

from quanta.errors import GroupSizeError, InvalidTensorError
from quanta.primitives import Grouping, cosine_similarity, from_2d, max_abs_error, mse, sqnr_db, to_2d


def test_metrics_closed_forms() -> None:
    x = torch.tensor([3.0, 4.0])
    y = torch.tensor([3.0, 3.0])
    assert mse(x, y) == 0.5
    assert sqnr_db(x, y) == pytest.approx(10 * math.log10(25 / 1))
    assert max_abs_error(x, y) == 1.0
    assert cosine_similarity(x, y) == pytest.approx(21 / (5 * math.sqrt(18)))
    assert sqnr_db(x, x) == math.inf
    assert cosine_similarity(torch.zeros(3), torch.zeros(3)) == 1.0
    with pytest.raises(InvalidTensorError, match="shapes"):
        mse(x, torch.zeros(3))


def test_grouping_counts_the_ragged_group() -> None:
    g = Grouping(rows=2, cols=10, group_size=4)
    assert g.n_groups == 3 and g.param_shape == (2, 3)
    sums = g.reduce(lambda b: {"s": b.sum(-1)}, torch.arange(20.0).reshape(2, 10))
    assert sums["s"].tolist() == [[6.0, 22.0, 17.0], [46.0, 62.0, 37.0]]
    with pytest.raises(GroupSizeError):
        Grouping(2, 10, 0)


def test_to_2d_and_back() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert to_2d(x, None).shape == (2, 12)
    assert torch.equal(from_2d(to_2d(x, None), x.shape, None), x)
    for axis in (0, 1, 2, -1):
        m = to_2d(x, axis)
        assert m.shape[1] == x.shape[axis]
        assert torch.equal(from_2d(m, x.shape, axis), x)


def test_fake_quantize_affine_matches_torch_values_and_gradients() -> None:
    from quanta.primitives import fake_quantize_affine

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(8, 40, generator=g) * 4).requires_grad_()
    scale = torch.rand(8, generator=g) * 0.05 + 0.01
    zero = torch.randint(-3, 4, (8,), generator=g, dtype=torch.int32)
    ours = fake_quantize_affine(x, scale.unsqueeze(1), zero.unsqueeze(1), -128, 127)
    ours.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    theirs = torch.fake_quantize_per_channel_affine(x2, scale, zero, 0, -128, 127)
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    assert x.grad is not None and x2.grad is not None and torch.equal(x.grad, x2.grad)
    assert 0 < float(x.grad.mean()) < 1  # some values clipped, some not: the test sees both cases
