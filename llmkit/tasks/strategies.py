"""The pieces that differ per task, as one strategy class each: how the data is prepared, which model class
and head, the collator, the metrics and the report. `finetune`, `adapter` and `distill` train through them;
`eval` and the task names of adapter runs use the same names (TASK_TYPES).

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from pathlib import Path

from llmkit.data.classification import prepare_classification_data
from llmkit.data.loading import load_raw_splits
from llmkit.data.sft import (
    PLAIN_TEMPLATE,
    detect_conversation_format,
    prepare_sft_data,
    to_messages,
    use_plain_template,
)
from llmkit.data.token_classification import prepare_token_classification_data
from llmkit.errors import UserError
from llmkit.metrics.classification import ClassificationMetrics, classification_report
from llmkit.metrics.embedding import paired_cosine
from llmkit.metrics.tables import markdown_table, plot_similarity
from llmkit.metrics.token_classification import TokenClassificationMetrics


class SequenceClassificationTask:
    """The pieces that differ per task: data, model class, collator, metrics, report."""

    auto_class = "AutoModelForSequenceClassification"
    unit = "classes"

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, tokenizer, seed: int):
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
        return ClassificationMetrics(labels, self.cfg.task.multi_label, self.cfg.task.threshold)

    def metric_names(self, metrics_fn) -> list[str]:
        """What an evaluation during training reports beside the loss (for train.metric_for_best_model)."""
        return metrics_fn.names() if metrics_fn is not None else []

    def load(self, tokenizer, labels: list[str]):
        """The model to train, with this task's head; (model, the weights newly initialised)."""
        from llmkit.models.loading import load_model

        return load_model(self.auto_class, self.cfg.model, tokenizer, **self.model_kwargs(labels))

    def trainer_kwargs(self, model, args) -> dict:
        """What this task's Trainer class takes beside the usual arguments."""
        return {}

    def plan_note(self, args) -> str | None:
        """A line of this task's own beside the plan (checked before anything is written), or None."""
        return None

    def saver(self, tokenizer):
        """How the trained model is saved into the run's model/ (None: the Trainer's save_pretrained)."""
        return None

    def attach(self, model, adapter, missing: set[str]):
        """The model with the config's adapter on it (`llmkit adapter`)."""
        from llmkit.models.adapters import attach_adapter

        return attach_adapter(model, adapter, self.cfg.task.type, missing)

    def adapted(self, model):
        """The part of the model the adapter wraps: what is described and saved in adapter/."""
        return model

    def adapter_settings(self, model) -> dict:
        """What loading the saved adapter needs beside the base model and the head (llmkit_adapter.json)."""
        return {}

    def before_training(self, model, tokenizer) -> None:
        """Task-specific work on the untrained model (nothing for classification)."""

    def after_training(self, trainer, tokenizer, run_dir: Path) -> None:
        """Task-specific outputs written once the model is trained (main process only)."""

    def describe(self, data) -> str:
        labels = data.label_names
        return f"{len(labels)} {self.unit} ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        return classification_report(split, metrics_fn, output.predictions, output.label_ids, prefix, metrics,
                                     out_dir)[0]


class TokenClassificationTask(SequenceClassificationTask):
    auto_class = "AutoModelForTokenClassification"
    unit = "tags"

    def prepare(self, tokenizer, seed: int):
        return prepare_token_classification_data(self.cfg.data, tokenizer, seed)

    def model_kwargs(self, labels: list[str]) -> dict:
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)}}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, labels: list[str]):
        return TokenClassificationMetrics(labels)

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
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

    def __init__(self, cfg):
        super().__init__(cfg)
        self.counter: PaddingCounter | None = None

    @property
    def trainer_cls(self):
        from llmkit.training.trainer import CausalLMTrainer

        return CausalLMTrainer  # causal-LM losses are normalised over the tokens of the accumulation window already

    def prepare(self, tokenizer, seed: int):
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
        if self.cfg.task.sample_prompts:
            return [[{"role": "user", "content": p}] for p in self.cfg.task.sample_prompts], \
                [None] * len(self.cfg.task.sample_prompts)
        raw = load_raw_splits(self.cfg.data, self.cfg.train.seed)
        split = raw.get("validation", raw["train"])
        fmt = detect_conversation_format(split.column_names)
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


