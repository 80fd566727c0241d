"""A memory estimate of a training run, printed with the plan (and by `--dry-run`), before any step is taken.

Out-of-memory is the most common failure of a fine-tuning run, and it comes after minutes of loading and
tokenizing. The parts are known before the first step: the weights (counted exactly from the loaded model), a
gradient for every trainable weight, the optimizer's states (AdamW: two per trainable weight), frozen models that
sit beside it (a DPO reference copy, a distillation teacher), and the activations the backward pass keeps for
one micro-batch, estimated from the model's shape (layers, hidden, intermediate, heads, vocabulary for the
logits) at the planned batch x the longest example's length, the precision and gradient checkpointing taken into
account. Against the free memory of the device the run trains on (RAM, or the GPU's), a warning names the
settings that shrink it. docs/training.md ("Memory estimate") compares the estimate with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmkit.config.sections import available_memory_bytes, proc_bytes

MIB = 2**20
GIB = 2**30
# Peak RSS of `python -c "import torch, transformers, datasets, accelerate"` with Trainer and the Auto classes
# imported (torch 2.13 CPU, transformers 5.2, measured 493 MiB): the process before any model or data.
BASELINE = 500 * MIB
RAM = "RAM available (free + what this process holds)"
KNOBS = ("train.per_device_train_batch_size (with train.gradient_accumulation_steps to keep the effective batch)",
         "data.max_length", "train.gradient_checkpointing=true", "an adapter (llmkit adapter: only its weights "
         "get gradients and optimizer states)")


@dataclass
class Shape:
    """What the activations depend on, read from the model's config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    gated: bool = False  # a gated MLP (SwiGLU: gate, up, their product) keeps two more hidden-wide tensors
    eager: bool = False  # eager attention keeps the heads x length x length attention probabilities
    dropout: bool = False  # dropout keeps a one-byte mask per dropped element
    attention_dropout: bool = False  # on CPU, SDPA with dropout falls back to the eager (math) kernel
    activation_extra: int = 0  # intermediate-wide tensors an activation written in Python keeps (gelu_new: 3)


# activations composed of several tensor operations in transformers (each keeps its inputs for the backward pass)
COMPOSED_ACTIVATIONS = {"gelu_new": 3, "gelu_fast": 3, "gelu_python": 2, "quick_gelu": 1}
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")
HIDDEN_DROPOUT = ("hidden_dropout_prob", "resid_pdrop", "dropout", "hidden_dropout")


