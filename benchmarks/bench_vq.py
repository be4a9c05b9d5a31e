"""Vector quantization against faiss at equal code bytes per vector (issue 6).

Data: the 10,000 MNIST test images as raw 784-d pixel vectors in [0, 1] (read from the IDX file, not the padded
32x32 LeNet input), scikit-learn's digits (1,797 x 64, pixel values 0..16) and a synthetic clustered set (20,000 x
128: 64 Gaussian clusters of random scales). Each set is shuffled with a fixed seed and split into a database and
held-out queries (MNIST 9,000 / 1,000, digits 1,597 / 200, synthetic 18,000 / 2,000); quantizers are trained on the
database, the queries are never in it. Ground truth: exact float32 squared-L2 neighbours of each query.

Per row, quanta and faiss get the same settings (PQ ``m`` sub-quantizers of 8 bits, RQ ``stages`` x 8 bits with
beam 5, OPQ in front of PQ) and the same number of threads (``--threads``, default 1: on a shared machine one
thread per library gives repeatable times). Columns: reconstruction MSE (mean over database vectors of
``||x - decode(encode(x))||^2``) as quanta / faiss; 1-recall@1 and 1-recall@10 of exhaustive ADC search (the
fraction of queries whose exact nearest neighbour is among the first R results, faiss's definition) as
quanta / faiss; training time as quanta / faiss; encode throughput (database vectors per second) and search
throughput (queries per second, k = 10) of both.

    .venv/bin/python benchmarks/bench_vq.py [--data ../shared/data] [--threads 1] [--sets mnist,digits,synthetic]
        [--codecs pq,opq,rq] [--seeds 3] [--mnist-opq 16,28,49] [--mnist-rq 8,16]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quanta.vq import ADCIndex, ProductQuantizer, ResidualQuantizer, VectorQuantizer, exact_search, recall_at

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEED = 0


@dataclass
class Row:
    data: str
    codec: str
    code_size: int
    mse: tuple[float, float]
    recall1: tuple[float, float]
    recall10: tuple[float, float]
    train_s: tuple[float, float]
    encode_vps: tuple[float, float]
    search_qps: tuple[float, float]


def mnist_784(directory: Path, limit: int | None = None) -> np.ndarray:
    """MNIST test images as ``(10000, 784)`` float32 pixels in [0, 1]."""
    with gzip.open(directory / "mnist_test" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    x = images.reshape(-1, 784).astype(np.float32) / 255.0
    return x[:limit] if limit else x


def digits_64() -> np.ndarray:
    """scikit-learn's 8x8 digits as ``(1797, 64)`` float32 (values 0..16)."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


def clustered(n: int = 20000, d: int = 128, clusters: int = 64, seed: int = SEED) -> np.ndarray:
    """Gaussian clusters with random centres, per-cluster scales and anisotropic (random-direction) spreads."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 4.0
    labels = rng.integers(clusters, size=n)
    scales = rng.uniform(0.3, 1.5, size=(clusters, d))
    x = centres[labels] + rng.normal(size=(n, d)) * scales[labels]
    return x.astype(np.float32)


def split(x: np.ndarray, queries: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle and split into a database and held-out queries."""
    order = np.random.default_rng(seed).permutation(len(x))
    return np.ascontiguousarray(x[order[queries:]]), np.ascontiguousarray(x[order[:queries]])


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _quanta(make: Callable[[], VectorQuantizer], db: np.ndarray, q: np.ndarray) -> dict[str, object]:
    model = make()
    _, train_s = _timed(lambda: model.fit(db))
    codes, encode_s = _timed(lambda: model.encode(db))
    assert isinstance(codes, np.ndarray)
    recon = model.decode(codes)
    index = ADCIndex(model)
    index.add(db)
    (_, ids), search_s = _timed(lambda: index.search(q, 10))
    return {
        "code_size": codes.shape[1],
        "mse": float(((db - recon) ** 2).sum(axis=1).mean()),
        "ids": ids,
        "train_s": train_s,
        "encode_vps": len(db) / encode_s,
        "search_qps": len(q) / search_s,
    }


def _faiss(kind: str, d: int, m: int, db: np.ndarray, q: np.ndarray, seed: int) -> dict[str, object]:
    import faiss

    if kind == "pq":
        quantizer = faiss.ProductQuantizer(d, m, 8)
        quantizer.cp.seed = 1234 + seed
        index = faiss.IndexPQ(d, m, 8)
    elif kind == "rq":
        quantizer = faiss.ResidualQuantizer(d, m, 8)
        quantizer.max_beam_size = 5
        quantizer.cp.seed = 1234 + seed
        index = faiss.IndexResidualQuantizer(d, m, 8)
    else:  # "opq": OPQMatrix + PQ, as index_factory("OPQ{m},PQ{m}x8") builds it
        index = faiss.index_factory(d, f"OPQ{m},PQ{m}x8")
    if kind == "opq":
        _, train_s = _timed(lambda: index.train(db))
        pq_index = faiss.downcast_index(index.index)
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        _, encode_s = _timed(lambda: pq_index.pq.compute_codes(opq.apply(db)))
        codes = pq_index.pq.compute_codes(opq.apply(db))
        recon = opq.reverse_transform(pq_index.pq.decode(codes))
        code_size = pq_index.pq.code_size
    else:
        _, train_s = _timed(lambda: quantizer.train(db))
        _, encode_s = _timed(lambda: quantizer.compute_codes(db))
        codes = quantizer.compute_codes(db)
        recon = quantizer.decode(codes)
        code_size = quantizer.code_size
        if kind == "pq":
            index.pq = quantizer
        else:
            index.rq = quantizer
        index.is_trained = True
    index.add(db)
    (_, ids), search_s = _timed(lambda: index.search(q, 10))
    return {
        "code_size": code_size,
        "mse": float(((db - recon) ** 2).sum(axis=1).mean()),
        "ids": ids,
        "train_s": train_s,
        "encode_vps": len(db) / encode_s,
        "search_qps": len(q) / search_s,
    }


