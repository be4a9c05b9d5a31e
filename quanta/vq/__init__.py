"""Vector quantization of data: k-means, product (and OPQ) and residual quantizers, and an ADC search index.

scikit-learn conventions: ``__init__`` stores settings, ``fit(X)`` returns ``self``, learned state ends in ``_``.
Every quantizer is a codec: ``encode(X)`` gives packed uint8 codes ``(n, code_size)`` in faiss's layout,
``decode(codes)`` the reconstructed vectors. numpy in -> numpy out; torch in -> torch out.

    >>> import numpy as np
    >>> from quanta.vq import ADCIndex, ProductQuantizer
    >>> X = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)
    >>> pq = ProductQuantizer(m=4, nbits=8).fit(X)
    >>> pq.code_size
    4
"""

from quanta.vq.base import NotFittedError, VectorQuantizer, code_bytes, pack_codes, unpack_codes
from quanta.vq.index import ADCIndex, exact_search, recall_at
from quanta.vq.kmeans import KMeans
from quanta.vq.pq import ProductQuantizer
from quanta.vq.rq import ResidualQuantizer

__all__ = [
    "ADCIndex",
    "KMeans",
    "NotFittedError",
    "ProductQuantizer",
    "ResidualQuantizer",
    "VectorQuantizer",
    "code_bytes",
    "exact_search",
    "pack_codes",
    "recall_at",
    "unpack_codes",
]
