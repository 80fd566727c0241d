"""What a training run decides from its settings and its model: the launch state, attention for CPU training,
padding, planned steps, the best-model metric."""

from __future__ import annotations

from typing import Any

from llmkit.config.training_arguments import TrainingArgumentsError, make_training_arguments
from llmkit.errors import UserError, shown

ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", "attention_dropout_prob")


def attention_dropout(model: Any) -> float:
    """The model's dropout on attention probabilities (0 when its config names none)."""
    config = getattr(unwrapped(model), "config", None)
    values = [getattr(config, key, None) for key in ATTENTION_DROPOUT_KEYS]
    return max((float(v) for v in values if isinstance(v, (int, float))), default=0.0)


def cpu_training_attention(model: Any, requested: str | None, precision: str, device_type: str,
                           cpu_dropout: str, packed: bool = False) -> str | None:
    """Switch a model from SDPA to eager attention for training on CPU where eager is faster; return the reason.

    - bf16: torch's fused CPU attention kernel runs its bf16 backward about 3 x slower than its fp32 one when
      there is an attention mask, which capped bf16 training at 1.1-1.5 x fp32 (docs/BENCHMARKS.md): eager
      attention (plain bf16 matmuls + softmax) gives MiniLM 1.69-1.99 x and a small Llama 1.50 x instead of 1.37 x.
      Not for `packed` rows (causal-LM SFT with task.packing: a micro-batch is one row of all its examples):
      eager attention scores and keeps the whole row x row matrix, SDPA does not; SmolLM2-135M SFT (batch 4 x
      384 tokens packed, bf16, 5 steps) trained in 38.7 s at 6.2 GB peak RSS with SDPA and 54.5 s at 10.0 GB eager.
    - fp32 with attention dropout (BERT-style encoders, GPT-2) and train.cpu_dropout=fast: SDPA draws its dropout
      mask inside the kernel with torch's per-element generator; in eager attention it is a functional dropout
      that llmkit's CpuDropout replaces: a bare MiniLM 16 x 128 fp32 step went from 959 ms (SDPA, torch's
      dropout) to 753 ms (eager, llmkit's; bench.py's mixed_precision_bare_step_16x128).
    Training only: train_and_save switches the model back after training, so evaluation and distill's timing
    run the attention the model was loaded with (SDPA's forward was 1-5 % faster on MiniLM's SST-2 dev set);
    the choice is not saved with the model.
    Left alone when model.attn_implementation is set, on GPUs, and for models not using SDPA.
    """
    reason = eager_attention_reason(model, requested, precision, device_type, cpu_dropout, packed)
    if reason:
        unwrapped(model).set_attn_implementation("eager")
    return reason


def requested_attention(cfg: Any) -> tuple[str, str | None]:
    """The config key that sets the trained model's attention and its value: model.attn_implementation, or for
    a distillation the student's (a distill config has no model section)."""
    student = getattr(getattr(cfg, "distill", None), "student", None)
    if student is not None:
        return "distill.student.attn_implementation", student.attn_implementation
    return "model.attn_implementation", getattr(getattr(cfg, "model", None), "attn_implementation", None)


def packed_rows(cfg: Any) -> bool:
    """The run trains on packed rows: a causal LM with task.packing (finetune and adapter SFT, distill)."""
    task = getattr(cfg, "task", None)
    return getattr(task, "type", None) == "causal-lm" and bool(getattr(task, "packing", False))


def eager_attention_reason(model: Any, requested: str | None, precision: str, device_type: str,
                           cpu_dropout: str, packed: bool = False) -> str | None:
    """Why training will switch the model to eager attention (cpu_training_attention), or None; changes nothing
    (the memory estimate asks before the switch)."""
    if requested or device_type != "cpu" or attention_implementation(model) != "sdpa":
        return None
    if precision == "bf16" and not packed:
        return "bf16 training on CPU (faster than SDPA's bf16 backward here)"
    if cpu_dropout == "fast" and attention_dropout(model) > 0:
        return "attention dropout on CPU (llmkit's fast dropout replaces SDPA's per-element one)"
    return None


