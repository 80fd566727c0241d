"""Tasks a model is trained for — sequence classification, token classification, causal-LM (SFT) — with one set
of names (TASK_TYPES) across finetune, adapter, distill and eval: their config section, their strategies (data,
head, collator, metrics, report) and the training flow finetune and adapter share."""

from llmkit.tasks.config import TASK_TYPES, TaskConfig, TaskTrainingConfig
from llmkit.tasks.finetuning import SMOKE, describe_splits, fine_tune, refuse_adapter_model, shorter_samples
from llmkit.tasks.strategies import TASKS, task_for

__all__ = ["SMOKE", "TASKS", "TASK_TYPES", "TaskConfig", "TaskTrainingConfig", "describe_splits", "fine_tune",
           "refuse_adapter_model", "shorter_samples", "task_for"]
