"""Gradient compression: the codecs' closed-form properties, and DDP training on 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quanta.errors import QuantaError
from quanta.grad_compression import BLOCK, int8_decode, int8_encode, register, sign_decode, sign_encode


def test_int8_stochastic_rounding_is_unbiased_and_within_one_step() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * BLOCK + 17, generator=g) * torch.logspace(-3, 1, 3 * BLOCK + 17)
    payload = int8_encode(x, g)
    assert payload.dtype == torch.uint8 and payload.numel() == 4 * BLOCK + 4 * 4  # codes + 4 float32 scales
    step = x[: 3 * BLOCK].reshape(3, BLOCK).abs().amax(dim=1) / 127
    assert bool(((int8_decode(payload, x.numel())[: 3 * BLOCK] - x[: 3 * BLOCK]).reshape(3, BLOCK).abs()
                 < step[:, None] * (1 + 1e-6)).all())  # fmt: skip
    mean = torch.stack([int8_decode(int8_encode(x, g), x.numel()) for _ in range(2000)]).mean(0)
    scale = torch.cat([step.repeat_interleave(BLOCK), (x[3 * BLOCK :].abs().max() / 127).repeat(17)])
    # E[decode] = x: the mean of 2000 draws is within 5 standard errors (each draw's error is below one step)
    assert bool(((mean - x).abs() <= 5 * scale / 2000**0.5).all())


def test_sign_error_feedback_loses_nothing_over_steps() -> None:
    g = torch.Generator().manual_seed(1)
    error = torch.zeros(1000)
    grads = [torch.randn(1000, generator=g) for _ in range(20)]
    sent_total = torch.zeros(1000)
    for grad in grads:
        payload, error = sign_encode(grad, error)
        sent = sign_decode(payload, 1000)
        assert set(sent[:BLOCK].abs().unique().tolist()) == {float(sent[:BLOCK].abs()[0])}  # one scale per block
        sent_total += sent
    assert payload.numel() == 4 * BLOCK // 8 + 4 * 4  # 1 bit per value (whole blocks) + 4 scales
    torch.testing.assert_close(sent_total + error, torch.stack(grads).sum(0), rtol=0, atol=1e-4)


def test_register_refuses_what_it_cannot_hook() -> None:
    with pytest.raises(QuantaError, match="DistributedDataParallel"):
        register(torch.nn.Linear(2, 2), "int8")  # type: ignore[arg-type]
    with pytest.raises(QuantaError, match="unknown gradient codec"):
        register(torch.nn.Linear(2, 2), "fp4")  # type: ignore[arg-type]


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from sklearn.datasets import load_digits
    import quanta, quanta.grad_compression

    torch.set_num_threads(1)
    out, rank, world, store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    mine = train[rank::world]  # each rank its own half of the training set

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def same_on_all_ranks(model):
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        parts = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat)
        return all(torch.equal(parts[0], p) for p in parts)

    def train_run(model, codec, steps=150, lr=0.05):
        ddp = DDP(model)
        state = None if codec == "none" else quanta.grad_compression.register(ddp, codec)
        opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        for _ in range(steps):
            batch = mine[torch.randint(len(mine), (64,), generator=g)]
            loss = nn.functional.cross_entropy(ddp(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x[test]).argmax(1) == y[test]).float().mean())
            loss = float(nn.functional.cross_entropy(model(x[train]), y[train]))
        result = {"accuracy": acc, "train_loss": loss, "replicas_equal": same_on_all_ranks(model)}
        if state is not None:
            result |= {"ratio": state.stats.ratio, "dtypes": sorted(str(d) for d in state.stats.dtypes)}
        return result

    results = {codec: train_run(net(), codec) for codec in ("none", "int8", "sign")}
    # QAT under DDP: every rank calibrates on the same batch before wrapping, then trains its own shard
    qat = quanta.prepare_qat(net(), "w4a8-lsq", calib=[x[train[:256]]])
    results["qat_int8"] = train_run(qat, "int8")
    quanta.convert(qat)
    with torch.no_grad():
        results["qat_int8"]["converted_accuracy"] = float((qat(x[test]).argmax(1) == y[test]).float().mean())
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)
    """
)


def test_ddp_training_with_compressed_gradients_converges_like_float_gradients(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"rank{r}.json"), str(r), "2", str(tmp_path / "store")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]  # the replicas agree, and so do their measurements
    r = results[0]
    print(json.dumps(r, indent=1))
    assert all(run["replicas_equal"] for run in r.values())
    assert r["none"]["accuracy"] > 0.9
    # bits per value over 32, plus the padding of each bucket to whole blocks (at most 1 block in 19 here)
    for codec, ratio, accuracy_drop, loss_factor in (("int8", 8.125 / 32, 0.01, 1.1), ("sign", 1.125 / 32, 0.06, 2.5)):
        assert r[codec]["dtypes"] == ["torch.uint8"]  # the collectives carried codes, not floats
        assert r[codec]["ratio"] <= ratio * (1 + 1 / 19)
        assert r[codec]["accuracy"] >= r["none"]["accuracy"] - accuracy_drop
        assert r[codec]["train_loss"] <= loss_factor * r["none"]["train_loss"]
    assert r["qat_int8"]["accuracy"] > 0.85
    assert r["qat_int8"]["converted_accuracy"] == r["qat_int8"]["accuracy"]
