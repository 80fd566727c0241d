"""`llmkit adapter`: parameter-efficient tuning of every finetune task — any PEFT method by name (its options
passed through and checked against the method's own config class), or llmkit's bottleneck adapters.

The run is finetune's (same data, task, metrics and report: llmkit/tasks) with the model wrapped by the
adapter; only the adapter and the task head are saved, in `adapter/`. `llmkit adapter merge RUN --output DIR`
folds a LoRA-family adapter into its base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmkit.config.adapter import AdapterSection
from llmkit.config.sections import opt
from llmkit.errors import ConfigIssue, UserError
from llmkit.models.adapters import merge_adapter, merge_inputs, task_refusal
from llmkit.smoke import honoured
from llmkit.tasks import SMOKE, TaskTrainingConfig, fine_tune
from llmkit.training import rundir

COMMAND = "adapter"


@dataclass
class AdapterConfig(TaskTrainingConfig):
    """`llmkit adapter` config: a finetune config plus the adapter section."""

    command = COMMAND

    adapter: AdapterSection = opt("The adapter to train (the base model stays frozen).",
                                  default_factory=AdapterSection)
    output_dir: str | None = opt("Run directory (default: runs/adapter-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        issues = super().validate()
        if self.model.from_config is not None:
            issues.append(ConfigIssue("model.from_config", "an adapter needs a pretrained base model to adapt; set "
                                                           "model.name_or_path (train from scratch with llmkit "
                                                           "pretrain)."))
        for key in ("freeze_embeddings", "freeze_layers"):
            if getattr(self.model, key):
                issues.append(ConfigIssue(f"model.{key}", "the base model is frozen already with an adapter; "
                                                          "remove this key."))
        refusal = task_refusal(self.adapter.method, self.task.type)
        if refusal:
            issues.append(ConfigIssue("adapter.method", refusal))
        return issues


@honoured(COMMAND, SMOKE)
def run(cfg: AdapterConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Train the adapter on the task; save it (with the task head) in OUTPUT_DIR/adapter."""
    return fine_tune(cfg, COMMAND, config_path=config_path, overwrite=overwrite, dry_run=dry_run)


# ---------------------------------------------------------------- adapter merge


def merge(args: list[str], options: dict) -> None:
    """`llmkit adapter merge RUN --output DIR`: the adapter folded into its base weights, a standalone model.
    The output is checked before anything loads and claimed as an llmkit output once the merge has worked."""
    output, overwrite = options.get("output"), options.get("overwrite", False)
    if len(args) != 1 or output is None:
        raise UserError("adapter merge: give one adapter run directory and --output DIR, e.g. llmkit adapter "
                        "merge runs/minilm-sst2-lora --output merged/minilm-sst2.")
    if options.get("smoke"):
        raise UserError("adapter merge: --smoke does not apply (a merge trains nothing); remove it, or use --dry-run "
                        "to check the run and the output folder without writing.")
    inputs = merge_inputs(args[0])
    rundir.check_output_dir(output, overwrite=overwrite, inputs=inputs, key="--output")
    if options.get("dry_run"):
        print(f"dry run: {args[0]} and --output {output} pass the checks; nothing was written.")
        return

    def claim(path: Path) -> Path:
        return rundir.prepare_run_dir(path, overwrite, None, command="adapter merge", inputs=inputs, key="--output")

    with rundir.claims_released():
        meta = merge_adapter(args[0], output, prepare_output=claim)
    print(f"merged the {meta['method']} adapter {meta['name']!r} into {meta['base_model']}; wrote {output} (loads "
          "with transformers' from_pretrained, no PEFT needed)")


FORMS = {"merge": merge}