def _first(config: Any, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def model_shape(model: Any) -> Shape:
    """The shape of a transformers model (or of the transformer inside a wrapper with `.config`)."""
    inner = next((m for m in model.modules() if hasattr(m, "config")), model)  # a sentence encoder's transformer
    config = getattr(inner, "config", None)
    config = getattr(config, "text_config", None) or config
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _first(config, "num_attention_heads", "n_head", "n_heads", default=1)
    act = str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "")
    return Shape(layers=_first(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers"), hidden=hidden,
                 intermediate=_first(config, "intermediate_size", "n_inner", "ffn_dim", "hidden_dim",
                                     default=4 * hidden),
                 heads=heads, kv_heads=_first(config, "num_key_value_heads", default=heads),
                 vocab=_first(config, "vocab_size"),
                 gated=any(name.endswith("gate_proj") for name, _ in model.named_modules()),
                 eager=getattr(config, "_attn_implementation", None) == "eager",
                 dropout=_positive(config, HIDDEN_DROPOUT), attention_dropout=_positive(config, ATTENTION_DROPOUT),
                 activation_extra=COMPOSED_ACTIVATIONS.get(act, 0))


def _positive(config: Any, names: tuple[str, ...]) -> bool:
    return any(isinstance(getattr(config, k, None), float) and getattr(config, k) > 0 for k in names)


@dataclass
class Workload:
    """One micro-batch as the backward pass sees it: rows x tokens, whether the loss needs vocabulary-wide
    logits at every position (language modelling), the precision's bytes, gradient checkpointing."""

    rows: int
    length: int
    logits: bool
    mixed: bool  # bf16 / fp16 autocast over fp32 weights
    checkpointing: bool = False
    device: str = "cpu"
    eager: bool = False  # training switches the model to eager attention (training/arguments.py, CPU)
    fused: bool = False  # the loss runs the LM head chunk by chunk (training/fused_loss.py): no fp32 logits kept


def layer_bytes(shape: Shape, work: Workload, compute: int, stream: int) -> int:
    """Bytes one layer keeps per micro-batch for the backward pass: the residual stream and norm inputs
    (`stream` bytes: fp32 under autocast), the matmul inputs and outputs (`compute` bytes)."""
    h, i, n = shape.hidden, shape.intermediate, work.rows * work.length
    kv = 2 * h * shape.kv_heads // shape.heads
    # norm outputs, q, k, v, attention output, MLP input and hidden (gated: gate, up, activation, product)
    matmul = 5 * h + kv + ((4 if shape.gated else 2) + shape.activation_extra) * i
    per_token = 2 * h * stream + matmul * compute + (2 * h if shape.dropout else 0)
    # eager attention (or CPU SDPA with dropout) keeps the probabilities (softmax in fp32 under autocast, and
    # their cast for the matmul with the values), with dropout also its mask and output
    drop = shape.attention_dropout
    kept = shape.eager or work.eager or (drop and work.device == "cpu")
    probabilities = stream + compute if work.mixed else compute
    scores = shape.heads * work.length * (probabilities + (1 + compute if drop else 0)) if kept else 0
    return n * (per_token + scores)


def activation_bytes(shape: Shape, work: Workload, compute: int, stream: int) -> int:
    """Every layer's kept tensors (only its input with gradient checkpointing, plus the one layer recomputed at
    a time), the embeddings' output and the logits with the loss's fp32 copies."""
    n = work.rows * work.length
    per_layer = layer_bytes(shape, work, compute, stream)
    layers = (shape.layers * n * shape.hidden * stream + per_layer if work.checkpointing
              else shape.layers * per_layer)
    # logits in the compute dtype, their fp32 upcast under autocast, log-softmax and its gradient in fp32; fused:
    # the logits' gradient in the compute dtype (one block of rows) and one chunk's fp32 logits and softmax
    if work.logits and work.fused:
        from llmkit.training.fused_loss import CHUNK_ROWS, GRADIENT_BYTES

        logits = min(n * shape.vocab * compute, GRADIENT_BYTES) + min(n, CHUNK_ROWS) * shape.vocab * 8
    else:
        logits = n * shape.vocab * (compute + (4 if work.mixed else 0) + 8) if work.logits else 0
    return layers + 2 * n * shape.hidden * stream + logits


def optimizer_states(optim: str) -> float:
    """Optimizer states per trainable weight, in the weight's bytes (8-bit states: a quarter of fp32's)."""
    name = str(getattr(optim, "value", optim)).lower()
    if "8bit" in name:
        return 0.5
    if "sgd" in name or "adafactor" in name:  # plain SGD: none; Adafactor: factored rows and columns, ~none
        return 0.0
    if "lion" in name:
        return 1.0
    return 2.0


def weights(model: Any) -> tuple[int, int, int]:
    """(bytes of every weight, bytes of trainable weights, count of trainable weights), counted exactly."""
    total = trainable = count = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights (embeddings and LM head) are one tensor
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        if p.requires_grad:
            trainable += p.numel() * p.element_size()
            count += p.numel()
    return total, trainable, count


@dataclass
class MemoryEstimate:
    """The parts of a run's peak memory, in bytes."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    frozen: int = 0
    casts: int = 0  # autocast's half-precision copies of the trainable fp32 weights
    baseline: int = BASELINE  # the process itself (CPU only; a GPU's CUDA context is not counted)
    free: int | None = None
    where: str = RAM
    rows: int = 0
    length: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (self.parameters + self.casts + self.gradients + self.optimizer + self.activations + self.frozen
                + self.baseline)

    def line(self) -> str:
        cast = f" (+{_size(self.casts)} half-precision copies)" if self.casts else ""
        parts = [f"weights {_size(self.parameters)}{cast}", f"gradients {_size(self.gradients)}",
                 f"optimizer {_size(self.optimizer)}",
                 f"activations {_size(self.activations)} ({self.rows} x {self.length} tokens)"]
        if self.frozen:
            parts.append(f"frozen models {_size(self.frozen)}")
        if self.baseline:
            parts.append(f"process {_size(self.baseline)}")
        free = f"; {_size(self.free)} {self.where}" if self.free is not None else ""
        return f"memory: ~{_size(self.total)} estimated peak = {' + '.join(parts)}{free}"

    def warning(self) -> str | None:
        """A warning when the estimate exceeds the free memory, naming what reduces it; else None."""
        if self.free is None or self.total <= self.free:
            return None
        return (f"warning: the memory estimate (~{_size(self.total)}) exceeds the {_size(self.free)} of "
                f"{self.where}; the run may fail out of memory. To reduce it lower {', '.join(KNOBS[:2])}, or set "
                f"{KNOBS[2]}, or train {KNOBS[3]}.")


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB"


def estimate(model: Any, work: Workload, optim: str = "adamw_torch", frozen: tuple[Any, ...] = (),
             baseline: int = BASELINE) -> MemoryEstimate:
    """The estimate for training `model` on micro-batches of `work`; `frozen`: models kept beside it without
    gradients (a reference copy, a teacher; their forward passes keep no activations)."""
    total, trainable, count = weights(model)
    element = trainable // count if count else 4
    compute = 2 if work.mixed else element
    stream = max(element, compute)
    casts = count * 2 if work.mixed and element > 2 else 0  # autocast's half-precision copies of trainable weights
    frozen_bytes = sum(weights(m)[0] for m in frozen)
    return MemoryEstimate(parameters=total, casts=casts, gradients=trainable,
                          optimizer=int(optimizer_states(optim) * trainable),
                          activations=activation_bytes(model_shape(model), work, compute, stream),
                          frozen=frozen_bytes, baseline=baseline, rows=work.rows, length=work.length)


def free_memory(device: str) -> tuple[int | None, str]:
    """(bytes free, what) on the device the run trains on: the GPU's free memory, else the RAM available (the
    model-size check's reading, config/sections.py) plus what this process already holds (its weights are
    loaded)."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0], "GPU memory free"
    available = available_memory_bytes()
    return (available + _resident_bytes() if available is not None else None), RAM


def _resident_bytes() -> int:
    """This process's resident memory (VmRSS), 0 where /proc is not there."""
    return proc_bytes("/proc/self/status", "VmRSS") or 0
