"""`llmkit eval`: evaluate a model, a model directory or an llmkit run directory.

Classification (accuracy, macro and per-class precision/recall/F1, confusion
matrix), perplexity (sliding window for causal LMs, fixed-seed masking for
masked LMs), generation, and sentence embeddings (STS correlations, retrieval
recall@k / MRR). Reads top to bottom: model source -> task -> data -> metrics ->
eval.json + report.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.config import apply_overrides, read_yaml
from llmkit.config import load_config as load
from llmkit.config.loader import save_config
from llmkit.config.schema import to_dict
from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, opt, seed_issue
from llmkit.data.classification import prepare_classification_data
from llmkit.data.columns import column_values, list_lengths, order_by_length
from llmkit.data.eval_text import read_eval_texts
from llmkit.data.loading import SPLIT_KEYS, load_raw_splits, note, require_columns
from llmkit.data.similarity import check_pair_columns, gold_scores, pair_texts, retrieval_pairs
from llmkit.data.token_classification import prepare_token_classification_data
from llmkit.errors import ConfigIssue, UserError, shown
from llmkit.metrics import embedding as similarity
from llmkit.metrics.classification import ClassificationMetrics, classification_report
from llmkit.metrics.tables import markdown_table, plot_confusion_matrix, plot_similarity
from llmkit.metrics.token_classification import TokenClassificationMetrics
from llmkit.models.adapters import find_adapter_dir, load_sentence_adapter, read_metadata
from llmkit.models.embedding import (
    encode,
    is_sentence_run,
    load_sentence_model,
    local_sentence_dir,
    pooling_in,
    pooling_of,
)
from llmkit.models.loading import (
    check_sequence_length,
    load_model,
    load_tokenizer,
    model_kind,
    model_label,
    model_source,
    source_key,
)
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.smoke import NEW_TOKENS, Shrink, SmokeSpec, cap, honoured
from llmkit.training import rundir
from llmkit.training.report import write_report

COMMAND = "eval"
CLASSIFICATION_KINDS = ("sequence-classification", "token-classification")  # models evaluated by their head
EMBEDDING_TASKS = ("sts", "retrieval")  # any model's sentence embeddings (sentence-transformers)


@dataclass
class PerplexitySpec:
    """Perplexity settings."""

    max_length: int | None = opt("Tokens per window (causal LMs) or per block (masked LMs); default: the model's "
                                 "positions, at most 512.", default=None)
    stride: int | None = opt("Causal LMs: step between windows; each window scores only the tokens no earlier "
                             "window scored, with up to max_length - stride tokens of context. Default: half of "
                             "max_length.", default=None)
    mlm_probability: float = opt("Masked LMs: share of tokens masked (and scored), with a fixed seed.", default=0.15)
    seed: int = opt("Masked LMs: seed of the masking.", default=0)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.max_length is not None and self.max_length < 2:
            issues.append(ConfigIssue("max_length", f"must be >= 2, got {self.max_length}."))
        if self.stride is not None and (self.stride < 1 or self.stride > (self.max_length or self.stride)):
            why = ("a stride larger than the window would skip tokens" if self.stride >= 1
                   else "the window moves by stride tokens at each step")
            issues.append(ConfigIssue("stride", f"must be between 1 and max_length={self.max_length}, got "
                                                f"{self.stride}: {why}."))
        if not 0 < self.mlm_probability < 1:
            issues.append(ConfigIssue("mlm_probability", f"must be between 0 and 1, got {self.mlm_probability}."))
        return issues + seed_issue("seed", self.seed)


@dataclass
class GenerationSpec:
    """Generation settings and how answers are scored."""

    prompt_column: str = opt("Column holding the prompt (GSM8K: question).", default="prompt")
    reference_column: str | None = opt("Column holding the reference answer (GSM8K: answer); enables exact "
                                       "match.", default=None)
    prompt_template: str = opt("How a row becomes the prompt; {prompt} is the prompt column.", default="{prompt}")
    system_prompt: str | None = opt("A system message, when the chat template is used.", default=None)
    use_chat_template: bool | None = opt("Wrap prompts in the tokenizer's chat template (default: when it has "
                                         "one).", default=None)
    max_new_tokens: int = opt("Tokens to generate at most per prompt.", default=128)
    do_sample: bool = opt("Sample instead of greedy decoding.", default=False)
    temperature: float = opt("Sampling temperature.", default=1.0)
    top_k: int = opt("Sample from the k most likely tokens.", default=50)
    top_p: float = opt("Nucleus sampling: smallest token set with this much probability.", default=1.0)
    repetition_penalty: float = opt("Penalty > 1 discourages repeating tokens.", default=1.0)
    stop_strings: list[str] = opt("Stop generating at any of these strings (removed from the output).",
                                  default_factory=list)
    seed: int = opt("Seed for sampling.", default=0)
    answer_pattern: str | None = opt("Extract the answer from the output: a preset (gsm8k, last_number) or a "
                                     "regex with one group; null compares whole outputs.", default=None)
    reference_pattern: str | None = opt("Extract the answer from the reference (default: answer_pattern).",
                                        default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.max_new_tokens < 1:
            issues.append(ConfigIssue("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}."))
        if self.do_sample and self.temperature <= 0:
            issues.append(ConfigIssue("temperature", f"must be > 0 when sampling, got {self.temperature}."))
        # ranges transformers enforces only once generation starts (a ValueError mid-run), or never (top_p > 1)
        if self.top_k < 0:
            issues.append(ConfigIssue("top_k", f"must be >= 0 (0: no top-k filter), got {self.top_k}."))
        if not 0 < self.top_p <= 1:
            issues.append(ConfigIssue("top_p", f"must be > 0 and <= 1 (1: no nucleus filter), got {self.top_p}."))
        if self.repetition_penalty <= 0:
            issues.append(ConfigIssue("repetition_penalty", f"must be > 0 (1: no penalty, above 1 discourages "
                                                            f"repeats), got {self.repetition_penalty}."))
        issues += seed_issue("seed", self.seed)
        if "{prompt}" not in self.prompt_template:
            issues.append(ConfigIssue("prompt_template", "must contain {prompt}."))
        for key in ("answer_pattern", "reference_pattern"):
            message = answer_pattern_problem(getattr(self, key))
            if message:
                issues.append(ConfigIssue(key, message))
        return issues


def answer_pattern_problem(value: str | None) -> str | None:
    """What is wrong with an answer_pattern / reference_pattern, or None: it must be a preset, or a regex with
    exactly one capturing group (the answer; a regex without one, or with more, would extract something else).
    A value close to a preset name (a typo such as gsm9k) is answered with that name."""
    import difflib
    import re

    from llmkit.metrics.generation import ANSWER_PRESETS

    if value is None or value in ANSWER_PRESETS:
        return None
    presets = ", ".join(ANSWER_PRESETS)
    close = difflib.get_close_matches(value, ANSWER_PRESETS, n=1)
    hint = f" Did you mean the preset {close[0]!r}?" if close else ""
    try:
        groups = re.compile(value).groups
    except re.error as e:
        return f"{shown(value)} is neither a preset ({presets}) nor a valid regex: {e}.{hint}"
    if groups != 1:
        return (f"{shown(value)} is not a preset ({presets}), and as a regex it has {groups} capturing groups; it "
                f"needs exactly one, around the answer (e.g. 'answer: (\\d+)'; write other groups as (?:...)).{hint}")
    return None


@dataclass
class PreferenceEvalSpec:
    """eval.task preference: the reference of the implicit reward, beta, and the sample generations."""

    reference: str | None = opt(
        "The reference model of the implicit reward (a model directory, hub id or run directory). Default: an "
        "adapter run's base model (the adapter disabled); a full preference run's model as its config names it "
        "(model.name_or_path); none for any other model (then only the log-probability row), and none for a "
        "simpo / orpo run (its reward is beta x the mean per-token log-prob, as in training).", default=None)
    beta: float | None = opt("The beta of the implicit reward, beta x (log-prob - reference log-prob). Default: the "
                             "run's preference.beta (its method's default), else 0.1.", default=None)
    samples: int = opt("Generate for the prompts of the first this many pairs of the first split, by the model and "
                       "by its reference (samples.jsonl); 0: none.", default=3)
    max_new_tokens: int = opt("New tokens per sample generation (greedy).", default=64)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.beta is not None and not 0 < self.beta < float("inf"):
            issues.append(ConfigIssue("beta", f"must be a finite number > 0, got {self.beta}."))
        if self.samples < 0:
            issues.append(ConfigIssue("samples", f"must be >= 0, got {self.samples}."))
        if self.max_new_tokens < 1:
            issues.append(ConfigIssue("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}."))
        return issues


@dataclass
class EvalSection:
    """What to evaluate and how."""

    task: Literal["auto", "sequence-classification", "token-classification", "perplexity", "generation", "sts",
                  "retrieval", "preference"] = opt(
        "What to evaluate, named as finetune's task.type where it is one. auto: from the model (a "
        "sentence-embedding run or a sentence-transformers directory -> sts; else from its head: "
        "sequence-classification head -> sequence-classification, token-classification head -> "
        "token-classification, language-model head -> perplexity). perplexity: of a causal or masked LM on the "
        "text. generation: a causal LM generates for each prompt, scored by exact match. sts: Spearman and "
        "Pearson correlation of the cosine similarity of each pair's embeddings (data.text_column, "
        "data.text_pair_column) with its gold score (data.score_column). retrieval: each query "
        "(data.text_column) ranks all the positives of the file (data.text_pair_column): recall@1/5/10 and MRR "
        "of its own. preference: on (prompt, chosen, rejected) pairs (read like finetune's preference data): any "
        "causal LM's log-probability preference accuracy (chosen's mean per-token log-prob higher), a policy's "
        "implicit-reward accuracy and margin against its reference (eval.preference), a reward model's pairwise "
        "accuracy (auto picks it for a reward-model run).", default="auto")
    pooling: Literal["mean", "cls", "last-token"] | None = opt(
        "sts / retrieval: how token vectors become one sentence embedding: mean, cls or last-token; null: the "
        "model's own (a sentence-transformers directory's pooling), else mean.", default=None)
    batch_size: int = opt("Examples (or windows) per forward pass; batches are sorted by length.", default=32)
    precision: Literal["fp32", "bf16"] = opt("fp32 gives exact figures; bf16 autocast is faster on CPUs with "
                                             "AVX512-BF16/AMX and on GPUs.", default="fp32")
    threshold: float | None = opt("Multi-label: probability above which a class is predicted (default: the "
                                  "run's task.threshold, else 0.5).", default=None)
    perplexity: PerplexitySpec = opt("Perplexity settings.", default_factory=PerplexitySpec)
    generation: GenerationSpec = opt("Generation settings.", default_factory=GenerationSpec)
    preference: PreferenceEvalSpec = opt("eval.task preference settings.", default_factory=PreferenceEvalSpec)
    smoke: bool = opt("Smoke mode (as --smoke): a tiny random copy of the model (same family and tokenizer), the "
                      "first 32 rows (or lines), 8 generated tokens, output in smoke/ (see docs/smoke.md).",
                      default=False)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        if self.batch_size < 1:
            issues.append(ConfigIssue("batch_size", f"must be >= 1, got {self.batch_size}."))
        if self.threshold is not None and not 0 < self.threshold < 1:
            issues.append(ConfigIssue("threshold", f"must be between 0 and 1 (exclusive), got {self.threshold}; "
                                                   "remove it for the run's task.threshold (else 0.5)."))
        if self.pooling is not None and self.task not in ("auto", *EMBEDDING_TASKS):
            issues.append(ConfigIssue("pooling", f"only applies to sentence embeddings (eval.task sts or "
                                                 f"retrieval), not {self.task}; remove eval.pooling."))
        if self.preference != PreferenceEvalSpec() and self.task not in ("auto", "preference"):
            issues.append(ConfigIssue("preference", f"only applies to eval.task preference, not {self.task}; remove "
                                                    "eval.preference (or set eval.task=preference)."))
        return issues


@dataclass
class EvalConfig:
    """`llmkit eval` config."""

    section_hints = {"train": "llmkit eval trains nothing; its settings are under eval:"}

    model: ModelConfig = opt("The model: a run directory, a model directory, a hub id or pkg:MODULE.")
    data: DataConfig = opt("The data to evaluate: data.validation_file (and data.test_file), or --data PATH.")
    eval: EvalSection = opt("What to evaluate.", default_factory=EvalSection)
    tokenizer: TokenizerConfig = opt("The tokenizer (default: the model's).", default_factory=TokenizerConfig)
    output_dir: str | None = opt("Where eval.json and the report go (default: runs/eval-<model>-<time>).",
                                 default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = self.tokenizer.refuse_training("eval")
        if self.data.validation_file is None and self.data.test_file is None and self.data.dataset_name is None:
            issues.append(ConfigIssue("data.validation_file", "nothing to evaluate: set data.validation_file (or "
                                                              "data.test_file), or pass --data PATH."))
        for key in ("freeze_embeddings", "freeze_layers"):
            if getattr(self.model, key):  # eval trains nothing
                issues.append(ConfigIssue(f"model.{key}", "llmkit eval trains nothing, so nothing is frozen; remove "
                                                          "it."))
        for key in ("train_file", "max_train_samples", "validation_split"):  # never inherited from a run
            if getattr(self.data, key) is not None:
                issues.append(ConfigIssue(f"data.{key}", "llmkit eval trains nothing and reads no training data; "
                                                         "remove it (it evaluates data.validation_file and "
                                                         "data.test_file)."))
        if self.eval.task in EMBEDDING_TASKS and not self.data.text_pair_column:
            first = "the first sentence" if self.eval.task == "sts" else "the query"
            issues.append(ConfigIssue("data.text_pair_column", f"eval.task {self.eval.task} reads pairs: set it to "
                                                               f"the column of the second text (data.text_column "
                                                               f"holds {first})."))
        return issues


# ---------------------------------------------------------------- reading the config


def load_config(target: Path, overrides: list[str], options: dict) -> EvalConfig:
    """`llmkit eval CONFIG [k=v]`, or the short form `llmkit eval RUN_OR_MODEL_DIR --data PATH [k=v]`; the data
    settings of a run directory it evaluates are inherited (explicit keys win)."""
    if not target.exists():
        raise UserError(f"eval: {target} does not exist; give a YAML config, a run or model directory (with "
                        "--data), or `compare` followed by run directories.")
    holds_model = target.is_dir() and ((target / "config.json").is_file() or (target / "config.yaml").is_file()
                                       or find_adapter_dir(target) is not None)
    if target.is_dir() and not holds_model:
        raise UserError(f"eval: {target} is a directory but not a model directory (no config.json) nor an llmkit "
                        "run directory (no config.yaml); give a YAML config file, or a model or run directory "
                        "with --data.")
    raw = {"model": {"name_or_path": str(target)}} if target.is_dir() else read_yaml(target)
    if options.get("data") is not None:
        overrides = [f"data.validation_file={options['data']}", *overrides]
    return load(EvalConfig, None, data=prepare_raw_config(apply_overrides(raw, overrides)),
                foreign_sections=options.get("foreign_sections"))


def prepare_raw_config(raw: dict) -> dict:
    """The config as YAML gives it, with the data settings of the run directory it evaluates filled in."""
    return rundir.inherit_from_run(raw)


COMPARE_REFUSED = {  # options of `llmkit eval` that mean nothing to compare, which only reads saved figures
    "output_dir": "-o/--output-dir (compare writes nothing: it prints the table; redirect it to keep it, e.g. "
                  "`llmkit eval compare A B > table.md`)",
    "overwrite": "--overwrite (compare writes nothing)",
    "smoke": "--smoke (compare runs no model: it reads the figures the runs saved)",
    "data": "--data (compare evaluates no data: it reads the figures the runs saved; evaluate a run on other data "
            "first with `llmkit eval RUN --data PATH -o DIR`, then compare DIR)",
}


def compare(args: list[str], options: dict) -> None:
    """`llmkit eval compare RUN...`: one table across run or eval directories."""
    given = [why for key, why in COMPARE_REFUSED.items() if options.get(key) not in (None, False)]
    if given:
        raise UserError("eval compare: " + "; ".join(given) + ". Remove " + ("it" if len(given) == 1 else "them")
                        + "; compare takes only run or eval directories.")
    if not args:
        raise UserError("eval compare: give one or more run directories.")
    print(compare_runs(args))


FORMS = {"compare": compare}


# ---------------------------------------------------------------- the recipe


def smoke_adjust(cfg: EvalConfig, shrink: Shrink) -> None:
    """Smoke mode: generation stops after a few tokens; a perplexity text is cut to its first lines; a
    sentence-embedding model's tiny copy is evaluated as the real model is (task, pooling)."""
    tokens = cap(cfg.eval.generation, "max_new_tokens", NEW_TOKENS)
    embedding = cfg.eval.task in ("auto", *EMBEDDING_TASKS) and keep_sentence_settings(cfg, shrink)
    if cfg.eval.task == "generation":
        shrink.note(f"at most {tokens} new tokens per prompt")
    elif cfg.eval.task in ("perplexity", "auto") and not embedding:
        shrink.note("a perplexity text file: its first lines")