def _row(name: str, kind: str, m: int, db: np.ndarray, q: np.ndarray, truth: np.ndarray, seed: int) -> Row:
    d = db.shape[1]
    makers: dict[str, Callable[[], VectorQuantizer]] = {
        "pq": lambda: ProductQuantizer(m, 8, seed=seed),
        "opq": lambda: ProductQuantizer(m, 8, opq=True, seed=seed),
        "rq": lambda: ResidualQuantizer(m, 8, beam_size=5, seed=seed),
    }
    ours = _quanta(makers[kind], db, q)
    peer = _faiss(kind, d, m, db, q, seed)
    assert ours["code_size"] == peer["code_size"], (ours["code_size"], peer["code_size"])

    def pair(key: str) -> tuple[float, float]:
        return float(ours[key]), float(peer[key])  # type: ignore[arg-type]

    def recalls(r: int) -> tuple[float, float]:
        return recall_at(ours["ids"], truth, r), recall_at(peer["ids"], truth, r)  # type: ignore[arg-type]

    label = {"pq": f"PQ{m}x8", "opq": f"OPQ{m},PQ{m}x8", "rq": f"RQ{m}x8 beam 5"}[kind]
    return Row(
        name,
        label,
        int(ours["code_size"]),  # type: ignore[call-overload]
        pair("mse"),
        recalls(1),
        recalls(10),
        pair("train_s"),
        pair("encode_vps"),
        pair("search_qps"),
    )


def _mean(rows: list[Row]) -> Row:
    """Average of the runs of one row over seeds (each seed: its own split and training seeds)."""

    def avg(key: str) -> tuple[float, float]:
        pairs = [getattr(r, key) for r in rows]
        return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))

    keys = ("mse", "recall1", "recall10", "train_s", "encode_vps", "search_qps")
    return Row(rows[0].data, rows[0].codec, rows[0].code_size, *(avg(k) for k in keys))


def _ratio(pair: tuple[float, float]) -> str:
    return f"{pair[0] / pair[1]:.3f}" if pair[1] else "n/a"


def table(rows: list[Row]) -> str:
    lines = [
        "| data | codec | bytes | MSE quanta / faiss | ratio | R@1 quanta / faiss | ratio | R@10 quanta / faiss "
        "| ratio | train s quanta / faiss | ratio | encode vec/s quanta / faiss | search q/s quanta / faiss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.data} | {r.codec} | {r.code_size} | {r.mse[0]:.4g} / {r.mse[1]:.4g} | {_ratio(r.mse)} "
            f"| {r.recall1[0]:.3f} / {r.recall1[1]:.3f} | {_ratio(r.recall1)} "
            f"| {r.recall10[0]:.3f} / {r.recall10[1]:.3f} | {_ratio(r.recall10)} "
            f"| {r.train_s[0]:.2f} / {r.train_s[1]:.2f} | {_ratio(r.train_s)} "
            f"| {r.encode_vps[0]:,.0f} / {r.encode_vps[1]:,.0f} | {r.search_qps[0]:,.0f} / {r.search_qps[1]:,.0f} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and for faiss (OpenMP)")
    parser.add_argument("--sets", default="mnist,digits,synthetic")
    parser.add_argument("--codecs", default="pq,opq,rq", help="subset of pq,opq,rq")
    parser.add_argument("--seeds", type=int, default=3, help="runs per row (split and training seeds), averaged")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--mnist-opq", default="", help="OPQ m values on MNIST, e.g. 16,28,49 (slow: faiss minutes)")
    parser.add_argument("--mnist-rq", default="8", help="RQ stages on MNIST, e.g. 8,16")
    args = parser.parse_args(argv)
    try:
        import faiss
    except ImportError:
        sys.exit("bench_vq needs faiss: .venv/bin/pip install -c .venv/constraints.txt faiss-cpu")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    codecs = set(args.codecs.split(","))
    # name: (loader, queries, PQ m values, OPQ m values, RQ stages). OPQ on MNIST only on request: faiss's
    # OPQMatrix (50 alternations, each an SVD of 784 x 784 and PQ updates) takes minutes there at one thread.
    Plan = tuple[Callable[[], np.ndarray], int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    plans: dict[str, Plan] = {
        "mnist": (lambda: mnist_784(args.data), 1000, (16, 28, 49), _ints(args.mnist_opq), _ints(args.mnist_rq)),
        "digits": (digits_64, 200, (8, 16), (8,), (8,)),
        "synthetic": (clustered, 2000, (16, 32), (16,), (8, 16)),
    }
    if args.quick:
        plans = {"synthetic": (lambda: clustered(1200, 32, 8), 100, (8,), (8,), (2,))}
    rows = []
    for name in args.sets.split(","):
        if name not in plans:
            continue
        load, n_queries, *sizes = plans[name]
        x = load()
        splits = [split(x, n_queries, seed) for seed in range(args.seeds)]
        truths = [exact_search(db, q, 10)[1] for db, q in splits]
        for kind, ms in zip(("pq", "opq", "rq"), sizes, strict=True):
            for m in ms if kind in codecs else ():
                runs = [_row(name, kind, m, *splits[seed], truths[seed], seed) for seed in range(args.seeds)]
                rows.append(_mean(runs))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    versions = f"faiss {faiss.__version__}, torch {torch.__version__}"
    print(f"\n{versions}, {args.threads} thread(s), mean of {args.seeds} seeds\n")
    print(table(rows))
    print("\nCommand: .venv/bin/python benchmarks/bench_vq.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
