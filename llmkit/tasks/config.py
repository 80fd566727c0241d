"""The task section and the config every task-training command shares (finetune, adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.errors import ConfigIssue

TASK_TYPES = ("sequence-classification", "token-classification", "causal-lm", "sentence-embedding")
EMBEDDING_LOSSES = ("auto", "in-batch-negatives", "cosent", "cosine")
POOLINGS = ("mean", "cls", "last-token")


@dataclass
class TaskConfig:
    """What to fine-tune the model for."""

    type: Literal["sequence-classification", "token-classification", "causal-lm", "sentence-embedding"] = opt(
        "sequence-classification: one label (or several) per text; token-classification: one tag per word "
        "(data.tokens_column / data.tags_column, or a .conll file); causal-lm: instruction tuning (SFT) on "
        "alpaca / chat messages / prompt-response data, or continued pretraining on raw text; "
        "sentence-embedding: a sentence encoder from scored pairs (data.score_column) or (anchor, positive"
        "[, negative]) pairs (data.text_pair_column, data.negative_column), saved in the sentence-transformers "
        "format.", default="sequence-classification")
    multi_label: bool = opt("Each example may carry several labels (a list, or a string split on "
                            "data.label_separator); trained with a sigmoid per class.", default=False)
    threshold: float = opt("Multi-label only: a class is predicted when its probability exceeds this.",
                           default=0.5)
    packing: bool = opt("causal-lm: pack each batch into one padding-free row with position ids restarting per "
                        "example (no attention across examples); false: dynamic padding.", default=True)
    sample_prompts: list[str] = opt("causal-lm: prompts to generate for at the end (samples.jsonl); default: the "
                                    "first 3 validation prompts.", default_factory=list)
    sample_max_new_tokens: int = opt("causal-lm: new tokens per sample generation.", default=64)
    too_long: Literal["truncate", "error"] = opt("causal-lm: examples longer than data.max_length are truncated "
                                                 "(and counted), or refused with an error.", default="truncate")
    loss: Literal["auto", "in-batch-negatives", "cosent", "cosine"] = opt(
        "sentence-embedding: auto picks cosent for scored pairs (the data has data.score_column), else "
        "in-batch-negatives (each anchor against every other positive, and negative, of the batch: the supervised "
        "SimCSE / multiple-negatives ranking loss); cosine: regression of the cosine similarity on the score.",
        default="auto")
    pooling: Literal["mean", "cls", "last-token"] | None = opt(
        "sentence-embedding: how token vectors become the sentence vector; default: the model's own (a "
        "sentence-transformers model), else mean.", default=None)
    temperature: float = opt("sentence-embedding, in-batch-negatives: the softmax temperature of the cosine "
                             "similarities (SimCSE: 0.05).", default=0.05)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if not 0 < self.threshold < 1:
            issues.append(ConfigIssue("threshold", f"must be between 0 and 1, got {self.threshold}."))
        if self.type != "causal-lm":
            for key, default in (("packing", True), ("sample_prompts", []), ("sample_max_new_tokens", 64),
                                 ("too_long", "truncate")):
                if getattr(self, key) != default:
                    issues.append(ConfigIssue(key, f"only applies to task.type: causal-lm, not {self.type}."))
        if self.type != "sequence-classification" and self.multi_label:
            issues.append(ConfigIssue("multi_label", "only applies to task.type: sequence-classification."))
        if self.type != "sentence-embedding":
            for key, default in (("loss", "auto"), ("pooling", None), ("temperature", 0.05)):
                if getattr(self, key) != default:
                    issues.append(ConfigIssue(key, f"only applies to task.type: sentence-embedding, not {self.type}."))
        elif self.temperature <= 0:
            issues.append(ConfigIssue("temperature", f"must be > 0, got {self.temperature} (SimCSE: 0.05)."))
        return issues


@dataclass
class TaskTrainingConfig:
    """What training a model for a task takes: the model, the data, the task, the tokenizer, the training
    settings and the run directory (`llmkit finetune`; `llmkit adapter` adds its adapter section)."""

    command = "finetune"  # the command messages name (a class attribute, not a setting)
    model: ModelConfig = opt("The model to fine-tune.")
    data: DataConfig = opt("The data to fine-tune on.")
    task: TaskConfig = opt("The task.", default_factory=TaskConfig)
    tokenizer: TokenizerConfig = opt("The tokenizer (default: the model's).", default_factory=TokenizerConfig)
    train: TrainConfig = opt("Training settings: any HF TrainingArguments field plus precision and resume.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/<command>-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        return (self.data.require_training_data() + self.tokenizer.refuse_training(self.command)
                + self.data.label_separator_issues(self.task.type, self.task.multi_label))