def keep_sentence_settings(cfg: EvalConfig, shrink: Shrink) -> bool:
    """The tiny copy of a sentence-transformers model is a plain transformers directory (no modules.json), so
    eval.task auto is set to sts and eval.pooling (when null) to the real model's pooling: the smoke run scores as
    the real one. The modules after the pooling (MiniLM's Normalize) are not copied; cosine similarity does not
    change with them. True when the real model is a sentence-transformers directory."""
    source = sentence_source(shrink.original.model)
    if source is None:
        return False
    if cfg.eval.task == "auto":
        cfg.eval.task = "sts"
        shrink.note("eval.task auto is sts (a sentence-embedding model)")
    pooling = pooling_of(source)
    if cfg.eval.pooling is None and pooling in ("mean", "cls", "last-token"):
        cfg.eval.pooling = pooling
        shrink.note(f"the tiny copy pools as the real model: eval.pooling {pooling}")
    return True


def sentence_source(model_cfg: ModelConfig) -> str | None:
    """The sentence-transformers directory a model reference names (a run directory's model/, a directory,
    pkg:MODULE, a hub id in the local cache), or None."""
    name = model_cfg.name_or_path
    if not name or model_cfg.gguf_file:
        return None
    try:
        run_dir = rundir.find_run_directory(name)
        path = str(run_dir.model_dir) if run_dir else resolve_model_path(name)
    except (UserError, ModelNotFound):  # reported where the model is loaded
        return None
    return local_sentence_dir(path)


