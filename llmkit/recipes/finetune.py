"""`llmkit finetune`: full fine-tuning for sequence classification (single- and multi-label), token
classification (NER-style, entity-level scores) and causal-LM instruction tuning (SFT).

Reads top to bottom: tokenizer -> data -> model -> trainer -> train -> save -> metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.errors import ConfigIssue, UserError
from llmkit.smoke import honoured

COMMAND = "finetune"


@dataclass
class TaskConfig:
    """What to fine-tune the model for."""

    type: Literal["sequence-classification", "token-classification", "causal-lm"] = opt(
        "sequence-classification: one label (or several) per text; token-classification: one tag per word "
        "(data.tokens_column / data.tags_column, or a .conll file); causal-lm: instruction tuning (SFT) on "
        "alpaca / chat messages / prompt-response data, or continued pretraining on raw text.",
        default="sequence-classification")
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
        return issues


@dataclass
class FinetuneConfig:
    """`llmkit finetune` config."""

    model: ModelConfig = opt("The model to fine-tune.")
    data: DataConfig = opt("The data to fine-tune on.")
    task: TaskConfig = opt("The task.", default_factory=TaskConfig)
    tokenizer: TokenizerConfig = opt("The tokenizer (default: the model's).", default_factory=TokenizerConfig)
    train: TrainConfig = opt("Training settings: any HF TrainingArguments field plus precision and resume.",
                             default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/finetune-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        return (self.data.require_training_data() + self.tokenizer.refuse_training(COMMAND)
                + self.data.label_separator_issues(self.task.type, self.task.multi_label))


class SequenceClassificationTask:
    """The pieces that differ per task: data, model class, collator, metrics, report."""

    auto_class = "AutoModelForSequenceClassification"
    unit = "classes"

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg

    def prepare(self, tokenizer, seed: int):
        from llmkit.data.classification import prepare_classification_data

        return prepare_classification_data(self.cfg.data, tokenizer, self.cfg.task.multi_label, seed)

    trainer_cls = None  # llmkit's MeanLossTrainer (the default of train_and_save)
    training_overrides: dict = {}

    def model_kwargs(self, labels: list[str]) -> dict:
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)},
                "problem_type": "multi_label_classification" if self.cfg.task.multi_label
                else "single_label_classification"}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, labels: list[str]):
        from llmkit.metrics.classification import ClassificationMetrics

        return ClassificationMetrics(labels, self.cfg.task.multi_label, self.cfg.task.threshold)

    def before_training(self, model, tokenizer) -> None:
        """Task-specific work on the untrained model (nothing for classification)."""

    def after_training(self, trainer, tokenizer, run_dir: Path) -> None:
        """Task-specific outputs written once the model is trained (main process only)."""

    def describe(self, data) -> str:
        labels = data.label_names
        return f"{len(labels)} {self.unit} ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        from llmkit.metrics.classification import classification_report

        return classification_report(split, metrics_fn, output.predictions, output.label_ids, prefix, metrics,
                                     out_dir)[0]


class TokenClassificationTask(SequenceClassificationTask):
    auto_class = "AutoModelForTokenClassification"
    unit = "tags"

    def prepare(self, tokenizer, seed: int):
        from llmkit.data.token_classification import prepare_token_classification_data

        return prepare_token_classification_data(self.cfg.data, tokenizer, seed)

    def model_kwargs(self, labels: list[str]) -> dict:
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)}}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, labels: list[str]):
        from llmkit.metrics.token_classification import TokenClassificationMetrics

        return TokenClassificationMetrics(labels)

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        from llmkit.training.report import markdown_table

        header, rows = metrics_fn.entity_table(metrics, prefix)
        return [(f"Per-entity scores ({split})", markdown_table(header, rows))]


class PaddingCounter:
    """Wraps a collator and counts padding positions, for the run's `train_padding_fraction`."""

    def __init__(self, collate):
        self.collate = collate
        self.real = self.total = 0

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        total = batch["input_ids"].numel()
        self.total += total
        self.real += int(mask.sum()) if mask is not None else total  # flattened batches hold no padding
        return batch

    @property
    def fraction(self) -> float:
        return 1 - self.real / self.total if self.total else 0.0


