"""A causal LM's training loss without its vocabulary-sized logits: the LM head and the cross-entropy in one pass.

A causal LM's forward multiplies every position's hidden state by the LM head (tokens x vocabulary logits), and
transformers' loss then upcasts those logits to float32, log-softmaxes them, and the backward walks the same
tensors again. For the tiny GPT-2 of the pretraining benchmark (16 x 256 tokens, 8,000 words) that is 32.8 M
logits a step, memory-bound work and conversions that took 30 % of a bf16 training step on 2 CPU cores (the
`loss` and `casts` families of scripts/bench/profile_ops.py). For SmolLM2 (49,152 words) the logits of one SFT
micro-batch are gigabytes.

Here the head and the loss run over the scored positions only (an SFT prompt and padding are never multiplied by
the head), chunk by chunk: a chunk's logits come out of the head's matmul (bf16 under autocast, as the model's own
head would give them), are upcast to float32 and softmaxed, and give that chunk's loss and, at once, the gradient
of the loss with respect to them (softmax minus one-hot), kept in bf16; two matmuls turn those into the gradients
of the hidden states and of the head's weight. No float32 tensor of the vocabulary's width outlives its chunk. The
backward only scales the precomputed gradients by the incoming one (the Trainer's 1 / gradient-accumulation
scaling). The loss is summed in float32.

Written by hand because torch's own `F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())` (torch
2.13), which chunks the same way, returns the loss in its input's dtype: under bf16 the summed loss is rounded to
bf16 (6.9375 for 6.9349), and fed float32 inputs instead it runs the head's matmuls in float32 (a 1.2 x slower
step on the tiny GPT-2). transformers has none.

Used for the training steps of `llmkit pretrain` (objective clm) and causal-LM `finetune` / `adapter` (SFT), on
model classes whose logits are exactly `lm_head(last hidden state)` (`FUSED_MODEL_TYPES`; others, such as
Granite's scaled logits, keep the model's own loss), with a plain `nn.Linear` head without bias (a LoRA-wrapped or
saved-module head keeps the model's loss; so does a soft prompt or prefix, which peft's forward adds), on one
CPU process (DDP, DeepSpeed and FSDP run the wrapped model's forward; a GPU keeps the model's loss until
scripts/gpu_check.sh has timed both), without torch.compile. Evaluation keeps the model's forward.
"""

from __future__ import annotations

from typing import Any

import torch

# Model types whose causal-LM forward computes `logits = self.lm_head(hidden_states)` and nothing more (checked
# against their transformers 5 modeling files; Granite divides by logits_scaling, Gemma 2 soft-caps).
FUSED_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})
CHUNK_ROWS = 128  # rows whose float32 logits are softmaxed at a time (fastest of 16-256 for 8,000 and 49,152 words)
GRADIENT_BYTES = 256 << 20  # the bf16 gradient of the logits kept for one weight-gradient matmul, at most
TINY = 1e-30  # a target probability below this gets its loss from the log-sum-exp (its log would underflow)


class LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), float32; gradients computed in the forward.

    A block of rows (as many as GRADIENT_BYTES of bf16 gradient hold: a whole micro-batch of SmolLM2 or the tiny
    GPT-2) is processed CHUNK_ROWS at a time: logits, float32 softmax, loss, softmax minus one-hot written into the
    block's gradient; then one matmul each gives the block's hidden-state and weight gradients. Accumulating the
    weight gradient chunk by chunk instead costs a vocabulary x hidden float32 add per chunk (for SmolLM2's head, 81
    ms of a 256-row chunk's 200 ms) and made the loss slower than the unfused one.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            grad_hidden = torch.empty_like(h) if want_hidden else None
            grad_weight = None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            block = max(CHUNK_ROWS, GRADIENT_BYTES // (2 * weight.shape[0]))
            for first in range(0, h.shape[0], block):
                rows = h[first:first + block]
                grad = _softmax_minus_one_hot(rows, w, targets[first:first + block], total,
                                              keep=want_hidden or want_weight)
                if want_hidden:
                    grad_hidden[first:first + block] = grad @ w
                if want_weight:
                    part = (grad.t() @ rows).float()
                    grad_weight = part if grad_weight is None else grad_weight.add_(part)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total if grad_hidden is not None else None,
                grad_weight * grad_total if grad_weight is not None else None, None)


def _softmax_minus_one_hot(rows: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, total: torch.Tensor,
                           keep: bool) -> torch.Tensor | None:
    """Adds the rows' summed negative log-likelihood to `total`; returns d(loss)/d(logits) of the rows in w's dtype
    (None when no gradient is wanted)."""
    grad = torch.empty(rows.shape[0], w.shape[0], dtype=w.dtype, device=w.device) if keep else None
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        target = targets[start:start + CHUNK_ROWS]
        logits = (rows[start:start + CHUNK_ROWS] @ w.t()).float()
        probabilities = torch.softmax(logits, dim=1)
        index = torch.arange(target.shape[0], device=target.device)
        picked = probabilities[index, target]
        nll = -picked.log()
        tiny = picked < TINY
        if tiny.any():
            nll[tiny] = torch.logsumexp(logits[tiny], dim=1) - logits[tiny, target[tiny]]
        total += nll.sum()
        if keep:
            probabilities[index, target] = picked - 1
            grad[start:start + CHUNK_ROWS] = probabilities
    return grad


def fusable(args: Any) -> bool:
    """Whether training arguments allow the fused loss: one CPU process (where it was measured; on a GPU the model's
    own loss stays until the GPU check has timed both), no torch.compile, no label smoothing (the Trainer's label
    smoother needs the logits)."""
    return (args.device.type == "cpu" and args.world_size == 1 and not args.torch_compile
            and not args.label_smoothing_factor)


def for_training(model: Any, args: Any) -> tuple[Any, torch.Tensor] | None:
    """(backbone, head weight) where the causal-LM trainers' training steps use the fused loss for `model` under
    `args` (the trainers and the memory estimate ask the same question), or None."""
    return fused_head(model) if fusable(args) else None


def fused_head(model: Any) -> tuple[Any, torch.Tensor] | None:
    """(backbone, head weight) of a causal LM whose training loss can skip its logits, or None."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return None  # a soft prompt or prefix is added by the peft model's own forward
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if getattr(config, "model_type", None) not in FUSED_MODEL_TYPES or type(head) is not torch.nn.Linear:
        return None
    if head.bias is not None or getattr(inner, "base_model", None) is None:
        return None
    return inner.base_model, head.weight


def causal_lm_loss(backbone: Any, weight: torch.Tensor, inputs: dict, labels: torch.Tensor,
                   denominator: torch.Tensor | int | None) -> torch.Tensor:
    """The causal-LM loss of `inputs` (position i predicts label i + 1; -100 not scored): summed over the scored
    tokens and divided by `denominator` (the Trainer's token count of the accumulation window), or by this batch's
    scored tokens when None, as transformers' ForCausalLMLoss divides."""
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != -100
    # Only the scored positions meet the head (indexing's backward scatters their gradients back).
    total = LinearCrossEntropy.apply(hidden[:, :-1][scored], weight, targets[scored])
    if denominator is None:
        denominator = scored.sum().clamp(min=1)
    elif torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total / denominator