SMOKE = SmokeSpec(adjust=smoke_adjust)


@honoured(COMMAND, SMOKE)
def run(cfg: EvalConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Evaluate; write eval.json and report.md; return the figures. `dry_run`: load the model and the data and
    run every check, then stop before scoring (nothing is written)."""
    run_dir = rundir.find_run_directory(cfg.model.name_or_path)
    model_cfg = dataclasses.replace(cfg.model, name_or_path=str(run_dir.model_dir)) if run_dir else cfg.model
    tokenizer = load_tokenizer(model_cfg, cfg.tokenizer)
    task, kind = detect_task(cfg, model_cfg, run_dir)
    start = time.perf_counter()
    if task in EMBEDDING_TASKS:
        metrics, sections, extra = evaluate_embeddings(cfg, model_cfg, tokenizer, task, dry_run)
    elif task == "sequence-classification":
        metrics, sections, extra = evaluate_classification(cfg, model_cfg, tokenizer, run_dir, dry_run)
    elif task == "token-classification":
        metrics, sections, extra = evaluate_token_classification(cfg, model_cfg, tokenizer, dry_run)
    elif task == "generation":
        metrics, sections, extra = evaluate_generation(cfg, model_cfg, tokenizer, kind, dry_run)
    elif task == "preference":
        metrics, sections, extra = evaluate_preference(cfg, model_cfg, tokenizer, run_dir, kind, dry_run)
    else:
        metrics, sections, extra = evaluate_perplexity(cfg, model_cfg, tokenizer, kind, dry_run)
    if dry_run:
        print(f"plan: eval.task {task} on {', '.join(f'{k} {v}' for k, v in metrics['examples'].items())}; "
              "nothing scored or written (--dry-run)")
        return {"dry_run": True, "task": task, **metrics}
    metrics["eval_seconds"] = round(time.perf_counter() - start, 3)
    return write_outputs(cfg, config_path, overwrite, task, metrics, sections, extra, run_dir)


def detect_task(cfg: EvalConfig, model_cfg: ModelConfig, run_dir: rundir.RunDirectory | None = None
                ) -> tuple[str, str]:
    """(task, model kind) from eval.task and the model; the kind is a task.type name: sequence-classification,
    token-classification, causal-lm or masked-lm (an adapter run: its task.type). auto picks sts for a
    sentence-embedding run (its config.yaml) or a sentence-transformers directory; sts and retrieval take any
    model's encoder."""
    kind = model_kind(model_cfg)
    task = cfg.eval.task
    name = model_cfg.name_or_path
    if kind == "reward-model" or (run_dir is not None and (run_dir.config.get("task") or {}).get("type")
                                  == "reward-model"):
        if task not in ("auto", "preference"):
            raise UserError(f"eval.task: {name} is a reward model, evaluated on preference pairs (its pairwise "
                            f"accuracy), not by {task}. Use eval.task=preference (or auto).")
        return "preference", "reward-model"
    if task == "preference" and kind != "causal-lm":
        raise UserError(f"eval.task: preference scores the pairs with a causal LM (or a reward model); {name} is a "
                        f"{kind} model. Use eval.task={kind if kind in CLASSIFICATION_KINDS else 'perplexity'}.")
    if task == "auto":
        embedding = (kind == "sentence-embedding" or (run_dir is not None and is_sentence_run(run_dir.config))
                     or sentence_source(model_cfg) is not None)
        task = "sts" if embedding else kind if kind in CLASSIFICATION_KINDS else "perplexity"
    if task in EMBEDDING_TASKS:
        return task, kind
    if cfg.eval.pooling is not None:
        raise UserError(f"eval.pooling: only applies to sentence embeddings (eval.task sts or retrieval); {name} is "
                        f"evaluated for {task} (eval.task {cfg.eval.task}). Remove eval.pooling, or set eval.task=sts.")
    if kind == "sentence-embedding":
        raise UserError(f"eval.task: {name} is a sentence-embedding model; {task} needs a language model or a "
                        "classifier. Use eval.task=sts or eval.task=retrieval (or auto).")
    if task in CLASSIFICATION_KINDS and kind != task:
        raise UserError(f"eval.task: {task} needs a model with a {task} head; {name} is a {kind} model. Use "
                        f"eval.task={kind if kind in CLASSIFICATION_KINDS else 'perplexity'} (or auto).")
    if kind in CLASSIFICATION_KINDS and task != kind:
        raise UserError(f"eval.task: {name} is a {kind} model; {task} needs a language model. Use "
                        f"eval.task={kind} (or auto).")
    if task == "generation" and kind != "causal-lm":
        raise UserError(f"eval.task: generation needs a causal LM; {name} is a {kind} model. Use "
                        "eval.task=perplexity.")
    return task, kind


# ---------------------------------------------------------------- classification


def evaluate_classification(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any,
                            run_dir: rundir.RunDirectory | None, dry_run: bool = False):
    """Accuracy, macro and per-class scores and the confusion matrix on every given split."""
    model, _ = load_model("AutoModelForSequenceClassification", model_cfg, tokenizer)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    multi_label = model.config.problem_type == "multi_label_classification"
    saved_threshold = ((run_dir.config.get("task") or {}).get("threshold") if run_dir else None)
    threshold = cfg.eval.threshold or saved_threshold or 0.5
    data = prepare_classification_data(cfg.data, tokenizer, multi_label, seed=0,
                                       label_names=labels, from_model=True)
    check_sequence_length(model, data.stats)
    if dry_run:
        return {"examples": {split: len(ds) for split, ds in data.splits.items()}}, [], {}
    metrics_fn = ClassificationMetrics(labels, multi_label, threshold)
    metrics, sections, extra = {}, [], {"confusion_matrices": {}}
    for split, ds in data.splits.items():
        prefix = "eval" if split == "validation" else split
        logits, tokens, seconds = predict_logits(model, tokenizer, ds, cfg.eval.batch_size, cfg.eval.precision)
        preds = metrics_fn.predictions_from_logits(logits)
        refs = column_values(ds, "labels")
        scores = metrics_fn.compute(preds, refs)
        metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
        metrics.update({f"{prefix}_examples": len(ds), f"{prefix}_tokens": tokens,
                        f"{prefix}_tokens_per_second": round(tokens / seconds, 1)})
        split_sections, extra["confusion_matrices"][split] = classification_report(split, metrics_fn, preds, refs,
                                                                                   prefix, metrics)
        sections += split_sections
    extra.update(labels=labels, multi_label=multi_label, threshold=threshold if multi_label else None)
    return metrics, sections, extra


def predict_logits(model: Any, tokenizer: Any, dataset: Any, batch_size: int, precision: str):
    """Logits for every example, in dataset order; batches sorted by length to cut padding.

    Returns (logits: a tensor for sequence classification, a list of per-token tensors without padding for
    token classification; real tokens processed; seconds spent in forward passes).
    """
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    lengths = list_lengths(dataset, "input_ids")
    order = order_by_length(lengths)
    inputs = {name: column_values(dataset, name) for name in dataset.column_names if name != "labels"}
    features = [dict(zip(inputs, values)) for values in zip(*inputs.values())]
    device = next(model.parameters()).device
    model.eval()
    out: list[Any] = [None] * len(order)
    seconds = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = {k: v.to(device) for k, v in collate([features[j] for j in idx]).items()}
            start = time.perf_counter()
            logits = model(**batch).logits.float().cpu()
            seconds += time.perf_counter() - start
            for j, row in zip(idx, logits):
                out[j] = row[: lengths[j]] if row.dim() > 1 else row  # per-token logits: drop the padding
    stacked = torch.stack(out) if out and out[0].dim() == 1 else out
    return stacked, int(lengths.sum()), max(seconds, 1e-9)


def evaluate_token_classification(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any, dry_run: bool = False):
    """Entity-level precision/recall/F1 (overall and per type) and token accuracy on every given split."""
    model, _ = load_model("AutoModelForTokenClassification", model_cfg, tokenizer)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data = prepare_token_classification_data(cfg.data, tokenizer, seed=0, label_names=labels)
    check_sequence_length(model, data.stats)
    if dry_run:
        return {"examples": {split: len(ds) for split, ds in data.splits.items()}}, [], {}
    metrics_fn = TokenClassificationMetrics(labels)
    metrics, sections = {}, []
    for split, ds in data.splits.items():
        prefix = "eval" if split == "validation" else split
        rows, tokens, seconds = predict_logits(model, tokenizer, ds, cfg.eval.batch_size, cfg.eval.precision)
        scores = metrics_fn.compute([r.argmax(-1) for r in rows], column_values(ds, "labels"))
        metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
        metrics.update({f"{prefix}_examples": len(ds), f"{prefix}_tokens": tokens,
                        f"{prefix}_tokens_per_second": round(tokens / seconds, 1)})
        header, table = metrics_fn.entity_table(metrics, prefix)
        sections.append((f"Per-entity scores ({split})", markdown_table(header, table)))
    return metrics, sections, {"labels": labels}


# ---------------------------------------------------------------- perplexity


def evaluate_perplexity(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any, kind: str, dry_run: bool = False):
    """Perplexity, NLL, tokens scored and bits per byte of every given split's text (validation: eval_*, test:
    test_*), as classification evaluates every split."""
    spec = cfg.eval.perplexity
    texts = read_eval_texts(cfg.data)
    for split, (text, source) in texts.items():
        if not text.strip():
            raise UserError(f"data.{SPLIT_KEYS[split]}: {source} holds no text to score; give a file with text.")
    ids = {split: tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
           for split, (text, _) in texts.items()}
    auto = "AutoModelForCausalLM" if kind == "causal-lm" else "AutoModelForMaskedLM"
    model, missing = load_model(auto, model_cfg, tokenizer)
    if missing and any("lm_head" in k or "predictions" in k or "cls." in k for k in missing):
        raise UserError(f"model.name_or_path: {model_cfg.name_or_path} has no trained language-model head "
                        f"(missing: {', '.join(sorted(missing)[:3])}); its perplexity would be meaningless.")
    limit = getattr(model.config, "max_position_embeddings", None)
    if spec.max_length is not None and limit and spec.max_length > limit:
        raise UserError(f"eval.perplexity.max_length: {spec.max_length} is more than the model's {limit} "
                        f"positions; set eval.perplexity.max_length={limit} (or lower).")
    max_length = spec.max_length or min(limit or 512, 512)
    spec = dataclasses.replace(spec, max_length=max_length, stride=spec.stride or max(max_length // 2, 1))
    if spec.stride > max_length:
        raise UserError(f"eval.perplexity.stride: {spec.stride} is more than the window of {max_length} tokens "
                        "(the model's positions); lower it.")
    if dry_run:
        return {"examples": {split: f"{len(split_ids)} tokens" for split, split_ids in ids.items()}}, [], {}
    model.eval()
    if kind == "causal-lm":
        settings = {"method": "sliding window", "max_length": spec.max_length, "stride": spec.stride,
                    "bos_prepended": tokenizer.bos_token_id is not None}
    else:
        settings = {"method": "fixed-seed masking", "block_size": spec.max_length,
                    "mlm_probability": spec.mlm_probability, "seed": spec.seed}
    metrics = {}
    for split, (text, _) in texts.items():
        # a test text alone keeps eval_* (its keys before test files were scored beside validation, and compare's)
        prefix = "eval" if split == "validation" or len(texts) == 1 else split
        n_bytes = len(text.encode("utf-8"))
        metrics.update(_perplexity_of(model, tokenizer, ids[split], spec, kind, cfg.eval)
                       .as_dict(prefix=f"{prefix}_", n_bytes=n_bytes))
        metrics.update({f"{prefix}_bytes": n_bytes, f"{prefix}_text_tokens": len(ids[split])})
    # one split: its files, as before; several: which files each split's figures are of
    source = (next(iter(texts.values()))[1] if len(texts) == 1
              else "; ".join(f"{split}: {src}" for split, (_, src) in texts.items()))
    return metrics, [], {"perplexity_settings": {**settings, "model_kind": kind, "source": source}}


def _perplexity_of(model: Any, tokenizer: Any, ids: list[int], spec: PerplexitySpec, kind: str, section: EvalSection):
    """One text's perplexity: the sliding window (causal LMs) or fixed-seed masking of blocks (masked LMs)."""
    import torch

    from llmkit.metrics import perplexity as ppl

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=section.precision == "bf16"):
        if kind == "causal-lm":
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            return ppl.causal_lm_perplexity(model, bos + ids, spec.max_length, spec.stride, section.batch_size)
        body = spec.max_length - 2
        blocks = [_with_special_tokens(tokenizer, ids[i:i + body]) for i in range(0, len(ids), body)]
        return ppl.masked_lm_perplexity(
            model, blocks, lambda b: tokenizer.get_special_tokens_mask(b, already_has_special_tokens=True),
            tokenizer.mask_token_id, len(tokenizer), spec.mlm_probability, spec.seed, section.batch_size,
            pad_token_id=tokenizer.pad_token_id or 0)


def _with_special_tokens(tokenizer: Any, ids: list[int]) -> list[int]:
    """[CLS] ids [SEP] (or BOS ids EOS) as the model saw sequences in pretraining; transformers 5's tokenizers
    no longer offer build_inputs_with_special_tokens."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([first] if first is not None else []) + list(ids) + ([last] if last is not None else [])


# ---------------------------------------------------------------- generation


def evaluate_generation(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any, kind: str, dry_run: bool = False):
    """Generate for every prompt (batched, left-padded); exact match when references are given."""
    from llmkit.metrics.generation import AnswerExtractor, GenerationSettings, exact_match, generate

    spec = cfg.eval.generation
    splits = {k: v for k, v in load_raw_splits(cfg.data, seed=0).items() if k != "train"}
    check = dataclasses.replace(cfg.data, text_column=spec.prompt_column, label_column=spec.reference_column or
                                spec.prompt_column)
    require_columns(splits, check, ["text_column", "label_column"],
                    {"text_column": "eval.generation.prompt_column",
                     "label_column": "eval.generation.reference_column" if spec.reference_column
                     else "eval.generation.prompt_column"})
    model, _ = load_model("AutoModelForCausalLM", model_cfg, tokenizer)
    settings = GenerationSettings(
        max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample, temperature=spec.temperature,
        top_k=spec.top_k, top_p=spec.top_p, repetition_penalty=spec.repetition_penalty,
        stop_strings=list(spec.stop_strings), seed=spec.seed, batch_size=cfg.eval.batch_size,
        use_chat_template=spec.use_chat_template)
    answer = AnswerExtractor(spec.answer_pattern)
    reference = AnswerExtractor(spec.reference_pattern or spec.answer_pattern)
    if dry_run:
        return {"examples": {split: len(ds) for split, ds in splits.items()}}, [], {}
    metrics, samples = {}, []
    for split, ds in splits.items():
        prefix = "eval" if split == "validation" else split
        prompts = [spec.prompt_template.format(prompt=p) for p in ds[spec.prompt_column]]
        rendered = _render(tokenizer, prompts, spec)
        start = time.perf_counter()
        outputs = generate(model, tokenizer, rendered, settings)
        seconds = time.perf_counter() - start
        new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        refs = ds[spec.reference_column] if spec.reference_column else [None] * len(outputs)
        predicted = [answer(o) for o in outputs]
        expected = [reference(r) if r is not None else None for r in refs]
        for p, o, r, a, e in zip(prompts, outputs, refs, predicted, expected):
            samples.append({"split": split, "prompt": p, "output": o, "reference": r, "predicted_answer": a,
                            "reference_answer": e, "correct": None if r is None else exact_match([a], [e]) == 1.0})
        metrics.update({f"{prefix}_samples": len(outputs), f"{prefix}_generated_tokens": new_tokens,
                        f"{prefix}_generated_tokens_per_second": round(new_tokens / max(seconds, 1e-9), 1)})
        if spec.reference_column:
            metrics[f"{prefix}_exact_match"] = exact_match(predicted, expected)
            metrics[f"{prefix}_answer_found"] = sum(a is not None for a in predicted) / max(len(predicted), 1)
    return metrics, [], {"samples": samples, "generation_settings": dataclasses.asdict(settings)}


def _render(tokenizer: Any, prompts: list[str], spec: GenerationSpec) -> list[str]:
    from llmkit.metrics.generation import render_prompts

    try:
        return render_prompts(tokenizer, prompts, spec.use_chat_template, spec.system_prompt)
    except ValueError as e:
        raise UserError(f"eval.generation.use_chat_template: {e}") from None


# ---------------------------------------------------------------- preference pairs


@dataclass
class PreferencePlan:
    """What eval.task preference scores: a reward model's pairs, or a causal LM's log-probs and, when it has one,
    its implicit reward against `reference` ("adapter-off", a ModelConfig, or None) with `beta`."""

    reward_model: bool
    method: str = "dpo"
    beta: float = 0.1
    reference: Any = None
    describe: str = "none (only the log-probability row)"


def preference_plan(cfg: EvalConfig, model_cfg: ModelConfig, run_dir: rundir.RunDirectory | None, kind: str
                    ) -> PreferencePlan:
    """The reference and beta of a policy (see PreferenceEvalSpec.reference), or a reward model's plan."""
    from llmkit.tasks.config import BETA_DEFAULTS
    from llmkit.training.preference import REFERENCE_FREE

    if kind == "reward-model":
        return PreferencePlan(reward_model=True, describe="none (a reward model scores each conversation)")
    saved = run_dir.config if run_dir else {}
    pref = saved.get("preference") or {}
    method = pref.get("method") or "dpo"
    spec = cfg.eval.preference
    beta = spec.beta or pref.get("beta") or BETA_DEFAULTS.get(method, 0.1)
    plan = PreferencePlan(reward_model=False, method=method, beta=beta)
    if spec.reference is not None:
        ref_run = rundir.find_run_directory(spec.reference, key="eval.preference.reference")
        path = str(ref_run.model_dir) if ref_run else spec.reference
        plan.reference, plan.describe = ModelConfig(name_or_path=path), f"{spec.reference} (eval.preference.reference)"
    elif method in REFERENCE_FREE and saved:
        plan.describe = f"none ({method} is reference-free: reward = beta x the mean per-token log-prob)"
        plan.reference = "reference-free"
    elif find_adapter_dir(model_cfg.name_or_path) is not None:
        plan.reference, plan.describe = "adapter-off", "the base model (the adapter disabled)"
    elif (saved.get("task") or {}).get("type") == "preference":
        plan.reference, plan.describe = saved_base(saved, run_dir), "the run's base model (its model section)"
    return plan


def saved_base(saved: dict, run_dir: rundir.RunDirectory) -> ModelConfig:
    """The model a full preference run started from, as its config.yaml names it."""
    from llmkit.config.schema import build

    section = saved.get("model") or {}
    if section.get("from_config") is not None or not section.get("name_or_path"):
        raise UserError(f"eval.preference.reference: the run {run_dir.path} trained a model built from a config "
                        "(random weights that eval cannot rebuild), so its reference is unknown. Set "
                        "eval.preference.reference to the untrained model's directory.")
    model, _ = build(ModelConfig, section, "model")
    return model


def evaluate_preference(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any,
                        run_dir: rundir.RunDirectory | None, kind: str, dry_run: bool = False):
    """Every split's pairs: a reward model's pairwise accuracy; a causal LM's log-probability preference accuracy
    (the baseline row) and, with a reference, its implicit-reward accuracy and margin."""
    from llmkit.data.preference import prepare_preference_data
    from llmkit.training.preference import preference_collator, require_trl

    require_trl("eval.task")
    data = prepare_preference_data(cfg.data, tokenizer, seed=0)
    splits = {k: v for k, v in data.splits.items() if k != "train"}
    dropped = {k: {d: data.stats[k][d] for d in ("dropped_identical", "dropped_empty", "truncated")} for k in splits}
    plan = preference_plan(cfg, model_cfg, run_dir, kind)
    what = "reward model" if plan.reward_model else f"beta {plan.beta} (method {plan.method})"
    print(f"preference: {model_label(model_cfg)}, {what}; reference: {plan.describe}")
    model, reference = load_preference_models(model_cfg, tokenizer, plan)
    if dry_run:
        return {"examples": {split: f"{len(ds)} pairs" for split, ds in splits.items()}}, [], {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = preference_collator(pad, None)
    metrics, rows = {}, []
    for split, ds in splits.items():
        prefix = "eval" if split == "validation" else split
        figures, split_rows = score_preference_split(model, reference, plan, ds, collate, cfg.eval)
        metrics.update({f"{prefix}_{k}": v for k, v in figures.items()})
        metrics.update({f"{prefix}_pairs": len(ds), **{f"{prefix}_{k}": v for k, v in dropped[split].items()}})
        rows += [[split, *row] for row in split_rows]
    header = ["split", "measure", "pairs", "accuracy", "margin", "chosen", "rejected"]
    sections = [("Preference pairs (accuracy: the share of pairs ranked chosen > rejected)",
                 markdown_table(header, rows))]
    extra = {"preference": {"method": plan.method, "beta": plan.beta, "reference": plan.describe,
                            "reward_model": plan.reward_model}}
    if not plan.reward_model and cfg.eval.preference.samples and splits:
        extra["samples"] = preference_samples(model, reference, tokenizer, next(iter(splits.items())), cfg.eval)
    return metrics, sections, extra


def load_preference_models(model_cfg: ModelConfig, tokenizer: Any, plan: PreferencePlan) -> tuple[Any, Any]:
    """The model (a sequence-classification head for a reward model) and the reference to score against."""
    if plan.reward_model:
        model, _ = load_model("AutoModelForSequenceClassification", model_cfg, tokenizer)
        if model.config.num_labels != 1:
            raise UserError(f"model.name_or_path: {model_cfg.name_or_path} has {model.config.num_labels} outputs; "
                            "a reward model has one score per conversation.")
        return model, None
    model, _ = load_model("AutoModelForCausalLM", model_cfg, tokenizer)
    reference = plan.reference
    if reference == "adapter-off" and not hasattr(model, "disable_adapter"):
        raise UserError(f"model.name_or_path: the adapter of {model_cfg.name_or_path} cannot be switched off; set "
                        "eval.preference.reference to its base model.")
    if isinstance(reference, ModelConfig):
        reference, _ = load_model("AutoModelForCausalLM", reference, tokenizer)
        reference.eval()
    return model, reference


def score_preference_split(model: Any, reference: Any, plan: PreferencePlan, ds: Any, collate: Any,
                           spec: EvalSection) -> tuple[dict, list[list]]:
    """One split's figures (as training names them: logps/*, rewards/*; a reward model's accuracy, margin,
    score/*) and its table rows: the model's log-probs (the baseline row), the reference's, the reward."""
    import torch

    from llmkit.training.preference import (
        log_prob_figures,
        pair_rows,
        reward_figures,
        score_conversations,
        score_pairs,
    )

    if plan.reward_model:
        f = reward_figures(score_conversations(model, ds, collate, spec.batch_size, spec.precision))
        return ({"accuracy": f["accuracy"], "margin": f["margin"], "score/chosen": f["chosen"],
                 "score/rejected": f["rejected"]}, [["reward model score", len(ds), *f.values()]])
    live = reference if reference != "reference-free" else None
    scored = score_pairs(model, live, ds, collate, spec.batch_size, spec.precision)
    own = log_prob_figures(scored["logps"], scored["lengths"])
    figures = {"logps/accuracies": own["accuracy"], "logps/margins": own["margin"], "logps/chosen": own["chosen"],
               "logps/rejected": own["rejected"]}
    rows = [["log-prob, the model alone (mean per token)", len(ds), *own.values()]]
    if "ref" in scored:
        base = log_prob_figures(scored["ref"], scored["lengths"])
        figures.update({"reference_logps/accuracies": base["accuracy"], "reference_logps/margins": base["margin"]})
        rows.append(["log-prob, the reference alone (mean per token)", len(ds), *base.values()])
    if reference is not None:
        flat = lambda t: torch.cat([t[:, 0], t[:, 1]])  # noqa: E731 - chosen rows, then rejected rows
        ref = flat(scored["ref"]) if "ref" in scored else torch.zeros(2 * len(ds))
        rewards = pair_rows(plan.method, plan.beta, flat(scored["logps"]), ref, flat(scored["lengths"]))[:, :2]
        r = reward_figures(rewards)
        figures.update({"rewards/accuracies": r["accuracy"], "rewards/margins": r["margin"],
                        "rewards/chosen": r["chosen"], "rewards/rejected": r["rejected"]})
        rows.append([f"implicit reward (beta {plan.beta})", len(ds), *r.values()])
    return figures, rows


def preference_samples(model: Any, reference: Any, tokenizer: Any, split: tuple[str, Any], spec: EvalSection
                       ) -> list[dict]:
    """Greedy generations for the first pairs' prompts (rendered as in training), by the model and its
    reference (the adapter disabled, or the reference model), beside the chosen answer."""
    from llmkit.metrics.generation import GenerationSettings, generate

    name, ds = split
    rows = ds.select(range(min(spec.preference.samples, len(ds))))
    prompts = [tokenizer.decode(ids) for ids in rows["prompt_ids"]]
    settings = GenerationSettings(max_new_tokens=spec.preference.max_new_tokens, use_chat_template=False,
                                  batch_size=spec.batch_size)
    outputs = generate(model, tokenizer, prompts, settings)
    before = [None] * len(prompts)
    if reference == "adapter-off":
        with model.disable_adapter():
            before = generate(model, tokenizer, prompts, settings)
    elif reference not in (None, "reference-free"):
        before = generate(reference, tokenizer, prompts, settings)
    chosen = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rows["chosen_ids"]]
    return [{"split": name, "prompt": p, "output": o, "output_reference": b, "chosen": c}
            for p, o, b, c in zip(prompts, outputs, before, chosen)]


# ---------------------------------------------------------------- sentence embeddings


def evaluate_embeddings(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any, task: str, dry_run: bool = False):
    """sts: Spearman and Pearson correlation of each pair's cosine similarity with its gold score; retrieval:
    recall@1/5/10 and MRR of each query's own positive among all the positives of its split; on every split."""
    splits = {k: v for k, v in load_raw_splits(cfg.data, seed=0).items() if k != "train"}
    check_pair_columns(splits, cfg.data, task)
    prepared = {split: gold_scores(ds, cfg.data, split) if task == "sts" else retrieval_pairs(ds, cfg.data, split)
                for split, ds in splits.items()}
    model = sentence_model(cfg, model_cfg, tokenizer)
    settings = {"similarity": "cosine", "pooling": pooling_in(model), "max_length": model.max_seq_length,
                "modules": [type(m).__name__ for m in model]}
    print(f"embeddings: {model_label(model_cfg)} as {' -> '.join(settings['modules'])}, pooling "
          f"{settings['pooling']}, sentences cut at {settings['max_length']} tokens")
    if dry_run:
        return {"examples": {split: f"{len(ds)} pairs" for split, ds in splits.items()}}, [], {}
    metrics, rows, extra = {}, [], {"embedding_settings": settings, "similarity_plots": {}}
    for split, ds in splits.items():
        prefix = "eval" if split == "validation" else split
        if task == "sts":
            first, second = pair_texts(ds, cfg.data)
            sims = similarity.paired_cosine(_embed(model, first, cfg), _embed(model, second, cfg))
            figures = similarity.sts_correlations(sims, prepared[split])
            if any(v != v for v in figures.values()):
                note(f"every pair of the {split} data is equally similar to the model: no correlation (null)")
            figures = {k: similarity.finite(v) for k, v in figures.items()}
            extra["similarity_plots"][split] = (prepared[split], sims.tolist(), figures)
            rows.append([split, len(ds), *figures.values()])
        else:
            queries, candidates, gold = prepared[split]
            ranks = similarity.rank_positives(_embed(model, queries, cfg), _embed(model, candidates, cfg), gold)
            figures = {**similarity.retrieval_metrics(ranks), "candidates": len(candidates)}
            rows.append([split, len(ds), *figures.values()])
        metrics.update({f"{prefix}_{k}": v for k, v in figures.items()})
        metrics[f"{prefix}_examples"] = len(ds)
    return metrics, embedding_sections(task, rows, extra["similarity_plots"]), extra


def _embed(model: Any, texts: list[str], cfg: EvalConfig) -> Any:
    return encode(model, texts, batch_size=cfg.eval.batch_size, precision=cfg.eval.precision)


def sentence_model(cfg: EvalConfig, model_cfg: ModelConfig, tokenizer: Any) -> Any:
    """The model as a SentenceTransformer: a sentence-transformers directory with its own modules, any other
    model's encoder with mean pooling (eval.pooling overrides either); a tokenizer.name_or_path replaces its
    tokenizer; a sentence-embedding adapter run is its base model with the adapter on its transformer."""
    key = source_key(model_cfg)
    if model_cfg.from_config is not None:
        raise UserError(f"model.from_config: eval.task {cfg.eval.task} scores a trained model's embeddings; a model "
                        "built from a config is random. Set model.name_or_path.")
    adapter_dir = find_adapter_dir(model_cfg.name_or_path)
    if adapter_dir is not None:
        return with_tokenizer(cfg, tokenizer, sentence_adapter(cfg, model_cfg, adapter_dir))
    if model_cfg.revision and not model_cfg.gguf_file:
        raise UserError(f"model.revision: eval.task {cfg.eval.task} loads the model with sentence-transformers, "
                        "which llmkit does not pass a revision to; download that revision to a directory and give "
                        "its path.")
    model = load_sentence_model(model_source(model_cfg), pooling=cfg.eval.pooling, max_length=cfg.data.max_length,
                                trust_remote_code=model_cfg.trust_remote_code, allow_pickle=model_cfg.allow_pickle,
                                key=key, label=model_label(model_cfg), pooling_key="eval.pooling")
    return with_tokenizer(cfg, tokenizer, model)


def sentence_adapter(cfg: EvalConfig, model_cfg: ModelConfig, adapter_dir: Path) -> Any:
    """An adapter run of any PEFT method trained for sentence embeddings (other tasks' adapters do not wrap an
    encoder that a pooling can read: merge those first)."""
    task = read_metadata(adapter_dir)["task"]
    if task != "sentence-embedding":
        raise UserError(f"model.name_or_path: {model_cfg.name_or_path} is a {task} adapter run; eval.task "
                        f"{cfg.eval.task} reads sentence embeddings from a full model or a sentence-embedding run. "
                        "Merge the adapter first (llmkit adapter merge RUN) and evaluate the merged model.")
    return load_sentence_adapter(adapter_dir, pooling=cfg.eval.pooling, max_length=cfg.data.max_length,
                                 allow_pickle=model_cfg.allow_pickle, pooling_key="eval.pooling")


def with_tokenizer(cfg: EvalConfig, tokenizer: Any, model: Any) -> Any:
    """A tokenizer.name_or_path or tokenizer.padding_side replaces the model's tokenizer with llmkit's."""
    if cfg.tokenizer.name_or_path or cfg.tokenizer.padding_side:
        limit = model.max_seq_length  # read from the tokenizer: kept across the swap
        model[0].processor = tokenizer  # llmkit's tokenizer (padding side, pad token) instead of the model's
        model.max_seq_length = limit
    return model


def embedding_sections(task: str, rows: list[list], plots: dict) -> list[tuple[str, str]]:
    """report.md: one table of every split's figures; for sts the scatter plot of each split."""
    if task == "sts":
        sections = [("STS (cosine similarity vs gold score)",
                     markdown_table(["split", "pairs", "spearman", "pearson"], rows))]
        return sections + [(f"Similarity vs gold score ({split})", f"![similarity vs gold score ({split})]"
                                                                   f"(similarity_{split}.png)") for split in plots]
    header = ["split", "queries", *(f"recall@{k}" for k in similarity.RETRIEVAL_KS), "MRR", "candidates"]
    return [("Retrieval (each query against all the positives)", markdown_table(header, rows))]


# ---------------------------------------------------------------- outputs


def write_outputs(cfg: EvalConfig, config_path: str | None, overwrite: bool | str, task: str, metrics: dict,
                  sections: list, extra: dict, run_dir: rundir.RunDirectory | None) -> dict:
    """eval.json (figures + the settings that produced them), config.yaml, env.json, report.md, a table."""
    label = model_label(cfg.model)
    name = run_dir.path.name if run_dir else Path(label).name
    adapter_dir = find_adapter_dir(cfg.model.name_or_path)
    if adapter_dir is not None:
        meta = read_metadata(adapter_dir)
        label = f"{meta['base_model']} + {meta['method']} adapter {meta['name']!r} ({label})"
    out = rundir.claim_run_dir(cfg, COMMAND, config_path, overwrite, path=None if cfg.output_dir else
                               rundir.default_run_dir(COMMAND, config_path or name))
    save_config(cfg, out / "config.yaml", COMMAND)
    rundir.write_json(out / "env.json", rundir.environment(cfg.eval.precision, 1))
    for split, matrix in (extra.get("confusion_matrices") or {}).items():
        if matrix is not None:
            plot_confusion_matrix(matrix, extra["labels"], out / f"confusion_matrix_{split}.png", split)
    for split, (gold, sims, figures) in (extra.pop("similarity_plots", None) or {}).items():
        plot_similarity(gold, sims, out / f"similarity_{split}.png", split, figures)
    samples = extra.pop("samples", None)
    if samples is not None:
        with (out / "samples.jsonl").open("w") as fh:
            fh.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples)
    record = {"task": task, "model": label, "run_directory": str(run_dir.path) if run_dir else None,
              "metrics": metrics, "settings": {"eval": to_dict(cfg.eval), "data": to_dict(cfg.data)}, **extra}
    rundir.write_json(out / "eval.json", record)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    write_report(out, f"llmkit eval ({task})", {"model": label, "output": str(out)}, numbers,
                 sections, history=[])
    print_table(numbers)
    for heading, body in sections:
        if heading.startswith("Confusion matrix"):
            print(f"\n{heading}\n{body}")
    print(f"\neval: {out / 'eval.json'}")
    return metrics


def print_table(metrics: dict) -> None:
    width = max(len(k) for k in metrics) if metrics else 0
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


# ---------------------------------------------------------------- compare

HEADLINE = ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1", "eval_logps/accuracies",
            "eval_reference_logps/accuracies", "eval_rewards/accuracies", "eval_rewards/margins", "eval_loss",
            "eval_perplexity", "test_perplexity", "eval_bits_per_byte", "test_bits_per_byte", "eval_exact_match",
            "test_exact_match", "eval_spearman", "eval_pearson", "test_spearman",
            "test_pearson", "eval_recall_at_1", "eval_recall_at_5", "eval_recall_at_10", "eval_mrr",
            "test_recall_at_1", "test_recall_at_5", "test_recall_at_10", "test_mrr", "train_runtime",
            "trainable_params")