class CausalLMTask(SequenceClassificationTask):
    """Supervised fine-tuning of a causal LM: loss on response tokens only, EOS learned, optional packing."""

    auto_class = "AutoModelForCausalLM"
    unit = "examples"
    training_overrides = {"prediction_loss_only": True}  # never accumulate vocabulary-sized logits in eval

    def __init__(self, cfg: FinetuneConfig):
        super().__init__(cfg)
        self.counter: PaddingCounter | None = None

    @property
    def trainer_cls(self):
        from llmkit.training.trainer import GuardedTrainer

        return GuardedTrainer  # causal-LM losses are normalised over the tokens of the accumulation window already

    def prepare(self, tokenizer, seed: int):
        from llmkit.data.sft import PLAIN_TEMPLATE, prepare_sft_data, use_plain_template

        data = prepare_sft_data(self.cfg.data, tokenizer, seed)
        # Instruction data with a tokenizer without a chat template was rendered with llmkit's plain template;
        # set it on the tokenizer so it is saved with the model and sample generation uses the same format.
        if use_plain_template(tokenizer, data.stats["train"]["format"]):
            tokenizer.chat_template = PLAIN_TEMPLATE
        return data

    def model_kwargs(self, labels: list[str]) -> dict:
        return {}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        if self.cfg.task.packing:
            # Padding-free packing: a batch becomes one row with position_ids restarting per example, so
            # attention stays inside each example (Llama, GPT-2, Qwen2, Mistral, ...).
            inner = DataCollatorWithFlattening()
        else:
            inner = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of)
        self.counter = PaddingCounter(inner)
        return self.counter

    def metrics(self, labels: list[str]):
        return None

    def describe(self, data) -> str:
        train = data.stats.get("train", {})
        truncated = sum(s.get("truncated", 0) for s in data.stats.values())
        if truncated and self.cfg.task.too_long == "error":
            raise UserError(f"data.max_length: {truncated} example(s) are longer than {self.cfg.data.max_length} "
                            "tokens and task.too_long is error. Raise data.max_length, shorten the data, or set "
                            "task.too_long=truncate.")
        dropped = sum(s.get("dropped", 0) for s in data.stats.values())
        return (f"format {train.get('format')}, {truncated} example(s) truncated to data.max_length, {dropped} "
                "dropped (no response token left)")

    def sample_conversations(self) -> tuple[list[list[dict]], list[str | None]]:
        """The prompts to generate for at the end: task.sample_prompts, else the first 3 validation prompts."""
        from llmkit.data.loading import load_raw_splits
        from llmkit.data.sft import detect_format, to_messages

        if self.cfg.task.sample_prompts:
            return [[{"role": "user", "content": p}] for p in self.cfg.task.sample_prompts], \
                [None] * len(self.cfg.task.sample_prompts)
        raw = load_raw_splits(self.cfg.data, self.cfg.train.seed)
        split = raw.get("validation", raw["train"])
        fmt = detect_format(split.column_names)
        if fmt == "text":
            return [], []
        prompts, references = [], []
        for i, row in enumerate(split.select(range(min(3, len(split))))):
            messages = to_messages(row, fmt, i)
            first = next(k for k, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(messages[:first])
            references.append(messages[first]["content"])
        return prompts, references

    def _generate_samples(self, model, tokenizer) -> tuple[list[str], list[str], list[str | None]]:
        from llmkit.metrics.generation import GenerationSettings, generate

        prompts, references = self.sample_conversations()
        if not prompts:
            return [], [], []
        # Raw-text training (continued pretraining) leaves a tokenizer without a chat template: the prompt is
        # then plain text to continue, as the model saw its training text.
        rendered = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                    if tokenizer.chat_template else m[-1]["content"] for m in prompts]
        settings = GenerationSettings(max_new_tokens=self.cfg.task.sample_max_new_tokens, use_chat_template=False)
        return rendered, generate(model, tokenizer, rendered, settings), references

    def before_training(self, model, tokenizer) -> None:
        """Generate for the sample prompts with the untrained model, to show beside the tuned model's output."""
        self.samples_before = self._generate_samples(model, tokenizer)[1]

    def after_training(self, trainer, tokenizer, run_dir: Path) -> None:
        """samples.jsonl: generations for fixed prompts (rendered as in training) before and after tuning."""
        import json

        rendered, outputs, references = self._generate_samples(trainer.model, tokenizer)
        before = getattr(self, "samples_before", None) or [None] * len(outputs)
        with (run_dir / "samples.jsonl").open("w") as fh:
            for prompt, output, reference, earlier in zip(rendered, outputs, references, before):
                fh.write(json.dumps({"prompt": prompt, "output": output, "output_before_training": earlier,
                                     "reference": reference}, ensure_ascii=False) + "\n")

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        loss = metrics.get(f"{prefix}_loss")
        if loss is not None:
            metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        if self.counter is not None:
            metrics["train_padding_fraction"] = round(self.counter.fraction, 6)
        return []


