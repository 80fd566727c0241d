"""On CPU, the gradient of a large embedding table goes into one buffer kept for the whole run.

The backward of an embedding lookup builds a gradient the size of the whole table, every step, although a batch
touches a few hundred of its rows (MiniLM: 30,522 x 384 floats, 45 MiB, for about 450 token positions). glibc
serves a request that large with a fresh mapping, which the kernel zeroes a 4 KiB page at a time on first touch
(11,500 page faults), and unmaps it after the optimizer step (`zero_grad` sets gradients to None), so the next
step pays again. On MiniLM / SST-2 (8,000 rows, 250 steps, bf16 autocast) that made training 1.049-1.085 x as
long (`python scripts/bench/tta_levers.py --rows 8000 --rounds 3 --only dense_embedding_gradient`,
docs/BENCHMARKS.md).

Here the lookup runs with `sparse=True` (its backward gives only the rows the batch used), and a hook run when
that gradient reaches the weight adds those rows into a dense buffer allocated once, which becomes the weight's
`.grad`. Clipping, the optimizer (fused AdamW takes no sparse gradient) and the non-finite guard see an ordinary
dense gradient with the same values (rows summed by `index_add_`, as the dense backward sums them). With gradient
accumulation the later micro-batches add their sparse rows into that dense gradient in place. torch has no
switch for this: `nn.Embedding(sparse=True)` alone hands the optimizer and `clip_grad_norm_` a sparse gradient
they refuse.

Applied to trainable embeddings of at least MIN_ELEMENTS whose weight is used nowhere else (a tied LM head adds a
dense gradient anyway), on one CPU process (DDP reduces gradients through hooks of its own), without torch.compile.
Undone after training: the model saved and evaluated afterwards is the one loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

MIN_ELEMENTS = 1 << 20  # a word-embedding table (MiniLM 11.7 M, GPT-2 38.6 M); not positions or token types


def reusable_embeddings(model: torch.nn.Module) -> list[torch.nn.Embedding]:
    """The embeddings whose gradient goes into a kept buffer: trainable, large, plain (no max_norm or
    scale_grad_by_freq, not sparse already), on CPU, and their weight not shared with another module."""
    weights: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            weights[id(parameter)] = weights.get(id(parameter), 0) + 1
    return [module for module in model.modules()
            if type(module) is torch.nn.Embedding and module.weight.requires_grad and not module.sparse
            and module.max_norm is None and not module.scale_grad_by_freq and module.weight.device.type == "cpu"
            and module.weight.numel() >= MIN_ELEMENTS and weights[id(module.weight)] == 1]


def _densify_into(buffer: torch.Tensor):
    def hook(weight: torch.Tensor) -> None:
        grad = weight.grad
        if grad is None or not grad.is_sparse:  # a later micro-batch added into the dense buffer already
            return
        buffer.zero_()
        buffer.index_add_(0, grad._indices()[0], grad._values())
        weight.grad = buffer

    return hook


@contextmanager
def embedding_gradients_in_place(model: torch.nn.Module, enabled: bool = True) -> Iterator[list[Any]]:
    """Within the block, the large embeddings of `model` (reusable_embeddings) write their gradient into a buffer
    kept from step to step; yields the embeddings changed. `enabled=False` changes nothing."""
    modules = reusable_embeddings(model) if enabled else []
    handles = []
    try:
        for module in modules:
            buffer = torch.zeros_like(module.weight, memory_format=torch.contiguous_format)
            handles.append(module.weight.register_post_accumulate_grad_hook(_densify_into(buffer)))
            module.sparse = True
        yield modules
    finally:
        for module in modules:
            module.sparse = False
        for handle in handles:
            handle.remove()