def read_figures(file: Path) -> dict:
    """The figures of one eval.json ("metrics") or metrics.json (the whole object), or a UserError naming the file
    when it cannot be read as one (empty, cut off, not JSON, not UTF-8, not an object)."""
    fix = ("re-run the evaluation (or the training) that wrote it, or leave that directory out of the "
           "comparison.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"compare: cannot read {file}: {e.strerror}; check its permissions, or {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"compare: {file} is not UTF-8 text (not a file llmkit wrote, or a damaged one); {fix}") \
            from None
    except ValueError as e:
        what = "is empty" if not file.read_bytes().strip() else f"is not valid JSON ({e})"
        raise UserError(f"compare: {file} {what}; {fix}") from None
    except RecursionError:
        raise UserError(f"compare: {file} nests JSON too deeply to be a file of figures; {fix}") from None
    figures = data.get("metrics", data) if isinstance(data, dict) else data
    if not isinstance(figures, dict):
        where = "its \"metrics\"" if isinstance(data, dict) else "it"
        raise UserError(f"compare: {file} holds JSON, but {where} is a {type(figures).__name__}, not an object of "
                        f"metric names and figures; {fix}")
    return figures


def compare_runs(paths: list[str]) -> str:
    """One markdown table across run or eval directories (eval.json preferred, else metrics.json)."""
    rows = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"compare: {p} does not exist; check the path, or give llmkit run or eval directories.")
        if not path.is_dir():
            raise UserError(f"compare: {p} is a file, not a directory; give llmkit run or eval directories (the "
                            "folders that hold eval.json or metrics.json).")
        for name in ("eval.json", "metrics.json"):
            if (path / name).is_file():
                rows.append((path.name, read_figures(path / name)))
                break
        else:
            raise UserError(f"compare: {p} holds neither eval.json nor metrics.json; give llmkit run or eval "
                            "directories.")
    present = [k for k in HEADLINE if any(k in m for _, m in rows)]
    if not present:
        raise UserError("compare: these directories share no headline metric to compare.")
    lines = ["| run | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for name, m in rows:
        cells = [(f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k])) if k in m else "–" for k in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