TASKS = {"sequence-classification": SequenceClassificationTask, "token-classification": TokenClassificationTask,
         "causal-lm": CausalLMTask}


@honoured("finetune")
def run(cfg: FinetuneConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False, command: str = COMMAND) -> dict:
    """Fine-tune and evaluate; return the final metrics (also written to OUTPUT_DIR/metrics.json).

    With an `adapter:` section (`llmkit adapter`), the model is wrapped by the adapter instead of trained in
    full, and the adapter (with the task head) is saved instead of the model.
    """
    from transformers import set_seed

    from llmkit.models.loading import (
        check_attn_implementation,
        check_sequence_length,
        count_parameters,
        freeze,
        load_model,
        load_tokenizer,
        model_label,
    )
    from llmkit.training import rundir
    from llmkit.training.arguments import (
        TrainingArgumentsError,
        check_best_metric,
        launch_state,
        make_training_arguments,
        pad_multiple,
        planned_steps,
        resolve_precision,
    )
    from llmkit.training.loop import train_and_save

    task = TASKS[cfg.task.type](cfg)
    state = launch_state(cfg.train)  # under torchrun / accelerate launch: which process this is
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    check_attn_implementation(cfg.model)  # before the data is prepared, which a typo there would waste
    with state.main_process_first():  # the main process tokenizes and caches; the others read its cache
        data = task.prepare(tokenizer, cfg.train.seed)
    labels = data.label_names
    state.print(f"data: {_describe_splits(data.stats)}; {task.describe(data)}; "
                f"{'from cache' if data.from_cache else 'prepared'} in {data.seconds:.1f} s")

    refuse_adapter_model(cfg.model, command)
    model, missing = load_model(task.auto_class, cfg.model, tokenizer, **task.model_kwargs(labels))
    check_sequence_length(model, data.stats)
    new_head = f"; newly initialised: {', '.join(sorted(missing))}" if missing else ""
    adapter = getattr(cfg, "adapter", None)
    if adapter is None:
        freeze(model, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
        base_name = type(model).__name__
    else:
        from llmkit.models.adapters import attach_adapter
        from llmkit.recipes.adapter import describe

        base_name = type(model).__name__
        model = attach_adapter(model, adapter, cfg.task.type, missing)
        new_head += f"\nadapter: {describe(model, adapter)}"
    trainable, total = count_parameters(model)
    state.print(f"model: {base_name}, {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable "
                f"({100 * trainable / total:.2f} %){new_head}")

    has_eval = "validation" in data.splits
    eval_overrides = dict(task.training_overrides)
    if not has_eval:
        eval_overrides.update(eval_strategy="no", load_best_model_at_end=False)
    run_path = Path(cfg.output_dir) if cfg.output_dir else rundir.default_run_dir(command, config_path)
    try:
        args = make_training_arguments(cfg.train, str(run_path.expanduser().resolve() / rundir.CHECKPOINTS),
                                       **eval_overrides)
    except TrainingArgumentsError as e:
        raise UserError(f"train.{e.key}: {e.message}" if e.key else f"train: {e.message}") from None
    steps = planned_steps(args, len(data.splits["train"]))
    precision = resolve_precision(cfg.train.precision)
    state.print(f"plan: {steps} optimizer steps, batch {args.per_device_train_batch_size} x accumulation "
                f"{args.gradient_accumulation_steps} x {args.world_size} process(es), precision {precision}")
    metrics_fn = task.metrics(labels)
    check_best_metric(cfg.train, metrics_fn.names() if metrics_fn else ["perplexity"])
    if dry_run:
        return {"dry_run": True, "train_steps": steps, "trainable_params": trainable, "total_params": total,
                "data": data.stats, "label_names": labels}

    run_dir = rundir.claim_run_dir(cfg, command, config_path, overwrite, state, path=run_path)
    if args.process_index == 0 and not cfg.train.resume:
        task.before_training(model, tokenizer)
    result = train_and_save(
        cfg=cfg, command=command, run_dir=run_dir, save=adapter_saver(cfg, tokenizer) if adapter else None, args=args,
        model=model, tokenizer=tokenizer,
        train_dataset=data.splits["train"], eval_dataset=data.splits.get("validation"),
        data_collator=task.collator(tokenizer, pad_multiple(precision, args.device.type)),
        compute_metrics=metrics_fn,
        preprocess_logits_for_metrics=metrics_fn.preprocess_logits_for_metrics if metrics_fn else None,
        precision=precision, **({"trainer_cls": task.trainer_cls} if task.trainer_cls else {}))
    trainer, metrics = result.trainer, result.metrics
    metrics.update(trainable_params=trainable, total_params=total,
                   trainable_percent=round(100 * trainable / total, 4))

    sections = []
    for split in ("validation", "test"):
        if split not in data.splits:
            continue
        prefix = "eval" if split == "validation" else "test"
        out = trainer.predict(data.splits[split], metric_key_prefix=prefix)
        metrics.update({k: v for k, v in out.metrics.items() if not k.endswith(("_runtime", "_per_second"))})
        sections += task.report(split, metrics_fn, out, prefix, metrics,
                                run_dir if trainer.is_world_process_zero() else None)
    if trainer.is_world_process_zero():
        task.after_training(trainer, tokenizer, run_dir)
    return result.finish(metrics, sections, summary={
        "model": model_label(cfg.model),
        "task": cfg.task.type + (" (multi-label)" if cfg.task.multi_label else ""),
        **({"adapter": describe(model, adapter)} if adapter else {}),
        "classes": ", ".join(labels),
        "data": _describe_splits(data.stats),
    }, headline=[k for k in ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1", "eval_loss", "eval_perplexity")
                 if k in metrics][:4])


def refuse_adapter_model(model_cfg: ModelConfig, command: str) -> None:
    """Training on top of an adapter run would train a frozen PEFT wrapper; say how to do it instead."""
    from llmkit.models.adapters import find_adapter_dir

    if model_cfg.name_or_path and find_adapter_dir(model_cfg.name_or_path):
        raise UserError(f"model.name_or_path: {model_cfg.name_or_path} is an adapter run. To {command} on top of "
                        "it, merge it into a standalone model first (llmkit adapter merge RUN --output DIR) and "
                        "point model.name_or_path at DIR.")


def adapter_saver(cfg: FinetuneConfig, tokenizer):
    """Saves the trained adapter (with its head) and what loading it needs into the run's adapter/ folder."""
    from llmkit.models.adapters import adapter_metadata, save_adapter
    from llmkit.models.loading import model_source

    def save(trainer, directory: Path) -> None:
        meta = adapter_metadata(trainer.model, cfg.adapter, cfg.task.type, cfg.model.name_or_path,
                                model_source(cfg.model), cfg.model.revision)
        save_adapter(trainer.model, tokenizer, directory, meta)

    return save


def _describe_splits(stats: dict) -> str:
    return ", ".join(f"{name} {s['examples']} examples / {s['tokens']} tokens" for name, s in stats.items())
