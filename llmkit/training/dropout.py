"""Dropout for training on CPU without torch's per-element random draws.

torch's CPU dropout (`bernoulli_`; no fused kernel off GPUs) draws one number per element from the Mersenne
Twister, on one thread: about 5 ns per element here, so on MiniLM it took 42 % of a bf16 training step and capped
what bf16 could gain (docs/BENCHMARKS.md). `CpuDropout` draws 64 bits per four elements from the same generator
(`random_` on int64) and keeps an element when its 16-bit lane is at or above p * 65536: the same independent
Bernoulli masks, p rounded to the nearest multiple of 1/65536 (0.1 becomes 0.100006) and the kept values scaled by
exactly 1 / (1 - that p). Seeds and checkpoints reproduce it, since the bits come from torch's generator, whose
state the Trainer saves. torch has nothing faster on CPU, hence this file.

Applied as a TorchFunctionMode around each training step, so every `torch.nn.functional.dropout` call counts:
nn.Dropout modules and the functional dropout inside eager attention, in any architecture, with nothing in the
model changed. Anything it does not cover (GPU tensors, in-place dropout, p that rounds to 0 or 1) goes to torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LANES = 1 << 16  # values of one 16-bit lane


class _MaskedScale(torch.autograd.Function):
    """input * keep / (1 - p), keeping the boolean mask (1 byte per element) for the backward pass."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, dropped: int) -> torch.Tensor:
        n = input.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
        keep = words.view(torch.int16)[:n].view(input.shape) >= dropped - LANES // 2  # lanes span -32768..32767
        ctx.scale = LANES / (LANES - dropped)
        ctx.save_for_backward(keep)
        return input.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def cpu_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`torch.nn.functional.dropout` with CpuDropout's masks where they apply, else torch's own."""
    dropped = round(p * LANES)
    if training and not inplace and 0 < dropped < LANES and input.device.type == "cpu" and input.is_floating_point():
        return _MaskedScale.apply(input, dropped)
    return F.dropout(input, p, training, inplace)


class CpuDropout(TorchFunctionMode):
    """Within `with CpuDropout():`, `torch.nn.functional.dropout` runs `cpu_dropout`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.dropout:
            return cpu_dropout(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
