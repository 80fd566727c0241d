"""The command registry: the one place that knows every command.

Each command is a recipe module with a config class and `run(cfg, *, config_path, overwrite, dry_run) -> dict`.
The CLI builds its commands from this table (shared options written once), and smoke mode, `llmkit config`,
`llmkit init` and `llmkit.testing` find a command's config class and recipe here. Recipe modules are imported
only when a command runs (`llmkit --help` stays fast), and nothing else imports a recipe.

A recipe module may also define:

- `load_config(target, overrides, options) -> cfg`: how the command reads its config when that is not just the
  YAML file plus overrides (eval's short form `llmkit eval RUN_DIR --data FILE`);
- `SMOKE`: a `llmkit.smoke.SmokeSpec` saying how the config shrinks in smoke mode (default: the generic one);
- `FORMS`: `{word: function(args: list[str], options: dict) -> None}`, commands whose first argument is a word
  instead of a config (`llmkit adapter merge RUN --output DIR`, `llmkit eval compare RUN...`).

Adding a command is a recipe module, one `Command(...)` line below and its docs page (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from llmkit.errors import UserError


@dataclass(frozen=True)
class Option:
    """A command-specific option beside the shared ones (e.g. eval's --data), passed to `load_config` and FORMS."""

    name: str  # the Python name; the flag is --name with dashes
    help: str
    type: type = Path
    default: Any = None


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # the recipe module
    config_class: str  # its config class's name in that module
    section: str  # the top-level config section that tells this command's configs apart
    help: str  # one line for `llmkit --help`
    argument_help: str = "YAML config"
    options: tuple[Option, ...] = field(default_factory=tuple)
    smoke_help: str | None = None  # --smoke's help where smoke mode is not the training one

    def recipe(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_cls(self) -> type:
        return getattr(self.recipe(), self.config_class)

    def smoke_spec(self) -> Any:
        from llmkit.smoke import SmokeSpec

        return getattr(self.recipe(), "SMOKE", None) or SmokeSpec()

    def forms(self) -> dict[str, Any]:
        return getattr(self.recipe(), "FORMS", {})


COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    """Add a command (a test registers a throw-away one this way); the CLI built afterwards has it."""
    COMMANDS[command.name] = command
    return command


for _command in (
    Command("pretrain", "llmkit.recipes.pretrain", "PretrainConfig", "pretrain",
            "Pretrain a language model (causal or masked) from scratch or continue pretraining; optional size sweep.",
            "YAML config (see configs/pretrain/ or `llmkit init pretrain`)"),
    Command("finetune", "llmkit.recipes.finetune", "FinetuneConfig", "task",
            "Fine-tune a model: sequence or token classification, or causal-LM instruction tuning (SFT).",
            "YAML config (see configs/finetune/ or `llmkit init finetune`)"),
    Command("adapter", "llmkit.recipes.adapter", "AdapterConfig", "adapter",
            "Train an adapter (LoRA or any PEFT method, or bottleneck adapters) on a finetune task; `adapter merge "
            "RUN --output DIR` writes a standalone model with a LoRA-family adapter merged in.",
            "YAML config (see configs/adapter/ or `llmkit init adapter`); or `merge` followed by an adapter run "
            "directory", (Option("output", "merge: where to write the merged model."),)),
    Command("prompt", "llmkit.recipes.prompt", "PromptConfig", "prompt",
            "Prompt-based classification: cloze templates + verbalizers; zero-shot, few-shot, in-context, soft "
            "prompts.", "YAML config (see configs/prompt/ or `llmkit init prompt`)"),
    Command("distill", "llmkit.recipes.distill", "DistillConfig", "distill",
            "Distil a teacher (model or run directory) into a smaller student: soft labels, hidden states, extra "
            "texts.", "YAML config (see configs/distill/ or `llmkit init distill`)"),
    Command("compress", "llmkit.recipes.compress", "CompressConfig", "compress",
            "Compress a trained model (structured or magnitude pruning, low-rank SVD, recovery by fine-tuning or "
            "distillation, int8 quantization) and measure quality, size and CPU speed against the "
            "original.", "YAML config (see configs/compress/)"),
    Command("eval", "llmkit.recipes.evaluation", "EvalConfig", "eval",
            "Evaluate a model or run directory (classification metrics, perplexity, generation); `eval compare "
            "RUN...` tabulates runs.",
            "A YAML config; or a run/model directory (short form, with --data); or `compare` followed by run "
            "directories", (Option("data", "The data to evaluate (sets data.validation_file)."),),
            "Smoke mode: the same config on a tiny random copy of its model (same family and tokenizer), the first "
            "32 rows (or lines) and 8 generated tokens, output in smoke/ (also eval.smoke: true)."),
):
    register(_command)


def get(name: str) -> Command:
    if name not in COMMANDS:
        raise UserError(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)}.")
    return COMMANDS[name]


def foreign_sections(name: str) -> dict[str, str]:
    """The top-level sections of other commands' configs that this command's config lacks, each with the commands
    that take it (`task:` -> `llmkit finetune`, `llmkit adapter` or `llmkit distill`), and the command's own word
    on it (its config class's `section_hints`), for the message about a section that belongs elsewhere."""
    own = get(name).config_cls()
    takers: dict[str, list[str]] = {}
    for other in COMMANDS.values():
        if other.name != name:
            for section in _sections_of(other.config_cls()):
                takers.setdefault(section, []).append(f"`llmkit {other.name}`")
    hints = getattr(own, "section_hints", {})
    return {section: " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            + (f" ({hints[section]})" if section in hints else "")
            for section, names in takers.items() if section not in own.__dataclass_fields__}


def _sections_of(cls: type) -> list[str]:
    """The top-level keys of a config class that are sections (dataclasses), not plain settings."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and any(
        dataclasses.is_dataclass(t) for t in (hints[f.name], *typing.get_args(hints[f.name])))]


def load(name: str, target: str | Path | None, overrides: list[str] = (), **options: Any) -> Any:
    """A command's config as its CLI reads it: the recipe's own `load_config` when it has one, else the YAML file
    plus dotted overrides."""
    from llmkit.config import load_config

    command = get(name)
    custom = getattr(command.recipe(), "load_config", None)
    if custom is not None:
        return custom(Path(target), list(overrides), {**options, "foreign_sections": foreign_sections(name)})
    return load_config(command.config_cls(), target, list(overrides), foreign_sections=foreign_sections(name))


def load_dict(name: str, data: dict, overrides: list[str] = ()) -> Any:
    """A command's config from a dict (as YAML would give it) plus overrides."""
    import copy

    from llmkit.config import apply_overrides, load_config

    command = get(name)
    raw = apply_overrides(copy.deepcopy(data), list(overrides))
    prepare = getattr(command.recipe(), "prepare_raw_config", None)
    if prepare is not None:
        raw = prepare(raw)
    return load_config(command.config_cls(), None, data=raw, foreign_sections=foreign_sections(name))


def infer(config: dict, path: Path | None = None) -> str | None:
    """The command a config is for, from its sections (or, failing that, its folder's name); None if unclear."""
    found = [c.name for c in COMMANDS.values() if c.section in config]
    if len(found) > 1:  # an adapter config has finetune's `task:` too: keep the command whose config holds all
        found = [name for name in found if all(COMMANDS[other].section in get(name).config_cls().__dataclass_fields__
                                               for other in found)]
    if len(found) == 1:
        return found[0]
    parent = path.resolve().parent.name if path is not None else None
    return parent if parent in COMMANDS else None


def infer_command(config: Path, command: str | None = None) -> str:
    """The command of a config file: `command` when given (checked), else inferred; a UserError when unclear."""
    from llmkit.config import read_yaml

    if command:
        if command not in COMMANDS:
            raise UserError(f"--command: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}.")
        return command
    found = infer(read_yaml(config), config)
    if found is None:
        raise UserError(f"{config}: cannot tell which command this config is for; pass --command "
                        f"({', '.join(COMMANDS)}).")
    return found


def run(name: str, cfg: Any, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Run a loaded config with its command's recipe."""
    return get(name).recipe().run(cfg, config_path=config_path, overwrite=overwrite, dry_run=dry_run)
