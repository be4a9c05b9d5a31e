"""Cross-checks against faiss (optional extra `vq`): code layout, search results and error at equal code size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quanta.vq import ADCIndex, ProductQuantizer, ResidualQuantizer

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def faiss_one_thread() -> None:
    faiss.omp_set_num_threads(1)


def _with_faiss_codebooks(fpq: object, x: np.ndarray, m: int, nbits: int) -> ProductQuantizer:
    pq = ProductQuantizer(m=m, nbits=nbits, n_iter=1).fit(x)
    pq.codebooks_ = torch.from_numpy(faiss.vector_to_array(fpq.centroids).reshape(m, 1 << nbits, -1))  # type: ignore[attr-defined]
    return pq


@pytest.mark.parametrize("nbits", [8, 4, 6, 10])
def test_pq_codes_are_laid_out_as_faiss_lays_them_out(gaussian: np.ndarray, nbits: int) -> None:
    n = max(len(gaussian), 1 << nbits)
    x = np.resize(gaussian, (n, 16)) + np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32) * 0.01
    fpq = faiss.ProductQuantizer(16, 4, nbits)
    fpq.cp.niter = 2
    fpq.train(x)
    pq = _with_faiss_codebooks(fpq, x, 4, nbits)
    ours, theirs = pq.encode(x[:300]), fpq.compute_codes(x[:300])
    assert ours.shape == theirs.shape == (300, fpq.code_size)
    assert (ours == theirs).all(axis=1).mean() > 0.99  # rounding may flip a near tie now and then
    np.testing.assert_allclose(pq.decode(theirs), fpq.decode(theirs), rtol=1e-6, atol=1e-6)


def test_adc_search_matches_faiss_index_pq(gaussian: np.ndarray) -> None:
    db, q = gaussian[:1000], gaussian[1000:]
    index = faiss.IndexPQ(16, 4, 6)
    index.pq.cp.niter = 5
    index.train(db)
    index.add(db)
    theirs_d, theirs_i = index.search(q, 5)
    ours = ADCIndex(_with_faiss_codebooks(index.pq, db, 4, 6))
    ours.add(db)
    ours_d, ours_i = ours.search(q, 5)
    np.testing.assert_allclose(ours_d, theirs_d, rtol=1e-4, atol=1e-4)
    assert (ours_i == theirs_i).mean() > 0.98  # equal distances may come in either order


def test_rq_decodes_faiss_codes(gaussian: np.ndarray) -> None:
    frq = faiss.ResidualQuantizer(16, 3, 5)
    frq.cp.niter = 3
    frq.train(gaussian)
    rq = ResidualQuantizer(stages=3, nbits=5, n_iter=1).fit(gaussian)
    rq.codebooks_ = torch.from_numpy(faiss.vector_to_array(frq.codebooks).reshape(3, 32, 16))
    codes = frq.compute_codes(gaussian)
    assert codes.shape[1] == rq.code_size == 2
    np.testing.assert_allclose(rq.decode(codes), frq.decode(codes), rtol=1e-5, atol=1e-5)
    assert (rq.encode(gaussian) == codes).all(axis=1).mean() > 0.95  # same beam of 5, float rounding aside


def test_pq_error_at_most_faiss(gaussian: np.ndarray) -> None:
    fpq = faiss.ProductQuantizer(16, 4, 6)
    fpq.train(gaussian)
    theirs = float(((fpq.decode(fpq.compute_codes(gaussian)) - gaussian) ** 2).sum(axis=1).mean())
    assert ProductQuantizer(m=4, nbits=6).fit(gaussian).reconstruction_mse(gaussian) <= 1.02 * theirs


def test_rq_error_at_most_faiss_on_clustered_data() -> None:
    # Clustered data is where training matters (faiss's progressive-dimension k-means beat plain k-means there).
    from tests.vq.test_rq import _clustered

    x = _clustered(1500, 16, 16)
    frq = faiss.ResidualQuantizer(16, 3, 5)  # faiss's defaults: progressive-dimension training, beam 5
    frq.train(x)
    theirs = float(((frq.decode(frq.compute_codes(x)) - x) ** 2).sum(axis=1).mean())
    assert ResidualQuantizer(stages=3, nbits=5, beam_size=5).fit(x).reconstruction_mse(x) <= 1.02 * theirs
