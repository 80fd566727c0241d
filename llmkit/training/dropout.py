"""Dropout for training on CPU without torch's per-element random draws.

torch's CPU dropout (`bernoulli_`; no fused kernel off GPUs) draws one number per element from the Mersenne
Twister, on one thread (23 ms forward + backward for MiniLM's 16 x 12 x 128 x 128 attention probabilities), so on
MiniLM it took 42 % of a bf16 training step and capped
what bf16 could gain (docs/BENCHMARKS.md). `CpuDropout` draws 64 bits per four elements from the same generator
(`random_` on int64) and keeps an element when its 16-bit lane is at or above p * 65536: the same independent
Bernoulli masks, p rounded to the nearest multiple of 1/65536 (0.1 becomes 0.100006) and the kept values scaled by
1 / (1 - that p) (exact in fp32; rounded to bf16 for bf16 tensors, as torch's own dropout does). A call, forward
and backward, takes 2.5-3.1 x less time than torch's on MiniLM's shapes (bench.py's cpu_dropout_op_speedup). Seeds
and checkpoints reproduce it, since the bits come from torch's generator, whose state the Trainer saves. torch has
nothing faster on CPU, hence this file.

Applied as a TorchFunctionMode around each training step, so every `torch.nn.functional.dropout` call counts:
nn.Dropout modules and the functional dropout inside eager attention, in any architecture, with nothing in the
model changed. Anything it does not cover (GPU tensors, in-place dropout, p that rounds to 0 or 1) goes to torch.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LANES = 1 << 16  # values of one 16-bit lane


SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@functools.cache
def _scale_bits(dtype: torch.dtype, dropped: int) -> int:
    """The bit pattern of 1 / (1 - dropped / LANES) in `dtype`, as an integer (a few (dtype, p) pairs per run)."""
    return torch.tensor(LANES / (LANES - dropped), dtype=dtype).view(SAME_SIZE_INT[dtype.itemsize]).item()


class _MaskedScale(torch.autograd.Function):
    """input * mask, where mask is 1 / (1 - p) for kept elements and 0 for dropped ones, in input's dtype.

    The mask is built once and multiplies the input and, in the backward pass, the gradient: one pass over the
    tensor each way. It is built in integers: keep (0/1) times the bit pattern of the scale, viewed as the
    input's float type, because torch's bool-to-float conversions and `where` were slower than integer
    passes here. In bf16 the scale is rounded to bf16, as in torch's own dropout (its noise has the input's dtype).
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor, dropped: int) -> torch.Tensor:
        n = input.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
        keep = words.view(torch.int16)[:n].view(input.shape) >= dropped - LANES // 2  # lanes span -32768..32767
        as_int = SAME_SIZE_INT[input.element_size()]
        mask = keep.to(as_int).mul_(_scale_bits(input.dtype, dropped)).view(input.dtype)
        ctx.save_for_backward(mask)
        return input * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


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
