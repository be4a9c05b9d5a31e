"""ADCIndex: table sums equal brute-force distances to the decoded vectors; re-ranking; edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from quanta.errors import InvalidTensorError
from quanta.vq import ADCIndex, NotFittedError, ProductQuantizer, ResidualQuantizer, VectorQuantizer, exact_search
from quanta.vq.index import recall_at

QUANTIZERS = {
    "pq": lambda: ProductQuantizer(m=4, nbits=6),
    "opq": lambda: ProductQuantizer(m=4, nbits=6, opq=True, opq_iter=3),
    "rq": lambda: ResidualQuantizer(stages=3, nbits=5, beam_size=3),
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_adc_equals_brute_force_on_decoded_vectors(gaussian: np.ndarray, name: str) -> None:
    db, q = gaussian[:1000], gaussian[1000:]
    quantizer: VectorQuantizer = QUANTIZERS[name]().fit(db)
    index = ADCIndex(quantizer)
    index.add(db)
    dist, ids = index.search(q, 5)
    ref_dist, _ = exact_search(quantizer.decode(quantizer.encode(db)), q, 5)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    assert ids.dtype == np.int64 and dist.dtype == np.float32
    recon = quantizer.decode(index.codes_.numpy())
    exact = ((q[:, None] - recon[ids]) ** 2).sum(axis=2)  # distances to the returned ids, recomputed
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-4)


def test_rerank_recovers_exact_search(gaussian: np.ndarray) -> None:
    db, q = gaussian[:1000], gaussian[1000:]
    pq = ProductQuantizer(m=4, nbits=4).fit(db)
    plain, reranked = ADCIndex(pq), ADCIndex(pq, rerank_factor=200)  # 200 * 5 = every vector
    plain.add(db)
    reranked.add(db)
    ref_dist, ref_ids = exact_search(db, q, 5)
    dist, ids = reranked.search(q, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    assert recall_at(plain.search(q, 5)[1], ref_ids, 5) < 1.0 == recall_at(ids, ref_ids, 1)


def test_add_in_parts_and_pad_when_k_exceeds_ntotal(gaussian: np.ndarray) -> None:
    pq = ProductQuantizer(m=4, nbits=4).fit(gaussian)
    whole, parts = ADCIndex(pq), ADCIndex(pq)
    whole.add(gaussian[:10])
    parts.add(gaussian[:4])
    parts.add(gaussian[4:10])
    assert parts.ntotal == 10
    dist, ids = parts.search(gaussian[:3], 12)
    np.testing.assert_array_equal(ids, whole.search(gaussian[:3], 12)[1])
    assert (ids[:, 10:] == -1).all() and np.isinf(dist[:, 10:]).all()


def test_bad_use(gaussian: np.ndarray) -> None:
    with pytest.raises(NotFittedError):
        ADCIndex(ProductQuantizer(4, 4)).add(gaussian)
    index = ADCIndex(ProductQuantizer(4, 4).fit(gaussian))
    with pytest.raises(NotFittedError, match="empty"):
        index.search(gaussian, 1)
    index.add(gaussian)
    with pytest.raises(InvalidTensorError, match="k must be"):
        index.search(gaussian, 0)
