"""The task section and the config every task-training command shares (finetune, adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.errors import ConfigIssue

TASK_TYPES = ("sequence-classification", "token-classification", "causal-lm", "sentence-embedding", "preference",
              "reward-model")
EMBEDDING_LOSSES = ("auto", "in-batch-negatives", "cosent", "cosine")
POOLINGS = ("mean", "cls", "last-token")


@dataclass
class TaskConfig:
    """What to fine-tune the model for."""

    type: Literal["sequence-classification", "token-classification", "causal-lm", "sentence-embedding",
                  "preference", "reward-model"] = opt(
        "sequence-classification: one label (or several) per text; token-classification: one tag per word "
        "(data.tokens_column / data.tags_column, or a .conll file); causal-lm: instruction tuning (SFT) on "
        "alpaca / chat messages / prompt-response data, or continued pretraining on raw text; "
        "sentence-embedding: a sentence encoder from scored pairs (data.score_column) or (anchor, positive"
        "[, negative]) pairs (data.text_pair_column, data.negative_column), saved in the sentence-transformers "
        "format; preference: preference tuning of a causal LM on (prompt, chosen, rejected) pairs (the "
        "preference: section picks the method, e.g. DPO); reward-model: a one-output sequence-classification head "
        "scoring a conversation, trained on the same pairs with the Bradley-Terry loss.",
        default="sequence-classification")
    multi_label: bool = opt("Each example may carry several labels (a list, or a string split on "
                            "data.label_separator); trained with a sigmoid per class.", default=False)
    threshold: float = opt("Multi-label only: a class is predicted when its probability exceeds this.",
                           default=0.5)
    packing: bool = opt("causal-lm: pack each batch into one padding-free row with position ids restarting per "
                        "example (no attention across examples); false: dynamic padding.", default=True)
    sample_prompts: list[str] = opt("causal-lm, preference: prompts to generate for at the end (samples.jsonl); "
                                    "default: the first 3 validation prompts.", default_factory=list)
    sample_max_new_tokens: int = opt("causal-lm, preference: new tokens per sample generation.", default=64)
    too_long: Literal["truncate", "error"] = opt("causal-lm, preference, reward-model: examples longer than "
                                                 "data.max_length are truncated (and counted; a preference pair "
                                                 "loses the start of its prompt first), or refused with an error.",
                                                 default="truncate")
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
        elif self.threshold != 0.5 and not self.multi_label:
            issues.append(ConfigIssue("threshold", f"only applies to task.multi_label: true, got {self.threshold} "
                                                   "for single-label predictions (the most likely class wins); "
                                                   "remove it or set task.multi_label: true."))
        if self.type != "causal-lm":
            for key, default in (("packing", True), ("sample_prompts", []), ("sample_max_new_tokens", 64),
                                 ("too_long", "truncate")):
                if getattr(self, key) != default and not (key != "packing" and self.type == "preference") \
                        and not (key == "too_long" and self.type == "reward-model"):
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


PREFERENCE_METHODS = ("dpo", "ipo", "simpo", "orpo", "kto")
BETA_DEFAULTS = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
SIMPO_GAMMA = 1.0  # gamma / beta = 0.5 with the default beta 2.0, as the SimPO paper recommends
KTO_WEIGHTS = ("desirable_weight", "undesirable_weight")


@dataclass
class PreferenceConfig:
    """Preference tuning (task.type: preference): the method and its hyper-parameters."""

    method: Literal["dpo", "ipo", "simpo", "orpo", "kto"] = opt(
        "dpo: the DPO sigmoid loss (Rafailov et al. 2023) on the policy's log-probability ratios to the reference; "
        "ipo: the IPO squared loss (Azar et al. 2023) on the same ratios, averaged per completion token; simpo "
        "(Meng et al. 2024) and orpo (Hong et al. 2024, with an SFT term on the chosen answer) need no reference. "
        "The reference is the base model with the adapter disabled (llmkit adapter), else a frozen copy of the "
        "model. kto (Ethayarajh et al. 2024) learns from unpaired rows (prompt, completion, a true / false label) "
        "against the same reference, with a KL estimate from the batch's mismatched (prompt, completion) rows.",
        default="dpo")
    beta: float | None = opt("dpo: the inverse temperature of the implicit reward; ipo: the regularisation tau "
                             "(target margin 1 / (2 beta)); simpo: the reward scale; orpo: the weight lambda of the "
                             "odds-ratio term; kto: the scale of the log-ratio in its sigmoid. Default: dpo 0.1, ipo "
                             "0.1, simpo 2.0, orpo 0.1, kto 0.1.", default=None)
    label_smoothing: float = opt("dpo and simpo: the assumed probability that a pair's preference is flipped "
                                 "(conservative DPO, in [0, 0.5)); 0 is the plain loss.", default=0.0)
    gamma: float | None = opt("simpo only: the target reward margin (default 1.0: gamma / beta = 0.5 with the "
                              "default beta).", default=None)
    desirable_weight: float | None = opt("kto only: the weight of the desirable (label true) rows' losses (default "
                                         "1.0); with unbalanced data, keep desirable_weight x desirable rows / "
                                         "(undesirable_weight x undesirable rows) in [1, 4/3] (the KTO paper).",
                                         default=None)
    undesirable_weight: float | None = opt("kto only: the weight of the undesirable (label false) rows' losses "
                                           "(default 1.0).", default=None)
    precompute_ref: bool = opt("dpo, ipo: compute the reference's log-probs of every pair once, before training "
                               "(the untrained model, its adapter disabled), instead of at every step; full "
                               "fine-tuning then keeps no frozen copy of the model in memory. Stored on disk like "
                               "the tokenized data (data.cache, data.cache_dir) under a key of the reference's "
                               "weights, the pairs' token ids, precision and batch size: a second run reuses them.",
                               default=False)

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else BETA_DEFAULTS.get(self.method, 0.1)

    @property
    def gamma_value(self) -> float:
        return self.gamma if self.gamma is not None else SIMPO_GAMMA if self.method == "simpo" else 0.0

    def weight(self, key: str) -> float:
        value = getattr(self, key)
        return 1.0 if value is None else value

    def validate(self) -> list[ConfigIssue]:
        issues = []
        for key in KTO_WEIGHTS:
            value = getattr(self, key)
            if value is not None and self.method != "kto":
                issues.append(ConfigIssue(key, f"only applies to method: kto, not {self.method}; remove this key."))
            elif value is not None and not 0 < value < float("inf"):
                issues.append(ConfigIssue(key, f"must be a finite number > 0, got {value} (default 1.0)."))
        if self.beta is not None and not 0 < self.beta < float("inf"):
            issues.append(ConfigIssue("beta", f"must be a finite number > 0, got {self.beta} (default for "
                                              f"{self.method}: {BETA_DEFAULTS[self.method]})."))
        if self.method not in ("dpo", "simpo") and self.label_smoothing != 0.0:
            issues.append(ConfigIssue("label_smoothing", f"only applies to method: dpo (conservative DPO) or simpo, "
                                                         f"not {self.method}; remove this key."))
        elif not 0 <= self.label_smoothing < 0.5:
            issues.append(ConfigIssue("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}."))
        if self.gamma is not None and self.method != "simpo":
            issues.append(ConfigIssue("gamma", f"only applies to method: simpo, not {self.method}; remove this key."))
        elif self.gamma is not None and not 0 <= self.gamma < float("inf"):
            issues.append(ConfigIssue("gamma", f"must be a finite number >= 0, got {self.gamma}."))
        if self.precompute_ref and self.method in ("simpo", "orpo"):
            issues.append(ConfigIssue("precompute_ref", f"{self.method} is reference-free: there is no reference to "
                                                        "precompute; remove this key."))
        elif self.precompute_ref and self.method == "kto":
            issues.append(ConfigIssue("precompute_ref", "kto's KL estimate scores each prompt with another row's "
                                                        "completion from the same shuffled batch, so the reference's "
                                                        "figures cannot be computed before training; remove this "
                                                        "key (the reference runs at every step)."))
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
    preference: PreferenceConfig = opt("task.type: preference only: the method and its hyper-parameters.",
                                       default_factory=PreferenceConfig)
    train: TrainConfig = opt("Training settings: any HF TrainingArguments field plus precision and resume.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/<command>-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.task.type != "preference" and self.preference != PreferenceConfig():
            issues.append(ConfigIssue("preference", f"only applies to task.type: preference, not {self.task.type}; "
                                                    "remove this section."))
        if self.task.type == "sentence-embedding" and self.model.from_config is not None:
            issues.append(ConfigIssue("model.from_config", "task.type: sentence-embedding fine-tunes a pretrained "
                                                           "encoder (model.name_or_path, a run directory or pkg:); "
                                                           "train a new one with llmkit pretrain first (objective "
                                                           "mlm, then contrastive) and name its run here."))
        return (self.data.require_training_data() + self.tokenizer.refuse_training(self.command)
                + self.data.label_separator_issues(self.task.type, self.task.multi_label) + issues)