class SentenceEmbeddingTask(SequenceClassificationTask):
    """A sentence encoder (the model's transformer and a pooling, sentence-transformers' format) trained on
    scored pairs (CoSENT / cosine regression) or on (anchor, positive[, negative]) pairs with in-batch negatives;
    scored validation pairs give Spearman and Pearson during training."""

    unit = "pairs"
    training_overrides = {"remove_unused_columns": False}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.data = None

    def prepare(self, tokenizer, seed: int):
        from llmkit.data.pairs import prepare_pair_data
        from llmkit.models.embedding import require_sentence_transformers

        require_sentence_transformers("task.type")
        self.data = prepare_pair_data(self.cfg.data, tokenizer, seed)
        return self.data

    @property
    def loss(self) -> str:
        chosen = self.cfg.task.loss
        if chosen == "auto":
            return "cosent" if self.data is not None and self.data.scored else "in-batch-negatives"
        return chosen

    def describe(self, data) -> str:
        kind = "scored pairs" if data.scored else " / ".join(data.roles) + " rows"
        return f"{kind}; loss {self.loss}"

    def load(self, tokenizer, labels: list[str]):
        from llmkit.models.embedding import pooling_of
        from llmkit.models.loading import model_source, sentence_model_for
        from llmkit.training.contrastive import SentenceEncoder

        if self.loss in ("cosent", "cosine") and not self.data.scored:
            raise UserError(f"task.loss: {self.loss} learns from scored pairs, but the training data has no "
                            f"{self.cfg.data.score_column!r} column (data.score_column); use task.loss: "
                            "in-batch-negatives, or point data.score_column at the scores.")
        source = model_source(self.cfg.model)
        pooling = self.cfg.task.pooling or pooling_of(source) or "mean"
        model = sentence_model_for(self.cfg.model, source, pooling, self.cfg.data.max_length)
        return SentenceEncoder(model), set()

    def model_kwargs(self, labels: list[str]) -> dict:
        return {}

    @property
    def trainer_cls(self):
        from llmkit.training.contrastive import ContrastiveTrainer

        return ContrastiveTrainer

    def plan_note(self, args) -> str | None:
        """How many negatives each anchor meets (in-batch negatives only)."""
        from llmkit.training.contrastive import check_batch_for_negatives, negatives_line

        if self.loss != "in-batch-negatives":
            return None
        check_batch_for_negatives(args.per_device_train_batch_size, args.world_size)
        return negatives_line(args.per_device_train_batch_size, args.world_size, gathered=args.world_size > 1,
                              candidates_per_row=len(self.data.roles) - 1)

    def trainer_kwargs(self, model, args) -> dict:
        from llmkit.training.contrastive import make_loss

        gather = args.world_size > 1
        return {"pair_loss": make_loss(self.loss, model.sentence, self.cfg.task.temperature, gather)}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from llmkit.training.contrastive import PairCollator

        return PairCollator(tokenizer, list(self.data.roles))

    def metrics(self, labels: list[str]):
        from llmkit.training.contrastive import SimilarityMetrics

        return SimilarityMetrics() if self.data is not None and self.data.scored else None

    def attach(self, model, adapter, missing: set[str]):
        """The adapter wraps the transformer inside the sentence model; the pooling has no weights."""
        from llmkit.models.adapters import attach_adapter

        model.sentence[0].model = attach_adapter(model.encoder, adapter, self.cfg.task.type, missing)
        return model

    def adapted(self, model):
        return model.encoder

    def adapter_settings(self, model) -> dict:
        from llmkit.models.embedding import pooling_in

        return {"sentence": {"pooling": pooling_in(model.sentence), "max_seq_length": model.sentence.max_seq_length}}

    def saver(self, tokenizer):
        from llmkit.models.embedding import save_sentence_model

        def save(trainer, directory: Path) -> None:
            save_sentence_model(trainer.accelerator.unwrap_model(trainer.model).sentence, directory)

        return save

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        """Scored pairs: the split's correlations as a table and `similarity_<split>.png`, each pair's cosine
        similarity against its gold score (the plot `llmkit eval` draws)."""
        if metrics_fn is None:
            return []
        pairs = output.predictions
        sims = paired_cosine(pairs[:, : pairs.shape[1] // 2], pairs[:, pairs.shape[1] // 2:])
        figures = {k: metrics.get(f"{prefix}_{k}") for k in ("spearman", "pearson")}
        if out_dir is not None:
            plot_similarity(output.label_ids.tolist(), sims.tolist(), out_dir / f"similarity_{split}.png", split,
                            figures)
        table = markdown_table(["split", "pairs", "spearman", "pearson"], [[split, len(sims), *figures.values()]])
        return [(f"STS, {split} (cosine similarity vs gold score)", table),
                (f"Similarity vs gold score ({split})",
                 f"![similarity vs gold score ({split})](similarity_{split}.png)")]


class PreferenceTask(CausalLMTask):
    """Preference tuning of a causal LM (DPO, IPO, SimPO, ORPO) on (prompt, chosen, rejected) pairs, or KTO on
    unpaired (prompt, completion, label) rows, rendered and masked like SFT data; the reference is the base with
    the adapter disabled (llmkit adapter) or a frozen copy of the model."""

    unit = "pairs"
    training_overrides = {"remove_unused_columns": False}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.with_adapter = False
        self.model_bytes = 0
        self.data = None

    @property
    def trainer_cls(self):
        from llmkit.training.preference import PreferenceTrainer

        return PreferenceTrainer

    def prepare(self, tokenizer, seed: int):
        from llmkit.data.preference import prepare_preference_data
        from llmkit.training.preference import require_trl

        require_trl("task.type")
        unpaired = self.cfg.task.type == "preference" and self.cfg.preference.method == "kto"
        data = self.data = prepare_preference_data(self.cfg.data, tokenizer, seed, unpaired=unpaired)
        if use_plain_template(tokenizer, data.sft_format):
            tokenizer.chat_template = PLAIN_TEMPLATE  # saved with the model, used for the sample generations
        return data

    def load(self, tokenizer, labels: list[str]):
        model, missing = super().load(tokenizer, labels)
        self.model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return model, missing

    def attach(self, model, adapter, missing: set[str]):
        self.with_adapter = True
        return super().attach(model, adapter, missing)

    def describe(self, data) -> str:
        stats = data.stats.values()
        truncated = sum(s["truncated"] for s in stats)
        if truncated and self.cfg.task.too_long == "error":
            raise UserError(f"data.max_length: {truncated} pair(s) are longer than {self.cfg.data.max_length} "
                            "tokens and task.too_long is error. Raise data.max_length, shorten the data, or set "
                            "task.too_long=truncate (the start of the prompt goes first).")
        identical, empty = (sum(s[k] for s in stats) for k in ("dropped_identical", "dropped_empty"))
        pref = self.cfg.preference
        method = f"method {pref.method}, beta {pref.beta_value}"
        if data.format == "unpaired":
            good, bad = (sum(s[k] for s in stats) for k in ("desirable", "undesirable"))
            return (f"unpaired rows ({good} desirable, {bad} undesirable); {truncated} truncated to data.max_length "
                    f"(prompt first), dropped: {empty} with an empty completion; {method}, desirable_weight "
                    f"{pref.weight('desirable_weight')}, undesirable_weight {pref.weight('undesirable_weight')}")
        return (f"{data.format} pairs; {truncated} truncated to data.max_length (prompt first), dropped: {identical} "
                f"with identical answers, {empty} with an empty answer; {method}")

    def plan_note(self, args) -> str | None:
        from llmkit.training.preference import REFERENCE_FREE

        if self.cfg.preference.method == "kto" and args.per_device_train_batch_size < 2:
            raise UserError(f"train.per_device_train_batch_size: kto estimates its KL term from the batch's other "
                            f"rows, so it needs at least 2 rows per batch, got {args.per_device_train_batch_size}. "
                            "Set train.per_device_train_batch_size=2 or more.")
        if self.cfg.preference.method in REFERENCE_FREE:
            return f"reference: none ({self.cfg.preference.method} is reference-free)"
        if self.cfg.preference.precompute_ref:
            by = "the base model (the adapter disabled)" if self.with_adapter else "the untrained model"
            return f"reference: log-probs precomputed once before training by {by}; no copy kept"
        if self.with_adapter:
            return "reference: the base model with the adapter disabled (no second copy in memory)"
        return f"reference: a frozen copy of the model (+{self.model_bytes / 2**20:.0f} MiB)"

    def trainer_kwargs(self, model, args) -> dict:
        from llmkit.training.preference import REFERENCE_FREE, RefCache, frozen_copy

        pref, data = self.cfg.preference, self.cfg.data
        copy = not self.with_adapter and pref.method not in REFERENCE_FREE and not pref.precompute_ref
        settings = {"bf16": args.bf16, "fp16": args.fp16, "batch_size": args.per_device_eval_batch_size,
                    "device": args.device.type}
        return {"method": pref.method, "beta": pref.beta_value, "label_smoothing": pref.label_smoothing,
                "gamma": pref.gamma_value, "ref_model": frozen_copy(model) if copy else None,
                "weights": (pref.weight("desirable_weight"), pref.weight("undesirable_weight")),
                "precompute": dict(self.data.splits) if pref.precompute_ref else None,
                "ref_cache": RefCache(enabled=data.cache, cache_dir=data.cache_dir, settings=settings)}

    def collator(self, tokenizer, pad_to_multiple_of: int | None):
        from llmkit.training.preference import UnpairedCollator, preference_collator

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.cfg.preference.method == "kto":
            return UnpairedCollator(pad, pad_to_multiple_of)
        return preference_collator(pad, pad_to_multiple_of)

    def metrics(self, labels: list[str]):
        from llmkit.training.preference import PreferenceMetrics

        return PreferenceMetrics(self.cfg.preference.method)

    def sample_conversations(self) -> tuple[list[list[dict]], list[str | None]]:
        """task.sample_prompts, else the prompts of the first 3 validation pairs (their chosen answer as the
        reference; kto rows: the completion when it is a desirable one)."""
        from llmkit.data.preference import detect_preference_format, read_label, to_pair

        if self.cfg.task.sample_prompts:
            return super().sample_conversations()
        raw = load_raw_splits(self.cfg.data, self.cfg.train.seed)
        name = "validation" if "validation" in raw else "train"
        fmt = detect_preference_format(raw[name], name, unpaired=self.cfg.preference.method == "kto")
        prompts, references = [], []
        for i, row in enumerate(raw[name].select(range(min(3, len(raw[name]))))):
            good = fmt != "unpaired" or read_label(row["label"], i)
            if fmt == "unpaired":  # read as a pair of the completion with itself
                row = {"prompt": row.get("prompt"), "chosen": row["completion"], "rejected": row["completion"]}
            layout = fmt if fmt != "unpaired" else \
                "conversational" if isinstance(row["chosen"], (list, tuple)) else "strings"
            prompt, chosen, _ = to_pair(row, layout, i)
            prompts.append(prompt)
            references.append(next((m["content"] for m in chosen if m["role"] == "assistant"), None) if good else None)
        return prompts, references

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        from llmkit.training.preference import KTO_METRICS, METRICS

        names, unit = (KTO_METRICS, "rows") if self.cfg.preference.method == "kto" else (METRICS, "pairs")
        row = [split, len(output.predictions)] + [metrics.get(f"{prefix}_{k}") for k in names]
        return [(f"Preference figures ({split})", markdown_table(["split", unit, *names], [row]))]


class RewardModelTask(PreferenceTask):
    """A reward model: a one-output sequence-classification head scoring a whole conversation (prompt and answer),
    trained on preference pairs with the Bradley-Terry loss, -log sigmoid(score(chosen) - score(rejected))."""

    auto_class = "AutoModelForSequenceClassification"

    def model_kwargs(self, labels: list[str]) -> dict:
        return {"num_labels": 1}

    @property
    def trainer_cls(self):
        from llmkit.training.preference import RewardTrainer

        return RewardTrainer

    def describe(self, data) -> str:
        return super().describe(data).split("; method ")[0]  # the preference: section does not apply

    def plan_note(self, args) -> str | None:
        return None

    def trainer_kwargs(self, model, args) -> dict:
        return {}

    def metrics(self, labels: list[str]):
        from llmkit.training.preference import RewardMetrics

        return RewardMetrics()

    def before_training(self, model, tokenizer) -> None:
        """A reward model generates nothing: no samples."""

    def after_training(self, trainer, tokenizer, run_dir: Path) -> None:
        """No samples.jsonl either."""

    def report(self, split: str, metrics_fn, output, prefix: str, metrics: dict, out_dir: Path | None):
        from llmkit.training.preference import REWARD_METRICS

        row = [split, len(output.predictions)] + [metrics.get(f"{prefix}_{k}") for k in REWARD_METRICS]
        return [(f"Reward model ({split}, accuracy: the share of pairs scored chosen > rejected)",
                 markdown_table(["split", "pairs", *REWARD_METRICS], [row]))]


TASKS = {"sequence-classification": SequenceClassificationTask, "token-classification": TokenClassificationTask,
         "causal-lm": CausalLMTask, "sentence-embedding": SentenceEmbeddingTask, "preference": PreferenceTask,
         "reward-model": RewardModelTask}


def task_for(cfg):
    """The strategy of a config's task.type."""
    return TASKS[cfg.task.type](cfg)
