"""Gradient compression for data-parallel training: DistributedDataParallel communication hooks that exchange
quantized gradients.

Two codecs, each a pure encode / decode pair plus a hook around it:

- **int8** with stochastic rounding: each block of :data:`BLOCK` gradient values gets a float32 scale
  ``max|g| / 127`` and codes ``floor(g / scale + u)``, ``u ~ U[0, 1)``, so the decoded gradient is unbiased
  (``E[decode] = g``). 8.125 bits per value.
- **sign** with error feedback (EF-SignSGD, Karimireddy et al. 2019): each rank adds the error it did not send
  last step, ``p = g + e``, sends the sign bits of ``p`` (packed 8 per byte) and one scale ``mean|p|`` per block,
  and keeps ``e = p - scale * sign(p)``. Nothing is lost over time: the sum of what was sent plus the memory equals
  the sum of the gradients. 1.125 bits per value.

Summing int8 codes across ranks would overflow and mix scales, so the codes are all-gathered (one uint8 tensor per
rank: codes, then the scales' bytes) and every rank decodes each rank's part and averages them in rank order: all
ranks apply the same gradient, and the model replicas stay identical. ``state.stats`` counts the bytes each rank
handed to the collective (the uint8 payloads themselves) against the float gradients' bytes.

    model = DistributedDataParallel(model)
    state = quanta.grad_compression.register(model, "sign")
    ...train...
    print(state.stats.ratio)            # compressed bytes / float bytes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from quanta.errors import QuantaError
from quanta.primitives.packing import pack, unpack

__all__ = [
    "BLOCK",
    "CompressionState",
    "CompressionStats",
    "int8_decode",
    "int8_encode",
    "register",
    "sign_decode",
    "sign_encode",
]

BLOCK = 256  # gradient values per scale
Codec = Literal["int8", "sign"]


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` (float32) zero-padded to whole blocks, as ``(blocks, BLOCK)``."""
    pad = (-flat.numel()) % BLOCK
    return torch.nn.functional.pad(flat.float(), (0, pad)).reshape(-1, BLOCK)


def int8_encode(flat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The uint8 payload of ``flat``: int8 codes (stochastic rounding), then the float32 scales' bytes."""
    blocks = _blocks(flat)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    noise = torch.rand(blocks.shape, generator=generator)
    codes = torch.floor(blocks / scale + noise).clamp(-127, 127).to(torch.int8)
    return torch.cat([codes.flatten().view(torch.uint8), scale.flatten().view(torch.uint8)])


def int8_decode(payload: torch.Tensor, count: int) -> torch.Tensor:
    """The float32 gradient of ``count`` values that :func:`int8_encode` turned into ``payload``."""
    blocks = -(-count // BLOCK)
    codes = payload[: blocks * BLOCK].view(torch.int8).reshape(blocks, BLOCK)
    scale = payload[blocks * BLOCK :].view(torch.float32).reshape(blocks, 1)
    return (codes.float() * scale).flatten()[:count]


def sign_encode(flat: torch.Tensor, error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(payload, new error)`` for gradient ``flat`` with error memory ``error`` (same length): the payload is the
    packed sign bits of ``p = flat + error`` (1 for ``p >= 0``) and the float32 block scales ``mean|p|``."""
    p = flat.float() + error
    blocks = _blocks(p)
    count = p.numel()
    valid = torch.full((blocks.shape[0], 1), float(BLOCK))  # padding does not count towards a block's mean
    valid[-1] = count - (blocks.shape[0] - 1) * BLOCK
    scale = blocks.abs().sum(dim=1, keepdim=True) / valid
    positive = blocks >= 0
    sent = torch.where(positive, scale, -scale).flatten()[:count]
    bits = pack(positive.flatten().to(torch.uint8), 1)  # whole blocks: BLOCK / 8 bytes each, so scales stay aligned
    return torch.cat([bits, scale.flatten().view(torch.uint8)]), p - sent


def sign_decode(payload: torch.Tensor, count: int) -> torch.Tensor:
    """The float32 gradient ``scale * sign`` that :func:`sign_encode` sent in ``payload``."""
    blocks = -(-count // BLOCK)
    nbits = blocks * BLOCK // 8
    positive = unpack(payload[:nbits], 1, blocks * BLOCK)[:count].bool()
    per_value = payload[nbits:].view(torch.float32).repeat_interleave(BLOCK)[:count]
    return torch.where(positive, per_value, -per_value)


@dataclass
class CompressionStats:
    """What one rank handed to the collectives: ``sent_bytes`` of payload for ``float_bytes`` of gradients."""

    sent_bytes: int = 0
    float_bytes: int = 0
    calls: int = 0
    dtypes: set[torch.dtype] = field(default_factory=set)

    @property
    def ratio(self) -> float:
        return self.sent_bytes / self.float_bytes if self.float_bytes else float("nan")


@dataclass
class CompressionState:
    """The state of one DDP model's hook: the codec, the process group, the stochastic-rounding generator (seeded
    per rank) and the sign codec's error memory per bucket."""

    codec: Codec
    process_group: Any = None
    seed: int = 0
    stats: CompressionStats = field(default_factory=CompressionStats)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        rank = dist.get_rank(self.process_group) if dist.is_initialized() else 0
        self.generator = torch.Generator().manual_seed(self.seed * 65_537 + rank)


def _hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    grad = bucket.buffer()
    flat = grad.detach().flatten()
    count = flat.numel()
    if state.codec == "int8":
        payload = int8_encode(flat, state.generator)
        decode = int8_decode
    else:
        error = state.errors.get(bucket.index())
        if error is None or error.numel() != count:  # DDP rebuilds its buckets after the first step
            error = torch.zeros(count, dtype=torch.float32)
        payload, state.errors[bucket.index()] = sign_encode(flat, error)
        decode = sign_decode
    state.stats.sent_bytes += payload.numel() * payload.element_size()
    state.stats.float_bytes += count * grad.element_size()
    state.stats.calls += 1
    state.stats.dtypes.add(payload.dtype)
    world = dist.get_world_size(state.process_group)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    work = dist.all_gather(gathered, payload, group=state.process_group, async_op=True)
    assert work is not None

    def average(_: torch.futures.Future[Any]) -> torch.Tensor:
        total = decode(gathered[0], count)
        for part in gathered[1:]:
            total = total + decode(part, count)
        return (total / world).to(grad.dtype).reshape(grad.shape)

    return work.get_future().then(average)


# DDP checks the hook's annotations as objects; ``from __future__ import annotations`` made them strings
_hook.__annotations__ = {
    "state": CompressionState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def register(model: torch.nn.parallel.DistributedDataParallel, codec: Codec, seed: int = 0) -> CompressionState:
    """Register the ``codec`` (``int8`` or ``sign``) communication hook on ``model``; returns its state (byte
    counts in ``state.stats``).

    Raises:
        QuantaError: an unknown codec, or a model that is not DistributedDataParallel.
    """
    if codec not in ("int8", "sign"):
        raise QuantaError(f"unknown gradient codec {codec!r}: choose 'int8' (stochastic rounding) or 'sign'.")
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise QuantaError("gradient compression hooks into DistributedDataParallel: wrap the model in it first.")
    state = CompressionState(codec, model.process_group, seed)
    model.register_comm_hook(state, _hook)
    return state