def pad_multiple(precision: str, device_type: str) -> int | None:
    """Pad batches to a multiple of 8 for half precision on GPUs (tensor-core tile sizes), never on CPU.

    On CPU it adds tokens without making short steps faster: MiniLM bf16 training steps at batch 32 ran 8 %
    fewer real tokens/s padded (13 -> 16 tokens 2,679 -> 2,455, 21 -> 24 3,775 -> 3,464); 16 x 121 -> 128 was
    1.05 x (bench.py's bf16_cpu_padding_to_multiple_of_8). fp32 CPU training never padded.
    """
    return 8 if precision in ("bf16", "fp16") and device_type != "cpu" else None


def unwrapped(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attention_implementation(model: Any) -> str | None:
    return getattr(getattr(unwrapped(model), "config", None), "_attn_implementation", None)


def launch_state(train_cfg: Any) -> Any:
    """This process's place in a multi-process launch (torchrun, accelerate launch), or the single process.

    Returns accelerate's PartialState (process_index, num_processes, is_main_process, main_process_first(),
    wait_for_everyone(), print()), so a recipe can prepare data and the run directory on the main process first,
    before its own TrainingArguments exist. TrainingArguments set that state up, on CPU as a gloo group only with
    use_cpu (a bare PartialState() there counts one process per rank), so it is built here
    exactly as training builds it. Settings that only matter once training starts are left out.
    """
    from accelerate import PartialState


    try:
        make_training_arguments(train_cfg, "llmkit-launch", eval_strategy="no", save_strategy="no",
                                load_best_model_at_end=False)
    except TrainingArgumentsError as e:
        raise UserError(f"train.{e.key}: {e.message}" if e.key else f"train: {e.message}") from None
    return PartialState()


MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def ddp_find_unused_parameters(model: Any) -> bool | None:
    """DDP's find_unused_parameters when train.ddp_find_unused_parameters is not set.

    False for a plain transformers model, trained in full or with frozen parts (DDP only tracks parameters that
    require gradients): each trainable parameter takes part in every loss, and transformers' default (True) makes
    DDP walk the autograd graph every step and warn that it found nothing unused. None — transformers' choice,
    True — for PEFT-wrapped models, mixture-of-experts models (an expert no token was routed to gets no gradient)
    and LayerDrop: with False, a parameter that sits out a step fails the next one.
    """
    from transformers import PreTrainedModel

    config = getattr(model, "config", None)
    if not isinstance(model, PreTrainedModel) or hasattr(model, "peft_config") or config is None:
        return None
    experts = [getattr(config, key, None) for key in MOE_CONFIG_KEYS]
    if any(isinstance(n, int) and n > 1 for n in experts) or (getattr(config, "layerdrop", 0) or 0) > 0:
        return None
    return False


def check_best_metric(train_cfg: Any, names: list[str]) -> None:
    """train.metric_for_best_model must be a metric the run's evaluation reports (`names`, without the eval_
    prefix; the loss always is): the Trainer would look it up only at the first evaluation, mid-run."""
    wanted = train_cfg.metric_for_best_model
    if not wanted:
        return
    known = ["loss", *names]
    if wanted.removeprefix("eval_") not in known:
        choices = ", ".join(known[:12]) + (f" (and {len(known) - 12} more)" if len(known) > 12 else "")
        raise UserError(f"train.metric_for_best_model: {shown(wanted)} is not a metric this run's evaluation "
                        f"reports; choose one of: {choices}.")


def planned_steps(args: Any, n_train: int) -> int:
    """Optimizer steps a run will take: max_steps when set, else epochs over n_train examples (or blocks)."""
    import math

    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return math.ceil(n_train / per_step * args.num_train_epochs)
