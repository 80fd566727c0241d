"""The bad-input matrix: every command fed broken configs and data through the real CLI.

Each case is one row of `CASES`: the command, an edit of that command's working tiny config (or the raw
config text), and the substrings the message must hold (the key or file, the value, the fix). Every case must
exit with code 2, print no traceback, and leave no run directory behind; `LATE` cases (failing after the data
or the model is loaded) also run against an existing run directory with --overwrite, which must survive
untouched; every case also runs with --dry-run, which must fail with the same message. Add a case by appending a row.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import CHATML, build_chat_tokenizer, sentiment_rows, write_yaml
from tests.recipes.helpers import invoke, tiny_bert_config

Edit = Callable[[dict, Path], "dict | bytes | Path"]


@dataclass(frozen=True)
class Case:
    id: str
    command: str
    edit: Edit
    expect: tuple[str, ...]
    args: tuple[str, ...] = ()
    late: bool = False  # fails after data/model loading: also checked against an existing run directory

    def __str__(self) -> str:
        return self.id


# ---------------------------------------------------------------- edits


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def put(changes: dict) -> Edit:
    """Set dotted keys (values may be callables of the test's tmp directory, for paths)."""

    def edit(cfg: dict, tmp: Path) -> dict:
        for key, value in changes.items():
            _set(cfg, key, value(tmp) if callable(value) else value)
        return cfg

    return edit


def drop(dotted: str) -> Edit:
    def edit(cfg: dict, tmp: Path) -> dict:
        *parents, last = dotted.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        del node[last]
        return cfg

    return edit


def raw(text: str | bytes) -> Edit:
    """Replace the whole config file by this text (or bytes)."""
    return lambda cfg, tmp: text.encode() if isinstance(text, str) else text


def data_file(key: str, name: str, content: str | bytes, **more) -> Edit:
    """Write a data file into the test's tmp directory and point data.<key> at it."""

    def edit(cfg: dict, tmp: Path) -> dict:
        path = tmp / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        _set(cfg, f"data.{key}", str(path))
        return put(more)(cfg, tmp)

    return edit


def both(*edits: Edit) -> Edit:
    def edit(cfg: dict, tmp: Path) -> dict:
        for e in edits:
            cfg = e(cfg, tmp)
        return cfg

    return edit


def csv_text(rows: list[dict]) -> str:
    header = ",".join(rows[0])
    return header + "\n" + "".join(",".join(str(r[k]) for k in rows[0]) + "\n" for r in rows)


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


ROWS = sentiment_rows(16, seed=5)
LATIN1_CSV = ("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS[:6])
              + "un film très réussi,positive\n").encode("latin-1")
GARBAGE = bytes(range(256)) * 8
BAD_JSONL = "".join(json.dumps(r) + "\n" for r in ROWS[:3]) + '{"text": "broken row", "label": \n' + \
    "".join(json.dumps(r) + "\n" for r in ROWS[3:6])
LONG_TEXT = [{"text": " ".join(["great film"] * 60), "label": "positive"}, *ROWS[:6]]


# ---------------------------------------------------------------- cases for every command

def _every_command() -> list[Case]:
    cases = []
    for c in ("pretrain", "finetune", "adapter", "prompt", "distill", "eval", "compress"):
        cases += [
            Case(f"{c}-yaml-syntax", c, raw("model:\n  name_or_path: [unclosed\ndata: {}\n"),
                 ("not valid YAML", "line 3", "fix the syntax")),
            Case(f"{c}-yaml-top-level-list", c, raw("- model\n- data\n"),
                 ("must hold a mapping of sections", "got a list",
                  "Write it as `section:` lines with indented `key: value` pairs")),
            Case(f"{c}-yaml-scalar-section", c, put({"train" if c != "eval" else "eval": 5}),
                 ("expected a mapping (section), got int 5",)),
            Case(f"{c}-config-latin1", c, raw("# r\xe9sum\xe9\nmodel: {}\n".encode("latin-1")),
                 ("not UTF-8", "byte 0xe9", "line 1", "save it as UTF-8")),
            Case(f"{c}-config-binary", c, raw(GARBAGE), ("not UTF-8", "save it as UTF-8")),
            Case(f"{c}-config-empty", c, raw(b""),
                 ("distill: required key is missing" if c == "distill" else "model: required key is missing",
                  "data: required key is missing")),
            Case(f"{c}-config-missing", c, lambda cfg, tmp: tmp / "nope.yaml",
                 ("nope.yaml", "does not exist", "give a YAML config, a run or model directory (with --data)")
                 if c == "eval" else ("Config file not found", "nope.yaml", "Check the path, or write a starter config "
                                      "with `llmkit init`")),
            Case(f"{c}-config-is-directory", c, lambda cfg, tmp: Path(_dir(tmp / "configs")),
                 ("configs", "is a directory", "give the YAML file itself") if c != "eval"
                 else ("configs", "config.json", "give a YAML config file, or a model or run directory with --data")),
            Case(f"{c}-top-level-misspelled", c, lambda cfg, tmp, c=c: {("modle" if k == "model" else k): v
                                                                         for k, v in cfg.items()}
                 if "model" in cfg else {**cfg, "outptu_dir": "x"},
                 ("unknown key", "Did you mean 'model'?") if c != "distill" else ("unknown key",
                                                                                    "Did you mean 'output_dir'?")),
            Case(f"{c}-override-without-equals", c, put({}),
                 ("train.learning_rate", "an override must look like key.path=value, e.g. train.learning_rate=3e-5"),
                 args=("train.learning_rate",)),
            Case(f"{c}-output-dir-is-a-file", c, put({"output_dir": lambda tmp: _file(tmp / "taken.txt")}),
                 ("exists and is a file", "Choose another --output-dir"), late=False),
        ]
    return cases


def _file(path: Path) -> str:
    path.write_text("not a directory\n")
    return str(path)


def _dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("just a folder\n")
    return str(path)


# ---------------------------------------------------------------- finetune (and data cases shared with adapter)

def _data_cases(c: str) -> list[Case]:
    """Data-file problems: the same loader serves finetune, adapter, prompt, distill and eval."""
    split = "validation_file" if c == "eval" else "train_file"
    # finetune and adapter read their label set from the training data, so an odd label is one the training
    # data lacks; prompt (data.label_names), distill (the teacher) and eval (the model) have a fixed set
    fixed_labels = split if c in ("prompt", "distill", "eval") else "validation_file"
    return [
        Case(f"{c}-data-missing-file", c, put({f"data.{split}": "nowhere/train.csv"}),
             (f"data.{split}", "file not found", "nowhere/train.csv",
              "Check the path, or set data.data_dir=DIR to where the data lives")),
        Case(f"{c}-data-directory-not-a-dataset", c, put({f"data.{split}": lambda tmp: _dir(tmp / "folder")}),
             (f"data.{split}", "folder", "not a datasets save_to_disk directory",
              "Give a data file (csv, tsv, json, jsonl, parquet, txt, conll) or a folder save_to_disk wrote")),
        Case(f"{c}-data-unknown-extension", c, data_file(split, "train.dat", "text,label\n"),
             (f"data.{split}", "cannot tell the format", "set data.format to one of csv, tsv, json, jsonl")),
        Case(f"{c}-data-empty-csv", c, data_file(split, "empty.csv", b""),
             (f"data.{split}", "empty.csv", "is empty", "check that this is the right file"), late=True),
        Case(f"{c}-data-header-only-csv", c, data_file(split, "header.csv", "text,label\n"),
             (f"data.{split}", "header.csv", "empty (0 rows)", "Check the file"), late=True),
        Case(f"{c}-data-empty-jsonl", c, data_file(split, "empty.jsonl", b""),
             (f"data.{split}", "empty.jsonl", "empty (no JSON lines)", "check that this is the right file"),
             late=True),
        Case(f"{c}-data-latin1-csv", c, data_file(split, "latin1.csv", LATIN1_CSV),
             (f"data.{split}", "latin1.csv", "not UTF-8", "line 8", "save it as UTF-8"), late=True),
        Case(f"{c}-data-binary-csv", c, data_file(split, "garbage.csv", GARBAGE),
             (f"data.{split}", "garbage.csv", "not UTF-8", "save it as UTF-8"), late=True),
        Case(f"{c}-data-binary-jsonl", c, data_file(split, "garbage.jsonl", GARBAGE),
             (f"data.{split}", "garbage.jsonl", "not UTF-8", "save it as UTF-8"), late=True),
        Case(f"{c}-data-bad-json-line", c, data_file(split, "broken.jsonl", BAD_JSONL),
             (f"data.{split}", "broken.jsonl", "line 4", "not valid JSON", "fix or remove that line"), late=True),
        Case(f"{c}-data-csv-ragged-row", c,
             data_file(split, "ragged.csv", "text,label\ngreat film,positive\nawful film, dull,negative\n"),
             (f"data.{split}", "ragged.csv", "line 3",
              "Check the delimiter and quoting: a field that holds the delimiter must be in double quotes"), late=True),
        Case(f"{c}-data-json-not-records", c, data_file(split, "scalars.jsonl", "1\n2\n3\n"),
             (f"data.{split}", "scalars.jsonl", "line 1", "JSON object",
              "each line of a .jsonl file must be one record"), late=True),
        Case(f"{c}-data-text-column-missing", c, put({"data.text_column": "review"}),
             ("data.text_column", "'review' is not a column", "Its columns are: text, label",
              "Fix data.text_column or the data (data.column_map renames columns)" if c == "prompt"
              else "Set data.text_column to one of them"), late=True),
        Case(f"{c}-data-label-column-missing", c, put({"data.label_column": "sentiment"}),
             ("data.label_column", "'sentiment' is not a column", "text, label",
              "Set data.label_column to one of them"), late=True),
        Case(f"{c}-data-label-outside-set", c,
             data_file(fixed_labels, "odd.csv", csv_text([*ROWS[:6], {"text": "so so film", "label": "neutral"}])),
             ("data.label_column", "'neutral' (1 row)", "outside the label set", "negative, positive",
              "Fix the data, or use a model trained with these labels" if c == "eval"
              else "Fix the data, or list every class in data.label_names"), late=True),
        Case(f"{c}-data-text-column-is-list", c, put({"data.text_column": ["text", "label"]}),
             ("data.text_column", "expected str", "['text', 'label']")),
        Case(f"{c}-data-max-length-bool", c, put({"data.max_length": True}),
             ("data.max_length", "expected int, got True")),
        Case(f"{c}-data-max-length-zero", c, put({"data.max_length": 0}), ("data.max_length", "must be >= 1, got 0")),
        Case(f"{c}-data-misspelled-key", c, put({"data.txt_column": "text"}),
             ("data.txt_column", "unknown key", "Did you mean 'data.text_column'?")),
        Case(f"{c}-data-dir-missing", c, put({"data.data_dir": "no/such/dir"}),
             ("data.data_dir", "directory not found", "no/such/dir", "Check the path, or remove data.data_dir")),
        Case(f"{c}-data-max-eval-samples-negative", c, put({"data.max_eval_samples": -3}),
             ("data.max_eval_samples", "must be >= 1, got -3")),
    ]


def _train_cases(c: str) -> list[Case]:
    """The train: section (TrainingArguments + llmkit's keys) — shared by the training commands."""
    return [
        Case(f"{c}-train-lr-string", c, put({"train.learning_rate": "fast"}),
             ("train.learning_rate", "expected float, got 'fast'")),
        Case(f"{c}-train-lr-negative", c, put({"train.learning_rate": -0.001}),
             ("train.learning_rate", "must be >= 0", "-0.001")),
        Case(f"{c}-train-lr-nan", c, put({"train.learning_rate": float("nan")}),
             ("train.learning_rate", "expected float", "nan")),
        Case(f"{c}-train-batch-bool", c, put({"train.per_device_train_batch_size": True}),
             ("train.per_device_train_batch_size", "expected int, got True")),
        Case(f"{c}-train-batch-zero", c, put({"train.per_device_train_batch_size": 0}),
             ("train.per_device_train_batch_size", "must be >= 1, got 0")),
        Case(f"{c}-train-accumulation-zero", c, put({"train.gradient_accumulation_steps": 0}),
             ("train.gradient_accumulation_steps", "must be >= 1, got 0")),
        Case(f"{c}-train-epochs-zero", c, put({"train.num_train_epochs": 0, "train.max_steps": -1}),
             ("train.num_train_epochs", "must be > 0", "train.max_steps", "set one of them")),
        Case(f"{c}-train-max-steps-zero", c, put({"train.max_steps": 0}),
             ("train.max_steps", "must be >= 1, or -1 to train for train.num_train_epochs", "got 0")),
        Case(f"{c}-train-seed-negative", c, put({"train.seed": -1}), ("train.seed", "between 0 and", "got -1")),
        Case(f"{c}-train-accelerator-config-missing", c, put({"train.accelerator_config": "no-such.json"}),
             ("train.accelerator_config", "No such file or directory: 'no-such.json'", "existing JSON file")),
        Case(f"{c}-train-workers-negative", c, put({"train.dataloader_num_workers": -1}),
             ("train.dataloader_num_workers", "must be >= 0, got -1")),
        Case(f"{c}-train-weight-decay-negative", c, put({"train.weight_decay": -0.1}),
             ("train.weight_decay", "must be >= 0, got -0.1")),
        Case(f"{c}-train-misspelled", c, put({"train.learning_rat": 0.1}),
             ("train.learning_rat", "Did you mean 'train.learning_rate'?")),
        Case(f"{c}-train-transformers4-name", c, put({"train.evaluation_strategy": "epoch"}),
             ("train.evaluation_strategy", "transformers 5 renamed it train.eval_strategy")),
        Case(f"{c}-train-in-wrong-section", c, put({"data.learning_rate": 0.1}),
             ("data.learning_rate", "Did you mean 'train.learning_rate'? (it belongs to another section)")),
        Case(f"{c}-train-bad-choice", c, put({"train.lr_scheduler_type": "cosine_wobble"}),
             ("train.lr_scheduler_type", "'cosine_wobble' is not one of: 'linear', 'cosine'")),
        Case(f"{c}-train-precision", c, put({"train.precision": "fp8"}),
             ("train.precision", "one of: 'auto', 'fp32', 'bf16', 'fp16'", "'fp8'")),
        Case(f"{c}-existing-run-dir", c, put({"output_dir": lambda tmp: _dir(tmp / "done")}),
             ("already exists and is not empty", "nothing was changed", "Use --overwrite to replace it (only a "
              "run llmkit created) or --output-dir for a new one; a training run that stopped continues with "
              "train.resume=auto")),
    ]


FINETUNE = [
    Case("finetune-missing-data-section", "finetune", drop("data"),
         ("data: required key is missing. The data to fine-tune on.",)),
    Case("finetune-missing-model-section", "finetune", drop("model"),
         ("model: required key is missing. The model to fine-tune.",)),
    Case("finetune-model-empty", "finetune", put({"model": {}}),
         ("model.name_or_path", "give exactly one of model.name_or_path or model.from_config")),
    Case("finetune-model-path-missing", "finetune", put({"model": {"name_or_path": "./no-such-model"}}),
         ("model.name_or_path", "no model directory at './no-such-model'", "Check the path")),
    Case("finetune-model-dir-without-model", "finetune",
         put({"model": lambda tmp: {"name_or_path": _dir(tmp / "empty-model")}}),
         ("model.name_or_path", "empty-model", "config.json",
          "Point model.name_or_path at the folder written by save_pretrained"), late=True),
    Case("finetune-tokenizer-path-missing", "finetune", put({"tokenizer.name_or_path": "./no-such-tokenizer"}),
         ("tokenizer.name_or_path", "no model directory at './no-such-tokenizer'", "Check the path")),
    Case("finetune-tokenizer-path-is-a-file", "finetune",
         put({"tokenizer.name_or_path": lambda tmp: _file(tmp / "tok.txt")}),
         ("tokenizer.name_or_path", "tok.txt", "is a file",
          "needs a tokenizer directory (tokenizer.json or tokenizer_config.json")),
    Case("finetune-task-type-typo", "finetune", put({"task.type": "sequence_classification"}),
         ("task.type", "one of: 'sequence-classification'", "'sequence_classification'")),
    Case("finetune-task-bool-string", "finetune", put({"task.multi_label": "sure"}),
         ("task.multi_label", "expected bool, got 'sure'")),
    Case("finetune-task-misspelled", "finetune", put({"task.multilabel": True}),
         ("task.multilabel", "Did you mean 'task.multi_label'?")),
    Case("finetune-threshold-out-of-range", "finetune", put({"task.threshold": 2.0}),
         ("task.threshold", "between 0 and 1", "2.0")),
    Case("finetune-threshold-without-multi-label", "finetune", put({"task.threshold": 0.7}),
         ("task.threshold", "only applies to task.multi_label: true", "0.7")),
    Case("finetune-num-layers-string", "finetune", put({"model.from_config.num_layers": "two"}),
         ("model.from_config.num_layers", "expected int, got 'two'")),
    Case("finetune-num-layers-huge", "finetune", put({"model.from_config.num_layers": 10**6}),
         ("model.from_config", "num_layers=1000000", "parameters", "GB", "memory", "Make it smaller")),
    Case("finetune-hidden-size-huge", "finetune", put({"model.from_config.hidden_size": 2**30,
                                                       "model.from_config.num_heads": 1}),
         ("model.from_config", "hidden_size=1073741824", "memory", "Make it smaller")),
    Case("finetune-num-heads-zero", "finetune", put({"model.from_config.num_heads": 0}),
         ("model.from_config.num_heads", "must be >= 1, got 0")),
    Case("finetune-sentence-embedding-from-config", "finetune", put({"task.type": "sentence-embedding"}),
         ("model.from_config", "fine-tunes a pretrained encoder", "train a new one with llmkit pretrain first")),
    Case("finetune-heads-not-dividing", "finetune", put({"model.from_config.num_heads": 3}),
         ("model.from_config.hidden_size", "not divisible by num_heads=3", "choose a num_heads that divides it")),
    Case("finetune-family-unknown", "finetune", put({"model.from_config.family": "gpt5"}),
         ("model.from_config.family", "'gpt5'", "'bert', 'gpt2', 'llama'")),
    Case("finetune-freeze-layers-negative", "finetune", put({"model.freeze_layers": -1}),
         ("model.freeze_layers", "must be >= 0, got -1")),
    Case("finetune-freeze-too-many-layers", "finetune", put({"model.freeze_layers": 5}),
         ("model.freeze_layers", "5 is more than the model's 2 layers", "set it to 2 or fewer"), late=True),
    Case("finetune-max-length-huge-long-text", "finetune",
         data_file("train_file", "long.csv", csv_text(LONG_TEXT), **{"data.max_length": 10**9}),
         ("data.max_length", "positions", "set data.max_length=64"), late=True),
    Case("finetune-validation-split-out-of-range", "finetune",
         both(drop("data.validation_file"), put({"data.validation_split": 1.5})),
         ("data.validation_split", "between 0 and 1", "1.5")),
    Case("finetune-single-class", "finetune",
         data_file("train_file", "one.csv", csv_text([r for r in ROWS if r["label"] == "positive"])),
         ("data.label_column", "only one class", "positive", "classification needs at least two"), late=True),
    Case("finetune-label-names-mismatch", "finetune", put({"data.label_names": ["neg", "pos"]}),
         ("data.label_column", "outside the label set", "neg, pos",
          "Fix the data, or list every class in data.label_names"), late=True),
    Case("finetune-validation-file-missing-column", "finetune",
         data_file("validation_file", "dev.csv", csv_text([{"sentence": r["text"], "label": r["label"]}
                                                           for r in ROWS[:4]])),
         ("data.text_column", "validation data", "Its columns are: sentence, label",
          "Set data.text_column to one of them"), late=True),
    Case("finetune-override-not-a-section", "finetune", put({}),
         ("data.text_column", "not a section", "Set data.text_column=VALUE itself"),
         args=("data.text_column.x=1",)),
    Case("finetune-override-wrong-type", "finetune", put({}), ("train.num_train_epochs", "expected float",
                                                               "'three'"), args=("train.num_train_epochs=three",)),
    *_data_cases("finetune"),
    *_train_cases("finetune"),
]

PAIRS = [{"prompt": f"say word {i}", "chosen": "great and wonderful", "rejected": "awful"} for i in range(8)]


def preference(changes: dict | None = None, rows: list[dict] | None = None) -> Edit:
    """The finetune base turned into a working task.type: preference config (a 2-layer Llama from a config, a chat
    tokenizer, prompt / chosen / rejected pairs), then `changes` set on it."""
    def edit(cfg: dict, tmp: Path) -> dict:
        tokenizer = tmp / "chat-tokenizer"
        if not tokenizer.exists():
            build_chat_tokenizer(CHATML).save_pretrained(tokenizer)
        (tmp / "pairs.jsonl").write_text(jsonl_text(rows or PAIRS))
        cfg.update(model={"from_config": {"family": "llama", "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                                          "intermediate_size": 64, "max_position_embeddings": 64}},
                   tokenizer={"name_or_path": str(tokenizer)}, task={"type": "preference"},
                   data={"train_file": str(tmp / "pairs.jsonl"), "max_length": 32})
        return put(changes or {})(cfg, tmp)

    return edit


PREFERENCE = [
    Case("finetune-preference-missing-rejected", "finetune",
         preference(rows=[{"prompt": "p", "chosen": "c", "answer": "a"}] * 4),
         ("data: preference pairs need the columns prompt, chosen and rejected", "lacks rejected",
          "its columns: prompt, chosen, answer", "data.column_map"), late=True),
    Case("finetune-preference-kto-data-for-dpo", "finetune",
         preference(rows=[{"prompt": "p", "completion": "c", "label": True}] * 4),
         ("unpaired rows (prompt, completion, label: KTO data)",
          "preference.method dpo, ipo, simpo and orpo learn from pairs", "Set preference.method: kto for these rows"),
         late=True),
    Case("finetune-preference-pairs-for-kto", "finetune", preference({"preference.method": "kto"}),
         ("preference.method kto learns from unpaired rows",
          "the train data has the columns prompt, chosen, rejected", "Use preference.method dpo"), late=True),
    Case("finetune-preference-kto-weight-with-dpo", "finetune", preference({"preference.desirable_weight": 1.5}),
         ("preference.desirable_weight", "only applies to method: kto, not dpo")),
    Case("finetune-preference-kto-precompute", "finetune",
         preference({"preference": {"method": "kto", "precompute_ref": True}}),
         ("preference.precompute_ref", "kto's KL estimate", "remove this key")),
    Case("finetune-preference-kto-batch-of-one", "finetune",
         preference({"preference.method": "kto", "train.per_device_train_batch_size": 1},
                    rows=[{"prompt": "p", "completion": "c", "label": i % 2 == 0} for i in range(4)]),
         ("train.per_device_train_batch_size", "kto estimates its KL term from the batch's other rows",
          "Set train.per_device_train_batch_size=2 or more"), late=True),
    Case("finetune-preference-option-of-another-method", "finetune",
         preference({"preference": {"method": "ipo", "label_smoothing": 0.1}}),
         ("preference.label_smoothing", "only applies to method: dpo (conservative DPO) or simpo, not ipo")),
    Case("finetune-preference-gamma-with-dpo", "finetune", preference({"preference.gamma": 0.5}),
         ("preference.gamma", "only applies to method: simpo, not dpo")),
    Case("finetune-preference-precompute-without-reference", "finetune",
         preference({"preference": {"method": "simpo", "precompute_ref": True}}),
         ("preference.precompute_ref", "simpo is reference-free: there is no reference to precompute")),
    Case("finetune-preference-beta-zero", "finetune", preference({"preference.beta": 0}),
         ("preference.beta", "must be a finite number > 0, got 0", "default for dpo: 0.1")),
    Case("finetune-preference-method-unknown", "finetune", preference({"preference.method": "dpoo"}),
         ("preference.method", "'dpoo'", "'dpo'")),
    Case("finetune-preference-section-on-another-task", "finetune", put({"preference.beta": 0.2}),
         ("preference", "only applies to task.type: preference, not sequence-classification")),
    Case("finetune-preference-section-on-a-reward-model", "finetune",
         preference({"task.type": "reward-model", "preference.method": "ipo"}),
         ("preference", "only applies to task.type: preference, not reward-model")),
    Case("finetune-preference-too-long-error", "finetune",
         preference({"task.too_long": "error"}, rows=[{"prompt": "hello " * 40, "chosen": "c", "rejected": "r"}]),
         ("data.max_length", "1 pair(s) are longer than 32 tokens and task.too_long is error"), late=True),
    Case("finetune-preference-no-usable-pair", "finetune",
         preference(rows=[{"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "p", "chosen": " ",
                                                                                   "rejected": "x"}]),
         ("none of the 2 training pairs is usable", "1 identical", "1 with an empty answer"), late=True),
    Case("distill-preference-task", "distill", put({"task.type": "preference"}),
         ("task.type", "llmkit distill supports sequence-classification and causal-lm, not preference",
          "llmkit finetune or adapter")),
    Case("adapter-preference-bottleneck", "adapter",
         put({"task.type": "preference", "adapter": {"method": "bottleneck"}}),
         ("adapter.method", "bottleneck adapters cannot be switched off", "use a PEFT method such as lora")),
    Case("adapter-preference-prompt-tuning", "adapter",
         put({"task.type": "preference", "adapter": {"method": "prompt_tuning", "num_virtual_tokens": 4}}),
         ("adapter.method", "prompt_tuning does not support task.type preference")),
]

PRETRAIN = [
    Case("pretrain-block-size-zero", "pretrain", put({"pretrain.block_size": 0}),
         ("pretrain.block_size", "must be >= 2, got 0")),
    Case("pretrain-block-size-huge", "pretrain", put({"pretrain.block_size": 10**9}),
         ("pretrain.block_size", "1000000000", "64 positions",
          "set pretrain.block_size=64 or lower, or raise the positions")),
    Case("pretrain-block-size-misspelled", "pretrain", put({"pretrain.blocksize": 32}),
         ("pretrain.blocksize", "Did you mean 'pretrain.block_size'?")),
    Case("pretrain-objective-unknown", "pretrain", put({"pretrain.objective": "xlm"}),
         ("pretrain.objective", "one of: 'clm', 'mlm'", "'xlm'")),
    Case("pretrain-mlm-on-gpt2", "pretrain", put({"pretrain.objective": "mlm"}),
         ("pretrain.objective", "mlm needs an encoder", "family bert", "use objective: clm, or family: bert")),
    Case("pretrain-mlm-option-with-clm", "pretrain", put({"pretrain.mlm_probability": 0.3}),
         ("pretrain.mlm_probability", "only applies to objective: mlm, not clm")),
    Case("pretrain-max-tokens-zero", "pretrain", put({"pretrain.max_tokens": 0}),
         ("pretrain.max_tokens", "must be >= 1, got 0")),
    Case("pretrain-vocab-size-string", "pretrain", put({"tokenizer.train.vocab_size": "big"}),
         ("tokenizer.train.vocab_size", "expected int, got 'big'")),
    Case("pretrain-tokenizer-type-unknown", "pretrain", put({"tokenizer.train.type": "sentencepiece"}),
         ("tokenizer.train.type", "'bpe', 'wordpiece', 'unigram'")),
    Case("pretrain-no-tokenizer", "pretrain", drop("tokenizer"),
         ("tokenizer", "model.from_config builds a new model without a tokenizer",
          "set tokenizer.train (e.g. {type: bpe, vocab_size: 8000}) or tokenizer.name_or_path")),
    Case("pretrain-num-layers-huge", "pretrain", put({"model.from_config.num_layers": 10**6}),
         ("model.from_config", "num_layers=1000000", "memory",
          "Make it smaller (num_layers, hidden_size, vocab_size)")),
    Case("pretrain-vocab-huge", "pretrain", put({"model.from_config.vocab_size": 10**10}),
         ("model.from_config", "vocab_size=10000000000", "memory", "Make it smaller")),
    Case("pretrain-positions-zero", "pretrain", put({"model.from_config.max_position_embeddings": 0}),
         ("model.from_config.max_position_embeddings", "must be >= 1, got 0")),
    Case("pretrain-sweep-one-size", "pretrain", put({"pretrain.sweep": [{"num_layers": 1}]}),
         ("pretrain.sweep", "give at least 2 sizes to fit a scaling law (or none)")),
    Case("pretrain-sweep-misspelled", "pretrain", put({"pretrain.sweep": [{"num_layer": 1}, {"num_layers": 2}]}),
         ("pretrain.sweep.0.num_layer", "did you mean num_layers?", "Sweep entries take: num_layers, hidden_size")),
    Case("pretrain-missing-corpus", "pretrain", put({"data.train_file": "corpus/missing.txt"}),
         ("data.train_file", "file not found", "corpus/missing.txt", "Check the path, or set data.data_dir=DIR")),
    Case("pretrain-empty-corpus", "pretrain", data_file("train_file", "empty.txt", b""),
         ("data.train_file", "empty.txt", "empty", "check that this is the right file"), late=True),
    Case("pretrain-blank-corpus", "pretrain", data_file("train_file", "blank.txt", "\n\n   \n\n"),
         ("data.train_file", "blank.txt", "empty (only blank lines)", "check that this is the right file"),
         late=True),
    Case("pretrain-latin1-corpus", "pretrain",
         data_file("train_file", "latin1.txt", "the king said\nle ch\xe2teau \xe9tait froid\n".encode("latin-1")),
         ("data.train_file", "latin1.txt", "not UTF-8", "line 2", "save it as UTF-8"), late=True),
    Case("pretrain-binary-corpus", "pretrain", data_file("train_file", "garbage.txt", GARBAGE),
         ("data.train_file", "garbage.txt", "not UTF-8", "save it as UTF-8"), late=True),
    Case("pretrain-data-directory", "pretrain", put({"data.train_file": lambda tmp: _dir(tmp / "folder")}),
         ("data.train_file", "not a datasets save_to_disk directory", "Give a data file"), late=True),
    Case("pretrain-missing-model", "pretrain", drop("model"),
         ("model: required key is missing",
          "model.from_config for a new one, or name_or_path to continue pretraining")),
    *_train_cases("pretrain"),
]

ADAPTER = [
    Case("adapter-method-misspelled", "adapter", put({"adapter.method": "lorra"}),
         ("adapter.method", "unknown method 'lorra'", "Did you mean 'lora'?", "Choose one of: adalora,")),
    Case("adapter-option-misspelled", "adapter", put({"adapter.lora_alph": 8}),
         ("adapter.lora_alph", "lora has no option 'lora_alph'", "Did you mean 'lora_alpha'?", "Its options:")),
    Case("adapter-option-wrong-type", "adapter", put({"adapter.r": "eight"}),
         ("adapter.r", "expected int, got 'eight'")),
    Case("adapter-rank-zero", "adapter", put({"adapter.r": 0}), ("adapter.r", "must be >= 1, got 0"), late=True),
    Case("adapter-dropout-out-of-range", "adapter", put({"adapter.lora_dropout": 1.5}),
         ("adapter.lora_dropout", "must be between 0 and 1 (a probability), got 1.5"), late=True),
    Case("adapter-from-config-base", "adapter",
         put({"model": {"from_config": {"family": "bert"}}, "tokenizer": {"name_or_path": "x"}}),
         ("model.from_config", "an adapter needs a pretrained base model to adapt", "set model.name_or_path")),
    Case("adapter-target-modules-match-nothing", "adapter", put({"adapter.target_modules": ["attn_q"]}),
         ("adapter.target_modules", "attn_q", "Its linear layers are: classifier, dense, key, query, value",
          "(or use all-linear)"), late=True),
    Case("adapter-bottleneck-option-with-lora", "adapter", put({"adapter.reduction_factor": 4}),
         ("adapter.reduction_factor", "only applies to method: bottleneck, not lora")),
    Case("adapter-bottleneck-reduction-zero", "adapter", put({"adapter": {"method": "bottleneck",
                                                                          "reduction_factor": 0}}),
         ("adapter.reduction_factor", "must be >= 1, got 0")),
    Case("adapter-name-list", "adapter", put({"adapter.name": ["a", "b"]}),
         ("adapter.name", "expected str, got ['a', 'b']")),
    Case("adapter-model-missing", "adapter", put({"model.name_or_path": "/no/such/base"}),
         ("model.name_or_path", "no model directory at '/no/such/base'", "Check the path")),
    Case("adapter-freeze-option", "adapter", put({"model.freeze_layers": 1}),
         ("model.freeze_layers", "the base model is frozen already with an adapter; remove this key")),
    *_data_cases("adapter"),
    *[case for case in _train_cases("adapter") if "lr" in case.id or "batch" in case.id or "existing" in case.id],
]

PROMPT = [
    Case("prompt-template-without-mask", "prompt", put({"prompt.template": "{text} It was good."}),
         ("prompt.template", "has 0 {mask} fields", "a template needs exactly one {mask}")),
    Case("prompt-template-unknown-field", "prompt", put({"prompt.template": "{review} It was {mask}."}),
         ("prompt.template", "review", "text, label", "Fix prompt.template or the data (data.column_map renames "
          "columns)"), late=True),
    Case("prompt-template-missing", "prompt", drop("prompt.template"), ("prompt.template: required key is missing",)),
    Case("prompt-verbalizer-empty", "prompt", put({"prompt.verbalizer": {}}),
         ("prompt.verbalizer", "is empty", "give every class its label words")),
    Case("prompt-verbalizer-unknown-class", "prompt",
         put({"prompt.verbalizer": {"negative": ["terrible"], "positiv": ["great"]}}),
         ("prompt.verbalizer", "'positiv' is not a class", "the classes are negative, positive"), late=True),
    Case("prompt-verbalizer-list", "prompt", put({"prompt.verbalizer": ["terrible", "great"]}),
         ("prompt.verbalizer", "expected a mapping")),
    Case("prompt-mode-typo", "prompt", put({"prompt.mode": "few_shot"}),
         ("prompt.mode", "'few-shot'", "'few_shot'")),
    Case("prompt-few-shot-without-shots", "prompt", put({"prompt.mode": "few-shot"}),
         ("prompt.shots_per_class", "few-shot trains on K examples per class", "set it (e.g. 16)")),
    Case("prompt-seeds-negative", "prompt", put({"prompt.mode": "few-shot", "prompt.shots_per_class": 2,
                                                 "prompt.seeds": [-1]}),
         ("prompt.seeds", "between 0 and 2**32 - 1", "[-1]")),
    Case("prompt-shots-zero", "prompt", put({"prompt.mode": "few-shot", "prompt.shots_per_class": 0}),
         ("prompt.shots_per_class", "must be >= 1, got 0")),
    Case("prompt-shots-string", "prompt", put({"prompt.mode": "few-shot", "prompt.shots_per_class": "sixteen"}),
         ("prompt.shots_per_class", "expected int or null, got 'sixteen'")),
    Case("prompt-seeds-zero-shot", "prompt", put({"prompt.seeds": [1, 2]}),
         ("prompt.seeds", "zero-shot", "remove prompt.seeds")),
    Case("prompt-misspelled", "prompt", put({"prompt.templte": "x"}),
         ("prompt.templte", "Did you mean 'prompt.template'?")),
    Case("prompt-classifier-model", "prompt", put({"model.name_or_path": lambda tmp: MODELS["cls"]}),
         ("model.name_or_path", "language model", "For a classification head use llmkit finetune"), late=True),
    Case("prompt-context-length-zero", "prompt", put({"prompt.context_length": 0}),
         ("prompt.context_length", "must be >= 1, got 0")),
    *_data_cases("prompt"),
    *[case for case in _train_cases("prompt") if "lr" in case.id or "batch" in case.id],
]

DISTILL = [
    Case("distill-teacher-missing", "distill", put({"distill.teacher": "./no-teacher"}),
         ("distill.teacher", "no model directory at './no-teacher'", "Check the path")),
    Case("distill-teacher-required", "distill", drop("distill.teacher"),
         ("distill.teacher: required key is missing",)),
    Case("distill-alpha-out-of-range", "distill", put({"distill.alpha": 1.5}),
         ("distill.alpha", "between 0 and 1", "1.5")),
    Case("distill-temperature-zero", "distill", put({"distill.temperature": 0}),
         ("distill.temperature", "must be > 0, got 0", "1 is the plain softmax, 2-4 are usual for distillation")),
    Case("distill-temperature-misspelled", "distill", put({"distill.temprature": 2}),
         ("distill.temprature", "Did you mean 'distill.temperature'?")),
    Case("distill-temperature-string", "distill", put({"distill.temperature": "hot"}),
         ("distill.temperature", "expected float, got 'hot'")),
    Case("distill-keep-layers-out-of-range", "distill", put({"distill.student.from_teacher.keep_layers": [0, 7]}),
         ("distill.student.from_teacher.keep_layers", "7 out of range", "the teacher has 2 layers (0-1)",
          "so use indices 0-1"), late=True),
    Case("distill-keep-layers-and-every", "distill", put({"distill.student.from_teacher.every": 2}),
         ("distill.student.from_teacher.keep_layers", "give exactly one of keep_layers")),
    Case("distill-unlabeled-missing", "distill", put({"distill.unlabeled": "extra/texts.txt"}),
         ("distill.unlabeled", "file not found", "extra/texts.txt", "Check the path, or remove distill.unlabeled")),
    Case("distill-token-classification", "distill", put({"task.type": "token-classification"}),
         ("task.type", "supports sequence-classification and causal-lm",
          "distil a token classifier by training the student with llmkit finetune on teacher-tagged data")),
    Case("distill-labels-differ-from-teacher", "distill", put({"data.label_names": ["positive", "negative"]}),
         ("data.label_names", "negative, positive",
          "use the teacher's names, or drop data.label_names to take them from the teacher"), late=True),
    Case("distill-cache-limit-negative", "distill", put({"distill.cache_limit_gb": -1.0}),
         ("distill.cache_limit_gb", "must be > 0, got -1.0")),
    Case("distill-layer-map-not-int", "distill", put({"distill.beta": 1.0, "distill.layer_map": {0: 1.5}}),
         ("distill.layer_map", "expected a mapping of int to int or null, got {0: 1.5}")),
    *_data_cases("distill"),
    *[case for case in _train_cases("distill") if "lr" in case.id or "batch" in case.id or "existing" in case.id],
]

EVAL = [
    Case("eval-batch-size-zero", "eval", put({"eval.batch_size": 0}), ("eval.batch_size", "must be >= 1, got 0")),
    Case("eval-freeze-layers", "eval", put({"model.freeze_layers": 2}),
         ("model.freeze_layers", "llmkit eval trains nothing", "remove it")),
    Case("eval-train-file", "eval", data_file("train_file", "train.csv", csv_text(ROWS)),
         ("data.train_file", "llmkit eval trains nothing and reads no training data", "remove it")),
    Case("eval-batch-size-string", "eval", put({"eval.batch_size": "all"}),
         ("eval.batch_size", "expected int, got 'all'")),
    Case("eval-task-typo", "eval", put({"eval.task": "classify"}),
         ("eval.task", "'sequence-classification'", "'classify'")),
    Case("eval-precision-fp16", "eval", put({"eval.precision": "fp16"}), ("eval.precision", "'fp32', 'bf16'")),
    Case("eval-stride-above-window", "eval", put({"eval.perplexity": {"max_length": 16, "stride": 32}}),
         ("eval.perplexity.stride", "between 1 and max_length=16", "would skip tokens")),
    Case("eval-perplexity-seed-negative", "eval", put({"eval.perplexity": {"seed": -1}}),
         ("eval.perplexity.seed", "between 0 and 2**32 - 1", "got -1")),
    Case("eval-stride-zero", "eval", put({"eval.perplexity": {"max_length": 16, "stride": 0}}),
         ("eval.perplexity.stride", "between 1 and max_length=16", "got 0", "moves by stride tokens")),
    Case("eval-nothing-to-evaluate", "eval", drop("data.validation_file"),
         ("data.validation_file", "nothing to evaluate", "set data.validation_file (or data.test_file), or pass "
          "--data PATH")),
    Case("eval-misspelled", "eval", put({"eval.batchsize": 8}), ("eval.batchsize", "Did you mean 'eval.batch_size'?")),
    Case("eval-section-in-capitals", "eval", put({"EVAL.batch_size": 8}), ("EVAL", "Did you mean 'eval'?")),
    Case("eval-model-missing", "eval", put({"model.name_or_path": "./no-model"}),
         ("model.name_or_path", "no model directory at './no-model'", "Check the path")),
    Case("eval-perplexity-on-classifier", "eval", put({"eval.task": "perplexity"}),
         ("eval.task", "sequence-classification model", "eval.task=sequence-classification"), late=True),
    Case("eval-run-dir-without-model", "eval",
         put({"model.name_or_path": lambda tmp: _unfinished_run(tmp / "unfinished")}),
         ("model.name_or_path", "run directory without a model",
          "Resume it with train.resume=auto, or point to a checkpoint folder under checkpoints/")),
    Case("eval-generation-options-bad-regex", "eval", put({"eval.generation.answer_pattern": "(["}),
         ("eval.generation.answer_pattern", "nor a valid regex")),
    # sentence embeddings (eval.task sts / retrieval) on the classifier's encoder
    Case("eval-sts-without-pair-column", "eval", put({"eval.task": "sts"}),
         ("data.text_pair_column", "eval.task sts reads pairs", "set it to the column of the second text")),
    Case("eval-sts-pair-column-missing", "eval", put({"eval.task": "sts", "data.text_pair_column": "sentence2"}),
         ("data.text_pair_column", "'sentence2' is not a column", "Its columns are: text, label",
          "Set data.text_pair_column to one of them"), late=True),
    Case("eval-sts-score-not-numeric", "eval",
         put({"eval.task": "sts", "data.text_pair_column": "text", "data.score_column": "label"}),
         ("data.score_column", "'label' holds values that are not numbers", "'negative'",
          "set data.score_column to the column with the scores"), late=True),
    Case("eval-sts-score-outside-range", "eval",
         data_file("validation_file", "scores.csv", "text,pair,score\na film,the film,4\ngreat,superb,9\n",
                   **{"eval.task": "sts", "data.text_pair_column": "pair", "data.score_range": [0, 5]}),
         ("data.score_range", "row 2", "outside [0, 5] (9)", "set data.score_range to the range"), late=True),
    Case("eval-score-range-reversed", "eval", put({"data.score_range": [5, 0]}),
         ("data.score_range", "low must be below high")),
    Case("eval-retrieval-one-pair", "eval",
         data_file("validation_file", "one.csv", "text,pair\na film,the film\n",
                   **{"eval.task": "retrieval", "data.text_pair_column": "pair"}),
         ("data.validation_file", "at least 2 (query, positive) pairs", "has 1"), late=True),
    Case("eval-preference-on-a-classifier", "eval", put({"eval.task": "preference"}),
         ("eval.task: preference scores the pairs with a causal LM (or a reward model)",
          "is a sequence-classification model", "Use eval.task=sequence-classification")),
    Case("eval-preference-options-on-perplexity", "eval",
         put({"eval.task": "perplexity", "eval.preference": {"beta": 0.2}}),
         ("eval.preference", "only applies to eval.task preference, not perplexity", "set eval.task=preference")),
    Case("eval-pooling-on-perplexity", "eval", put({"eval.task": "perplexity", "eval.pooling": "cls"}),
         ("eval.pooling", "only applies to sentence embeddings", "remove eval.pooling")),
    *_data_cases("eval"),
]


def _unfinished_run(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("model: {name_or_path: x}\n")
    return str(path)


def steps(*items: dict) -> Edit:
    return put({"compress.steps": list(items)})


COMPRESS = [
    Case("compress-ffn-fraction-out-of-range", "compress", steps({"prune": {"ffn_fraction": 1.5}}),
         ("compress.steps[0].prune.ffn_fraction", "strictly between 0 and 1", "1.5")),
    Case("compress-magnitude-zero", "compress", steps({"prune": {"magnitude": 0}}),
         ("compress.steps[0].prune.magnitude", "strictly between 0 and 1", "got 0")),
    Case("compress-step-twice", "compress", steps({"prune": {"ffn_fraction": 0.5}}, {"prune": {"magnitude": 0.5}}),
         ("compress.steps", "prune is listed 2 times", "list each step once")),
    Case("compress-quantize-not-last", "compress", steps({"quantize": {}}, {"prune": {"ffn_fraction": 0.5}}),
         ("compress.steps", "quantize must be the last step")),
    Case("compress-gpu-method-on-cpu", "compress", steps({"quantize": {"method": "int4-weight-only"}}),
         ("compress.steps[0].quantize.method", "need a CUDA GPU", "int8-dynamic or int8-weight-only")),
    Case("compress-method-unknown", "compress", steps({"quantize": {"method": "int3"}}),
         ("compress.steps[0].quantize.method", "unknown method 'int3'", "int8-dynamic")),
    Case("compress-two-kinds-in-one-step", "compress", steps({"prune": {"ffn_fraction": 0.5}, "quantize": {}}),
         ("compress.steps[0]:", "exactly one of prune", "gives 2 (prune, quantize): make each its own step")),
    Case("compress-empty-step", "compress", steps({"quantize": None}),
         ("compress.steps[0]:", "gives none", "write `quantize: {}` for its defaults")),
    Case("compress-steps-required", "compress", drop("compress.steps"),
         ("compress.steps: required key is missing",)),
    Case("compress-train-key", "compress", put({"train.learning_rate": 1e-3}),
         ("train.learning_rate", "only a recover step trains", "add one or remove them")),
    Case("compress-train-precision-without-recover", "compress", put({"train.precision": "bf16"}),
         ("train.precision", "only a recover step trains", "add one or remove them")),
    Case("compress-no-validation-file", "compress", drop("data.validation_file"),
         ("data.validation_file", "every step is measured on this data")),
    Case("compress-every-head-of-bert", "compress", steps({"prune": {"heads": 2}}),
         ("compress.steps[0].prune.heads", "would prune every head of each layer", "remove at most 1"), late=True),
    Case("compress-torchao-after-bert-heads", "compress", steps({"prune": {"heads": 1}}, {"quantize": {}}),
         ("compress.steps[1].quantize.method", "cannot build a BERT whose attention heads were pruned",
          "use method torch-int8-dynamic"), late=True),
    Case("compress-drop-every-layer", "compress", steps({"prune": {"drop_layers": [0, 1]}}),
         ("compress.steps[0].prune.drop_layers", "drops all 2 layers", "keep at least one"), late=True),
    Case("compress-drop-layer-out-of-range", "compress", steps({"prune": {"drop_layers": [4]}}),
         ("compress.steps[0].prune.drop_layers", "[4] out of range", "the model has 2 layers (0-1)"), late=True),
]

CASES = [*_every_command(), *PRETRAIN, *FINETUNE, *PREFERENCE, *ADAPTER, *PROMPT, *DISTILL, *EVAL, *COMPRESS]
LATE = [case for case in CASES if case.late]
MODELS: dict[str, str] = {}  # filled by the `models` fixture: "cls" (BERT classifier), "mlm" (BERT masked LM)


# ---------------------------------------------------------------- base configs (each runs as is)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, str]:
    """A 2-layer BERT sentiment classifier (teacher, eval target) and a 2-layer BERT masked LM (adapter base,
    prompt model), saved like downloaded checkpoints."""
    from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_bert_config(tokenizer)
    for name, cls in (("cls", BertForSequenceClassification), ("mlm", BertForMaskedLM)):
        out = tmp_path_factory.mktemp(name)
        cls(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
        MODELS[name] = str(out)
    return dict(MODELS)


@pytest.fixture
def base_configs(tmp_path, tiny_config, models, sentiment_data) -> dict[str, dict]:
    """A working tiny config per command (a test of the fixture itself runs each with --dry-run)."""
    finetune = copy.deepcopy(tiny_config)
    finetune["train"].update(num_train_epochs=1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(r["text"] for r in sentiment_rows(80, seed=1)) + "\n")
    (corpus / "valid.txt").write_text("\n".join(r["text"] for r in sentiment_rows(10, seed=2)) + "\n")
    train = {"max_steps": 2, "per_device_train_batch_size": 8, "precision": "fp32", "save_strategy": "no",
             "eval_strategy": "no", "disable_tqdm": True, "seed": 0}
    adapter = {k: v for k, v in copy.deepcopy(finetune).items() if k != "tokenizer"}
    adapter.update(model={"name_or_path": models["mlm"]}, adapter={"method": "lora", "r": 2, "lora_alpha": 4})
    data = {"train_file": str(sentiment_data / "train.csv"), "validation_file": str(sentiment_data / "dev.csv"),
            "max_length": 32}
    return {
        "finetune": finetune,
        "adapter": adapter,
        "pretrain": {
            "model": {"from_config": {"family": "gpt2", "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                      "max_position_embeddings": 64}},
            "tokenizer": {"train": {"type": "bpe", "vocab_size": 300}},
            "data": {"train_file": str(corpus / "train.txt"), "validation_file": str(corpus / "valid.txt")},
            "pretrain": {"objective": "clm", "block_size": 32},
            "train": dict(train), "output_dir": str(tmp_path / "run"),
        },
        "prompt": {
            "model": {"name_or_path": models["mlm"]}, "data": {**data, "label_names": ["negative", "positive"]},
            "prompt": {"template": "{text} It was {mask}.",
                       "verbalizer": {"negative": ["terrible"], "positive": ["great"]}},
            "train": dict(train), "output_dir": str(tmp_path / "run"),
        },
        "distill": {
            "distill": {"teacher": models["cls"], "student": {"from_teacher": {"keep_layers": [0]}}},
            "data": dict(data), "train": dict(train), "output_dir": str(tmp_path / "run"),
        },
        "eval": {
            "model": {"name_or_path": models["cls"]}, "data": {"validation_file": data["validation_file"],
                                                               "max_length": 32},
            "eval": {"batch_size": 16}, "output_dir": str(tmp_path / "run"),
        },
        "compress": {
            "model": {"name_or_path": models["cls"]}, "data": dict(data),
            "compress": {"steps": [{"prune": {"ffn_fraction": 0.5}}, {"quantize": {}}], "timing_rounds": 1},
            "output_dir": str(tmp_path / "run"),
        },
    }


def write_config(tmp_path: Path, case: Case, base: dict) -> Path:
    config = case.edit(copy.deepcopy(base), tmp_path)
    path = tmp_path / f"{case.command}.yaml"
    if isinstance(config, Path):  # the config argument itself (a missing file, a directory)
        return config
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        write_yaml(path, config)
    return path


def run_case(tmp_path: Path, case: Case, base: dict, *extra: str):
    result = invoke(case.command, write_config(tmp_path, case, base), *case.args, *extra)
    out = result.output
    assert result.exit_code == 2, f"exit code {result.exit_code} ({result.exception!r}):\n{out}"
    assert "Traceback" not in out, out
    for text in case.expect:
        assert text in out, f"{text!r} not in the message:\n{out}"
    return out


# ---------------------------------------------------------------- the tests


def test_base_configs_are_valid(tmp_path, base_configs):
    """The matrix edits working configs: each base config passes the same checks with --dry-run."""
    for command, config in base_configs.items():
        args = ("--data", config["data"]["validation_file"]) if command == "eval" else ("--dry-run",)
        path = write_yaml(tmp_path / f"{command}-ok.yaml", config)
        if command == "eval":
            result = invoke("config", "validate", path)
        else:
            result = invoke(command, path, *args)
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert not Path(config["output_dir"]).exists()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(tmp_path, base_configs, case):
    """Exit code 2, a message naming the key or file and the fix, no traceback, no run directory."""
    base = base_configs[case.command]
    output_dir = Path(base["output_dir"])
    run_case(tmp_path, case, base)
    assert not output_dir.exists(), f"{output_dir} was created: {sorted(output_dir.rglob('*'))}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dry_run_fails_the_same_way(tmp_path, base_configs, case):
    """--dry-run runs every check the real run makes before it trains: the same exit code 2 and message, and
    nothing written. (A config that passes --dry-run does not fail on its input later.)"""
    base = base_configs[case.command]
    dry = run_case(tmp_path, case, base, "--dry-run")
    assert not Path(base["output_dir"]).exists()
    real = run_case(tmp_path, case, base)
    assert _error_line(dry) == _error_line(real)


def _error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("error"))


@pytest.mark.parametrize("case", LATE, ids=str)
def test_bad_input_leaves_an_existing_run_untouched(tmp_path, base_configs, case):
    """A run that fails while reading its data or building its model, started with --overwrite over an existing
    llmkit run directory (it holds the run marker, so --overwrite may replace it), must leave that directory as
    it was."""
    base = base_configs[case.command]
    output_dir = Path(base["output_dir"])
    output_dir.mkdir(parents=True)
    (output_dir / ".llmkit-run").write_text(json.dumps({"command": case.command, "smoke": False}) + "\n")
    (output_dir / "metrics.json").write_text('{"eval_accuracy": 0.9}\n')
    (output_dir / "model").mkdir()
    (output_dir / "model" / "config.json").write_text("{}\n")
    before = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    run_case(tmp_path, case, base, "--overwrite")
    after = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert after == before


SUBPROCESS_CASES = ["finetune-yaml-syntax", "finetune-data-bad-json-line", "pretrain-num-layers-huge",
                    "eval-data-latin1-csv"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_no_traceback_reaches_the_terminal(tmp_path, base_configs, case_id):
    """The real `llmkit` process: the message on stderr, exit code 2, no traceback on either stream."""
    case = next(c for c in CASES if c.id == case_id)
    path = write_config(tmp_path, case, base_configs[case.command])
    proc = subprocess.run([sys.executable, "-m", "llmkit", case.command, str(path), *case.args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # Nothing but the message: stdout empty; stderr one `error:` line, then the listed problems of a config
    # (`  - key: ...` lines) if there are several; no warnings, progress bars or library log lines.
    assert proc.stdout == "", proc.stdout
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("error: ") and proc.stderr.endswith("\n"), proc.stderr
    assert all(line.startswith("  - ") for line in rest), proc.stderr
    for text in case.expect:
        assert text in proc.stderr, proc.stderr


def test_matrix_covers_every_command():
    commands = {case.command for case in CASES}
    assert commands == {"pretrain", "finetune", "adapter", "prompt", "distill", "eval", "compress"}
    assert len({case.id for case in CASES}) == len(CASES)


def distinct_checks() -> dict[str, set[str]]:
    """The matrix's distinct checks by kind: a case template run for several commands (every command; the data
    files of the commands that read labelled data; the train section) counts once, a command's own case once."""
    def template(case: Case) -> str:
        return case.id.removeprefix(case.command + "-")

    shared = {"every": {template(c) for c in _every_command()}, "data": {template(c) for c in _data_cases("eval")},
              "train": {template(c) for c in _train_cases("finetune")}}
    found: dict[str, set[str]] = {"every": set(), "data": set(), "train": set(), "own": set()}
    for case in CASES:
        kind = next((k for k, names in shared.items() if template(case) in names), "own")
        found[kind].add(template(case) if kind != "own" else case.id)
    return found


def test_bad_input_doc_states_the_matrix_figures():
    """docs/bad-input.md gives the case count, per command, and how many distinct checks (templates x commands)
    they are; the figures are computed here from CASES."""
    import collections
    import re

    doc = re.sub(r"\s+", " ", (Path(__file__).resolve().parent.parent / "docs" / "bad-input.md").read_text())
    per_command = collections.Counter(case.command for case in CASES)
    shown = ", ".join(f"{c} {n}" for c, n in sorted(per_command.items(), key=lambda kv: (-kv[1], kv[0])))
    assert f"{len(CASES)} cases ({shown})" in doc
    checks = distinct_checks()
    cases_of = collections.Counter()
    for case in CASES:
        name = case.id.removeprefix(case.command + "-")
        cases_of[next(k for k, names in checks.items() if name in names or case.id in names)] += 1
    total = sum(len(names) for names in checks.values())
    expected = (f"{total} distinct checks: {len(checks['every'])} run for every command ({cases_of['every']} cases), "
                f"{len(checks['data'])} data-file checks for the 5 commands that read labelled data "
                f"({cases_of['data']} cases), {len(checks['train'])} checks of the train section for 1 to 5 training "
                f"commands each ({cases_of['train']} cases) and {len(checks['own'])} checks of one command "
                f"({cases_of['own']} cases)")
    assert expected in doc, expected
    assert f"the {len(LATE)} that fail only after the data or model is loaded" in doc
    assert f"{len(SUBPROCESS_CASES)} run as real `llmkit` processes" in doc
